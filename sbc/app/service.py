"""Composition root: turn a validated :class:`~sbc.config.Config` into listening sockets.

What runs today: every enabled listener of both interfaces (UDP, TCP, TLS) with the SIP parser,
stream framing, keepalives and the stateless core (:mod:`sbc.gateway.stateless`): malformed
traffic gets its 4xx or a counted drop, OPTIONS is answered, other requests get 503 with
Retry-After until the B2BUA lands.  Counters are logged every minute and at shutdown.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from sbc import __version__
from sbc.config import Config
from sbc.errors import ConfigError
from sbc.gateway.stateless import StatelessCore
from sbc.ids import IdSource
from sbc.net.tls import TlsFiles, server_context_factory
from sbc.net.transport import SipDatagramProtocol, SipStreamFactory
from sbc.sip.message import Limits

log = Logger(namespace="sbc.service")

STATS_INTERVAL = 60.0  # seconds between counter log lines


def limits_from(config: Config) -> Limits:
    lc = config.limits
    return Limits(
        max_message_bytes=lc.max_message_bytes,
        max_body_bytes=lc.max_message_bytes,
        max_headers=lc.max_headers,
        max_line_bytes=lc.max_line_bytes,
    )


def start(config: Config, reactor: Any) -> tuple[StatelessCore, list[IListeningPort]]:
    """Open every enabled listener on ``reactor``; returns the core and the ports.

    Raises ConfigError when TLS files are unusable and OSError (``CannotListenError``) when a
    port cannot be bound; nothing is left listening in either case.
    """
    ids = IdSource()
    core = StatelessCore(new_tag=ids.tag, limits=limits_from(config))
    tls_factory = None
    ports: list[IListeningPort] = []
    try:
        for interface in (config.interfaces.external, config.interfaces.internal):
            for listener in interface.listeners():
                if listener.transport == "udp":
                    port = reactor.listenUDP(
                        listener.port, SipDatagramProtocol(core, interface.name),
                        interface=listener.address, maxPacketSize=65535)
                elif listener.transport == "tcp":
                    port = reactor.listenTCP(listener.port, SipStreamFactory(
                        core, interface.name, config.limits.max_buffered_bytes),
                        interface=listener.address)
                else:
                    if tls_factory is None:
                        tls_factory = server_context_factory(_tls_files(config))
                    port = reactor.listenSSL(listener.port, SipStreamFactory(
                        core, interface.name, config.limits.max_buffered_bytes),
                        tls_factory, interface=listener.address)
                ports.append(port)
                log.info("listening: {listener}", listener=str(listener))
    except BaseException:
        for p in ports:
            p.stopListening()
        raise
    return core, ports


def _tls_files(config: Config) -> TlsFiles:
    tls = config.tls
    if tls.certificate is None or tls.private_key is None:
        raise ConfigError("a TLS listener is enabled but tls.certificate/tls.private_key are "
                          "not set", path="tls")
    return TlsFiles(tls.certificate, tls.private_key, tls.ca_bundle,
                    tls.require_client_certificate, tls.min_version)


def run(config: Config) -> int:
    """Start listeners and run the reactor until SIGINT/SIGTERM; the process exit code."""
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    log.info("sbc {version} starting (node {node}, config {source})", version=__version__,
             node=config.node.id, source=config.source)
    try:
        core, _ports = start(config, reactor)
    except ConfigError as e:
        log.error("cannot start: {error}", error=str(e))
        return 2
    except CannotListenError as e:
        log.error("cannot listen on {address}:{port}: {reason}", address=e.interface or "*",
                  port=e.port, reason=str(e.socketError))
        return 1
    log.warn("signalling is answered statelessly in this build: OPTIONS 200, other requests "
             "503 (no B2BUA routing to the PBX yet)")

    def log_counters() -> None:
        if core.counters:
            log.info("counters: {counters}", counters=dict(sorted(core.counters.items())))

    loop = task.LoopingCall(log_counters)
    loop.clock = reactor
    loop.start(STATS_INTERVAL, now=False)
    reactor.addSystemEventTrigger("before", "shutdown", log_counters)
    reactor.run()  # type: ignore[attr-defined]
    return 0
