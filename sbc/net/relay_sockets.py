"""The relay's packet loop over its sockets, without Twisted: shared by the main process and
the media worker processes.

Every relay socket (an even RTP port and the odd RTCP port above it, per leg and stream) is
registered in one ``select.epoll`` set.  :meth:`RelaySockets.drain` polls that set and handles
every ready socket in a plain loop: one datagram is received straight into the shared packet
buffer (:data:`sbc.media.srtp.PACKET_VIEW`, no allocation), handed to the endpoint's pure
:meth:`~sbc.media.relay.Endpoint.rtp_in` / :meth:`~sbc.media.relay.Endpoint.rtcp_in`, and sent
from the other leg's socket.  The set is level-triggered, so a socket with more queued
datagrams is simply reported again by the next poll, and one busy stream cannot starve the
others.

In the main process the reactor watches the set's descriptor and calls :meth:`drain` without
waiting (:class:`sbc.net.media.MediaLoop`); a worker process blocks in :meth:`drain` itself,
with its control socket in the same set (:mod:`sbc.net.media_worker`).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from sbc.media import srtp
from sbc.media.relay import RTCP_FLAG, Endpoint

log = Logger(namespace="sbc.media")

MAX_EVENTS = 512  # ready sockets handled per inner poll
MAX_POLLS = 8  # inner polls per wake-up before yielding (to signalling, or to control)
SOCKET_BUFFER = 256 * 1024  # bytes: per relay socket, receive and send
# srtp.PACKET_VIEW[:m] for m = 0..MAX_PACKET: what drain sends, without a slice per packet.
PREFIXES = tuple(srtp.PACKET_VIEW[:m] for m in range(srtp.MAX_PACKET + 1))


class RelaySockets:
    """The epoll set of every relay socket and the loop that drains it (module doc)."""

    def __init__(self, counters: Counter[str], clock: Callable[[], float] = time.time) -> None:
        self.counters = counters
        self.clock = clock
        self.poller = select.epoll()
        # fd -> (recvfrom_into of the socket, endpoint, is the RTCP port)
        self.handlers: dict[int, tuple[Callable[..., Any], Endpoint, bool]] = {}
        self.control_fd = -1  # a descriptor in the set that is not a relay socket

    def add(self, sock: socket.socket, endpoint: Endpoint, rtcp: bool) -> None:
        fd = sock.fileno()
        self.handlers[fd] = (sock.recvfrom_into, endpoint, rtcp)
        self.poller.register(fd, select.EPOLLIN)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self.handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self.poller.unregister(fd)

    def attach(self, endpoint: Endpoint, rtp: socket.socket, rtcp: socket.socket,
               port: int = 0) -> None:
        """``endpoint``'s two sockets (``port`` and the one above) deliver to it from now on."""
        endpoint.rtp_sock = rtp
        endpoint.rtcp_sock = rtcp
        self.add(rtp, endpoint, False)
        self.add(rtcp, endpoint, True)

    def detach(self, endpoint: Endpoint) -> None:
        """Out of the set: nothing more reaches ``endpoint`` (its sockets stay open)."""
        for sock in (endpoint.rtp_sock, endpoint.rtcp_sock):
            if sock is not None:
                self.remove(sock)
        endpoint.rtp_sock = endpoint.rtcp_sock = None

    def close(self) -> None:
        self.poller.close()

    def drain(self, timeout: float = 0.0) -> bool:
        """Handle every ready relay socket, one datagram each, for a few polls; the first poll
        waits up to ``timeout`` seconds.  Whether :attr:`control_fd` was ready."""
        view = srtp.PACKET_VIEW
        limit = srtp.MAX_PACKET
        room = limit + 1  # one byte more than any packet: a larger one shows as truncated
        prefix = PREFIXES  # view[:m] for every m, made once: no slice object per packet
        handlers = self.handlers
        poll = self.poller.poll
        control = False
        forwarded = dropped = errors = 0
        for _ in range(MAX_POLLS):
            events = poll(timeout, MAX_EVENTS)
            if not events:
                break
            timeout = 0.0
            now = self.clock()
            for fd, _mask in events:
                try:
                    recv, ep, rtcp = handlers[fd]
                except KeyError:  # not a relay socket (an exception only off the packet path)
                    if fd == self.control_fd:
                        control = True
                    continue
                try:
                    n, addr = recv(view, room)
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
                    sock.sendto(prefix[m], target)
                    forwarded += 1
                except OSError:
                    errors += 1
                except Exception:  # a bug must not stop the relay: count it, keep going
                    self.counters["internal.error"] += 1
                    log.failure("media relay failed on a packet")
            if control:
                break  # set-up first: a new call's commands must not wait behind a flood
        counters = self.counters
        if forwarded:
            counters["media.forwarded"] += forwarded
        if dropped:
            counters["media.dropped"] += dropped
        if errors:
            counters["media.socket_errors"] += errors
        return control


def drain_socket(sock: socket.socket) -> None:
    """Discard every datagram queued on an idle socket (bounded)."""
    for _ in range(1024):
        try:
            sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue  # a queued ICMP error


def bind_udp(address: str, port: int) -> socket.socket:
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
