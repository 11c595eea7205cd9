#!/usr/bin/env python3
"""Signalling benchmark: the highest call rate sipp sustains with under 1% failed calls.

Each call is sipp's built-in UAC scenario (INVITE, 100, 180, 200, ACK, a short hold, BYE, 200)
against sipp's built-in UAS, on 127.0.0.1.  The rate is raised until calls fail or sipp falls
behind, then narrowed by bisection; each step runs ``--duration`` seconds of calls.

It measures twice in one run: the baseline, sipp UAC straight to sipp UAS, then the same
search through sbc (``sipp UAC -> sbc run -> sipp UAS``, the UAS as the PBX on UDP), and reports
both maxima, their ratio and the SBC's CPU seconds per call (utime + stime of the sbc process
from /proc, over the steps that passed).

``--transport`` is sipp's: ``u1`` (UDP) or ``t1`` (TCP) on the external side, or ``tls``: sipp
has no TLS, so sipp speaks TCP to a socat bridge that opens one TLS connection to the SBC's TLS
listener (verified against the development CA made for the run); the baseline is then sipp to
sipp over TCP, and socat's own CPU is reported apart.

    python bench/bench_signalling.py [--duration 5] [--hold-ms 100] [--transport u1|t1|tls]
                                     [--json]
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
import time
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
    sbc_cpu_s: float = 0.0

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
             transport: str, workdir: Path, sbc_pid: int | None = None) -> Step:
    calls = max(1, int(rate * duration))
    cpu0 = cpu_seconds(uas_pid)
    sbc0 = cpu_seconds(sbc_pid) if sbc_pid else 0.0
    transport = "t1" if transport == "tls" else transport
    cmd = [sipp, "-sn", "uac", target, "-i", "127.0.0.1", "-p", str(free_port()), "-t", transport,
           "-r", str(rate), "-m", str(calls), "-d", str(hold_ms), "-nostdin",
           "-timeout", str(int(duration * 4 + 20)), "-timeout_error", "-max_socket", "2000"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, stdin=subprocess.DEVNULL,
                         timeout=duration * 6 + 60).stdout
    return Step(rate, calls, int(_cumulative(out, "Successful call")),
                int(_cumulative(out, "Failed call")), _cumulative(out, "Call Rate"),
                round(cpu_seconds(uas_pid) - cpu0, 3), hold_ms / 1000,
                round(cpu_seconds(sbc_pid) - sbc0, 3) if sbc_pid else 0.0)


def find_max_rate(sipp: str, uas_pid: int, target: str, args: argparse.Namespace,
                  workdir: Path, sbc_pid: int | None = None) -> tuple[int, list[Step]]:
    steps: list[Step] = []
    good, bad = 0, None
    rate = args.start_rate
    while bad is None and rate <= args.max_rate:  # bounded: doubling up to --max-rate
        step = run_step(sipp, uas_pid, target, rate, args.duration, args.hold_ms, args.transport,
                        workdir, sbc_pid)
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
                            args.transport, workdir, sbc_pid)
            steps.append(step)
            good, bad = (mid, bad) if step.ok else (good, mid)
    return good, steps


SBC_CONFIG = """\
node: {{id: bench}}
logging: {{format: text, level: warn}}
interfaces:
  external:
    address: 127.0.0.1
    udp: {{enabled: true, port: {sip}}}
    tcp: {{enabled: true, port: {sip}}}
    tls: {{enabled: {tls_on}, port: {tls}}}
  internal:
    address: 127.0.0.1
    udp: {{enabled: true, port: {internal}}}
limits:
  max_connections_per_ip: 10000
  new_connections_per_second_per_ip: 100000
pbx: {{address: 127.0.0.1, port: {pbx}, transport: udp}}
# sipp offers plain RTP/AVP; 11000 relay pairs, since at a thousand calls a second the
# pairs of ended calls wait out their 2 s quarantine
media: {{srtp: none, port_range: {{start: 10000, end: 32000}}}}
trusted_peers:  # the UAC plays a trunk (no registration needed)
  - {{name: bench-trunk, cidrs: [127.0.0.1/32]}}
tls:
  certificate: {certs}/server.crt
  private_key: {certs}/server.key
