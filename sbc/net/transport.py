"""Twisted edge for SIP transports: UDP datagrams and TCP/TLS streams into the core.

Each protocol hands bytes to the pure core and writes back what it returns.  Nothing here
interprets SIP; a failure inside the core is logged and counted, never allowed to kill the
reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

from sbc.errors import SipParseError
from sbc.gateway.stateless import StatelessCore
from sbc.sip.framing import CRLF_PONG, NEED_DATA, PING, PONG, StreamFramer

log = Logger(namespace="sbc.net")


class SipDatagramProtocol(protocol.DatagramProtocol):
    """SIP over UDP: one datagram, one message."""

    noisy = False

    def __init__(self, core: StatelessCore, interface: str) -> None:
        self.core = core
        self.interface = interface

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802 (Twisted API)
        source = (addr[0], addr[1])
        if data in (b"\r\n\r\n", b"\r\n", b"\x00\x00\x00\x00"):
            self.core.counters["keepalive.udp"] += 1  # NAT keepalives; nothing to answer
            return
        try:
            out = self.core.receive_datagram(data, source)
        except Exception:
            self.core.counters["internal.error"] += 1
            log.failure("core failed on a datagram from {source}", source=source[0])
            return
        if out is not None:
            self.transport.write(out, addr)


class SipStreamProtocol(protocol.Protocol):
    """SIP over TCP or TLS: RFC 3261 18.3 framing, RFC 5626 keepalives, caps on buffering."""

    def __init__(self, core: StatelessCore, interface: str, max_buffered: int) -> None:
        self.core = core
        self.interface = interface
        self.max_buffered = max_buffered
        self.framer = StreamFramer(core.limits)
        self.source: tuple[str, int] = ("", 0)

    def connectionMade(self) -> None:  # noqa: N802
        peer = self.transport.getPeer()
        self.source = (getattr(peer, "host", ""), getattr(peer, "port", 0))

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            self.framer.feed(data)
            if self.framer.buffered > self.max_buffered:
                self.core.counters["stream.overflow"] += 1
                self.transport.abortConnection()
                return
            while True:
                try:
                    ev = self.framer.next_event()
                except SipParseError as err:
                    out = self.core.receive_error(err, self.source)
                    if out is not None:
                        self.transport.write(out)
                    if err.fatal:
                        self.core.counters["stream.framing_lost"] += 1
                        self.transport.loseConnection()
                        return
                    continue
                if ev is NEED_DATA:
                    return
                if ev is PING:
                    self.transport.write(CRLF_PONG)
                    continue
                if ev is PONG:
                    continue
                out = self.core.receive_message(ev, self.source)  # type: ignore[arg-type]
                if out is not None:
                    self.transport.write(out)
        except Exception:
            self.core.counters["internal.error"] += 1
            log.failure("core failed on a stream from {source}", source=self.source[0])
            self.transport.abortConnection()


class SipStreamFactory(protocol.Factory):
    noisy = False

    def __init__(self, core: StatelessCore, interface: str, max_buffered: int) -> None:
        self.core = core
        self.interface = interface
        self.max_buffered = max_buffered

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:  # noqa: N802
        p = SipStreamProtocol(self.core, self.interface, self.max_buffered)
        p.factory = self
        return p
