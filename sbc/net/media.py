"""The media relay's sockets in the main process: port pairs bound on demand, drained from the
reactor.

:class:`MediaLoop` is the :class:`~sbc.net.relay_sockets.RelaySockets` set whose descriptor the
Twisted reactor watches: when any relay socket is readable the reactor calls
:meth:`MediaLoop.doRead` once, which drains the set without blocking.  Going through the
reactor per socket would cost a logging context and several calls per packet; the inner set
costs one tuple per ready socket.

:class:`MediaPorts` is the :class:`~sbc.media.relay.PortAllocator` the media manager uses: it
takes a pair from the :class:`~sbc.media.relay.PortPool` and binds both sockets (a pair taken
by another program is skipped), and hands them to its relay: the main process's
:class:`MediaLoop`, or a media worker process (:mod:`sbc.net.media_workers`).  On release the
pair leaves the relay's set, which discards nothing still queued for the old call until the
next call drains it; the pair then waits out the pool's quarantine before reuse.
"""

from __future__ import annotations

import errno
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from sbc.media.relay import Endpoint, PortPool
from sbc.net.relay_sockets import RelaySockets, bind_udp, drain_socket

log = Logger(namespace="sbc.media")

MAX_IDLE_PAIRS = 4096  # released pairs kept bound for reuse (8192 descriptors at most)
BIND_ATTEMPTS = 512  # pairs tried per allocation when ports are taken by other programs


class Relay(Protocol):
    """Where bound pairs go: the main process's loop or a worker process's link."""

    counters: Counter[str]

    def attach(self, endpoint: Endpoint, rtp: socket.socket, rtcp: socket.socket,
               port: int) -> None: ...

    def detach(self, endpoint: Endpoint) -> None: ...


@implementer(IReadDescriptor)
class MediaLoop(RelaySockets):
    """The relay sockets of the main process, drained from the reactor (module doc)."""

    def __init__(self, reactor: Any, counters: Counter[str],
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(counters, clock)
        self.reactor = reactor
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.reactor.addReader(self)

    def stop(self) -> None:
        if self.started:
            self.started = False
            self.reactor.removeReader(self)
        self.close()

    def attach(self, endpoint: Endpoint, rtp: socket.socket, rtcp: socket.socket,
               port: int = 0) -> None:
        super().attach(endpoint, rtp, rtcp, port)
        self.start()

    # IReadDescriptor
    def fileno(self) -> int:
        return self.poller.fileno()

    def logPrefix(self) -> str:
        return "media"

    def connectionLost(self, reason: object) -> None:
        pass

    def doRead(self) -> None:
        self.drain(0.0)


class MediaPorts:
    """Binds relay port pairs for the media manager (see the module docstring)."""

    def __init__(self, loop: Relay, pool: PortPool, addresses: dict[str, str],
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
                drain_socket(rtp)  # what came for the previous call in its quarantine
                drain_socket(rtcp)
                self._attach(endpoint, rtp, rtcp, address, port)
                return port
            try:
                rtp = bind_udp(address, port)
            except OSError as e:
                self._busy(address, port, now, e)
                continue
            try:
                rtcp = bind_udp(address, port + 1)
            except OSError as e:
                rtp.close()
                self._busy(address, port, now, e)
                continue
            self._attach(endpoint, rtp, rtcp, address, port)
            return port
        return None

    def _attach(self, endpoint: Endpoint, rtp: socket.socket, rtcp: socket.socket,
                address: str, port: int) -> None:
        self.taken[endpoint] = (address, port)
        self.loop.attach(endpoint, rtp, rtcp, port)

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
        self.loop.detach(endpoint)  # out of the relay: nothing reaches the old call
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