"""


def sbc_command() -> list[str]:
    script = Path(sys.executable).with_name("sbc")
    if script.exists():
        return [str(script)]
    found = shutil.which("sbc")
    return [found] if found else [sys.executable, "-m", "sbc.app.cli"]


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> bool:
    """Poll the SBC with OPTIONS over UDP, a bounded number of times."""
    for attempt in range(100):
        if proc.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            s.sendto((f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKready{attempt};rport\r\n"
                      f"From: <sip:b@127.0.0.1>;tag=b\r\nTo: <sip:127.0.0.1>\r\n"
                      f"Call-ID: ready{attempt}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                      f"Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
            try:
                s.recv(65535)
                return True
            except TimeoutError:
                continue
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def shipped_rules(workdir: Path) -> Path:
    """A copy of rules/ whose admission limits (calls per second and concurrent calls, which
    would cap the benchmark at 50 calls/s) are raised out of reach: every rule is still
    evaluated and counts, so what is measured is the policy's cost, not its limits."""
    target = workdir / "rules"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(Path(__file__).resolve().parent.parent / "rules", target)
    admission = target / "15-admission.yaml"
    text = re.sub(r"rate: \d+/s, burst: \d+", "rate: 1000000/s, burst: 1000000",
                  admission.read_text())
    text = re.sub(r"algorithm: concurrent, limit: \d+", "algorithm: concurrent, limit: 1000000",
                  text)
    admission.write_text(text)
    return target


