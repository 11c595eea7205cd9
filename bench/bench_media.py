#!/usr/bin/env python3
"""Media benchmark: the most 20 ms RTP/SRTP packets per second a relay forwards with <0.1% loss.

N concurrent calls' worth of media goes through a relay on 127.0.0.1: each call is two streams,
the caller's (UAC socket -> relay external port -> PBX socket) and the PBX's (PBX socket ->
relay internal port -> UAC socket), 50 packets a second each (172-byte RTP: 12-byte header, PT 0,
160 bytes of payload; SRTP adds the 10-byte AES_CM_128_HMAC_SHA1_80 tag), so a step of N calls
offers N x 100 packets a second.  The rate is doubled from ``--start-calls`` until a step loses
0.1% or more, counting packets later than ``--late-ms`` as lost, or builds a growing backlog
(the relay's socket buffers hold seconds of 50 pps streams, so an overloaded relay is late long
before it drops), or the generator cannot keep pace; then narrowed by bisection, like
bench_signalling.  Then one step at ~80% of the maximum gives the added latency.

Targets, measured in the same run, with the same generator:

* generator ceiling: the generator looped back to its own sinks (no relay), so that one can
  tell when the generator, not the relay, is the limit;
* floor: bench/media_floor.py, a plain Python selectors relay loop (recvfrom + sendto, one
  process; with pylibsrtp unprotect/protect in the SRTP modes);
* sbc: ``sbc run -c CFG`` with the media relay, calls set up over SIP/UDP by a small UAC
  (external side) and UAS (the PBX), keys taken from the SDPs.

Modes: ``rtp-rtp`` (plain both sides), ``srtp-rtp`` (SRTP outside, RTP to the PBX),
``srtp-srtp`` (SRTP on both legs, the SBC's own keys inside).

``--chain K`` (rtp-rtp, sbc targets only): each generated stream crosses the SBC K times, so the
generator spends 1/K of its CPU per relayed packet and the relay can be given (a share of) every
core.  A chain is K real SBC calls c_1..c_K: the PBX answers c_i (i < K) with c_{i+1}'s external
relay address instead of its own socket, so the caller's packets go c_1.ext -> c_1 internal ->
c_2.ext -> ... -> c_K's PBX socket, and back the same way.  The calls are set up from c_K down
to c_1 (each answer needs the next call's address) and every new chain is probed once, caller
to PBX first, so that each hop latches onto the previous one.  A step of N chains offers N x 100
packets/s and the relay forwards K times that: maxima, the CPU per packet (relay CPU over
received x K) and the rtpengine comparison are per relayed packet; latency is end to end over
K hops.  The floor and the ceiling keep one hop.

The generator is bench/rtpload.c, compiled with ``gcc -O2`` into a temporary directory at each
run; it is pinned to ``--gen-cpu`` (busy-polling) and the relay process(es) to the other CPUs
with taskset.  SRTP packets are encrypted beforehand here (pylibsrtp) into a file the generator
maps: about calls x streams x 50 x duration x 184 bytes (2500 calls x 2 x 50 x 4 s = 184 MB),
capped at ``--max-packet-mb``.  Per target it reports the maximum packets/s, the relay's CPU per
packet (utime + stime from /proc over the steps that passed, divided by the packets delivered),
latency p50/p99 (kernel receive time stamp at the sink minus the time before sendto), the ratio
to the floor and, for rtp-rtp and srtp-rtp, the per-packet cost against rtpengine 10.5
(userspace) on a comparable 2-core machine.  Figures, never pass/fail.

    python bench/bench_media.py [--mode rtp-rtp|srtp-rtp|srtp-srtp|all]
                                [--target all|floor|sbc|ceiling] [--duration 3] [--workers N]
                                [--chain K] [--json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import random
import re
import resource
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pylibsrtp
from bench_signalling import sbc_command, wait_ready  # bench/ is on sys.path when run

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PPS_PER_STREAM = 50  # 20 ms packetization
STREAMS_PER_CALL = 2  # one each way
RTP_LEN = 172
PAYLOAD = b"\xd5" * 160  # what rtpload.c sends
LOSS_BAR = 0.001  # under 0.1% lost
PACE_BAR = 0.98  # a step where the generator sent less than this share of its schedule is void
LATENCY_SHARE = 0.8  # latency is reported at this share of the maximum
# A relay that cannot keep up builds a backlog in its socket buffers (seconds of 50 pps streams)
# long before it drops: the median latency of the last quarter of a step may exceed that of the
# first quarter by at most this much (a 1% overload over a 3 s step adds about 15 ms).
GROWTH_BAR_US = 5000
NOISE_SHARE = 0.02  # a step is NOISY when other processes used this share of a relay/gen CPU
# UAC/PBX media sockets: below the ephemeral range, outside RELAY_PORTS and the SBC's default
# media.port_range (20000-29999, which SBCs started by tests may be using meanwhile).
GEN_PORTS = (10000, 20000)
SIP_PORTS = (9000, 10000)
RELAY_PORTS = (30000, 39999)  # media.port_range of the SBC under test
SBC_PORTS_PER_CALL = 4  # RTP + RTCP on each leg: 10000 ports are 2500 calls
SUITES = {  # RFC 4568 suite -> (pylibsrtp profile, auth tag bytes)
    "AES_CM_128_HMAC_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 10),
    "AES_CM_128_HMAC_SHA1_32": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 4),
}
REFERENCE = {  # rtpengine 10.5, userspace forwarding, 2-core machine (from the issue)
    "rtp-rtp": {"pps": 175_000, "cpu_us_per_packet": 7.7},
    "srtp-rtp": {"pps": 152_000, "cpu_us_per_packet": 9.0},
}
GOAL_COST_RATIO = 1.5
RTP_HEADER = struct.Struct("!BBHII")


class BenchError(Exception):
    """A failure reported in one line (the target is skipped), not a traceback."""


@dataclass(frozen=True)
class Mode:
    name: str
    ext_srtp: bool  # caller <-> relay
    int_srtp: bool  # relay <-> PBX


MODES = {m.name: m for m in (Mode("rtp-rtp", False, False), Mode("srtp-rtp", True, False),
                             Mode("srtp-srtp", True, True))}


# --------------------------------------------------------------------------------------------
# Streams and the generator


class Stream:
    """One direction of a call: sent from ``src`` to ``dst``, expected back at ``sink``.

    ``send_key``/``suite``: the key the sender encrypts with (None: plain RTP).  ``recv_key``/
    ``recv_suite``: the key the relay encrypts with towards ``sink`` (None: plain RTP arrives).
    Sequence number, timestamp and SRTP state carry over from one step to the next (the SBC's
    calls live through several steps)."""

    def __init__(self, src: socket.socket, sink: socket.socket, dst: tuple[str, int],
                 send_key: bytes | None = None, suite: str = "AES_CM_128_HMAC_SHA1_80",
                 recv_key: bytes | None = None, recv_suite: str = "AES_CM_128_HMAC_SHA1_80"):
        self.src, self.sink, self.dst = src, sink, dst
        self.send_key, self.suite = send_key, suite
        self.recv_key, self.recv_suite = recv_key, recv_suite
        self.ssrc = random.getrandbits(32)
        self.seq = random.randrange(1000)  # no 16-bit wrap (ROC) within a run
        self.ts = random.getrandbits(31)
        self._session: pylibsrtp.Session | None = None

    @property
    def expect_len(self) -> int:
        return RTP_LEN + (SUITES[self.recv_suite][1] if self.recv_key else 0)

    def rtp(self, k: int = 0) -> bytes:
        return RTP_HEADER.pack(0x80, 0, (self.seq + k) & 0xFFFF,
                               (self.ts + 160 * k) & 0xFFFFFFFF, self.ssrc) + PAYLOAD

    def take(self, count: int) -> Iterator[tuple[bytes, bytes]]:
        """The next ``count`` packets as (plain RTP, wire bytes); advances the stream."""
        if self.send_key is not None and self._session is None:
            self._session = pylibsrtp.Session(pylibsrtp.Policy(
                key=self.send_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=SUITES[self.suite][0]))
        protect = self._session.protect if self._session is not None else None
        for _ in range(count):
            plain = self.rtp()
            self.seq += 1
            self.ts += 160
            yield plain, (protect(plain) if protect else plain)

    def skip(self, count: int) -> None:
        self.seq += count
        self.ts += 160 * count


@dataclass
class MediaCall:
    """The two media sockets of a call and its two streams."""

    a_sock: socket.socket  # the caller's (UAC) media socket
    u_sock: socket.socket  # the PBX's (UAS) media socket
    out: Stream  # UAC -> relay external port -> UAS
    back: Stream  # UAS -> relay internal port -> UAC


class PortPool:
    """Bound UDP sockets on 127.0.0.1 from a fixed range, skipping ports in use."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high, self.cursor = low, high, low

    def take(self) -> socket.socket:
        for _ in range(self.high - self.low):  # bounded: one pass over the range
            port = self.cursor
            self.cursor = self.low if self.cursor + 1 >= self.high else self.cursor + 1
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                s.close()
                if e.errno == errno.EADDRINUSE:
                    continue
                raise
            return s
        raise BenchError(f"no free UDP port left in {self.low}..{self.high - 1}")

    def port(self) -> int:
        """A port free now (for a listener another process binds)."""
        s = self.take()
        port = s.getsockname()[1]
        s.close()
        return port


