"""Media worker processes, seen from the main process.

One process relays about as many packets as one core allows.  With ``media.workers: N`` the
main process starts N worker processes (:mod:`sbc.net.media_worker`) and splits
``media.port_range`` into N contiguous shares, one per worker.  A call is placed on the worker
with the fewest endpoints when its first stream is set up, and every stream of the call stays
there (a packet arriving on one leg leaves from the other leg's socket, so both must be in the
same process).

The main process keeps everything that is not per packet: the media manager negotiates SDP and
keys as before, binds each pair (so a port taken by another program is skipped at once) and
keeps its own descriptor of it (an idle pair stays bound for reuse, as in the single-process
relay).  :class:`RemoteEndpoint` stands in for the worker's endpoint: its set-up methods record
what the manager reads back and send the same call to the worker, the checkpoint of an offer in
progress included (``mark``, then ``rollback`` if it fails or ``commit`` once answered), so the
worker's endpoint, which holds the latching and the keys, goes back with it.  The worker reports
each endpoint's statistics every :data:`~sbc.net.media_worker.REPORT_INTERVAL` seconds; inactivity,
SRTP authentication storms and the call records use those reports.

A worker that dies is logged, counted (``media.worker.died``) and started again; the calls it
carried lose their media and end by the inactivity timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import marshal
import os
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import error as twisted_error
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import implementer

from sbc.media.relay import Endpoint, MediaSession, PortPool
from sbc.media.sdes import CryptoAttribute
from sbc.net.media import MediaPorts
from sbc.net.media_worker import CONTROL_BUFFER, MAX_MESSAGE

log = Logger(namespace="sbc.media")

RESTART_DELAY = 1.0  # seconds before a dead worker is started again
STOP_TIMEOUT = 2.0  # seconds a worker has to exit once its control socket is closed
MAX_REPORTS = 256  # report messages handled per wake-up
MAX_PENDING = 100_000  # commands waiting for a busy worker before it counts as hung
FINAL_TIMEOUT = 1.0  # seconds a call record waits for its legs' final statistics


class LegStats(dict[str, Any]):
    """One leg's statistics as last reported by its worker; ``final`` once the worker sent
    them for the released endpoint (a call record waits for that, see :class:`RecordHold`)."""

    final = False


class _InWorker:
    """Marks a key that lives in the worker (the endpoint's ``rx``/``tx`` is not ``None``)."""

    def close(self) -> None:
        pass


IN_WORKER = _InWorker()


class RemoteEndpoint(Endpoint):
    """The main process's side of an endpoint relayed by a worker (module doc)."""

    __slots__ = ("eid", "link", "snapshot", "auth_seen")

    def __init__(self, interface: str, session: MediaSession | None = None) -> None:
        super().__init__(interface, session)
        self.eid = 0
        self.link: WorkerLink | None = None
        self.snapshot: LegStats | None = None  # the worker's last statistics
        self.auth_seen = 0

    def _send(self, *command: Any) -> None:
        if self.link is not None:
            self.link.send(command)

    def signal(self, rtp: Any, rtcp: Any, mux: bool) -> None:
        super().signal(rtp, rtcp, mux)
        self._send("signal", self.eid, rtp, rtcp, mux)

    def set_clock(self, rate: int) -> None:
        super().set_clock(rate)
        self._send("clock", self.eid, rate)

    def set_mux(self, mux: bool) -> None:
        super().set_mux(mux)
        self._send("mux", self.eid, mux)

    def install_rx(self, crypto: CryptoAttribute, prev_until: float) -> bool:
        replaced = self.rx is not None
        self.rx = IN_WORKER
        self._send("rx", self.eid, crypto.to_str(), prev_until)
        return replaced

    def install_tx(self, crypto: CryptoAttribute) -> None:
        self.tx = IN_WORKER
        self._send("tx", self.eid, crypto.to_str())

    def start_grace(self, until: float) -> None:
        self._send("grace", self.eid, until)

    def close(self) -> None:
        if self.rx is not None or self.tx is not None:
            self._send("plain", self.eid)
        self.rx = self.rx_prev = self.tx = None

    # The worker's endpoint keeps its own mark (latching happens there): the same three calls.

    def mark(self) -> None:
        super().mark()
        self._send("mark", self.eid)

    def rollback(self) -> None:
        if self.saved is not None:
            super().rollback()
            self._send("rollback", self.eid)

    def commit(self) -> None:
        if self.saved is not None:
            super().commit()
            self._send("commit", self.eid)

    def stats(self) -> dict[str, Any]:
        """The last report (the same object: the worker's final count updates it in place)."""
        if self.snapshot is None:
            self.snapshot = LegStats(super().stats())
        return self.snapshot


class _WorkerProcess(ProcessProtocol):
    def __init__(self, link: WorkerLink) -> None:
        self.link = link

    def processEnded(self, reason: Any) -> None:
        self.link.process_ended(self, reason)


@implementer(IReadDescriptor, IWriteDescriptor)
class WorkerLink:
    """One worker process: its control socket, its endpoints, its restarts.  It is the
    :class:`~sbc.net.media.Relay` of the :class:`~sbc.net.media.MediaPorts` of its share."""

    def __init__(self, index: int, reactor: Any, counters: Counter[str],
                 clock: Callable[[], float] = time.time, *,
                 log_format: str = "text", log_level: str = "info") -> None:
        self.index = index
        self.log_args = [log_format, log_level]
        self.reactor = reactor
        self.counters = counters
        self.clock = clock
        self.endpoints: dict[int, RemoteEndpoint] = {}
        self.released: dict[int, RemoteEndpoint] = {}  # waiting for their final statistics
        self.pending: deque[tuple[bytes, list[int]]] = deque()  # commands the socket refused
        self.on_final: Callable[[], None] | None = None
        self.ids = itertools.count(1)
        self.sock: socket.socket | None = None
        self.process: Any = None
        self.protocol: _WorkerProcess | None = None
        self.stopping = False
        self.restart_call: Any = None

    # -- the process -----------------------------------------------------------------------

    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (parent, child):
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, CONTROL_BUFFER)
        parent.setblocking(False)
        self.protocol = _WorkerProcess(self)
        try:
            self.process = self.reactor.spawnProcess(
                self.protocol, sys.executable,
                [sys.executable, "-m", "sbc.net.media_worker", "3", *self.log_args],
                env=os.environ.copy(),
                childFDs={0: "w", 1: 1, 2: 2, 3: child.fileno()},
            )
        finally:
            child.close()
        self.sock = parent
        self.reactor.addReader(self)
        log.info("media worker {index} started (pid {pid})", index=self.index,
                 pid=self.process.pid)

    def stop(self) -> None:
        """Close the control socket (the worker exits on it); kill it if it lingers."""
        self.stopping = True
        if self.restart_call is not None and self.restart_call.active():
            self.restart_call.cancel()
        self._drop_socket()
        process = self.process
        if process is not None and process.pid is not None:
            def kill() -> None:
                if process.pid is not None:
                    with contextlib.suppress(OSError, twisted_error.ProcessExitedAlready):
                        process.signalProcess("KILL")
            self.reactor.callLater(STOP_TIMEOUT, kill)

    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def process_ended(self, protocol: _WorkerProcess, reason: Any) -> None:
        if protocol is not self.protocol:
            return
        self.process = None
        if self.stopping:
            return
        self.counters["media.worker.died"] += 1
        log.error("media worker {index} ended ({reason}); its calls lose their media; "
                  "starting it again", index=self.index, reason=reason.getErrorMessage())
        self._lost()
        self.restart_call = self.reactor.callLater(RESTART_DELAY, self._restart)

    def _restart(self) -> None:
        self.restart_call = None
        if not self.stopping:
            self.start()

    def _lost(self) -> None:
        """The worker is gone: its endpoints are orphans (their calls end by inactivity)."""
        self._drop_socket()
        for ep in self.endpoints.values():
            ep.link = None
        self.endpoints.clear()
        for ep in self.released.values():
            if ep.snapshot is not None:
                ep.snapshot.final = True
        self.released.clear()
        if self.on_final is not None:
            self.on_final()

    def _drop_socket(self) -> None:
        if self.sock is not None:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
            self.sock.close()
            self.sock = None
        while self.pending:
            _close_all(self.pending.popleft()[1])

    # -- commands --------------------------------------------------------------------------

    def send(self, command: tuple[Any, ...], fds: Sequence[int] = ()) -> None:
        """Send a command; while the worker is busy relaying, commands wait here in order
        (the sockets of a waiting ``add`` are duplicated, so a release meanwhile is safe)."""
        if self.sock is None:
            self.counters["media.worker.command_lost"] += 1
            return
        data = marshal.dumps(command)
        if not self.pending:
            try:
                self._write(data, fds)
                return
            except (BlockingIOError, InterruptedError):
                self.reactor.addWriter(self)
            except OSError as e:
                self._hung(str(e))
                return
        if len(self.pending) >= MAX_PENDING:
            self._hung(f"{MAX_PENDING} commands waiting")
            return
        self.counters["media.worker.command_waited"] += 1
        self.pending.append((data, [os.dup(fd) for fd in fds]))

    def _write(self, data: bytes, fds: Sequence[int]) -> None:
        assert self.sock is not None
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)

    def doWrite(self) -> None:
        """The control socket has room again: the waiting commands, in order."""
        while self.pending and self.sock is not None:
            data, fds = self.pending[0]
            try:
                self._write(data, fds)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._hung(str(e))
                return
            self.pending.popleft()
            _close_all(fds)
        if not self.pending and self.sock is not None:
            self.reactor.removeWriter(self)

    def _hung(self, error: str) -> None:
        # The worker does not take its commands (it is stuck, or its socket broke).
        self.counters["media.worker.command_lost"] += 1
        log.error("media worker {index} does not take commands ({error}); restarting it",
                  index=self.index, error=error)
        self._kill()

    def _kill(self) -> None:
        process = self.process
        self._lost()
        if process is not None and process.pid is not None:
            with contextlib.suppress(OSError, twisted_error.ProcessExitedAlready):
                process.signalProcess("KILL")

    # Relay
    def attach(self, endpoint: Endpoint, rtp: socket.socket, rtcp: socket.socket,
               port: int) -> None:
        assert isinstance(endpoint, RemoteEndpoint)
        endpoint.rtp_sock = rtp
        endpoint.rtcp_sock = rtcp
        if self.sock is None:  # between a crash and the restart: no media for this call
            self.counters["media.worker.command_lost"] += 1
            return
        eid = next(self.ids)
        endpoint.eid = eid
        endpoint.link = self
        self.endpoints[eid] = endpoint
        other = endpoint.other
        other_eid = (other.eid if isinstance(other, RemoteEndpoint) and other.link is self
                     else None)
        self.send(("add", eid, other_eid, endpoint.interface, port, endpoint.max_pps,
                   endpoint.trusted_host, endpoint.last_rx), (rtp.fileno(), rtcp.fileno()))

    def detach(self, endpoint: Endpoint) -> None:
        assert isinstance(endpoint, RemoteEndpoint)
        if endpoint.link is self and self.endpoints.pop(endpoint.eid, None) is not None:
            self.released[endpoint.eid] = endpoint  # until its final statistics arrive
            endpoint.stats()
            self.send(("remove", endpoint.eid))
        elif endpoint.snapshot is not None:
            endpoint.snapshot.final = True  # no worker to ask: the last report is all there is
        endpoint.link = None
        endpoint.rtp_sock = endpoint.rtcp_sock = None

    # -- reports (IReadDescriptor) ---------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return f"media-worker-{self.index}"

    def connectionLost(self, reason: object) -> None:
        pass

    def doRead(self) -> None:
        for _ in range(MAX_REPORTS):
            sock = self.sock
            if sock is None:
                return
            try:
                data = sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the worker closed its end: processEnded follows
                self._drop_socket()
                return
            try:
                self._report(marshal.loads(data))
            except Exception:
                self.counters["internal.error"] += 1
                log.failure("media worker {index} sent a report that cannot be read",
                            index=self.index)

    def _report(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "final":
            _, eid, stats = message
            ep = self.released.pop(eid, None)
            if ep is not None and ep.snapshot is not None:
                self._account(ep, stats)
                ep.snapshot.clear()
                ep.snapshot.update(stats)
                ep.snapshot.final = True
                if self.on_final is not None:
                    self.on_final()
            return
        if kind != "report":
            raise ValueError(f"unexpected message {kind!r}")
        _, counters, items = message
        for name, value in counters.items():
            self.counters[name] += value
        for eid, last_rx, stats in items:
            ep = self.endpoints.get(eid)
            if ep is None:
                continue  # released since
            ep.last_rx = last_rx
            ep.snapshot = LegStats(stats)
            self._account(ep, stats)

    @staticmethod
    def _account(ep: RemoteEndpoint, stats: dict[str, Any]) -> None:
        """The session's SRTP authentication failures grow by what the worker counted."""
        auth = stats["drops"].get("auth", 0)
        if auth > ep.auth_seen and ep.session is not None:
            ep.session.auth_failures += auth - ep.auth_seen
        ep.auth_seen = auth
        ep.auth_sources = stats["auth_failure_sources"] or None


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class WorkerPorts:
    """The :class:`~sbc.media.relay.PortAllocator` over the workers' shares: a call's first
    stream goes to the least loaded worker, its other streams follow it (module doc)."""

    def __init__(self, shards: Sequence[MediaPorts]) -> None:
        self.shards = list(shards)
        self.owner: dict[Endpoint, int] = {}

    def allocate(self, interface: str, endpoint: Endpoint) -> int | None:
        session = endpoint.session
        if session is not None and session.shard >= 0:
            order = [session.shard]
        else:
            order = sorted(range(len(self.shards)), key=lambda i: len(self.shards[i].taken))
        for shard in order:
            port = self.shards[shard].allocate(interface, endpoint)
            if port is not None:
                if session is not None:
                    session.shard = shard
                self.owner[endpoint] = shard
                return port
        return None

    def release(self, endpoint: Endpoint) -> None:
        shard = self.owner.pop(endpoint, None)
        if shard is not None:
            self.shards[shard].release(endpoint)

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


class RecordHold:
    """Call records wait here, in order, until the workers' final statistics of their legs
    arrived (normally within a millisecond), or :data:`FINAL_TIMEOUT` seconds at most."""

    def __init__(self, reactor: Any, write: Callable[[dict[str, Any]], None],
                 clock: Callable[[], float]) -> None:
        self.reactor = reactor
        self.write = write
        self.clock = clock
        self.held: deque[tuple[float, dict[str, Any]]] = deque()
        self.timer: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        self.held.append((self.clock() + FINAL_TIMEOUT, record))
        self.flush()

    def flush(self) -> None:
        now = self.clock()
        while self.held:
            deadline, record = self.held[0]
            if now < deadline and not _final(record):
                break
            self.held.popleft()
            self.write(record)
        if self.held and (self.timer is None or not self.timer.active()):
            self.timer = self.reactor.callLater(max(0.0, self.held[0][0] - now), self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.flush()


def _final(record: dict[str, Any]) -> bool:
    media = record.get("media")
    if not isinstance(media, dict):
        return True
    for stream in media.get("streams", ()):
        for leg in ("a", "b"):
            stats = stream.get(leg)
            if isinstance(stats, LegStats) and not stats.final:
                return False
    return True


def split_range(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """``start``-``end`` as ``parts`` contiguous shares of whole port pairs (even RTP port, odd
    RTCP port), each as (first RTP port, last port); the first shares take the remainder."""
    first = start + (start % 2)
    pairs = list(range(first, end, 2))
    if parts < 1 or len(pairs) < parts:
        raise ValueError(f"{len(pairs)} port pairs cannot be split into {parts} shares")
    size, extra = divmod(len(pairs), parts)
    out = []
    i = 0
    for part in range(parts):
        n = size + (1 if part < extra else 0)
        out.append((pairs[i], pairs[i + n - 1] + 1))
        i += n
    return out


def start_workers(count: int, reactor: Any, counters: Counter[str], pool_start: int,
                  pool_end: int, addresses: dict[str, str], clock: Callable[[], float], *,
                  max_idle: int, log_format: str = "text", log_level: str = "info"
                  ) -> tuple[list[WorkerLink], WorkerPorts]:
    """``count`` worker processes, each with its share of the port range."""
    links: list[WorkerLink] = []
    shards: list[MediaPorts] = []
    keys = sorted(set(addresses.values()))
    for index, (lo, hi) in enumerate(split_range(pool_start, pool_end, count)):
        link = WorkerLink(index, reactor, counters, clock, log_format=log_format,
                          log_level=log_level)
        link.start()
        links.append(link)
        shards.append(MediaPorts(link, PortPool(lo, hi, keys), addresses, clock,
                                 max_idle=max_idle // count))
    return links, WorkerPorts(shards)
