#!/usr/bin/env python3
"""Deterministic in-memory profile of the signalling path: N whole calls through the pure core.

Each call is what ``bench/bench_signalling.py`` makes sipp do, over UDP on both sides: a sipp-like
phone sends INVITE (with SDP) to the external side, a sipp-like PBX answers 180 and 200 (with
SDP) on the internal side, the phone ACKs, holds, sends BYE, and the PBX answers the BYE with
200.  The SBC is a :class:`~sbc.gateway.b2bua.B2BUA` with a
:class:`~sbc.ids.CountingIdSource`, driven the way ``sbc/net/transport.py`` and
``sbc/net/driver.py`` drive it: every received datagram goes through ``parse_message``, then
``B2BUA.receive`` with an ``Origin``; every command is serialized with ``to_bytes()``; the next
deadline is read after every input; timers fire on a simulated clock (so lingering transactions
are cleaned up as in production, and the final drain fires every remaining timer).

Only the SBC's part is timed (and profiled): the peers' work of building their messages from
what they received is outside the measured sections.  The wire fingerprint (SHA-256 of every
byte the SBC sent, in order, with its interface and destination) is deterministic: a change in
it means a change in what the SBC puts on the wire.

The time includes the garbage collector's, as in production; its share (collections and
time per generation) is printed too, and ``--gc-threshold`` tries other ``gc.set_threshold``
values.  At 200 calls/s the lingering transactions (32 s) hold a large heap that every full
collection walks, which is why the default run outlasts them.

    python bench/profile_signalling.py [--calls 10000] [--rate 200] [--hold-ms 100]
                                       [--repeat 3] [--profile] [--top 30]
                                       [--gc-threshold 700,10,10]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import heapq
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sbc.gateway.b2bua import (
    B2BUA,
    EXTERNAL,
    INTERNAL,
    B2buaSettings,
    Origin,
    SipAddress,
)
from sbc.ids import CountingIdSource
from sbc.sip.message import DEFAULT_LIMITS, parse_message
from sbc.sip.transaction import TimerSettings

SBC_EXT = ("203.0.113.10", 5060)
SBC_INT = ("10.0.0.1", 5060)
PHONE = ("192.0.2.101", 5061)
PBX = ("10.0.0.5", 5060)
SETTINGS = B2buaSettings(
    external=SipAddress(*SBC_EXT, "udp"),
    internal=SipAddress(*SBC_INT, "udp"),
    pbx=SipAddress(*PBX, "udp"),
    domain="pbx.internal.example",
    timers=TimerSettings(),
    unknown_source="allow",  # sipp's phone is neither registered nor a trunk
)

# sipp's built-in uac/uas scenarios, with their header layout and SDP; the SDP's session id and
# media port differ per call, as real endpoints' do (so no cache can keep one call's SDP for
# the next).
SDP = (
    "v=0\r\n"
    "o=user1 {sess} 2353687637 IN IP4 {host}\r\n"
    "s=-\r\n"
    "c=IN IP4 {host}\r\n"
    "t=0 0\r\n"
    "m=audio {port} RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)


def _sdp(n: int, host: str) -> bytes:
    return SDP.format(sess=53655765 + n, host=host, port=6000 + 2 * (n % 20000)).encode()


Wire = tuple[str, tuple[str, int], bytes]


# -- the peers (not measured) -------------------------------------------------------------------


def _header_lines(data: bytes) -> dict[bytes, list[bytes]]:
    """The header lines of a message by lower-case name, as sipp's ``[last_X:]`` sees them."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    out: dict[bytes, list[bytes]] = {}
    for line in head[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        out.setdefault(name, []).append(line)
    return out


def _value(lines: dict[bytes, list[bytes]], name: bytes) -> bytes:
    return lines[name][0].split(b":", 1)[1].strip()


def _uri_of(name_addr: bytes) -> bytes:
    return name_addr.split(b"<", 1)[1].split(b">", 1)[0] if b"<" in name_addr else name_addr


@dataclass
class CallScript:
    """One sipp call: the phone's and the PBX's view of it."""

    n: int
    start: float
    hold: float
    to_phone: list[bytes] = field(default_factory=list)
    to_pbx: list[bytes] = field(default_factory=list)

    @property
    def call_id(self) -> str:
        return f"{self.n}-4242@192.0.2.101"

    def phone_request(self, method: str, cseq: int, branch: str, *, uri: str, to: str) -> bytes:
        host, port = PHONE
        body = _sdp(self.n, host) if method == "INVITE" else b""
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch}\r\n"
            f"From: sipp <sip:sipp@{host}:{port}>;tag={self.n}SIPpTag00{self.n}\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            f"Contact: sip:sipp@{host}:{port}\r\n"
            "Max-Forwards: 70\r\n"
            "Subject: Performance Test\r\n"
            f"{ctype}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def invite(self) -> bytes:
        uri = f"sip:service@{SBC_EXT[0]}:{SBC_EXT[1]}"
        return self.phone_request("INVITE", 1, f"z9hG4bK-{self.n}-1-0", uri=uri,
                                  to=f"service <{uri}>")

    def _in_dialog(self, method: str, cseq: int, branch: str) -> bytes:
        ok = next(m for m in self.to_phone if m.startswith(b"SIP/2.0 200") and b" INVITE" in m)
        lines = _header_lines(ok)
        to = _value(lines, b"to").decode()
        target = _uri_of(_value(lines, b"contact")).decode()
        return self.phone_request(method, cseq, branch, uri=target, to=to)

    def ack(self) -> bytes:
        return self._in_dialog("ACK", 1, f"z9hG4bK-{self.n}-1-5")

    def bye(self) -> bytes:
        return self._in_dialog("BYE", 2, f"z9hG4bK-{self.n}-2-7")

    def pbx_response(self, status: str, method: str, *, sdp: bool) -> bytes:
        request = next(m for m in self.to_pbx if m.startswith(method.encode() + b" "))
        lines = _header_lines(request)
        to = lines[b"to"][0]
        if method == "INVITE":
            to += f";tag={self.n}SIPpTag01{self.n}".encode()
        body = _sdp(self.n, PBX[0]) if sdp else b""
        head = [f"SIP/2.0 {status}".encode(), *lines[b"via"], lines[b"from"][0], to,
                lines[b"call-id"][0], lines[b"cseq"][0]]
        if method == "INVITE":
            head.append(f"Contact: <sip:{PBX[0]}:{PBX[1]};transport=UDP>".encode())
        if body:
            head.append(b"Content-Type: application/sdp")
        head.append(f"Content-Length: {len(body)}".encode())
        return b"\r\n".join(head) + b"\r\n\r\n" + body

    def steps(self) -> list[tuple[float, str, Callable[[], bytes]]]:
        """(time, side the datagram comes from, how the peer builds it), in call order."""
        s = self.start
        return [
            (s, EXTERNAL, self.invite),
            (s + 0.001, INTERNAL, lambda: self.pbx_response("180 Ringing", "INVITE", sdp=False)),
            (s + 0.002, INTERNAL, lambda: self.pbx_response("200 OK", "INVITE", sdp=True)),
            (s + 0.003, EXTERNAL, self.ack),
            (s + 0.003 + self.hold, EXTERNAL, self.bye),
            (s + 0.004 + self.hold, INTERNAL, lambda: self.pbx_response("200 OK", "BYE",
                                                                       sdp=False)),
        ]


