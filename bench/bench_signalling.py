#!/usr/bin/env python3
"""Signalling benchmark: the highest call rate sipp sustains with under 1% failed calls.

Each call is sipp's built-in UAC scenario (INVITE, 100, 180, 200, ACK, a short hold, BYE, 200)
against sipp's built-in UAS, on 127.0.0.1.  The rate is raised until calls fail or sipp falls
behind, then narrowed by bisection; each step runs ``--duration`` seconds of calls.

Today this measures the baseline only: sipp UAC straight to sipp UAS.  The run through sbc
(``sipp UAC -> sbc -> sipp UAS``, measured in the same run and reported as a ratio, with the
SBC's CPU per call) needs the B2BUA that relays to the PBX, which is not built yet; the
harness is here so both figures come from one command once it is.

    python bench/bench_signalling.py [--duration 5] [--hold-ms 100] [--transport u1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Step:
    rate: int
    calls: int
    successful: int
    failed: int
    achieved_cps: float
    uas_cpu_s: float
    hold_s: float

    @property
    def ok(self) -> bool:
        """Under 1% failed, and sipp kept pace: its cumulative rate counts the last call's own
        duration too, so the bar is calls / (calls/rate + hold + 0.5 s of slack)."""
        total = self.successful + self.failed
        pace = self.calls / (self.calls / self.rate + self.hold_s + 0.5)
        return (total > 0 and self.failed / total < 0.01 and self.successful >= 0.99 * self.calls
                and self.achieved_cps >= 0.95 * pace)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _cumulative(text: str, label: str) -> float:
    m = re.search(rf"{label}\s*\|[^|]*\|\s*([0-9.]+)", text)
    return float(m.group(1)) if m else 0.0


def run_step(sipp: str, uas_pid: int, target: str, rate: int, duration: float, hold_ms: int,
             transport: str, workdir: Path) -> Step:
    calls = max(1, int(rate * duration))
    cpu0 = cpu_seconds(uas_pid)
    cmd = [sipp, "-sn", "uac", target, "-i", "127.0.0.1", "-p", str(free_port()), "-t", transport,
           "-r", str(rate), "-m", str(calls), "-d", str(hold_ms), "-nostdin",
           "-timeout", str(int(duration * 4 + 20)), "-timeout_error", "-max_socket", "2000"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, stdin=subprocess.DEVNULL,
                         timeout=duration * 6 + 60).stdout
    return Step(rate, calls, int(_cumulative(out, "Successful call")),
                int(_cumulative(out, "Failed call")), _cumulative(out, "Call Rate"),
                round(cpu_seconds(uas_pid) - cpu0, 3), hold_ms / 1000)


def find_max_rate(sipp: str, uas_pid: int, target: str, args: argparse.Namespace,
                  workdir: Path) -> tuple[int, list[Step]]:
    steps: list[Step] = []
    good, bad = 0, None
    rate = args.start_rate
    while bad is None and rate <= args.max_rate:  # bounded: doubling up to --max-rate
        step = run_step(sipp, uas_pid, target, rate, args.duration, args.hold_ms, args.transport,
                        workdir)
        steps.append(step)
        if step.ok:
            good, rate = rate, rate * 2
        else:
            bad = rate
    if bad is not None:
        for _ in range(args.bisect_steps):  # bounded bisection between good and bad
            if bad - good <= max(10, good // 20):
                break
            mid = (good + bad) // 2
            step = run_step(sipp, uas_pid, target, mid, args.duration, args.hold_ms,
                            args.transport, workdir)
            steps.append(step)
            good, bad = (mid, bad) if step.ok else (good, mid)
    return good, steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of calls per step")
    ap.add_argument("--hold-ms", type=int, default=100, help="pause between ACK and BYE")
    ap.add_argument("--transport", default="u1", choices=["u1", "t1"], help="sipp -t mode")
    ap.add_argument("--start-rate", type=int, default=100)
    ap.add_argument("--max-rate", type=int, default=20000)
    ap.add_argument("--bisect-steps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (make deps)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        uas_port = free_port()
        uas = subprocess.Popen([sipp, "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port),
                                "-t", args.transport, "-nostdin", "-max_socket", "2000"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, cwd=workdir)
        try:
            best, steps = find_max_rate(sipp, uas.pid, f"127.0.0.1:{uas_port}", args, workdir)
        finally:
            uas.terminate()
            try:
                uas.wait(timeout=10)
            except subprocess.TimeoutExpired:
                uas.kill()
    result = {"baseline": "sipp UAC -> sipp UAS (direct)", "transport": args.transport,
              "hold_ms": args.hold_ms, "max_cps_under_1pct_failed": best,
              "through_sbc": "not measured: the B2BUA relay is not built yet",
              "steps": [asdict(s) | {"ok": s.ok} for s in steps]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"direct sipp->sipp ({args.transport}, hold {args.hold_ms} ms): "
              f"max {best} calls/s with <1% failed")
        for s in steps:
            print(f"  rate {s.rate:>6}: {s.successful}/{s.calls} ok, {s.failed} failed, "
                  f"achieved {s.achieved_cps:.1f} cps, UAS CPU {s.uas_cpu_s}s "
                  f"{'ok' if s.ok else 'FAIL'}")
        print("through sbc: not measured yet (needs the B2BUA)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