def new_key() -> bytes:
    return os.urandom(30)  # AES-128 master key (16) + salt (14)


class Generator:
    """bench/rtpload.c, compiled for this run."""

    def __init__(self, workdir: Path, cpu: int, max_packet_mb: int, late_ms: float) -> None:
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise SystemExit("gcc is needed to build bench/rtpload.c")
        self.binary = workdir / "rtpload"
        build = subprocess.run([gcc, "-O2", "-Wall", "-o", str(self.binary),
                                str(HERE / "rtpload.c")], capture_output=True, text=True,
                               timeout=120)
        if build.returncode != 0:
            raise SystemExit("building rtpload.c failed:\n" + build.stderr)
        self.workdir, self.cpu, self.max_packet_bytes = workdir, cpu, max_packet_mb << 20
        self.late_ms = late_ms

    def prepare(self, streams: list[Stream], duration: float) -> tuple[list[str], list[int]]:
        """Write the plan and the SRTP packets of one step; the command and fds to run it."""
        npkt = round(PPS_PER_STREAM * duration)
        srtp = sum(1 for s in streams if s.send_key is not None)
        size = srtp * npkt * (RTP_LEN + 12)
        if size > self.max_packet_bytes:
            raise BenchError(f"{size >> 20} MB of SRTP packets exceed --max-packet-mb "
                             f"{self.max_packet_bytes >> 20}: shorten --duration")
        ids: dict[int, int] = {}
        lines = ["# rtpload plan, written by bench_media.py"]
        for s in streams:
            for sock in (s.src, s.sink):
                if sock.fileno() not in ids:
                    ids[sock.fileno()] = len(ids)
                    lines.append(f"sock {ids[sock.fileno()]} fd {sock.fileno()}")
        plan, packets = self.workdir / "plan.txt", self.workdir / "packets.bin"
        with packets.open("wb") as f:
            for s in streams:
                seq0, ts0 = s.seq & 0xFFFF, s.ts & 0xFFFFFFFF
                if s.send_key is None:
                    offset = -1
                    s.skip(npkt)
                else:
                    offset = f.tell()
                    f.write(b"".join(struct.pack("<H", len(w)) + w for _, w in s.take(npkt)))
                lines.append(f"stream {ids[s.src.fileno()]} {s.dst[0]} {s.dst[1]} "
                             f"{ids[s.sink.fileno()]} {s.ssrc} {seq0} {ts0} {s.expect_len} "
                             f"{offset}")
        plan.write_text("\n".join(lines) + "\n")
        # The generator sends round(50 x duration) per stream: give it exactly npkt / 50.
        cmd = [str(self.binary), "--plan", str(plan), "--duration", repr(npkt / PPS_PER_STREAM),
               "--cpu", str(self.cpu), "--pps-per-stream", str(PPS_PER_STREAM),
               "--late-ms", str(self.late_ms)]
        if srtp:
            cmd += ["--packets", str(packets)]
        return cmd, list(ids)

    def run(self, prepared: tuple[list[str], list[int]], duration: float) -> dict[str, object]:
        cmd, fds = prepared
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, pass_fds=fds,
                                  timeout=duration + 60)
        finally:
            (self.workdir / "packets.bin").unlink(missing_ok=True)
        if done.returncode != 0:
            raise BenchError(f"rtpload failed: {done.stderr.strip()}")
        return json.loads(done.stdout)


# --------------------------------------------------------------------------------------------
# /proc readings


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def process_tree(root: int) -> set[int]:
    """``root`` and its live descendants (media worker processes)."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(entry.name)] = int(stat[1])
    wanted, frontier = {root}, [root]
    while frontier:  # bounded by the number of processes
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in wanted:
                wanted.add(child)
                frontier.append(child)
    return wanted


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and its live descendants."""
    return sum(cpu_seconds(p) for p in process_tree(root))


def udp_drops(inodes: set[int]) -> int:
    """Datagrams dropped so far by the IPv4 UDP sockets with these inodes (/proc/net/udp)."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[9]) in inodes:
            total += int(f[12])
    return total


def socket_inodes(pids: set[int]) -> set[int]:
    """The inodes of the sockets these processes hold."""
    out: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(fd.path)
                    if link.startswith("socket:["):
                        out.add(int(link[8:-1]))
    return out


def cpu_stat(cpus: set[int]) -> dict[str, float]:
    """Seconds of busy (user+nice+system+irq+softirq) and steal time on ``cpus`` (/proc/stat)."""
    out = {"busy": 0.0, "steal": 0.0}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *f = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[:8])
            out["busy"] += (user + nice + system + irq + softirq) / CLK_TCK
            out["steal"] += steal / CLK_TCK
    return out


def ksoftirqd_seconds(cpus: set[int]) -> float:
    """CPU time of the ksoftirqd threads of ``cpus``.  Loopback delivery of what a process sends
    runs as softirq on its CPU: in the sender's own context (charged to its stime, tick
    accounting) or, when there is much of it, deferred to ksoftirqd."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                comm = Path(entry.path, "comm").read_text().strip()
                if comm.startswith("ksoftirqd/") and int(comm.split("/")[1]) in cpus:
                    total += cpu_seconds(int(entry.name))
    return total


def backlog_drops() -> int:
    """Packets dropped by full per-CPU input backlogs (loopback goes through them)."""
    return sum(int(line.split()[1], 16)
               for line in Path("/proc/net/softnet_stat").read_text().splitlines())


# --------------------------------------------------------------------------------------------
# Steps and the rate search


@dataclass
class Step:
    calls: int
    target_pps: float
    expected: int
    sent: int
    received: int
    lost: int
    loss_ratio: float
    latency_us: dict[str, float]
    late: int  # arrived, but more than --late-ms after it was sent: counted as lost
    latency_growth_us: float  # median latency, last quarter of the step minus first quarter
    out_of_order: int
    duplicates: int
    unknown: int
    bad_length: int
    achieved_send_pps: float
    late_sends_1ms: int
    generator_busy: float
    generator_socket_drops: int
    relay_socket_drops: int
    backlog_drops: int
    relay_cpu_s: float  # utime + stime of the relay process(es)
    ksoftirqd_s: float  # deferred softirq on the relay's CPUs (its sends' loopback delivery)
    others_on_relay_cpus_s: float  # busy time on the relay's CPUs not explained by the above
    others_on_generator_cpu_s: float
    steal_s: float
    wall_s: float
    hops: int = 1  # times each packet crosses the relay (--chain)

    @property
    def relayed_pps(self) -> float:
        """Packets/s the relay forwards: each offered packet is forwarded ``hops`` times."""
        return self.target_pps * self.hops

    @property
    def ok(self) -> bool:
        return (self.sent >= self.expected and self.effective_loss < LOSS_BAR
                and self.latency_growth_us < GROWTH_BAR_US
                and self.achieved_send_pps >= PACE_BAR * self.target_pps)

    @property
    def effective_loss(self) -> float:
        """Lost or late (a jitter buffer would discard it), over sent."""
        return (self.lost + self.late) / self.sent if self.sent else 1.0

    @property
    def noisy(self) -> bool:
        """Other processes took more than 2% of a CPU from the generator or the relay (a burst
        of 50 ms is enough to make a relay running near its limit late)."""
        return max(self.others_on_relay_cpus_s, self.others_on_generator_cpu_s,
                   self.steal_s) > NOISE_SHARE * self.wall_s

    @property
    def generator_limited(self) -> bool:
        """The generator, not the relay, may be what failed: it fell behind its schedule, was
        busy 90% of the time or more, or its own sockets overflowed.  (Sends more than 1 ms
        late are counted apart: on a shared machine they mostly mean it was preempted.)"""
        return (self.generator_busy > 0.9 or self.generator_socket_drops > 0
                or self.achieved_send_pps < PACE_BAR * self.target_pps)

    @property
    def cpu_us_per_packet(self) -> float | None:
        """Relay CPU per relayed packet (every received packet was relayed ``hops`` times)."""
        return self.relay_cpu_s / (self.received * self.hops) * 1e6 \
            if self.received and self.relay_cpu_s else None

    @property
    def relay_busy(self) -> float:
        """Share of the step's wall time the relay (and ksoftirqd) kept a CPU busy."""
        return (self.relay_cpu_s + self.ksoftirqd_s) / self.wall_s if self.wall_s \
            else 0.0

    @property
    def cpu_us_per_packet_incl_ksoftirqd(self) -> float | None:
        cpu = self.relay_cpu_s + self.ksoftirqd_s
        return cpu / (self.received * self.hops) * 1e6 if self.received and self.relay_cpu_s \
            else None

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "ok": self.ok, "effective_loss": round(self.effective_loss, 6),
            "relayed_pps": round(self.relayed_pps),
            "generator_limited": self.generator_limited, "noisy": self.noisy,
            "relay_busy": round(self.relay_busy, 3),
            "cpu_us_per_packet": _round(self.cpu_us_per_packet, 3),
            "cpu_us_per_packet_incl_ksoftirqd": _round(self.cpu_us_per_packet_incl_ksoftirqd, 3)}