def measure(sipp: str, args: argparse.Namespace, workdir: Path,
            through_sbc: bool, policy: bool = False) -> tuple[int, list[Step]]:
    """Start a sipp UAS (and, through_sbc, an sbc in front of it) and search the max rate;
    ``policy`` loads the shipped rules (admission limits raised) into the sbc."""
    uas_port = free_port()
    sipp_transport = "t1" if args.transport == "tls" else args.transport
    uas_transport = "u1" if through_sbc else sipp_transport  # sbc reaches the PBX over UDP
    uas = subprocess.Popen([sipp, "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port),
                            "-t", uas_transport, "-nostdin", "-max_socket", "2000"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           stdin=subprocess.DEVNULL, cwd=workdir)
    sbc = bridge = None
    try:
        target = f"127.0.0.1:{uas_port}"
        if through_sbc:
            ports = dict(sip=free_port(), tls=free_port(), internal=free_port(), pbx=uas_port)
            certs = workdir / "certs"
            if not certs.exists():
                subprocess.run([*sbc_command(), "certs", "init", "--dir", str(certs)],
                               check=True, capture_output=True, timeout=60)
            config = workdir / "sbc.yaml"
            text = SBC_CONFIG.format(certs=certs, tls_on=str(args.transport == "tls").lower(),
                                     **ports)
            if policy:
                text += f"rules:\n  files: [\"{shipped_rules(workdir)}/*.yaml\"]\n"
            config.write_text(text)
            env = dict(os.environ)
            if args.profile:
                env["SBC_PROFILE"] = str(Path(args.profile).resolve())
            with (workdir / "sbc.log").open("wb") as log:
                sbc = subprocess.Popen([*sbc_command(), "run", "-c", str(config)], stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env)
            if not wait_ready(ports["sip"], sbc):
                raise RuntimeError("sbc did not start:\n" + (workdir / "sbc.log").read_text())
            target = f"127.0.0.1:{ports['sip']}"
            if args.transport == "tls":
                socat = shutil.which("socat")
                if socat is None:
                    raise RuntimeError("socat is not installed (make deps)")
                bridge_port = free_port()
                bridge = subprocess.Popen(
                    [socat, f"TCP-LISTEN:{bridge_port},bind=127.0.0.1,reuseaddr,fork",
                     f"OPENSSL:127.0.0.1:{ports['tls']},cafile={certs}/dev-ca.crt,verify=1"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL)
                for _ in range(100):  # bounded: about 5 s
                    if _listening(bridge_port):
                        break
                target = f"127.0.0.1:{bridge_port}"
        return find_max_rate(sipp, uas.pid, target, args, workdir,
                             sbc.pid if sbc is not None else None)
    finally:
        if bridge is not None:
            stop(bridge)
        if sbc is not None:
            stop(sbc)
        stop(uas)


def _cpu_per_call(steps: list[Step]) -> float | None:
    passed = [s for s in steps if s.ok]
    calls = sum(s.successful for s in passed)
    return round(sum(s.sbc_cpu_s for s in passed) / calls, 6) if calls else None


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port?  Checked without connecting (a connection to
    socat would make it open a TLS connection to the SBC): from /proc/net/tcp."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # LISTEN
            return True
    time.sleep(0.05)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of calls per step")
    ap.add_argument("--hold-ms", type=int, default=100, help="pause between ACK and BYE")
    ap.add_argument("--transport", default="u1", choices=["u1", "t1", "tls"],
                    help="sipp -t mode, or tls (sipp over TCP to a socat TLS bridge)")
    ap.add_argument("--start-rate", type=int, default=100)
    ap.add_argument("--max-rate", type=int, default=20000)
    ap.add_argument("--bisect-steps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--policy", action="store_true",
                    help="also measure through the sbc with the shipped rules loaded (admission "
                         "limits raised), and report the ratio to the run without rules")
    ap.add_argument("--profile", metavar="FILE",
                    help="run the sbc under cProfile, write the stats to FILE and print the "
                         "top functions (the profiler slows it down: use for where, not how "
                         "fast)")
    args = ap.parse_args()
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (make deps)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        best, steps = measure(sipp, args, workdir, through_sbc=False)
        sbc_best, sbc_steps = measure(sipp, args, workdir, through_sbc=True)
        policy_best, policy_steps = (measure(sipp, args, workdir, through_sbc=True, policy=True)
                                     if args.policy else (None, []))
    passed = [s for s in sbc_steps if s.ok]
    calls = sum(s.successful for s in passed)
    cpu_per_call = sum(s.sbc_cpu_s for s in passed) / calls if calls else None
    ratio = round(sbc_best / best, 3) if best else None
    result = {"baseline": "sipp UAC -> sipp UAS (direct)", "transport": args.transport,
              "hold_ms": args.hold_ms, "max_cps_under_1pct_failed": best,
              "through_sbc": "sipp UAC -> sbc -> sipp UAS (UDP to the PBX)",
              "through_sbc_max_cps_under_1pct_failed": sbc_best,
              "ratio_through_sbc_to_direct": ratio,
              "sbc_cpu_s_per_call": None if cpu_per_call is None else round(cpu_per_call, 6),
              "with_policy_max_cps_under_1pct_failed": policy_best,
              "with_policy_cpu_s_per_call": _cpu_per_call(policy_steps),
              "steps": [asdict(s) | {"ok": s.ok} for s in steps],
              "sbc_steps": [asdict(s) | {"ok": s.ok} for s in sbc_steps]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"direct sipp->sipp ({args.transport}, hold {args.hold_ms} ms): "
              f"max {best} calls/s with <1% failed")
        for s in steps:
            print(f"  rate {s.rate:>6}: {s.successful}/{s.calls} ok, {s.failed} failed, "
                  f"achieved {s.achieved_cps:.1f} cps, UAS CPU {s.uas_cpu_s}s "
                  f"{'ok' if s.ok else 'FAIL'}")
        print(f"through sbc sipp->sbc->sipp ({args.transport} to sbc, UDP to the PBX): "
              f"max {sbc_best} calls/s with <1% failed")
        for s in sbc_steps:
            print(f"  rate {s.rate:>6}: {s.successful}/{s.calls} ok, {s.failed} failed, "
                  f"achieved {s.achieved_cps:.1f} cps, UAS CPU {s.uas_cpu_s}s, "
                  f"SBC CPU {s.sbc_cpu_s}s {'ok' if s.ok else 'FAIL'}")
        print(f"ratio through sbc / direct: {ratio}")
        per_call = "n/a" if cpu_per_call is None else f"{cpu_per_call * 1000:.3f} ms"
        print(f"sbc CPU per call (steps that passed): {per_call}")
        if args.policy:
            with_cpu = _cpu_per_call(policy_steps)
            print(f"through sbc with the shipped policy: max {policy_best} calls/s with <1% "
                  f"failed, sbc CPU per call "
                  f"{'n/a' if with_cpu is None else f'{with_cpu * 1000:.3f} ms'}")
            for s in policy_steps:
                print(f"  rate {s.rate:>6}: {s.successful}/{s.calls} ok, {s.failed} failed, "
                      f"achieved {s.achieved_cps:.1f} cps, SBC CPU {s.sbc_cpu_s}s "
                      f"{'ok' if s.ok else 'FAIL'}")
            if policy_best and sbc_best:
                print(f"ratio with policy / without: {policy_best / sbc_best:.3f}")
    if args.profile and Path(args.profile).exists():
        import pstats

        print(f"\n--- where the sbc spent its time (cProfile, {args.profile}) ---")
        stats = pstats.Stats(args.profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
