"""A media worker process: relays the packets of the calls the main process hands it.

With ``media.workers: N`` the main process starts N of these (:mod:`sbc.net.media_workers`),
each owning part of the port range, so the relay uses every core.  A worker is a plain loop, no
reactor: it blocks in :meth:`~sbc.net.relay_sockets.RelaySockets.drain` on the epoll set of its
relay sockets and of its control socket, and runs the same per-packet code as the main process
(:class:`~sbc.media.relay.Endpoint`).

The control socket is one end of an ``AF_UNIX`` ``SOCK_SEQPACKET`` pair made by the main
process before it started this one: it has no name, so no other program can reach it.  Each
message is one :mod:`marshal`-encoded tuple (built-in types only, nothing that runs code when
decoded); the sockets of a new endpoint come with its message as ``SCM_RIGHTS`` descriptors.

From the main process::

    ("add", eid, other_eid, interface, port, max_pps, trusted_host, last_rx)  + 2 descriptors
    ("signal", eid, rtp, rtcp, mux)      ("clock", eid, rate)     ("mux", eid, mux)
    ("rx", eid, crypto, until)           ("tx", eid, crypto)      ("grace", eid, until)
    ("plain", eid)                       ("remove", eid)
    ("mark", eid)                        ("rollback", eid)        ("commit", eid)

``mark`` remembers the endpoint's negotiated state (signalled and latched addresses, latch
flags, ``rtcp-mux``, clock rate, SRTP contexts) before an offer changes it; ``rollback`` restores
it when the offer fails (RFC 3264 8: the session stays as it was), ``commit`` forgets it once an
answer accepted the offer (:meth:`~sbc.media.relay.Endpoint.mark`).

``crypto`` is the ``a=crypto`` value the main process negotiated, so an SRTP key crosses
between the two processes only in its SDP form, and never leaves them.  To the main process, every
:data:`REPORT_INTERVAL` seconds and for the endpoints whose counters moved, and once for each
removed endpoint::

    ("report", {counter: delta}, [(eid, last_rx, stats), ...])
    ("final", eid, stats)

The worker exits when the control socket closes (the main process stopped or died).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from sbc.app.logging import setup_logging
from sbc.media.relay import DROP_REASONS, Endpoint
from sbc.media.sdes import parse_crypto
from sbc.net.relay_sockets import RelaySockets

log = Logger(namespace="sbc.media.worker")

REPORT_INTERVAL = 0.5  # seconds between activity reports
MAX_MESSAGE = 64 * 1024  # bytes: the largest control message either side sends
REPORT_BATCH = 128  # endpoints per report message (well under MAX_MESSAGE)
CONTROL_BUFFER = 4 * 1024 * 1024  # bytes: socket buffers of the control pair
MAX_CONTROL = 4096  # control messages handled per wake-up before packets get a turn


class Worker:
    """The endpoints of one worker process and its loop (module doc)."""

    def __init__(self, control: socket.socket, clock: Callable[[], float] = time.time) -> None:
        self.control = control
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.relay = RelaySockets(self.counters, clock)
        self.relay.control_fd = control.fileno()
        self.relay.poller.register(control.fileno(), select.EPOLLIN)
        self.endpoints: dict[int, Endpoint] = {}
        self.eids: dict[int, int] = {}  # id(endpoint) -> eid
        self.reported: dict[int, int] = {}  # eid -> activity at the last report
        self.running = True

    def run(self) -> None:
        next_report = self.clock() + REPORT_INTERVAL
        while self.running:
            timeout = max(0.0, next_report - self.clock())
            if self.relay.drain(timeout):
                self.handle_control()
            now = self.clock()
            if now >= next_report:
                self.report()
                next_report = now + REPORT_INTERVAL
        self.close()

    # -- commands --------------------------------------------------------------------------

    def handle_control(self) -> None:
        for _ in range(MAX_CONTROL):
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, MAX_MESSAGE, 2)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.error("media worker: control socket failed: {error}", error=str(e))
                self.running = False
                return
            if not data and not fds:
                self.running = False  # the main process closed its end
                return
            try:
                command = marshal.loads(data)
                self.apply(command, fds)
            except Exception:  # a bad command must not stop the relay
                self.counters["media.worker.bad_command"] += 1
                log.failure("media worker: a control command failed")
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def apply(self, command: tuple[Any, ...], fds: list[int]) -> None:
        kind = command[0]
        if kind == "add":
            self._add(command, fds)
            return
        ep = self.endpoints.get(command[1])
        if ep is None:
            self.counters["media.worker.unknown_endpoint"] += 1
            return
        if kind == "signal":
            _, _, rtp, rtcp, mux = command
            ep.signal(rtp, rtcp, mux)
        elif kind == "clock":
            ep.set_clock(command[2])
        elif kind == "mux":
            ep.set_mux(command[2])
        elif kind == "rx":
            ep.install_rx(parse_crypto(command[2]), command[3])
        elif kind == "tx":
            ep.install_tx(parse_crypto(command[2]))
        elif kind == "grace":
            ep.start_grace(command[2])
        elif kind == "plain":
            ep.close()
        elif kind == "mark":
            ep.mark()
        elif kind == "rollback":
            ep.rollback()
        elif kind == "commit":
            ep.commit()
        elif kind == "remove":
            self._remove(command[1], ep)
        else:
            raise ValueError(f"unknown command {kind!r}")

    def _add(self, command: tuple[Any, ...], fds: list[int]) -> None:
        _, eid, other_eid, interface, port, max_pps, trusted_host, last_rx = command
        if len(fds) != 2:
            raise ValueError("an endpoint comes with its two sockets")
        rtp, rtcp = (socket.socket(fileno=fd) for fd in fds)
        for sock in (rtp, rtcp):
            sock.setblocking(False)
        ep = Endpoint(interface)
        ep.port = port
        ep.max_pps = max_pps
        ep.trusted_host = trusted_host
        ep.last_rx = last_rx
        other = self.endpoints.get(other_eid) if other_eid is not None else None
        if other is not None:
            ep.other, other.other = other, ep
        self.endpoints[eid] = ep
        self.eids[id(ep)] = eid
        self.relay.attach(ep, rtp, rtcp)

    def _remove(self, eid: int, ep: Endpoint) -> None:
        self.send(("final", eid, ep.stats()))  # the call record waits for these
        rtp, rtcp = ep.rtp_sock, ep.rtcp_sock
        self.relay.detach(ep)
        for sock in (rtp, rtcp):
            if sock is not None:
                sock.close()  # the main process keeps its own descriptor of the pair
        ep.close()
        if ep.other is not ep:
            ep.other.other = ep.other  # its partner no longer forwards to closed sockets
        del self.endpoints[eid]
        self.eids.pop(id(ep), None)
        self.reported.pop(eid, None)
        self.counters["media.worker.removed"] += 1

    # -- reports ---------------------------------------------------------------------------

    def report(self) -> None:
        """The counters' growth, and the statistics of every endpoint whose counters moved."""
        items: list[tuple[int, float, dict[str, Any]]] = []
        for eid, ep in self.endpoints.items():
            activity = _activity(ep)
            if self.reported.get(eid) != activity:
                self.reported[eid] = activity
                items.append((eid, ep.last_rx, ep.stats()))
        counters = dict(self.counters)
        self.counters.clear()
        if not items and not counters:
            return
        for start in range(0, max(1, len(items)), REPORT_BATCH):
            batch = items[start:start + REPORT_BATCH]
            self.send(("report", counters, batch))
            counters = {}

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.control.send(marshal.dumps(message))
        except BlockingIOError:
            self.counters["media.worker.report_dropped"] += 1  # the main process is behind
        except OSError:
            self.running = False

    def close(self) -> None:
        for ep in list(self.endpoints.values()):
            for sock in (ep.rtp_sock, ep.rtcp_sock):
                if sock is not None:
                    sock.close()
            ep.close()
        self.endpoints.clear()
        self.relay.close()
        self.control.close()


def _activity(ep: Endpoint) -> int:
    """A number that changes whenever one of the endpoint's counters does."""
    total = ep.packets + ep.rtcp_packets + ep.sent
    for reason in DROP_REASONS:
        total += getattr(ep, f"drop_{reason}")
    return total


def main(argv: list[str]) -> int:
    if len(argv) != 4 or not argv[1].isdigit():
        print("usage: python -m sbc.net.media_worker CONTROL_FD LOG_FORMAT LOG_LEVEL",
              file=sys.stderr)
        return 2
    setup_logging(argv[2], argv[3])
    control = socket.socket(fileno=int(argv[1]))
    control.setblocking(False)
    with contextlib.suppress(OSError):
        control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CONTROL_BUFFER)
    # The main process decides when media stops: a Ctrl-C or a service manager's SIGTERM
    # reaches the whole process group, and the worker leaves when its control socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Worker(control).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