def _round(x: float | None, n: int) -> float | None:
    return None if x is None else round(x, n)


class Target:
    """Something media goes through (or not, for the ceiling)."""

    name = ""
    label = ""
    max_calls = 5000  # calls, or chains of ``hops`` calls
    hops = 1  # times each packet crosses the relay

    def open_step(self, calls: int) -> list[MediaCall]:
        raise NotImplementedError

    def close_step(self) -> None:
        pass

    def cpu_seconds(self) -> float:
        return 0.0

    def check_alive(self) -> None:
        pass

    def pids(self) -> set[int]:
        """The relay's processes."""
        return set()

    def close(self) -> None:
        pass


def probe(stream: Stream, what: str, drain_s: float = 0.05) -> None:
    """Send one packet of ``stream`` and check what comes back at its sink: it arrives, is
    plain RTP or SRTP as the sink's leg says, and (SRTP) authenticates with the relay's key.
    Packets still arriving within ``drain_s`` are dropped first (0: only those queued, for
    sinks that never had a step)."""
    plain, wire = next(stream.take(1))
    seq = plain[2:4]
    stream.sink.settimeout(drain_s)
    with contextlib.suppress(OSError):
        while True:  # bounded by the socket's queue: drop stale packets
            stream.sink.recv(2048)
    stream.src.sendto(wire, stream.dst)
    deadline = time.monotonic() + 2.0
    got = None
    while got is None:  # bounded: 2 s
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"{what}: nothing came back at 127.0.0.1:"
                             f"{stream.sink.getsockname()[1]} within 2 s of sending to "
                             f"{stream.dst[0]}:{stream.dst[1]}")
        stream.sink.settimeout(left)
        with contextlib.suppress(TimeoutError):
            data = stream.sink.recv(2048)
            if len(data) >= 12 and data[2:4] == seq:
                got = data
    if stream.recv_key is not None:
        session = pylibsrtp.Session(pylibsrtp.Policy(
            key=stream.recv_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=SUITES[stream.recv_suite][0]))
        try:
            got = session.unprotect(got)
        except Exception as e:  # pylibsrtp.Error, ValueError
            raise BenchError(f"{what}: the relayed packet ({len(got)} bytes) does not "
                             f"authenticate with the relay's key from the SDP ({e})") from None
    elif len(got) != RTP_LEN:
        raise BenchError(f"{what}: expected {RTP_LEN}-byte plain RTP at the sink, got "
                         f"{len(got)} bytes (still SRTP?)")
    if got[12:] != plain[12:]:
        raise BenchError(f"{what}: the relayed payload differs from what was sent")


def run_step(target: Target, gen: Generator, calls: int, duration: float,
             relay_cpus: set[int]) -> Step:
    media = target.open_step(calls)
    try:
        for i in {0, len(media) - 1}:
            probe(media[i].out, f"{target.name}: call {i}, caller -> PBX")
            probe(media[i].back, f"{target.name}: call {i}, PBX -> caller")
        streams = [s for m in media for s in (m.out, m.back)]
        prepared = gen.prepare(streams, duration)
        gen_cpus = {gen.cpu}
        relay_sockets = socket_inodes(target.pids())
        drops0, backlog0 = udp_drops(relay_sockets), backlog_drops()
        stat0, gstat0 = cpu_stat(relay_cpus), cpu_stat(gen_cpus)
        soft0, gsoft0 = ksoftirqd_seconds(relay_cpus), ksoftirqd_seconds(gen_cpus)
        cpu0, t0 = target.cpu_seconds(), time.monotonic()
        r = gen.run(prepared, duration)
        cpu, wall = target.cpu_seconds() - cpu0, time.monotonic() - t0
        stat = {k: v - stat0[k] for k, v in cpu_stat(relay_cpus).items()}
        gstat = {k: v - gstat0[k] for k, v in cpu_stat(gen_cpus).items()}
        soft, gsoft = ksoftirqd_seconds(relay_cpus) - soft0, ksoftirqd_seconds(gen_cpus) - gsoft0
        target.check_alive()
        # Before and after the generator this process runs too (briefly, on the generator's
        # CPU); the generator's own CPU time is its rusage.
        others_gen = gstat["busy"] - gsoft - r["cpu_s"]
        others_relay = stat["busy"] - soft - cpu
        if relay_cpus & gen_cpus:  # shared CPUs: one figure for both
            others_gen = others_relay = stat["busy"] - soft - cpu - r["cpu_s"]
        relay_drops = udp_drops(relay_sockets) - drops0
        return Step(calls=calls, target_pps=r["target_pps"],
                    expected=r["streams"] * r["packets_per_stream"], sent=r["sent"],
                    received=r["received"], lost=r["lost"], loss_ratio=r["loss_ratio"],
                    latency_us=r["latency_us"], late=r["late"], out_of_order=r["out_of_order"],
                    latency_growth_us=r["median_last_quarter_us"] - r["median_first_quarter_us"],
                    duplicates=r["duplicates"], unknown=r["unknown"],
                    bad_length=r["bad_length"], achieved_send_pps=r["achieved_send_pps"],
                    late_sends_1ms=r["late_sends_1ms"], generator_busy=r["busy_fraction"],
                    generator_socket_drops=r["sink_socket_drops"],
                    relay_socket_drops=relay_drops, backlog_drops=backlog_drops() - backlog0,
                    relay_cpu_s=round(cpu, 3),
                    ksoftirqd_s=round(soft, 3),
                    others_on_relay_cpus_s=round(max(0.0, others_relay), 3),
                    others_on_generator_cpu_s=round(max(0.0, others_gen), 3),
                    steal_s=round(stat["steal"] + gstat["steal"], 3), wall_s=round(wall, 2),
                    hops=target.hops)
    finally:
        target.close_step()


@dataclass
class Search:
    target: str
    label: str
    max_calls: int = 0
    steps: list[Step] = field(default_factory=list)
    latency_step: Step | None = None
    error: str | None = None
    limit: str = ""
    hops: int = 1  # times each packet crosses the relay (--chain)

    @property
    def max_pps(self) -> int:
        """Offered (generator) packets/s at the maximum."""
        return self.max_calls * STREAMS_PER_CALL * PPS_PER_STREAM

    @property
    def max_relayed_pps(self) -> int:
        """Packets/s the relay forwarded at the maximum: ``hops`` x offered."""
        return self.max_pps * self.hops

    @property
    def cpu_us_per_packet(self) -> float | None:
        """Relay CPU per relayed packet over the passing steps."""
        passed = [s for s in self.steps if s.ok]
        packets = sum(s.received for s in passed) * self.hops
        cpu = sum(s.relay_cpu_s for s in passed)
        return cpu / packets * 1e6 if packets and cpu else None

    @property
    def cpu_us_per_packet_incl_ksoftirqd(self) -> float | None:
        passed = [s for s in self.steps if s.ok]
        packets = sum(s.received for s in passed) * self.hops
        cpu = sum(s.relay_cpu_s + s.ksoftirqd_s for s in passed)
        return cpu / packets * 1e6 if packets and self.cpu_us_per_packet else None

    @property
    def noisy_steps(self) -> int:
        return sum(1 for s in self.steps if s.noisy)

    @property
    def cpu_us_per_packet_at_max(self) -> float | None:
        at = [s for s in self.steps if s.ok and s.calls == self.max_calls]
        return at[-1].cpu_us_per_packet if at else None

    def as_dict(self) -> dict[str, object]:
        lat = self.latency_step
        return {"target": self.target, "label": self.label, "error": self.error,
                "max_pps_under_0.1pct_loss": self.max_pps, "max_calls": self.max_calls,
                "hops": self.hops, "max_relayed_pps": self.max_relayed_pps,
                "limited_by": self.limit,
                "cpu_us_per_packet": _round(self.cpu_us_per_packet, 3),
                "cpu_us_per_packet_at_max": _round(self.cpu_us_per_packet_at_max, 3),
                "cpu_us_per_packet_incl_ksoftirqd": _round(
                    self.cpu_us_per_packet_incl_ksoftirqd, 3),
                "noisy_steps": self.noisy_steps,
                "latency_at_pps": lat.target_pps if lat else None,
                "latency_us": lat.latency_us if lat else None,
                "steps": [s.as_dict() for s in self.steps],
                "latency_step": lat.as_dict() if lat else None}