# -- the SBC (measured) ----------------------------------------------------------------------------


STAGES = ("parse", "receive", "timers", "serialize", "get_timer")


@dataclass
class Result:
    calls: int
    stages: dict[str, int]  # nanoseconds per stage (see STAGES)
    wire: bytes  # SHA-256 of everything sent
    messages_in: int
    messages_out: int
    timer_messages: int  # messages sent from timers (retransmissions): 0 in a clean run
    gc_collections: list[int]  # per generation, during the run
    gc_seconds: list[float]  # per generation (inside the stages' time)

    @property
    def us_per_call(self) -> float:
        return sum(self.stages.values()) / self.calls / 1e3

    def stage_us(self, stage: str) -> float:
        return self.stages[stage] / self.calls / 1e3


def run(calls: int, rate: float, hold: float, profiler: cProfile.Profile | None = None) -> Result:
    """Pump ``calls`` calls through a fresh B2BUA; only the SBC's work is timed (and profiled).

    Like the driver, the next deadline is read after every input and every timer firing, and
    the timer fires when the simulated clock passes it."""
    b2bua = B2BUA(SETTINGS, CountingIdSource("x"))
    origins = {EXTERNAL: (PHONE, EXTERNAL), INTERNAL: (PBX, INTERNAL)}
    limits = DEFAULT_LIMITS
    digest = hashlib.sha256()
    spent = dict.fromkeys(STAGES, 0)
    messages_in = messages_out = timer_messages = 0
    clock = time.perf_counter_ns
    start = profiler.enable if profiler is not None else (lambda: None)
    stop = profiler.disable if profiler is not None else (lambda: None)

    # Every step of every call on one simulated timeline (calls overlap during the hold).  A
    # call's next step is filed when its previous one runs, and the next call when this one
    # starts, so the harness holds only the calls in progress (its own objects would otherwise
    # add to what the garbage collector walks).
    agenda: list[tuple[float, int, int, CallScript]] = []
    first = CallScript(1, 1000.0 + 1 / rate, hold)
    heapq.heappush(agenda, (first.start, 1, 0, first))

    def flush(input_stage: str, script: CallScript | None) -> tuple[float | None, int]:
        """Serialize the commands and read the next deadline (Driver._flush and _rearm)."""
        start()
        t0 = clock()
        out = [(c.interface, c.destination, c.message.to_bytes()) for c in b2bua.commands()]
        t1 = clock()
        deadline = b2bua.get_timer()
        t2 = clock()
        stop()
        spent["serialize"] += t1 - t0
        spent["get_timer"] += t2 - t1
        for interface, destination, data in out:
            digest.update(interface.encode() + repr(destination).encode() + data)
            if script is not None:
                (script.to_phone if interface == EXTERNAL else script.to_pbx).append(data)
        return deadline, len(out)

    def fire_timers(until: float | None, deadline: float | None) -> float | None:
        nonlocal messages_out, timer_messages
        while deadline is not None and (until is None or deadline <= until):
            start()
            t0 = clock()
            b2bua.handle_timer(deadline)
            spent["timers"] += clock() - t0
            stop()
            deadline, sent = flush("timers", None)
            messages_out += sent
            timer_messages += sent
        return deadline

    gc_collections = [0, 0, 0]
    gc_seconds = [0.0, 0.0, 0.0]
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_collections[info["generation"]] += 1
            gc_seconds[info["generation"]] += time.perf_counter() - gc_started[0]

    gc.collect()
    gc.callbacks.append(on_gc)
    deadline: float | None = None
    try:
        while agenda:
            now, n, index, script = heapq.heappop(agenda)
            steps = script.steps()
            if index + 1 < len(steps):
                heapq.heappush(agenda, (steps[index + 1][0], n, index + 1, script))
            if index == 0 and n < calls:
                following = CallScript(n + 1, 1000.0 + (n + 1) / rate, hold)
                heapq.heappush(agenda, (following.start, n + 1, 0, following))
            deadline = fire_timers(now, deadline)
            _, side, build = steps[index]
            data = build()
            (host, port), interface = origins[side]
            # What SipDatagramProtocol.datagramReceived and Driver.receive do.
            start()
            t0 = clock()
            message = parse_message(data, limits)
            t1 = clock()
            b2bua.receive(message, Origin(interface, "udp", host, port), now)
            t2 = clock()
            stop()
            spent["parse"] += t1 - t0
            spent["receive"] += t2 - t1
            deadline, sent = flush("receive", script)
            messages_in += 1
            messages_out += sent
            if index == 0:
                assert sent == 2, "INVITE: 100 Trying and the B-leg INVITE expected"
        fire_timers(None, deadline)  # drain: every lingering transaction ends
    finally:
        gc.callbacks.remove(on_gc)
    if len(b2bua) or len(b2bua.calls) or any(len(layer) for layer in b2bua.layers.values()):
        raise SystemExit(f"state left after the drain: {len(b2bua)} calls, "
                         f"{[len(layer) for layer in b2bua.layers.values()]} transactions")
    return Result(calls, spent, digest.digest(), messages_in, messages_out, timer_messages,
                  gc_collections, gc_seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=10000,
                    help="calls per run (10000 at 200 cps outlasts the 32 s transactions linger)")
    ap.add_argument("--rate", type=float, default=200.0, help="simulated calls per second")
    ap.add_argument("--hold-ms", type=int, default=100, help="pause between ACK and BYE")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (min and median shown)")
    ap.add_argument("--profile", action="store_true",
                    help="add a cProfile run (collector off) and its top lines")
    ap.add_argument("--top", type=int, default=30, help="lines of each profile table")
    ap.add_argument("--gc-threshold", metavar="T0,T1,T2",
                    help="gc.set_threshold() for the runs (default: the interpreter's)")
    args = ap.parse_args()
    hold = args.hold_ms / 1000
    if args.gc_threshold:
        gc.set_threshold(*(int(t) for t in args.gc_threshold.split(",")))

    results = [run(args.calls, args.rate, hold) for _ in range(args.repeat)]
    first = results[0]
    if any(r.wire != first.wire for r in results):
        print("warning: the wire differs between runs (nondeterminism)", file=sys.stderr)
    per_call = [r.us_per_call for r in results]
    print(f"{args.calls} calls x {args.repeat} runs (simulated {args.rate:g} cps, hold "
          f"{args.hold_ms} ms): {first.messages_in} messages in, {first.messages_out} out "
          f"({first.timer_messages} from timers)")
    print(f"SBC time per call: min {min(per_call):.1f} us, median "
          f"{statistics.median(per_call):.1f} us  "
          f"(= {1e6 / min(per_call):.0f} calls/s of one core)")
    best = min(results, key=lambda r: r.us_per_call)
    print("  of which (best run): " + ", ".join(
        f"{stage} {best.stage_us(stage):.1f}" for stage in STAGES) + " us")
    print(f"  garbage collector (best run, inside the above; thresholds {gc.get_threshold()}): "
          + ", ".join(f"gen{g} {best.gc_collections[g]}x {best.gc_seconds[g] * 1e3:.0f} ms"
                      for g in range(3))
          + f" = {sum(best.gc_seconds) / best.calls * 1e6:.1f} us per call")
    print(f"wire fingerprint: {first.wire.hex()}")

    if args.profile:
        # The collector is off for the profiled run: a collection's time would land on whatever
        # function happened to allocate when it started.  Its share is in the timed runs above.
        profiler = cProfile.Profile()
        gc.disable()
        try:
            run(args.calls, args.rate, hold, profiler)
        finally:
            gc.enable()
        for key in ("tottime", "cumtime"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.top)
            text = out.getvalue()
            print(f"\n--- cProfile, top {args.top} by {key} ---")
            print(text[text.find("   ncalls"):].rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
