#!/usr/bin/env python3
"""Long unattended fuzz run of the SIP parser (sbc.sip): datagrams, streams and URIs.

Uses the oracle, the corpus, the mutations and the message grammar of
``tests/sip/test_sip_fuzz.py`` (the h11 invariant, the round-trip fixed point, chunking
independence) but drives them from a seeded ``random.Random`` for a time budget, so it can run
for hours without hypothesis' per-example overhead.  Failures are grouped by signature; the
smallest input of each group is printed as a Python bytes literal and, with ``--save``, written
to a file for a regression test.

    python bench/fuzz_sip.py --seconds 600 --seed 1 --save /tmp/sip-fuzz-failures

For the hypothesis version with shrinking: ``HYPOTHESIS_PROFILE=deep pytest
tests/sip/test_sip_fuzz.py``.  Exit status: 0 when no input broke an invariant, 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sip import test_sip_fuzz as fz  # noqa: E402

SLOW_SECONDS = 2.0  # an input taking longer than this is reported as a (near) hang


class Hang(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang()


def one_input(rng: random.Random, c: fz.RandomChoices) -> tuple[str, object]:
    """Pick a kind of input and build one; returns (kind, input)."""
    roll = rng.random()
    if roll < 0.35:
        return "datagram", fz.mutate(c, rng.choice(fz.CORPUS))
    if roll < 0.60:
        return "datagram", fz.sip_message(c)
    if roll < 0.65:
        return "datagram", rng.randbytes(rng.randint(0, 512))
    if roll < 0.85:
        parts = []
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            parts.append(
                fz.sip_message(c)
                if r < 0.4
                else fz.mutate(c, rng.choice(fz.CORPUS))
                if r < 0.8
                else rng.choice(fz.CORPUS + [b"\r\n\r\n", b"\r\n"])
            )
        data = b"".join(parts)
        if rng.random() < 0.2:
            cuts = list(range(1, len(data)))
        else:
            cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(0, 12))]
        return "stream", (data, cuts)
    if roll < 0.93:
        return "uri", fz.mutate_uri(c, rng.choice(fz.CORPUS_URIS))
    return "uri", fz.uri(c)


def check(kind: str, value: object) -> None:
    if kind == "datagram":
        assert isinstance(value, bytes)
        fz.check_datagram(value)
    elif kind == "stream":
        data, cuts = value  # type: ignore[misc]
        fz.check_stream(data, cuts)
    else:
        assert isinstance(value, str)
        fz.check_uri(value)


def signature(exc: BaseException) -> str:
    """Group failures: the broken promise, or the exception type and where it was raised."""
    if isinstance(exc, fz.OracleFailure):
        return exc.key
    tb = exc.__traceback__
    where = "?"
    while tb is not None:
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{type(exc).__name__} at {where}"


def size(value: object) -> int:
    if isinstance(value, tuple):
        return len(value[0])
    return len(value)  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    ap.add_argument("--save", type=Path, default=None, help="write one file per failure group")
    ap.add_argument("--report-every", type=float, default=30.0, help="progress interval (s)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    choices = fz.RandomChoices(rng)
    print(
        f"seed {seed}; corpus {len(fz.CORPUS)} messages, {len(fz.CORPUS_URIS)} URIs; "
        f"budget {args.seconds:.0f} s",
        flush=True,
    )
    use_alarm = hasattr(signal, "SIGALRM")
    if use_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    tried: Counter[str] = Counter()
    failures: dict[str, tuple[str, object, str]] = {}
    counts: Counter[str] = Counter()
    start = last_report = time.monotonic()
    while time.monotonic() - start < args.seconds:
        kind, value = one_input(rng, choices)
        tried[kind] += 1
        t0 = time.monotonic()
        try:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, SLOW_SECONDS * 5)
            check(kind, value)
            elapsed = time.monotonic() - t0
            if elapsed > SLOW_SECONDS:
                raise AssertionError(f"slow input: {elapsed:.1f} s")
        except Hang:
            sig = f"hang: {kind} input ran over {SLOW_SECONDS * 5:.0f} s"
            counts[sig] += 1
            failures.setdefault(sig, (kind, value, "hang"))
        except Exception as exc:  # the point of the run: record anything at all
            sig = f"{kind}: {signature(exc)}"
            counts[sig] += 1
            if sig not in failures or size(value) < size(failures[sig][1]):
                failures[sig] = (kind, value, f"{type(exc).__name__}: {exc}"[:2000])
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
        now = time.monotonic()
        if now - last_report >= args.report_every:
            last_report = now
            print(
                f"[{now - start:6.0f} s] tried {sum(tried.values())} "
                f"({dict(tried)}), failure groups {len(failures)}",
                flush=True,
            )
    total = sum(tried.values())
    elapsed = time.monotonic() - start
    print(f"\ntried {total} inputs in {elapsed:.0f} s ({total / elapsed:.0f}/s): {dict(tried)}")
    if not failures:
        print("no failures")
        return 0
    print(f"{len(failures)} failure group(s):")
    for n, (sig, (kind, value, message)) in enumerate(sorted(failures.items()), 1):
        print(f"\n#{n} [{counts[sig]} inputs] {sig}")
        print(f"  smallest ({kind}, {size(value)} bytes): {value!r}"[:1200])
        print(f"  error: {message}"[:1200])
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            path = args.save / f"failure-{n:03d}.{kind}"
            if isinstance(value, tuple):
                path.write_text(repr(value))
            else:
                path.write_bytes(
                    value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
                )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
