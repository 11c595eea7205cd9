"""The driver: one B2BUA and the stateless core, driven from the Twisted edge.

Theory of operation
-------------------
The transport protocols (:mod:`sbc.net.transport`) parse and frame; each well-formed message
comes here with the interface, the transport and the source address it arrived on, and goes to
the :class:`B2BUA` as an :class:`Origin` (over TLS with the names of the client certificate,
so a trunk can be recognised by it).  The driver stamps ``now`` from the injected clock
(``IReactorTime.seconds()``) and writes what the core asks for.  Malformed traffic never
reaches the driver: the protocols hand it to :meth:`StatelessCore.receive_error`.

After every input the driver drains :meth:`B2BUA.commands` and writes each :class:`Send`:
over UDP through the interface's UDP listener (``transport.write(bytes, (host, port))``), over
TCP/TLS back through the live stream connection the peer used, looked up by (interface, peer
host, peer port).  There is no such connection when the peer has gone: the message is counted
(``driver.no_connection``) and the B2BUA is told (:meth:`B2BUA.send_failed`), so the call to
a user whose connection closed fails with 480 instead of waiting for a timeout.  A closed
connection is also reported as a closed flow (:meth:`B2BUA.flow_closed`): the registrations
made over it stop taking calls (RFC 5626 5.3) and the requests waiting on it fail.  Towards the
PBX and the trunks routed over TCP/TLS, a missing connection is opened by the
:class:`~sbc.net.outbound.Connector` (once, then reused); a phone whose connection closed is
never called back on another one.

After every input the driver also drains what the B2BUA reports for the edge: security events
and call records into the log, facts for the rule engine and registration changes
(:attr:`B2BUA.binding_changes`) into the policy gate, which shares them with the other nodes
through the store (without a gate they are dropped: registrations stay node-local).  The gate
hands admitted requests back through :meth:`Driver.deliver`, with whether the source is
registered on another node.

It keeps exactly one ``callLater`` armed at :meth:`B2BUA.get_timer`, re-armed after every input
and every firing.  An exception inside a core is logged and counted (``internal.error``) and
never reaches the reactor.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sbc.errors import ConfigError
from sbc.gateway.b2bua import (
    B2BUA,
    EXTERNAL,
    INTERNAL,
    B2buaSettings,
    Origin,
    Send,
    SipAddress,
    Trunk,
    TrunkRoute,
)
from sbc.gateway.registrar import RegistrationPolicy
from sbc.gateway.stateless import StatelessCore
from sbc.media.relay import MediaInterface, MediaSettings
from sbc.net.outbound import Connector
from sbc.net.policy import PolicyGate
from sbc.sip.message import Request, Response
from sbc.sip.transaction import TimerSettings

if TYPE_CHECKING:
    from sbc.config import Config

log = Logger(namespace="sbc.driver")
security_log = Logger(namespace="sbc.security")
cdr_log = Logger(namespace="sbc.cdr")

Address = tuple[str, int]


def resolve_host(host: str, port: int) -> str:
    """``host`` as an IP address: itself if it is one, else its first address from the system's
    resolver (once, at start).  Raises ConfigError when it does not resolve."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)
    except OSError as e:
        raise ConfigError(f"pbx.address {host!r} does not resolve: {e}",
                          path="pbx.address") from e
    return str(infos[0][4][0])


def b2bua_settings_from(
    config: Config, resolve: Callable[[str, int], str] = resolve_host
) -> B2buaSettings:
    """The B2BUA's addresses and timers from the configuration.

    The PBX is reached over ``pbx.transport``; the internal interface must have a listener for
    that transport (its address is the SBC's Via and Contact towards the PBX, where the PBX
    sends its requests).  Raises ConfigError when it has none, when the external interface has
    no listener at all, or when ``pbx.address`` does not resolve.
    """
    ext = config.interfaces.external
    internal = config.interfaces.internal
    pbx = config.pbx
    if not getattr(internal, pbx.transport).enabled:
        raise ConfigError(f"the internal interface needs a {pbx.transport.upper()} listener: "
                          f"the PBX is reached over {pbx.transport} (pbx.transport)",
                          path=f"interfaces.internal.{pbx.transport}.enabled")
    listeners = tuple(
        SipAddress(ext.public_address, tc.port, transport)
        for transport, tc in (("udp", ext.udp), ("tcp", ext.tcp), ("tls", ext.tls))
        if tc.enabled
    )
    if not listeners:
        raise ConfigError("the external interface has no listener enabled",
                          path="interfaces.external")
    internal_listeners = tuple(
        SipAddress(internal.public_address, tc.port, transport)
        for transport, tc in (("udp", internal.udp), ("tcp", internal.tcp), ("tls", internal.tls))
        if tc.enabled
    )
    timers = config.timers
    reg = config.registration
    pbx_ip = resolve(pbx.address, pbx.port)
    return B2buaSettings(
        external=listeners[0],
        internal=next(a for a in internal_listeners if a.transport == pbx.transport),
        pbx=SipAddress(pbx_ip, pbx.port, pbx.transport),
        domain=pbx.address,
        timers=TimerSettings(t1=timers.t1, t2=timers.t2, t4=timers.t4),
        ring_timeout=timers.ring_timeout,
        listeners=listeners,
        internal_listeners=internal_listeners,
        registration=RegistrationPolicy(
            client_max_expires=reg.client_max_expires,
            client_min_expires=reg.client_min_expires,
            pbx_min_expires=reg.pbx_min_expires,
            pbx_max_expires=reg.pbx_max_expires,
        ),
        trunks=tuple(
            Trunk(p.name, p.cidrs, p.transport, p.tls_subject, p.srtp)
            for p in config.trusted_peers
        ),
        routes=tuple(
            TrunkRoute(prefix, Origin(EXTERNAL, p.route.transport, p.route.address,
                                      p.route.port), p.name, p.srtp)
            for p in config.trusted_peers if p.route is not None
            for prefix in p.route.prefixes
        ),
        unknown_source=config.routing.unknown_source,
        srtp_external=config.media.srtp,
        srtp_internal=pbx.srtp,
    )


