#!/usr/bin/env python3
"""Rule engine benchmark: the cost of one decision with the shipped policy, memory vs Redis.

Every decision is what ``sbc run`` does for a request from outside: ``Engine.plan`` (pure),
one ``Store.execute`` round trip with the planned ops, ``Engine.decide``, and the follow-up ops
when the verdict bans or locks.  The traffic is a mix a busy border sees: REGISTERs and
INVITEs from many phones (each address a few requests, so windows and buckets are created and
updated), OPTIONS keepalives, and a new call (``call_start``) per INVITE.  Measured in the same
run: the engine alone with a store that answers from a table (the floor: no store work), the
memory store, and Redis at 127.0.0.1:6379 (skipped, with a note, when none answers), each as
microseconds per decision and decisions per second on one thread.

    python bench/bench_policy.py [--decisions 20000] [--redis redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import glob
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sbc.policy.engine import Engine  # noqa: E402
from sbc.policy.loader import load_rules  # noqa: E402
from sbc.policy.model import CallStarting, PolicyEvent, RequestReceived  # noqa: E402
from sbc.state.base import StoreError  # noqa: E402
from sbc.state.memory import MemoryStore  # noqa: E402

T0 = 1_800_000_000.0


def traffic(n: int) -> list[tuple[float, PolicyEvent]]:
    """``n`` events over ``n / 500`` seconds from 2000 phone addresses (about 500/s)."""
    out: list[tuple[float, PolicyEvent]] = []
    for i in range(n):
        now = T0 + i / 500.0
        phone = i % 2000
        ip = f"198.51.{phone // 250}.{phone % 250 + 1}"
        user = f"{1000 + phone}"
        kind = i % 10
        if kind < 5:
            event: PolicyEvent = RequestReceived(
                source_ip=ip, method="REGISTER", from_user=user, to_user=user,
                ruri_domain="sbc.example.com", user_agent="Yealink SIP-T46U", username=user,
                registered=True)
        elif kind < 8:
            event = RequestReceived(source_ip=ip, method="OPTIONS", from_user=user,
                                    user_agent="Yealink SIP-T46U", registered=True)
        elif kind == 8:
            event = RequestReceived(source_ip=ip, method="INVITE", from_user=user,
                                    ruri_user="0033123456789", user_agent="Yealink SIP-T46U",
                                    registered=True)
        else:
            event = CallStarting(source_ip=ip, call_id=f"c{i}", account=user,
                                 destination="0033123456789", from_user=user,
                                 ruri_user="0033123456789", registered=True)
        out.append((now, event))
    return out


class TableStore:
    """Answers each op with the result the memory store gave it once: the engine's own cost."""

    def __init__(self, answers: dict[tuple[object, ...], list[object]]) -> None:
        self.answers = answers

    def execute(self, ops, now):  # type: ignore[no-untyped-def]
        return self.answers[tuple(ops)]


def run(engine: Engine, store, events) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Seconds for all decisions, and how many were not 'allow'."""
    refused = 0
    start = time.perf_counter()
    for now, event in events:
        plan = engine.plan(event, now)
        try:
            results = store.execute(plan.ops, now) if plan.ops else []
        except StoreError as exc:
            verdict = engine.decide_failed(plan, exc, now)
        else:
            verdict = engine.decide(plan, results, now)
        followup = verdict.followup_ops()
        if followup:
            store.execute(followup, now)
        refused += not verdict.allowed
    return time.perf_counter() - start, refused


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--decisions", type=int, default=20000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15",
                    help="a Redis to measure against (its keys under a bench prefix)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per store; the best is kept")
    args = ap.parse_args()

    paths = sorted(glob.glob(str(REPO / "rules" / "*.yaml")))
    ruleset = load_rules(paths)
    events = traffic(args.decisions)
    print(f"shipped policy: {ruleset.summary()}; {len(events)} decisions "
          f"(50% REGISTER, 30% OPTIONS, 10% INVITE, 10% call_start, 2000 sources)")

    def engine() -> Engine:
        return Engine(load_rules(paths), ["127.0.0.1/32"])

    # The floor: record the memory store's answers, then replay them from a table.
    recorder = MemoryStore()
    answers: dict[tuple[object, ...], list[object]] = {}

    class Recording:
        def execute(self, ops, now):  # type: ignore[no-untyped-def]
            result = recorder.execute(ops, now)
            answers[tuple(ops)] = result
            return result

    run(engine(), Recording(), events)
    rows = []
    best = min(run(engine(), TableStore(answers), events)[0] for _ in range(args.repeat))
    rows.append(("engine only (answers from a table)", best, None))
    times = []
    refused = 0
    for _ in range(args.repeat):
        seconds, refused = run(engine(), MemoryStore(), events)
        times.append(seconds)
    rows.append(("memory store", min(times), refused))

    try:
        from sbc.state.redis_store import RedisStore

        prefix = f"sbcbench{int(time.time())}:"
        redis_times = []
        for n in range(args.repeat):
            store = RedisStore.from_url(args.redis, clock=time.monotonic,
                                        prefix=f"{prefix}{n}:")
            store.ping()
            seconds, refused_redis = run(engine(), store, events)
            redis_times.append(seconds)
            client = store._client  # noqa: SLF001 -- clean up the bench's own keys
            if client is not None:
                for key in client.scan_iter(f"{prefix}{n}:*", count=1000):
                    client.delete(key)
            store.close()
        rows.append((f"redis ({args.redis}, one round trip per decision)", min(redis_times),
                     refused_redis))
    except (StoreError, OSError, ImportError) as exc:
        print(f"redis: not measured ({exc})")

    floor = rows[0][1]
    print(f"{'store':52} {'us/decision':>12} {'decisions/s':>12} {'vs floor':>9} {'refused':>8}")
    for name, seconds, refused_n in rows:
        per = seconds / len(events) * 1e6
        print(f"{name:52} {per:12.1f} {len(events) / seconds:12.0f} "
              f"{seconds / floor:9.2f} {'' if refused_n is None else refused_n:>8}")
    print(f"(median of the memory runs: {statistics.median(times) / len(events) * 1e6:.1f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
