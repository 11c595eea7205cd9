"""Twisted edge for SIP transports: UDP datagrams and TCP/TLS streams into the core.

Each protocol hands bytes to the pure core and writes back what it returns; with a
:class:`~sbc.net.driver.Driver`, well-formed messages go to the driver instead, which routes them
to the B2BUA or the stateless core and writes the B2BUA's output itself (through the UDP
transport, or a stream protocol registered with it while its connection lives).  Nothing here
interprets SIP; a failure inside the core is logged and counted, never allowed to kill the
reactor.  UDP listeners ask for a large receive buffer (:data:`UDP_RECEIVE_BUFFER`), so a
burst of datagrams waits in the kernel instead of being dropped.

Stream connections are admitted by a shared :class:`~sbc.net.limits.ConnectionGuard` before a
protocol exists: a refused socket gets no protocol, so Twisted closes it straight after accept
and not one byte (nor a TLS handshake) is exchanged.  An admitted connection then lives under
three caps, all timed by the injected clock (``IReactorTime``):

* TLS only: the handshake must finish within ``tls_handshake_timeout``;
* ``idle_timeout``: no bytes received for that long (for TLS: counted from the end of the
  handshake) closes the connection;
* ``max_buffered_bytes``: unparsed input plus output written after the transport said it was
  full (the protocol is registered as a streaming producer, so Twisted's ``pauseProducing``
  tells us the peer is not reading).

Each trip is aborted and counted per source address through the guard.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from sbc.errors import SipParseError
from sbc.gateway.stateless import StatelessCore
from sbc.net import limits as ev
from sbc.net.limits import ConnectionGuard
from sbc.net.tls import PeerIdentity, peer_identity
from sbc.sip.framing import CRLF_PONG, NEED_DATA, PING, PONG, StreamFramer
from sbc.sip.message import parse_message

if TYPE_CHECKING:
    from sbc.net.driver import Driver

log = Logger(namespace="sbc.net")

# Receive buffer asked for on each UDP listener (the kernel caps it at net.core.rmem_max).  The
# default (about 200 KB) holds a few hundred datagrams: at several hundred calls per second,
# any hiccup of the process (a burst, a garbage collection) overflows it, the datagrams are
# dropped, the peers retransmit and calls fail while CPU is still to spare.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


class SipDatagramProtocol(protocol.DatagramProtocol):
    """SIP over UDP: one datagram, one message.

    With a :class:`~sbc.net.driver.Driver`, well-formed messages go through it (it decides
    between the B2BUA and the stateless core); without one, everything is stateless.
    """

    noisy = False

    def __init__(self, core: StatelessCore, interface: str,
                 driver: Driver | None = None) -> None:
        self.core = core
        self.interface = interface
        self.driver = driver

    def startProtocol(self) -> None:  # noqa: N802 (Twisted API)
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            except OSError as e:  # not fatal: the default buffer still works, just smaller
                log.warn("cannot enlarge the UDP receive buffer: {error}", error=e)
        if self.driver is not None:
            self.driver.add_udp(self.interface, self.transport)

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802 (Twisted API)
        source = (addr[0], addr[1])
        driver = self.driver
        gate = driver.gate if driver is not None else None
        if gate is not None and gate.banned(source[0]):
            return  # banned: dropped before parsing (counted by the gate)
        if data in (b"\r\n\r\n", b"\r\n", b"\x00\x00\x00\x00"):
            self.core.counters["keepalive.udp"] += 1  # NAT keepalives; nothing to answer
            return
        try:
            if self.driver is None:
                out = self.core.receive_datagram(data, source)
            else:
                try:
                    msg = parse_message(data, self.core.limits)
                except SipParseError as err:
                    out = self.core.receive_error(err, source)
                    if gate is not None:
                        gate.malformed(source[0], self.interface, "udp", err.message)
                else:
                    out = self.driver.receive(msg, self.interface, "udp", source)
        except Exception:
            self.core.counters["internal.error"] += 1
            log.failure("core failed on a datagram from {source}", source=source[0])
            return
        if out is not None:
            self.transport.write(out, addr)


@implementer(IHandshakeListener, IPushProducer)
class SipStreamProtocol(protocol.Protocol):
    """SIP over TCP or TLS: RFC 3261 18.3 framing, RFC 5626 keepalives, connection caps.

    Built only for admitted connections (see :class:`SipStreamFactory`); releases its slot in
    the guard when the connection is lost.  Over TLS, ``peer_identity`` holds what the client
    certificate says once the handshake is done (``None`` without a client certificate).
    """

    def __init__(self, factory: SipStreamFactory, source: tuple[str, int]) -> None:
        self.factory = factory
        self.core = factory.core
        self.interface = factory.interface
        self.guard = factory.guard
        self.driver = factory.driver
        self.clock = factory.clock
        self.tls = factory.tls
        self.max_buffered = factory.guard.limits.max_buffered_bytes
        self.framer = StreamFramer(self.core.limits)
        self.source = source
        self.peer_identity: PeerIdentity | None = None
        self.handshake_done = not self.tls
        self.last_received = 0.0
        self.unsent = 0  # bytes written since the transport last said it was full
        self.paused = False
        self.closed_by: str | None = None  # the limit event that closed us, if any
        self._timer: IDelayedCall | None = None
        self._lost = False

    # -- connection lifecycle ------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        peer = self.transport.getPeer()
        self.source = (getattr(peer, "host", self.source[0]), getattr(peer, "port", self.source[1]))
        self.last_received = self.clock.seconds()
        self.transport.registerProducer(self, True)
        if self.driver is not None:
            self.driver.stream_made(self.interface, self.source, self)
        if self.tls:
            self._arm(self.guard.limits.tls_handshake_timeout, self._handshake_timed_out)
        else:
            self._arm(self.guard.limits.idle_timeout, self._idle_check)

    def handshakeCompleted(self) -> None:  # noqa: N802 (IHandshakeListener)
        self.handshake_done = True
        cert = None
        get_cert = getattr(self.transport, "getPeerCertificate", None)
        if get_cert is not None:
            try:
                cert = get_cert()
            except SSL.Error:
                cert = None
        if cert is not None:
            try:
                self.peer_identity = peer_identity(cert.to_cryptography())
            except Exception:  # an odd certificate must not kill the connection's reactor turn
                log.failure("cannot read the client certificate of {source}",
                            source=self.source[0])
            else:
                log.debug("tls client {source} presented {names} (serial {serial})",
                          source=self.source[0], names=list(self.peer_identity.names),
                          serial=f"{self.peer_identity.serial:x}")
        self.last_received = self.clock.seconds()
        self._arm(self.guard.limits.idle_timeout, self._idle_check)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        if self._lost:
            return
        self._lost = True
        self._cancel_timer()
        if self.driver is not None:
            self.driver.stream_lost(self.interface, self.source, self)
        if (self.tls and not self.handshake_done and self.closed_by is None
                and reason is not None and reason.check(SSL.Error)):
            self.guard.record(self.source[0], ev.TLS_HANDSHAKE_FAILED)
        self.guard.release(self.source[0])

    # -- timers ----------------------------------------------------------------------------------

    def _arm(self, delay: float, call: Any) -> None:
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, call)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if not self.handshake_done:
            self._close(ev.CLOSED_HANDSHAKE_TIMEOUT)

    def _idle_check(self) -> None:
        # One timer per connection, re-armed lazily: received bytes only stamp last_received,
        # and the timer, when it fires early, sleeps again for what is left.
        self._timer = None
        idle = self.guard.limits.idle_timeout
        left = self.last_received + idle - self.clock.seconds()
        if left > 0:
            self._arm(left, self._idle_check)
        else:
            self._close(ev.CLOSED_IDLE)

    def _close(self, event: str) -> None:
        if self.closed_by is not None or self._lost:
            return
        self.closed_by = event
        self.guard.record(self.source[0], event)
        self._cancel_timer()
        self.transport.abortConnection()

    # -- IPushProducer: the transport tells us when the peer stops reading ----------------------

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        self.unsent = 0

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = False

    def send(self, data: bytes) -> None:
        """Write to the peer, closing the connection if it has stopped reading for too long."""
        if self.closed_by is not None:
            return
        self.transport.write(data)
        if self.paused:
            self.unsent += len(data)
            if self.framer.buffered + self.unsent > self.max_buffered:
                self._close(ev.CLOSED_OUTBOUND_OVERFLOW)

    # -- inbound ---------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.closed_by is not None:
            return
        gate = self.driver.gate if self.driver is not None else None
        if gate is not None and gate.banned(self.source[0]):
            self.transport.abortConnection()  # banned after it connected: cut it off
            return
        self.last_received = self.clock.seconds()
        try:
            self.framer.feed(data)
            if self.framer.buffered + self.unsent > self.max_buffered:
                # Output held for a peer that does not read counts against the same cap; name
                # the overflow after it when there is any, since that peer is the cause.
                self._close(ev.CLOSED_OUTBOUND_OVERFLOW if self.unsent
                            else ev.CLOSED_INBOUND_OVERFLOW)
                return
            while self.closed_by is None:
                try:
                    event = self.framer.next_event()
                except SipParseError as err:
                    out = self.core.receive_error(err, self.source)
                    gate = self.driver.gate if self.driver is not None else None
                    if gate is not None:
                        gate.malformed(self.source[0], self.interface,
                                       "tls" if self.tls else "tcp", err.message)
                    if out is not None:
                        self.send(out)
                    if err.fatal:
                        self.guard.record(self.source[0], ev.CLOSED_FRAMING_LOST)
                        self.transport.loseConnection()
                        return
                    continue
                if event is NEED_DATA:
                    return
                if event is PING:
                    self.send(CRLF_PONG)
                    continue
                if event is PONG:
                    continue
                if self.driver is None:
                    out = self.core.receive_message(event, self.source)  # type: ignore[arg-type]
                else:
                    out = self.driver.receive(event, self.interface,  # type: ignore[arg-type]
                                              "tls" if self.tls else "tcp", self.source)
                if out is not None:
                    self.send(out)
        except Exception:
            self.core.counters["internal.error"] += 1
            log.failure("core failed on a stream from {source}", source=self.source[0])
            self.transport.abortConnection()


class SipStreamFactory(protocol.Factory):
    """Builds :class:`SipStreamProtocol` for admitted connections; ``None`` refuses one.

    Returning ``None`` from ``buildProtocol`` makes Twisted close the accepted socket at once.
    """

    noisy = False

    def __init__(
        self,
        core: StatelessCore,
        interface: str,
        guard: ConnectionGuard,
        clock: IReactorTime,
        *,
        tls: bool = False,
        driver: Driver | None = None,
    ) -> None:
        self.core = core
        self.interface = interface
        self.guard = guard
        self.clock = clock
        self.tls = tls
        self.driver = driver

    def buildProtocol(self, addr: Any) -> SipStreamProtocol | None:  # noqa: N802
        ip = getattr(addr, "host", "")
        port = getattr(addr, "port", 0)
        gate = self.driver.gate if self.driver is not None else None
        if gate is not None and gate.banned(ip):
            return None  # banned: closed before anything is read
        if self.guard.admit(ip, self.clock.seconds()) != ev.ACCEPT:
            return None
        if gate is not None and not gate.connection(ip, self.interface,
                                                    "tls" if self.tls else "tcp"):
            return None  # a connection rule dropped it
        return SipStreamProtocol(self, (ip, port))


class SipTlsFactory(TLSMemoryBIOFactory):
    """TLS around :class:`SipStreamFactory` that keeps a refusal a refusal (no handshake).

    ``contextFactory`` is asked for a fresh ``SSL.Connection`` per accepted socket, which is
    what lets a :class:`~sbc.net.tls.ReloadableServerContext` swap certificates.
    """

    noisy = False

    def __init__(self, context: Any, wrapped: SipStreamFactory, clock: IReactorTime) -> None:
        super().__init__(context, False, wrapped, clock)

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)