def search(target: Target, gen: Generator, args: argparse.Namespace,
           log: Log) -> Search:
    result = Search(target.name, target.label, hops=target.hops)
    cap = min(args.max_calls, target.max_calls)
    good, bad, calls = 0, None, min(args.start_calls, cap)

    def step(n: int) -> Step:
        for attempt in range(1 + args.noise_retries):  # bounded: a noisy failure is retried
            s = run_step(target, gen, n, args.duration, args.relay_cpu_set)
            result.steps.append(s)
            log.step(s, "step" if attempt == 0 else "retry")
            if s.ok or not s.noisy:
                break
        return s

    try:
        while bad is None:  # bounded: doubling up to cap
            s = step(calls)
            if s.ok:
                good = calls
                if calls >= cap:
                    break
                calls = min(calls * 2, cap)
            else:
                bad = calls
        if bad is not None:
            for _ in range(args.bisect_steps):  # bounded bisection
                if bad - good <= max(5, good // 20):
                    break
                mid = (good + bad) // 2
                s = step(mid)
                good, bad = (mid, bad) if s.ok else (good, mid)
        result.max_calls = good
        if bad is None:
            unit = "calls" if target.hops == 1 else f"chains of {target.hops} calls"
            result.limit = f"none found up to {cap} {unit} (--max-calls or the port range)"
        else:
            failed = [s for s in result.steps if s.calls == bad][-1]
            if failed.generator_limited:
                result.limit = "generator (the step that failed was generator-limited)"
            elif failed.noisy:
                result.limit = "relay, but other processes used its CPUs meanwhile (noisy)"
            else:
                result.limit = "relay"
        if good:
            result.latency_step = run_step(target, gen, max(1, round(good * LATENCY_SHARE)),
                                           args.duration, args.relay_cpu_set)
            log.step(result.latency_step, "latency")
    except BenchError as e:
        result.error = str(e)
        result.max_calls = good
        log.line(f"  error: {e}")
    finally:
        target.close()
    return result


# --------------------------------------------------------------------------------------------
# Targets: the generator alone, the floor


class DirectTarget(Target):
    """No relay: each stream is sent straight to the other end's socket."""

    name = "generator ceiling"
    label = "rtpload looped back to its own sinks, no relay (plain RTP)"
    max_calls = (GEN_PORTS[1] - GEN_PORTS[0]) // 2

    def __init__(self) -> None:
        self.pool = PortPool(*GEN_PORTS)
        self.socks: list[socket.socket] = []

    def open_step(self, calls: int) -> list[MediaCall]:
        out = []
        for _ in range(calls):
            a, u = self.pool.take(), self.pool.take()
            self.socks += [a, u]
            out.append(MediaCall(a, u, Stream(a, u, u.getsockname()),
                                 Stream(u, a, a.getsockname())))
        return out

    def close_step(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


def taskset(cpus: str) -> list[str]:
    tool = shutil.which("taskset")
    if tool is None:
        raise SystemExit("taskset (util-linux) is needed to pin the relay")
    return [tool, "-c", cpus]


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class FloorTarget(Target):
    """bench/media_floor.py, started afresh (fresh keys) for every step."""

    name = "floor"
    label = "plain Python UDP relay loop (bench/media_floor.py: selectors, recvfrom/sendto)"
    max_calls = (GEN_PORTS[1] - GEN_PORTS[0]) // 2

    def __init__(self, mode: Mode, workdir: Path, relay_cpus: str) -> None:
        self.mode, self.workdir, self.cpus = mode, workdir, relay_cpus
        if mode.ext_srtp or mode.int_srtp:
            self.label += " + pylibsrtp unprotect/protect"
        self.pool = PortPool(*GEN_PORTS)
        self.socks: list[socket.socket] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def open_step(self, calls: int) -> list[MediaCall]:
        m = self.mode
        plan = []
        for _ in range(calls):
            a, u = self.pool.take(), self.pool.take()
            self.socks += [a, u]
            keys = {"uac": new_key() if m.ext_srtp else None,
                    "ext": new_key() if m.ext_srtp else None,
                    "uas": new_key() if m.int_srtp else None,
                    "int": new_key() if m.int_srtp else None}
            plan.append((a, u, keys))
        config = {"max_seconds": 600, "calls": [
            {"a": list(a.getsockname()), "u": list(u.getsockname()),
             "keys": {"ext_in": _hex(k["uac"]), "ext_out": _hex(k["ext"]),
                      "int_in": _hex(k["uas"]), "int_out": _hex(k["int"])}}
            for a, u, k in plan]}
        path = self.workdir / "floor.json"
        path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [*taskset(self.cpus), sys.executable, str(HERE / "media_floor.py"), str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = _read_line(self.proc, 60)
        try:
            ports = json.loads(line)["ports"]
        except (ValueError, KeyError):
            raise BenchError("media_floor.py did not start: " + (
                line + self.proc.stderr.read().decode() if self.proc.poll() is not None
                else line)) from None
        out = []
        for (a, u, k), (ext, internal) in zip(plan, ports, strict=True):
            out.append(MediaCall(
                a, u,
                Stream(a, u, ("127.0.0.1", ext), send_key=k["uac"], recv_key=k["int"]),
                Stream(u, a, ("127.0.0.1", internal), send_key=k["uas"], recv_key=k["ext"])))
        return out

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc else 0.0

    def pids(self) -> set[int]:
        return {self.proc.pid} if self.proc else set()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError("media_floor.py died during the step: "
                             + self.proc.stderr.read().decode(errors="replace")[-800:])

    def close_step(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.proc = None
        for s in self.socks:
            s.close()
        self.socks = []


def _hex(key: bytes | None) -> str | None:
    return key.hex() if key is not None else None


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout, or "" after ``timeout`` s or when it exits."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if sel.select(timeout):
            return proc.stdout.readline().decode(errors="replace").strip()
        return ""
    finally:
        sel.close()


# --------------------------------------------------------------------------------------------
# The SBC target: a small SIP UAC and UAS over UDP


COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact",
           "l": "content-length", "c": "content-type"}


@dataclass
class SipMessage:
    start: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1])

    @property
    def method(self) -> str:
        if self.is_request:
            return self.start.split(" ", 1)[0]
        return self.get("cseq").split()[-1].upper()

    def get(self, name: str) -> str:
        return next((v for n, v in self.headers if n == name), "")

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


def parse_sip(data: bytes) -> SipMessage | None:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            name = name.strip().lower()
            headers.append((COMPACT.get(name, name), value.strip()))
    msg = SipMessage(lines[0], headers, body)
    with contextlib.suppress(ValueError):
        msg.body = body[: int(msg.get("content-length") or len(body))]
    return msg


def _tag(value: str) -> str | None:
    m = re.search(r";\s*tag=([^;>\s,]+)", value.rsplit(">", 1)[-1])
    return m.group(1) if m else None


def _uri(value: str) -> str:
    m = re.search(r"<([^>]*)>", value)
    return m.group(1) if m else value.split(";", 1)[0].strip()


@dataclass(eq=False)
class SbcCall:
    n: int
    a_sock: socket.socket
    u_sock: socket.socket
    uac_key: bytes | None
    uas_key: bytes | None
    call_id: str = ""
    from_tag: str = ""
    state: str = "new"  # new, inviting, up, failed, ended
    error: str | None = None
    invite: bytes = b""
    first_sent: float = 0.0
    next_retransmit: float = 0.0
    interval: float = 0.5
    answered: bool = False
    to_value: str = ""
    remote_target: str = ""
    routes: list[str] = field(default_factory=list)
    ext: tuple[str, int] | None = None  # the SBC's external relay address (200 OK's c=/m=)
    ext_key: bytes | None = None  # the key the SBC encrypts with towards the caller
    ext_suite: str = ""
    uas_call_id: str = ""
    uas_response: bytes = b""
    internal: tuple[str, int] | None = None  # the SBC's internal relay address (INVITE's SDP)
    int_key: bytes | None = None  # the key the SBC encrypts with towards the PBX
    int_suite: str = ""
    uas_suite: str = ""
    bye_sent: float = 0.0
    bye: bytes = b""  # retransmitted as is (same branch, RFC 3261 17.1.2)
    # --chain: the media address the PBX answers with instead of its own u_sock (the next
    # call's external relay address)
    answer_media: tuple[str, int] | None = None

    @property
    def user(self) -> str:
        return f"bench{self.n}"


def _sdp_media(body: bytes) -> tuple[tuple[str, int], str, list[tuple[int, str, bytes]]]:
    """(c= address, m= port), the m= proto and the a=crypto lines (tag, suite, key||salt) of
    the first audio stream, via sbc.media.sdp."""
    from sbc.errors import SdpError
    from sbc.media.sdp import parse_sdp

    try:
        sdp = parse_sdp(body)
    except SdpError as e:
        raise BenchError(f"unparsable SDP ({e}): {body[:300]!r}") from None
    audio = next((m for m in sdp.media if m.media == "audio"), None)
    if audio is None or audio.resolved_connection is None:
        raise BenchError(f"SDP without an audio stream and its c= line: {body[:300]!r}")
    crypto = [(c.tag, c.suite, c.key_salt) for c in audio.crypto]
    return (audio.resolved_connection.address, audio.port), audio.proto, crypto


class SipAgent:
    """The caller (UAC, external side) and the PBX (UAS, internal side) of the SBC's calls.

    Raw text templates over UDP; enough of RFC 3261 for this: INVITE retransmitted until a
    response (T1 doubling), 180 and 200 with SDP from the UAS, ACK for every 2xx received,
    BYE/200 both ways.  The UAS finds the caller's call by the Request-URI user (bench<n>),
    which the B2BUA carries to the PBX."""

    def __init__(self, mode: Mode, sbc: tuple[str, int], uac: socket.socket,
                 uas: socket.socket, suite: str) -> None:
        self.mode, self.sbc, self.uac, self.uas, self.suite = mode, sbc, uac, uas, suite
        self.uac_port, self.uas_port = uac.getsockname()[1], uas.getsockname()[1]
        self.calls: list[SbcCall] = []
        self.by_call_id: dict[str, SbcCall] = {}
        self.by_user: dict[str, SbcCall] = {}
        self.by_uas_call_id: dict[str, SbcCall] = {}
        self.sel = selectors.DefaultSelector()
        for s in (uac, uas):
            s.setblocking(False)
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sel.register(s, selectors.EVENT_READ)
        self.seq = 0

    def _id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}{self.seq}x{random.getrandbits(40):x}"

    # -- the caller

    def add_call(self, n: int, a: socket.socket, u: socket.socket) -> SbcCall:
        call = SbcCall(n, a, u, new_key() if self.mode.ext_srtp else None,
                       new_key() if self.mode.int_srtp else None)
        call.call_id, call.from_tag = self._id("bench-"), self._id("t")
        body = self._offer(call)
        call.invite = (
            f"INVITE sip:{call.user}@{self.sbc[0]}:{self.sbc[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.uac_port};branch=z9hG4bK{self._id('b')};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:caller@127.0.0.1>;tag={call.from_tag}\r\n"
            f"To: <sip:{call.user}@127.0.0.1>\r\n"
            f"Call-ID: {call.call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@127.0.0.1:{self.uac_port}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.calls.append(call)
        self.by_call_id[call.call_id] = call
        self.by_user[call.user] = call
        return call

    def _offer(self, call: SbcCall) -> bytes:
        port = call.a_sock.getsockname()[1]
        lines = ["v=0", f"o=caller {call.n + 1000} 1 IN IP4 127.0.0.1", "s=-",
                 "c=IN IP4 127.0.0.1", "t=0 0",
                 f"m=audio {port} RTP/{'SAVP' if call.uac_key else 'AVP'} 0",
                 "a=rtpmap:0 PCMU/8000", "a=ptime:20"]
        if call.uac_key:
            lines.append(f"a=crypto:1 {self.suite} inline:"
                         f"{base64.b64encode(call.uac_key).decode()}")
        lines.append("a=sendrecv")
        return ("\r\n".join(lines) + "\r\n").encode()

    def _uac_response(self, msg: SipMessage) -> None:
        call = self.by_call_id.get(msg.get("call-id"))
        if call is None:
            return
        call.answered = True
        method, status = msg.method, msg.status
        if method == "BYE" and status >= 200:
            call.state = "ended"
            return
        if method != "INVITE" or status < 200:
            return
        if status >= 300:
            if call.state == "inviting":
                call.state, call.error = "failed", msg.start
            self._send_uac(self._request(call, "ACK", msg, uri=f"sip:{call.user}@"
                                         f"{self.sbc[0]}:{self.sbc[1]}", same_branch=True))
            return
        if call.state == "inviting":
            call.to_value = next((v for n, v in msg.headers if n == "to"), "")
            call.remote_target = _uri(msg.get("contact")) or f"sip:{self.sbc[0]}:{self.sbc[1]}"
            call.routes = [r.strip() for v in reversed(msg.all("record-route"))
                           for r in reversed(v.split(","))]
            call.state = "up"
            try:
                call.ext, proto, crypto = _sdp_media(msg.body)
                if self.mode.ext_srtp:
                    chosen = next((c for c in crypto if c[1] in SUITES), None)
                    if chosen is None:
                        call.error = (f"the SBC's answer has no usable a=crypto (m= proto "
                                      f"{proto}, crypto suites {[c[1] for c in crypto]})")
                    else:
                        _, call.ext_suite, call.ext_key = chosen
            except BenchError as e:
                call.error = f"200 OK to the caller: {e}"
        self._send_uac(self._request(call, "ACK", msg))

    def _request(self, call: SbcCall, method: str, response: SipMessage | None = None, *,
                 uri: str | None = None, same_branch: bool = False) -> bytes:
        if same_branch:  # ACK of a non-2xx: the INVITE's branch (RFC 3261 17.1.1.3)
            via = next(line for line in call.invite.decode().split("\r\n")
                       if line.startswith("Via:"))
        else:
            via = (f"Via: SIP/2.0/UDP 127.0.0.1:{self.uac_port};branch=z9hG4bK"
                   f"{self._id('b')};rport")
        to = response.get("to") if response is not None else call.to_value
        cseq = 1 if method == "ACK" else 2
        route = "".join(f"Route: {r}\r\n" for r in call.routes) if not same_branch else ""
        return (f"{method} {uri or call.remote_target} SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\n"
                f"{route}From: <sip:caller@127.0.0.1>;tag={call.from_tag}\r\nTo: {to}\r\n"
                f"Call-ID: {call.call_id}\r\nCSeq: {cseq} {method}\r\n"
                f"Content-Length: 0\r\n\r\n").encode()

    def _send_uac(self, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError):
            self.uac.sendto(data, self.sbc)

    # -- the PBX

    def _uas_request(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        method = msg.method
        if method == "ACK":
            return
        call_id = msg.get("call-id")
        known = self.by_uas_call_id.get(call_id)
        if method == "INVITE" and known is not None:
            self._send(self.uas, known.uas_response, addr)  # a retransmission
            return
        if method != "INVITE":
            if method == "BYE" and known is not None and known.state == "up":
                known.state = "ended"
            status = 481 if method == "BYE" and known is None else 200
            self._send(self.uas, self._response(msg, status), addr)
            return
        m = re.match(r"INVITE\s+sips?:([^@;>\s]+)@", msg.start)
        call = self.by_user.get(m.group(1)) if m else None
        if call is None:
            self._send(self.uas, self._response(msg, 404), addr)
            return
        call.uas_call_id = call_id
        self.by_uas_call_id[call_id] = call
        chosen = None
        try:
            call.internal, proto, crypto = _sdp_media(msg.body)
            chosen = next((c for c in crypto if c[1] in SUITES), None)
            # Recorded, not refused: the call is answered anyway so that the check after
            # set-up can tell "media not anchored" from a key problem.
            if self.mode.int_srtp and chosen is None:
                call.error = (f"the INVITE to the PBX has no usable a=crypto (pbx.srtp require; "
                              f"m= proto {proto}, suites {[c[1] for c in crypto]})")
            elif not self.mode.int_srtp and crypto:
                call.error = "the INVITE to the PBX offers SRTP although pbx.srtp is none"
        except BenchError as e:
            call.error = f"INVITE to the PBX: {e}"
        host, port = call.answer_media or ("127.0.0.1", call.u_sock.getsockname()[1])
        lines = ["v=0", f"o=pbx {call.n + 5000} 1 IN IP4 127.0.0.1", "s=-",
                 f"c=IN IP4 {host}", "t=0 0",
                 f"m=audio {port} RTP/{'SAVP' if self.mode.int_srtp else 'AVP'} 0",
                 "a=rtpmap:0 PCMU/8000", "a=ptime:20"]
        if self.mode.int_srtp and chosen is not None:
            tag, call.int_suite, call.int_key = chosen
            call.uas_suite = call.int_suite
            lines.append(f"a=crypto:{tag} {call.int_suite} inline:"
                         f"{base64.b64encode(call.uas_key or b'').decode()}")
        lines.append("a=sendrecv")
        body = ("\r\n".join(lines) + "\r\n").encode()
        to_tag = self._id("p")
        self._send(self.uas, self._response(msg, 180, to_tag), addr)
        call.uas_response = self._response(msg, 200, to_tag, body)
        self._send(self.uas, call.uas_response, addr)

    def _response(self, msg: SipMessage, status: int, to_tag: str | None = None,
                  body: bytes = b"") -> bytes:
        reason = {180: "Ringing", 200: "OK", 404: "Not Found", 481: "Call Does Not Exist",
                  488: "Not Acceptable Here"}.get(status, "Error")
        to = msg.get("to")
        if to_tag and _tag(to) is None:
            to += f";tag={to_tag}"
        vias = "".join(f"Via: {v}\r\n" for v in msg.all("via"))
        rr = "".join(f"Record-Route: {v}\r\n" for v in msg.all("record-route"))
        contact = (f"Contact: <sip:pbx@127.0.0.1:{self.uas_port}>\r\n"
                   if msg.method == "INVITE" and status < 300 else "")
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"SIP/2.0 {status} {reason}\r\n{vias}{rr}From: {msg.get('from')}\r\n"
                f"To: {to}\r\nCall-ID: {msg.get('call-id')}\r\nCSeq: {msg.get('cseq')}\r\n"
                f"{contact}{ctype}Content-Length: {len(body)}\r\n\r\n").encode() + body

    @staticmethod
    def _send(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(BlockingIOError):
            sock.sendto(data, addr)

    # -- the loop

    def poll(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            sock = key.fileobj
            for _ in range(200):  # bounded per readiness
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                msg = parse_sip(data)
                if msg is None:
                    continue
                try:
                    if sock is self.uas:
                        if msg.is_request:
                            self._uas_request(msg, addr)
                    elif msg.is_request:  # the SBC hangs up (e.g. media inactivity)
                        call = self.by_call_id.get(msg.get("call-id"))
                        if call is not None and msg.method == "BYE":
                            call.state = "ended"
                        if msg.method != "ACK":
                            self._send(self.uac, self._response(msg, 200), addr)
                    else:
                        self._uac_response(msg)
                except (ValueError, IndexError):
                    continue  # a message this small agent does not understand

    def setup(self, calls: list[SbcCall], cps: float) -> None:
        """INVITE ``calls`` at ``cps``, at most ``cps`` outstanding, until each is up or
        failed (10 s without a final response fails it)."""
        pending = list(reversed(calls))
        inviting: dict[str, SbcCall] = {}
        start = time.monotonic()
        end = start + len(calls) / cps + 30
        sent = 0
        while (pending or inviting) and time.monotonic() < end:  # bounded: end
            now = time.monotonic()
            while pending and len(inviting) < cps and sent <= (now - start) * cps:
                call = pending.pop()
                call.state, call.first_sent, call.next_retransmit = "inviting", now, now + 0.5
                self._send_uac(call.invite)
                inviting[call.call_id] = call
                sent += 1
            for call in list(inviting.values()):
                if call.state != "inviting":
                    del inviting[call.call_id]
                elif now - call.first_sent > 10:
                    call.state, call.error = "failed", "no final response within 10 s"
                    del inviting[call.call_id]
                elif not call.answered and now >= call.next_retransmit:
                    self._send_uac(call.invite)  # RFC 3261 17.1.1.2, Timer A
                    call.interval = min(call.interval * 2, 4.0)
                    call.next_retransmit = now + call.interval
            self.poll(0.002)
        for call in pending + list(inviting.values()):
            call.state, call.error = "failed", call.error or "not set up in time"

    def hangup(self, cps: float) -> None:
        up = [c for c in self.calls if c.state == "up"]
        start = time.monotonic()
        end = start + len(up) / cps + 10
        for i, call in enumerate(up):
            while time.monotonic() < start + i / cps:  # bounded: paced
                self.poll(0.001)
            call.bye_sent = time.monotonic()
            call.bye = self._request(call, "BYE")
            self._send_uac(call.bye)
        while time.monotonic() < end and any(c.state == "up" for c in up):  # bounded: end
            now = time.monotonic()
            for call in up:
                if call.state == "up" and now - call.bye_sent > 1.0:
                    call.bye_sent = now
                    self._send_uac(call.bye)
            self.poll(0.01)


@dataclass(eq=False)
class Chain:
    """K SBC calls one stream pair crosses in turn (--chain K; K = 1: one plain call)."""

    calls: list[SbcCall]  # c_1 .. c_K in media order (the caller's side first)
    media: MediaCall | None = None

    @property
    def up(self) -> bool:
        return len(self.calls) > 0 and all(c.state == "up" for c in self.calls)


SBC_CONFIG = """\
node: {{id: bench-media}}
logging: {{format: text, level: warn}}
interfaces:
  external:
    address: 127.0.0.1
    udp: {{enabled: true, port: {sip}}}
    tcp: {{enabled: false}}
    tls: {{enabled: false}}
  internal:
    address: 127.0.0.1
    udp: {{enabled: true, port: {internal}}}
pbx: {{address: 127.0.0.1, port: {pbx}, transport: udp, srtp: {pbx_srtp}}}
routing: {{unknown_source: allow}}
media:
  port_range: {{start: {relay_start}, end: {relay_end}}}
  external: {{address: 127.0.0.1}}
  internal: {{address: 127.0.0.1}}
  srtp: {ext_srtp}
  allow_sdes_over_insecure_transport: true  # the bench signals over UDP
  inactivity_timeout: 60
{workers}"""


class SbcTarget(Target):
    """``sbc run`` with the media relay; calls live through the whole search (new ones are
    set up when a step needs more, all are hung up at the end)."""

    name = "sbc"

    def __init__(self, mode: Mode, workdir: Path, relay_cpus: str, args: argparse.Namespace,
                 workers: int | None) -> None:
        self.mode, self.workdir, self.cpus, self.args = mode, workdir, relay_cpus, args
        self.workers = workers
        self.hops = args.chain
        # Counted in chains: each of the K calls takes 4 relay ports (and 2 generator ports).
        self.max_calls = min((RELAY_PORTS[1] - RELAY_PORTS[0] + 1) // SBC_PORTS_PER_CALL,
                             (GEN_PORTS[1] - GEN_PORTS[0]) // 2) // self.hops
        self.label = (f"sbc run (media.srtp {'require' if mode.ext_srtp else 'none'}, "
                      f"pbx.srtp {'require' if mode.int_srtp else 'none'}"
                      f"{f', media.workers {workers}' if workers else ''})")
        if self.hops > 1:
            self.label += (f"; chains of {self.hops} calls: each packet crosses the SBC "
                           f"{self.hops} times")
        self.name = " ".join(["sbc", *([f"workers={workers}"] if workers else []),
                              *([f"chain={self.hops}"] if self.hops > 1 else [])])
        self.chains: list[Chain] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.agent: SipAgent | None = None
        self.media_pool = PortPool(*GEN_PORTS)
        self.sip_pool = PortPool(*SIP_PORTS)
        self.log = workdir / f"sbc-{mode.name}-{workers or 1}.log"

    def start(self) -> None:
        uac, uas = self.sip_pool.take(), self.sip_pool.take()
        ports = dict(sip=self.sip_pool.port(), internal=self.sip_pool.port(),
                     pbx=uas.getsockname()[1])
        workers = f"  workers: {self.workers}\n" if self.workers else ""
        config = self.workdir / "sbc-media.yaml"
        config.write_text(SBC_CONFIG.format(
            pbx_srtp="require" if self.mode.int_srtp else "none",
            ext_srtp="require" if self.mode.ext_srtp else "none",
            relay_start=RELAY_PORTS[0], relay_end=RELAY_PORTS[1], workers=workers, **ports))
        self.agent = SipAgent(self.mode, ("127.0.0.1", ports["sip"]), uac, uas,
                              self.args.suite)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([*taskset(self.cpus), *sbc_command(), "run", "-c",
                                          str(config)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        if not wait_ready(ports["sip"], self.proc):
            text = self.log.read_text(errors="replace")
            if self.workers and re.search(r"media\.workers.*unknown key", text):
                raise BenchError("workers: not supported by this build (media.workers "
                                 "rejected by the configuration)")
            raise BenchError("sbc did not start (or rejected the configuration):\n  "
                             + "\n  ".join(text.strip().splitlines()[-15:]))

    def open_step(self, calls: int) -> list[MediaCall]:
        if self.proc is None:
            self.start()
        agent = self.agent
        assert agent is not None
        if self.proc.poll() is not None:
            raise BenchError("the sbc exited: " + self.log.read_text(errors="replace")[-500:])
        agent.poll(0.05)  # BYEs from the SBC, if any
        for _ in range(3):  # bounded: chains that fail are replaced at most three times
            live = [ch for ch in self.chains if ch.up]
            if len(live) >= calls:
                break
            self._build(calls - len(live))
        live = [ch for ch in self.chains if ch.up][:calls]
        if len(live) < calls:
            unit = "calls" if self.hops == 1 else f"chains of {self.hops} calls"
            raise BenchError(f"only {len(live)} of {calls} {unit} could be set up")
        for i, ch in enumerate(live):
            if ch.media is None:
                ch.media = self._media(ch.calls[0], ch.calls[-1])
                if self.hops > 1:  # latch each hop onto the previous one, caller side first
                    what = f"{self.name}: chain {i} ({self.hops} calls)"
                    probe(ch.media.out, f"{what}, caller -> PBX", drain_s=0)
                    probe(ch.media.back, f"{what}, PBX -> caller", drain_s=0)
        return [ch.media for ch in live if ch.media is not None]

    def _build(self, count: int) -> None:
        """Set up ``count`` new chains, their last calls first: the PBX answers c_i with the
        external relay address of c_{i+1}, which exists once c_{i+1} is up."""
        agent = self.agent
        assert agent is not None
        new = [Chain([]) for _ in range(count)]
        for _ in range(self.hops):  # bounded: one stage per hop, c_K down to c_1
            stage = []
            for ch in new:
                if ch.calls and not ch.up:
                    continue  # a later call of this chain failed: given up
                call = agent.add_call(len(agent.calls), self.media_pool.take(),
                                      self.media_pool.take())
                if ch.calls:
                    call.answer_media = ch.calls[0].ext
                ch.calls.insert(0, call)
                stage.append(call)
            agent.setup(stage, self.args.cps)
            self._check(stage)
        self.chains += new

    def _check(self, new: list[SbcCall]) -> None:
        """Fail with a clear message when the SBC does not anchor media as the contract says."""
        for call in new:
            a, u = call.a_sock.getsockname(), call.u_sock.getsockname()
            if call.state == "up" and call.ext is not None and (
                    call.ext == u or call.internal == a):
                raise BenchError(
                    "the SBC answered without relay ports: the c=/m= lines crossed unchanged "
                    f"(the caller was given {call.ext[0]}:{call.ext[1]}, the PBX's own media "
                    "socket). This build does not anchor media; nothing to measure.")
        for call in new:
            if call.state == "up" and call.error:
                raise BenchError(f"call {call.user}: {call.error}")
            if call.state == "up" and (call.ext is None or call.internal is None):
                raise BenchError(f"call {call.user}: set up without an SDP on "
                                 f"{'the PBX' if call.internal is None else 'the caller'}'s side")
        failed = [c for c in new if c.state == "failed"]
        if len(failed) > max(1, len(new) // 100):
            raise BenchError(f"{len(failed)} of {len(new)} calls failed to set up, e.g. "
                             f"{failed[0].user}: {failed[0].error}")

    def _media(self, first: SbcCall, last: SbcCall) -> MediaCall:
        """The streams of a chain (``first`` is ``last`` for a single call): the caller of the
        first call to the PBX of the last one, and back."""
        assert first.ext is not None and last.internal is not None
        return MediaCall(
            first.a_sock, last.u_sock,
            Stream(first.a_sock, last.u_sock, first.ext, send_key=first.uac_key,
                   suite=self.args.suite, recv_key=last.int_key,
                   recv_suite=last.int_suite or self.args.suite),
            Stream(last.u_sock, first.a_sock, last.internal, send_key=last.uas_key,
                   suite=last.uas_suite or self.args.suite, recv_key=first.ext_key,
                   recv_suite=first.ext_suite or self.args.suite))

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def pids(self) -> set[int]:
        return process_tree(self.proc.pid) if self.proc else set()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError("the sbc exited during the step: "
                             + self.log.read_text(errors="replace")[-800:])

    def close(self) -> None:
        try:
            if self.agent is not None and self.proc is not None and self.proc.poll() is None:
                self.agent.hangup(self.args.cps)
        finally:
            if self.proc is not None:
                stop(self.proc)
            if self.agent is not None:
                for c in self.agent.calls:
                    c.a_sock.close()
                    c.u_sock.close()
                self.agent.uac.close()
                self.agent.uas.close()
                self.agent.sel.close()


# --------------------------------------------------------------------------------------------
# Output


class Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def line(self, text: str) -> None:
        print(text, file=sys.stderr if self.quiet else sys.stdout, flush=True)

    def step(self, s: Step, what: str = "step") -> None:
        cpu = s.cpu_us_per_packet
        lat = s.latency_us
        backlog = (f" BACKLOG +{s.latency_growth_us / 1000:.0f} ms"
                   if s.latency_growth_us >= GROWTH_BAR_US else "")
        relay = (f" relay CPU {cpu:.2f} us/pkt"
                 f"{f' (ksoftirqd {s.ksoftirqd_s:.2f} s)' if s.ksoftirqd_s else ''}"
                 f" busy {s.relay_busy:.2f}" if cpu else "")
        noise = (f" NOISY (others {s.others_on_generator_cpu_s:.2f}/"
                 f"{s.others_on_relay_cpus_s:.2f} s on gen/relay CPUs, steal {s.steal_s:.2f} s)"
                 if s.noisy else "")
        rate = (f"{s.calls:>5} calls {s.target_pps:>8.0f} pps" if s.hops == 1 else
                f"{s.calls:>5} chains {s.target_pps:>8.0f} pps x{s.hops} = "
                f"{s.relayed_pps:>8.0f} relayed pps")
        self.line(
            f"  {what} {rate}: recv {s.received}/{s.sent}"
            f" lost {s.lost} late {s.late} ({s.effective_loss * 100:.3f}%)"
            f" p50/p99 {lat['p50']:.0f}/{lat['p99']:.0f} us"
            f"{backlog}"
            f" sent {s.achieved_send_pps:.0f} pps gen busy {s.generator_busy:.2f}"
            f"{relay}"
            f"{f' relay sock drops {s.relay_socket_drops}' if s.relay_socket_drops else ''}"
            f"{f' gen sock drops {s.generator_socket_drops}' if s.generator_socket_drops else ''}"
            f"{f' backlog drops {s.backlog_drops}' if s.backlog_drops else ''}"
            f"{f' BAD LENGTH {s.bad_length}' if s.bad_length else ''}"
            f" {'ok' if s.ok else 'FAIL'}{' (generator-limited)' if s.generator_limited else ''}"
            f"{noise}")


def summary_line(r: Search) -> str:
    if r.error and not r.max_calls:
        return f"{r.target}: not measured: {r.error}"
    cpu = r.cpu_us_per_packet
    lat = r.latency_step
    soft = r.cpu_us_per_packet_incl_ksoftirqd
    at_max = r.cpu_us_per_packet_at_max
    if r.hops == 1:
        rate = f"max {r.max_pps} pps ({r.max_calls} calls)"
    else:
        rate = (f"max {r.max_relayed_pps} relayed pps ({r.max_pps} pps offered x {r.hops} "
                f"hops, {r.max_calls} chains of {r.hops} calls)")
    per = "us/packet" if r.hops == 1 else "us/relayed packet"
    text = (f"{r.target}: {rate} with <0.1% lost or late"
            f", relay CPU {f'{cpu:.2f} {per} over the passing steps' if cpu else 'n/a'}"
            f"{f' ({soft:.2f} with ksoftirqd)' if soft and soft - cpu >= 0.01 else ''}"
            f"{f', {at_max:.2f} at the max' if at_max else ''}")
    if lat:
        text += (f", latency p50/p99 {lat.latency_us['p50']:.0f}/{lat.latency_us['p99']:.0f} us"
                 f" at {lat.target_pps:.0f} pps"
                 f"{f' offered, end to end over {r.hops} hops' if r.hops > 1 else ''}")
    text += f"; limited by {r.limit}" if r.limit else ""
    text += f"; {r.noisy_steps} noisy step(s)" if r.noisy_steps else ""
    return text + (f" (stopped: {r.error})" if r.error else "")


def compare(mode: Mode, floor: Search | None, sbc: list[Search]) -> dict[str, object]:
    """Ratios: each sbc search to the floor, and the sbc and the floor to rtpengine; in
    relayed packets/s and CPU per relayed packet (the same as offered with one hop)."""
    out: dict[str, object] = {}
    ref = REFERENCE.get(mode.name)

    def to_ref(r: Search, entry: dict[str, object]) -> None:
        if ref is None:
            return
        if r.cpu_us_per_packet:
            entry["cpu_per_packet_ratio_to_rtpengine"] = round(
                r.cpu_us_per_packet / ref["cpu_us_per_packet"], 3)
        if r.cpu_us_per_packet_at_max:
            entry["cpu_per_packet_at_max_ratio_to_rtpengine"] = round(
                r.cpu_us_per_packet_at_max / ref["cpu_us_per_packet"], 3)
        if r.max_pps:
            entry["pps_ratio_to_rtpengine"] = round(r.max_relayed_pps / ref["pps"], 3)

    for r in sbc:
        entry: dict[str, object] = {}
        if floor is not None and floor.max_pps and r.max_pps:
            entry["pps_ratio_to_floor"] = round(r.max_relayed_pps / floor.max_relayed_pps, 3)
        if floor is not None and floor.cpu_us_per_packet and r.cpu_us_per_packet:
            entry["cpu_per_packet_ratio_to_floor"] = round(
                r.cpu_us_per_packet / floor.cpu_us_per_packet, 3)
        to_ref(r, entry)
        out[r.target] = entry
    if floor is not None:
        entry = {}
        to_ref(floor, entry)
        out["floor"] = entry
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="all", choices=[*MODES, "all"])
    ap.add_argument("--target", default="all", choices=["all", "floor", "sbc", "ceiling"],
                    help="what to measure besides the generator ceiling (always measured)")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of media per step")
    ap.add_argument("--workers", type=int, help="also measure the sbc with media.workers N")
    ap.add_argument("--chain", type=int, default=1, metavar="K",
                    help="rtp-rtp, sbc only: each stream crosses K chained SBC calls, so the "
                         "relay forwards K x the generator's packets (see the module doc)")
    ap.add_argument("--start-calls", type=int, default=100)
    ap.add_argument("--max-calls", type=int, default=5000)
    ap.add_argument("--bisect-steps", type=int, default=5)
    ap.add_argument("--cps", type=float, default=200, help="call setup rate towards the sbc")
    ap.add_argument("--suite", default="AES_CM_128_HMAC_SHA1_80", choices=list(SUITES))
    ap.add_argument("--gen-cpu", type=int, default=0, help="CPU the generator is pinned to")
    ap.add_argument("--relay-cpus", help="taskset list for the relay (default: the others)")
    ap.add_argument("--noise-retries", type=int, default=2,
                    help="repeat a failed step this many times when other processes used the "
                         "generator's or the relay's CPUs during it")
    ap.add_argument("--late-ms", type=float, default=50,
                    help="a packet arriving later than this counts as lost")
    ap.add_argument("--max-packet-mb", type=int, default=1024,
                    help="cap on the pre-encrypted SRTP packet file per step")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not 0.5 <= args.duration <= 60:
        ap.error("--duration must be 0.5..60 s")
    if not 1 <= args.chain <= 100:
        ap.error("--chain must be 1..100")
    if args.chain > 1 and args.mode != "rtp-rtp":  # one line, without the usage
        ap.exit(2, f"{ap.prog}: error: --chain {args.chain} needs --mode rtp-rtp (an SRTP hop "
                "would need the previous hop's SBC key as the next caller's offer key)\n")
    cpus = sorted(os.sched_getaffinity(0))
    relay_cpus = args.relay_cpus or ",".join(str(c) for c in cpus if c != args.gen_cpu) \
        or str(args.gen_cpu)
    try:
        args.relay_cpu_set = {int(c) for part in relay_cpus.split(",") for c in (
            range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1))}
    except ValueError:
        ap.error("--relay-cpus is a list like 1 or 1,3 or 1-3")
    # This process (SIP, SRTP encryption) stays off the relay's CPUs.
    os.sched_setaffinity(0, {args.gen_cpu})
    shared = args.gen_cpu in args.relay_cpu_set
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    modes = list(MODES.values()) if args.mode == "all" else [MODES[args.mode]]
    if args.target == "ceiling":
        modes = []
    log = Log(args.json)
    results: dict[str, object] = {
        "packet": "20 ms: 172-byte RTP (PT 0), SRTP +10-byte tag; 2 streams per call x 50 pps",
        "loss_bar": LOSS_BAR, "late_ms": args.late_ms, "growth_bar_us": GROWTH_BAR_US,
        "step_s": args.duration,
        "pinning": {"generator_cpu": args.gen_cpu, "relay_cpus": relay_cpus,
                    "machine_cpus": len(cpus)},
        "reference_rtpengine_10_5_userspace": REFERENCE, "goal_cpu_ratio": GOAL_COST_RATIO}
    log.line(f"media benchmark: {results['packet']}; steps of {args.duration} s; "
             f"max rate with <{LOSS_BAR * 100:g}% of packets lost or later than "
             f"{args.late_ms:g} ms, and no growing backlog (median latency up by "
             f"{GROWTH_BAR_US / 1000:g} ms or more from the first to the last quarter of a step)")
    log.line(f"pinning: generator on CPU {args.gen_cpu}, relay on CPU(s) "
             f"{relay_cpus} (taskset); machine has {len(cpus)} CPUs"
             + ("; WARNING: generator and relay share CPUs" if shared else ""))
    if args.workers and len(args.relay_cpu_set) < 2:
        log.line(f"note: --workers {args.workers} with the relay on one CPU ({relay_cpus}) "
                 "cannot scale; --relay-cpus 0-1 lets the workers use both CPUs, shared with "
                 "the generator")
    if args.chain > 1:
        results["chain"] = args.chain
        log.line(f"chain: each packet crosses the SBC {args.chain} times (chains of "
                 f"{args.chain} calls); relayed pps = {args.chain} x offered pps and CPU per "
                 f"relayed packet = relay CPU / (received x {args.chain}). Applies to the sbc "
                 "only: the floor and the generator ceiling keep one hop")
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        workdir = Path(tmp)
        gen = Generator(workdir, args.gen_cpu, args.max_packet_mb, args.late_ms)
        log.line("generator ceiling (rtpload -> its own sinks, no relay, plain RTP):")
        ceiling = search(DirectTarget(), gen, args, log)
        log.line("  " + summary_line(ceiling).replace("generator ceiling: ", "") )
        results["generator_ceiling"] = ceiling.as_dict()
        per_mode: dict[str, object] = {}
        for mode in modes:
            log.line(f"mode {mode.name}:")
            floor = None
            sbcs: list[Search] = []
            if args.target in ("all", "floor"):
                log.line(f" floor: {FloorTarget(mode, workdir, relay_cpus).label}")
                floor = search(FloorTarget(mode, workdir, relay_cpus), gen, args, log)
            if args.target in ("all", "sbc"):
                for workers in [None] + ([args.workers] if args.workers else []):
                    target = SbcTarget(mode, workdir, relay_cpus, args, workers)
                    log.line(f" {target.name}: {target.label}")
                    sbcs.append(search(target, gen, args, log))
            ratios = compare(mode, floor, sbcs)
            per_mode[mode.name] = {"floor": floor.as_dict() if floor else None,
                                   "sbc": [r.as_dict() for r in sbcs], "ratios": ratios}
            log.line(f" summary {mode.name}:")
            for r in [floor, *sbcs]:
                if r is not None:
                    log.line("  " + summary_line(r))
            if len(sbcs) > 1 and sbcs[0].max_pps and sbcs[1].max_pps:
                scaling = round(sbcs[1].max_relayed_pps / sbcs[0].max_relayed_pps, 3)
                ratios["worker_scaling"] = scaling
                relayed = (f" ({sbcs[1].max_relayed_pps} / {sbcs[0].max_relayed_pps} relayed "
                           f"pps, {args.chain} hops)" if args.chain > 1 else "")
                log.line(f"  worker scaling (workers={args.workers} / default): {scaling}x"
                         f"{relayed} on relay CPU(s) {relay_cpus}")
            ref = REFERENCE.get(mode.name)
            for name, entry in ratios.items():
                if isinstance(entry, dict) and entry:
                    log.line(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in entry.items()))
            if ref:
                log.line(f"  reference rtpengine 10.5 userspace: {ref['pps']} pps, "
                         f"{ref['cpu_us_per_packet']} us/packet (goal: our us/packet within "
                         f"{GOAL_COST_RATIO}x, whole-machine pps at or above)"
                         + (f"; sbc figures are relayed packets ({args.chain} per packet "
                            "offered)" if args.chain > 1 and sbcs else ""))
            else:
                log.line("  reference rtpengine: no figure for this mode")
            if ceiling.max_pps and ceiling.limit.startswith("generator"):
                log.line(f"  generator ceiling {ceiling.max_pps} pps: a maximum near it is the "
                         f"generator's, not the relay's"
                         + (" (for chains: an offered maximum near it)" if args.chain > 1
                            else ""))
        results["modes"] = per_mode
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