def media_settings_from(config: Config) -> MediaSettings:
    """The media relay's settings from ``media`` (and ``pbx.srtp`` via the B2BUA)."""
    m = config.media
    return MediaSettings(
        interfaces={
            EXTERNAL: MediaInterface(m.external.address, m.external.advertised_address),
            INTERNAL: MediaInterface(m.internal.address, m.internal.advertised_address),
        },
        suites=m.suites,
        allow_insecure_sdes=m.allow_sdes_over_insecure_transport,
        inactivity_timeout=m.inactivity_timeout,
        max_call_duration=m.max_call_duration,
        max_sessions=m.max_sessions,
        max_pps=m.max_pps,
    )


class Driver:
    """Feeds one :class:`B2BUA` and one :class:`StatelessCore` and writes what they return."""

    def __init__(self, b2bua: B2BUA, core: StatelessCore, clock: IReactorTime) -> None:
        self.b2bua = b2bua
        self.core = core
        self.clock = clock
        self.counters = core.counters
        self.udp: dict[str, Any] = {}  # interface -> a transport with write(bytes, addr)
        self.streams: dict[tuple[str, str, int], Any] = {}  # (interface, host, port) -> protocol
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        self.connector: Connector | None = None  # outbound connections (PBX over TCP/TLS)
        self.gate: PolicyGate | None = None  # the rule engine (None: no rules loaded)
        # Where call records go; with media workers, a hold that waits for their final counts.
        self.write_record: Callable[[dict[str, Any]], None] = _log_record

    # -- sockets ---------------------------------------------------------------------------

    def add_udp(self, interface: str, transport: Any) -> None:
        """The UDP transport of ``interface`` (one per interface)."""
        self.udp[interface] = transport

    def stream_made(self, interface: str, source: Address, stream: Any) -> None:
        """A TCP/TLS connection from ``source`` is live; ``stream.send(bytes)`` writes to it."""
        key = (interface, source[0], source[1])
        self.streams[key] = stream
        if self.connector is not None:
            self.connector.connected(key, stream)

    def stream_lost(self, interface: str, source: Address, stream: Any) -> None:
        key = (interface, source[0], source[1])
        if self.streams.get(key) is stream:
            del self.streams[key]
        transport = "tls" if getattr(stream, "tls", False) else "tcp"
        try:
            self.b2bua.flow_closed(Origin(interface, transport, source[0], source[1]),
                                   self.clock.seconds())
        except Exception:
            self.counters["internal.error"] += 1
            log.failure("b2bua failed on a closed flow from {source}", source=source[0])
        self._flush()

    # -- inputs ----------------------------------------------------------------------------

    def receive(
        self,
        message: Request | Response,
        interface: str,
        transport: str,
        source: Address,
    ) -> bytes | None:
        """A well-formed message.  The B2BUA's output is written by the driver itself, so this
        returns ``None`` (the protocols' stateless-answer path stays for malformed input)."""
        if isinstance(message, Request):
            self.counters[f"request.{message.method}"] += 1
        else:
            self.counters["response.received"] += 1
        identity: tuple[str, ...] = ()
        if transport == "tls":
            stream = self.streams.get((interface, source[0], source[1]))
            peer = getattr(stream, "peer_identity", None)
            if peer is not None:  # RFC 5922 7.1: the CN only when there is no SAN
                sans = (*peer.dns_names, *peer.ip_addresses, *peer.uris)
                identity = sans or ((peer.common_name,) if peer.common_name else ())
        origin = Origin(interface, transport, source[0], source[1], identity)
        gate = self.gate
        if gate is not None and isinstance(message, Request):
            try:
                gate.request(message, origin)  # delivers, refuses or holds it
            except Exception:
                self.counters["internal.error"] += 1
                log.failure("the rule engine failed on a message from {source}",
                            source=source[0])
                self.deliver(message, origin)
            return None
        self.deliver(message, origin)
        return None

    def deliver(self, message: Request | Response, origin: Origin,
                registered_elsewhere: bool = False) -> None:
        """Hand an admitted message to the B2BUA and write what it produced
        (``registered_elsewhere``: the policy gate found the source registered in the shared
        store; see :meth:`B2BUA.receive`)."""
        try:
            self.b2bua.receive(message, origin, self.clock.seconds(),
                               registered_elsewhere=registered_elsewhere)
        except Exception:
            self.counters["internal.error"] += 1
            log.failure("b2bua failed on a message from {source}", source=origin.host)
        self._flush()

    def send_raw(self, origin: Origin, data: bytes) -> None:
        """Write bytes the edge made itself (a policy reject) back to ``origin``."""
        command = Send(origin.interface, origin.transport, origin.address, None)  # type: ignore[arg-type]
        try:
            self._send(command, data)
        except Exception:
            self.counters["internal.error"] += 1
            log.failure("cannot send a policy answer to {destination}", destination=origin.host)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.b2bua.handle_timer(self.clock.seconds())
        except Exception:
            self.counters["internal.error"] += 1
            log.failure("b2bua failed on a timer")
        self._flush()

    # -- outputs ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the B2BUA produced outside an input (after call ticks ended calls)."""
        self._flush()

    def _flush(self) -> None:
        b2bua = self.b2bua
        while b2bua.events:  # security events and call records: structured log lines
            event = b2bua.events.popleft()
            security_log.warn("security event {type}", **event)
        while b2bua.records:
            record = b2bua.records.popleft()
            self.write_record(record)
        gate = self.gate
        changes = b2bua.binding_changes
        while changes:  # registrations for the shared store (nowhere to go without a gate)
            change = changes.popleft()
            if gate is not None:
                try:
                    gate.binding_changed(change)
                except Exception:
                    self.counters["internal.error"] += 1
                    log.failure("publishing a registration change failed")
        while b2bua.policy_events:
            fact = b2bua.policy_events.popleft()
            if gate is not None:
                try:
                    gate.event(fact)
                except Exception:
                    self.counters["internal.error"] += 1
                    log.failure("the rule engine failed on an event")
        try:
            commands = self.b2bua.commands()
        except Exception:
            self.counters["internal.error"] += 1
            log.failure("b2bua failed to hand over its commands")
            commands = []
        failed: list[Send] = []
        for command in commands:
            try:
                if not self._send(command, command.message.to_bytes()):
                    failed.append(command)
            except Exception:
                self.counters["internal.error"] += 1
                log.failure("cannot send to {destination}", destination=command.destination[0])
        if failed:
            now = self.clock.seconds()
            for command in failed:
                try:
                    self.b2bua.send_failed(command, now)
                except Exception:
                    self.counters["internal.error"] += 1
                    log.failure("b2bua failed on a failed send")
            self._flush()  # what the failures produced (a 480, ...); never fails again the same
            return
        self._rearm()

    def connect_failed(self, commands: list[Send]) -> None:
        """The outbound connection these commands waited for could not be made."""
        now = self.clock.seconds()
        for command in commands:
            try:
                self.b2bua.send_failed(command, now)
            except Exception:
                self.counters["internal.error"] += 1
                log.failure("b2bua failed on a failed send")
        self._flush()

    def _send(self, command: Send, data: bytes) -> bool:
        """Write ``data``; False when there is no way to reach the destination now."""
        interface, transport, destination = (command.interface, command.transport,
                                             command.destination)
        if transport.lower() == "udp":
            udp = self.udp.get(interface)
            if udp is None:
                self.counters["driver.no_udp_listener"] += 1
                return False
            udp.write(data, destination)
        else:
            stream = self.streams.get((interface, destination[0], destination[1]))
            if stream is None:
                connector = self.connector
                if connector is not None and connector.knows(interface, transport, destination):
                    connector.send(command, data)  # written once connected, or failed
                    return True
                self.counters["driver.no_connection"] += 1
                return False
            stream.send(data)
        self.counters[f"sent.{interface}"] += 1
        return True

    def _rearm(self) -> None:
        try:
            when = self.b2bua.get_timer()
        except Exception:
            self.counters["internal.error"] += 1
            log.failure("b2bua failed to give its next deadline")
            when = None
        if when == self._timer_at and self._timer is not None and self._timer.active():
            return
        self.stop()
        if when is not None:
            self._timer_at = when
            self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._fire)

    def stop(self) -> None:
        """Cancel the timer (at shutdown)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None


__all__ = ["EXTERNAL", "INTERNAL", "Driver", "b2bua_settings_from"]


def _log_record(record: dict[str, Any]) -> None:
    cdr_log.info("call record", **record)
