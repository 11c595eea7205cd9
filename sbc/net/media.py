"""The media relay's sockets: port pairs bound on demand, drained in one tight loop.

Every relay socket (an even RTP port and the odd RTCP port above it, per leg and stream) is
registered in one ``select.epoll`` set of our own, and that set's descriptor is what the
Twisted reactor watches.  When any relay socket is readable the reactor calls
:meth:`MediaLoop.doRead` once, which polls the inner set without blocking and handles every
ready socket in a plain loop: one datagram is received straight into the shared packet buffer
(:data:`sbc.media.srtp.PACKET_VIEW`, no allocation), handed to the endpoint's pure
:meth:`~sbc.media.relay.Endpoint.rtp_in` / :meth:`~sbc.media.relay.Endpoint.rtcp_in`, and sent
from the other leg's socket.  Going through the reactor per socket would cost a logging
context and several calls per packet; the inner set costs one tuple per ready socket.  The
inner set is level-triggered, so a socket with more queued datagrams is simply reported again
by the next poll, and one busy stream cannot starve the others.

:class:`MediaPorts` is the :class:`~sbc.media.relay.PortAllocator` the media manager uses: it
takes a pair from the :class:`~sbc.media.relay.PortPool` and binds both sockets (a pair taken
by another program is skipped), and on release closes them, which discards whatever was still
queued for the old call; the pair then waits out the pool's quarantine before reuse.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from sbc.media import srtp
from sbc.media.relay import RTCP_FLAG, Endpoint, PortPool

log = Logger(namespace="sbc.media")

MAX_EVENTS = 512  # ready sockets handled per inner poll
MAX_POLLS = 8  # inner polls per reactor wake-up before yielding to signalling
SOCKET_BUFFER = 256 * 1024  # bytes: per relay socket, receive and send
MAX_IDLE_PAIRS = 4096  # released pairs kept bound for reuse (8192 descriptors at most)
BIND_ATTEMPTS = 512  # pairs tried per allocation when ports are taken by other programs


@implementer(IReadDescriptor)
class MediaLoop:
    """The inner epoll set of every relay socket, drained from the reactor (module doc)."""

    def __init__(self, reactor: Any, counters: Counter[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.reactor = reactor
        self.counters = counters
        self.clock = clock
        self.poller = select.epoll()
        # fd -> (recvfrom_into of the socket, endpoint, is the RTCP port)
        self.handlers: dict[int, tuple[Callable[..., Any], Endpoint, bool]] = {}
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.reactor.addReader(self)

    def stop(self) -> None:
        if self.started:
            self.started = False
            self.reactor.removeReader(self)
        self.poller.close()

    # IReadDescriptor
    def fileno(self) -> int:
        return self.poller.fileno()

    def logPrefix(self) -> str:
        return "media"

    def connectionLost(self, reason: object) -> None:
        pass

    def add(self, sock: socket.socket, endpoint: Endpoint, rtcp: bool) -> None:
        fd = sock.fileno()
        self.handlers[fd] = (sock.recvfrom_into, endpoint, rtcp)
        self.poller.register(fd, select.EPOLLIN)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self.handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self.poller.unregister(fd)

    def doRead(self) -> None:
        """Handle every ready relay socket, one datagram each, for a few polls."""
        view = srtp.PACKET_VIEW
        limit = srtp.MAX_PACKET
        handlers = self.handlers
        poll = self.poller.poll
        forwarded = dropped = errors = 0
        for _ in range(MAX_POLLS):
            events = poll(0, MAX_EVENTS)
            if not events:
                break
            now = self.clock()
            for fd, _mask in events:
                handler = handlers.get(fd)
                if handler is None:
                    continue
                recv, ep, rtcp = handler
                try:
                    n, addr = recv(view, limit + 1)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # an ICMP error queued on the socket (port unreachable)
                    errors += 1
                    continue
                if n > limit:  # larger than any packet we can re-encrypt: truncated
                    ep.drop_malformed += 1
                    dropped += 1
                    continue
                try:
                    if rtcp:
                        m = ep.rtcp_in(n, addr, now)
                        if m < 0:
                            dropped += 1
                            continue
                        other = ep.other
                        target = other.rtcp_target()
                        sock = other.rtp_sock if other.mux else other.rtcp_sock
                    else:
                        m = ep.rtp_in(n, addr, now)
                        if m < 0:
                            dropped += 1
                            continue
                        other = ep.other
                        if m >= RTCP_FLAG:
                            m -= RTCP_FLAG
                            target = other.rtcp_target()
                            sock = other.rtp_sock if other.mux else other.rtcp_sock
                        else:
                            target = other.remote_rtp
                            sock = other.rtp_sock
                    sock.sendto(view[:m], target)
                    forwarded += 1
                except OSError:
                    errors += 1
                except Exception:  # a bug must not stop the relay: count it, keep going
                    self.counters["internal.error"] += 1
                    log.failure("media relay failed on a packet")
        counters = self.counters
        if forwarded:
            counters["media.forwarded"] += forwarded
        if dropped:
            counters["media.dropped"] += dropped
        if errors:
            counters["media.socket_errors"] += errors


class MediaPorts:
    """Binds relay port pairs for the media manager (see the module docstring)."""

    def __init__(self, loop: MediaLoop, pool: PortPool, addresses: dict[str, str],
                 clock: Callable[[], float] = time.time, *, max_idle: int = MAX_IDLE_PAIRS
                 ) -> None:
        self.loop = loop
        self.max_idle = max_idle
        self.pool = pool
        self.addresses = addresses  # interface -> bind address
        self.clock = clock
        self.taken: dict[Endpoint, tuple[str, int]] = {}
        # Released pairs whose sockets stay bound (out of the poll set) for the next call on
        # that port: binding costs four system calls per socket, a reused pair one drain.
        self.idle: dict[tuple[str, int], tuple[socket.socket, socket.socket]] = {}

    def allocate(self, interface: str, endpoint: Endpoint) -> int | None:
        # The pool is per bind address: two interfaces on one address share its ports.
        address = self.addresses[interface]
        now = self.clock()
        for _ in range(BIND_ATTEMPTS):
            port = self.pool.take(address, now)
            if port is None:
                return None
            kept = self.idle.pop((address, port), None)
            if kept is not None:
                rtp, rtcp = kept
                _drain(rtp)  # what came for the previous call after its quarantine began
                _drain(rtcp)
                self._attach(endpoint, rtp, rtcp, address, port)
                return port
            try:
                rtp = _bind(address, port)
            except OSError as e:
                self._busy(address, port, now, e)
                continue
            try:
                rtcp = _bind(address, port + 1)
            except OSError as e:
                rtp.close()
                self._busy(address, port, now, e)
                continue
            self._attach(endpoint, rtp, rtcp, address, port)
            return port
        return None

    def _attach(self, endpoint: Endpoint, rtp: socket.socket, rtcp: socket.socket,
                address: str, port: int) -> None:
        endpoint.rtp_sock = rtp
        endpoint.rtcp_sock = rtcp
        self.loop.add(rtp, endpoint, False)
        self.loop.add(rtcp, endpoint, True)
        self.taken[endpoint] = (address, port)
        self.loop.start()

    def _busy(self, address: str, port: int, now: float, error: OSError) -> None:
        """A pair another program holds: back to the pool (tried again after others)."""
        self.loop.counters["media.port_busy"] += 1
        if error.errno not in (errno.EADDRINUSE, errno.EACCES):
            log.warn("cannot bind media port {port}: {error}", port=port, error=str(error))
        self.pool.put(address, port, now)

    def release(self, endpoint: Endpoint) -> None:
        found = self.taken.pop(endpoint, None)
        if found is None:
            return
        address, port = found
        rtp, rtcp = endpoint.rtp_sock, endpoint.rtcp_sock
        endpoint.rtp_sock = endpoint.rtcp_sock = None
        for sock in (rtp, rtcp):
            if sock is not None:
                self.loop.remove(sock)  # out of the poll set: nothing reaches the old call
        if rtp is not None and rtcp is not None and len(self.idle) < self.max_idle:
            self.idle[(address, port)] = (rtp, rtcp)
        else:
            for sock in (rtp, rtcp):
                if sock is not None:
                    sock.close()
        self.pool.put(address, port, self.clock())

    def close(self) -> None:
        for pair in self.idle.values():
            for sock in pair:
                sock.close()
        self.idle.clear()


def _drain(sock: socket.socket) -> None:
    """Discard every datagram queued on an idle socket (bounded)."""
    for _ in range(1024):
        try:
            sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue  # a queued ICMP error


def _bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock
