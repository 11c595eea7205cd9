"""The engine: plan then decide, every algorithm against the memory store with explicit time,
levels, observe mode, store failures, trusted peers, emergency numbers, bans that escalate,
account locks, the evidence recorded, and the order of evaluation."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from sbc.policy.engine import Engine, ban_key
from sbc.policy.loader import RuleSet, parse_rules
from sbc.policy.model import (
    ALLOW,
    AuthFailed,
    CallEnded,
    CallStarting,
    CallTick,
    ConnectionOpened,
    EndCallsOf,
    Firing,
    MessageMalformed,
    PolicyEvent,
    RequestReceived,
    ResponseSent,
    Verdict,
)
from sbc.policy.tz import days_from_civil
from sbc.state.base import (
    DistinctHit,
    FixedWindowHit,
    GetBan,
    LeaseAcquire,
    LeaseCount,
    LeaseRelease,
    LeaseRenew,
    Op,
    Result,
    SetBan,
    SlidingWindowHit,
    StatIncr,
    StoreError,
    TokenBucketTake,
)
from sbc.state.cache import LocalBanCache
from sbc.state.memory import MemoryStore

T0 = days_from_civil(2030, 1, 7) * 86400.0  # a Monday, 00:00 UTC; windows align on it
PBX = "10.0.0.5"
ATTACKER = "198.51.100.7"


def rules(text: str) -> RuleSet:
    return parse_rules(textwrap.dedent(text))


class Harness:
    """An engine over a memory store whose bans feed a local cache, as the edge wires them."""

    def __init__(self, text: str, trusted: Sequence[str] = ("10.0.0.0/24",)) -> None:
        self.engine = Engine(rules(text), list(trusted))
        self.store = MemoryStore()
        self.cache = LocalBanCache()
        self.store.subscribe_bans(self.cache.apply)

    def __call__(self, event: PolicyEvent, now: float = T0) -> Verdict:
        return self.engine.evaluate(event, now, self.store)

    def run(self, ops: Sequence[Op], now: float = T0) -> list[Result]:
        return self.store.execute(ops, now)


class FailingStore(MemoryStore):
    """A store whose backend is down: every execute raises StoreError."""

    def execute(self, ops: Sequence[Op], now: float) -> list[Result]:
        raise StoreError("connection refused")


def request(source: str = ATTACKER, method: str = "REGISTER", **fields: object) -> RequestReceived:
    return RequestReceived(source_ip=source, method=method, **fields)  # type: ignore[arg-type]


def call(call_id: str = "c1", account: str | None = "alice", destination: str = "+4420794600",
         source: str = ATTACKER, **fields: object) -> CallStarting:
    return CallStarting(source_ip=source, call_id=call_id, account=account,  # type: ignore[arg-type]
                        destination=destination, **fields)


def only(verdict: Verdict) -> Firing:
    (firing,) = verdict.fired
    return firing


# -- algorithms ----------------------------------------------------------------------------------


def test_fixed_window_rejects_past_the_limit_until_the_next_window() -> None:
    """A fixed window allows `limit` hits per aligned window, rejects the next, and resets."""
    h = Harness("""\
        rules:
          - id: reg
            on: request
            count: {key: source_ip, algorithm: fixed_window, window: 10s, limit: 3}
            actions: [{reject: {code: 429, retry_after: auto}}]
        """)
    assert [h(request(), T0 + i).action for i in range(4)] == ["allow"] * 3 + ["reject"]
    refused = h(request(), T0 + 4)
    assert (refused.code, refused.reason, refused.retry_after) == (429, "Too Many Requests", 6.0)
    assert only(refused).counts == {"limit": 3.0, "window": 10.0, "count": 3.0,
                                    "retry_after": 6.0}
    assert h(request(), T0 + 10).allowed
    assert h(request(source="198.51.100.8"), T0 + 5).allowed  # another source, another key


def test_sliding_window_weighs_the_previous_window() -> None:
    """A sliding window still counts the previous window's hits, weighted by its overlap."""
    h = Harness("""\
        rules:
          - id: reg
            on: request
            count: {key: source_ip, algorithm: sliding_window, window: 10s, limit: 4}
            actions: [reject]
        """)
    assert all(h(request(), T0 + 9).allowed for _ in range(4))
    assert not h(request(), T0 + 10).allowed  # previous window weighs 4 * 1.0
    assert h(request(), T0 + 15).allowed  # 4 * 0.5 + 0 + 1 = 3
    assert h(request(), T0 + 15).allowed  # 4
    assert not h(request(), T0 + 15).allowed


def test_token_bucket_refills_at_its_rate() -> None:
    """A token bucket passes a burst, then one hit per 1/rate seconds."""
    h = Harness("""\
        rules:
          - id: conn
            on: connection
            count: {key: source_net24, algorithm: token_bucket, rate: 1/s, burst: 3}
            actions: [drop]
        """)
    event = ConnectionOpened(source_ip=ATTACKER, transport="tls")
    assert [h(event, T0).action for _ in range(4)] == ["allow"] * 3 + ["drop"]
    assert only(h(event, T0)).key == "198.51.100.0/24"
    assert h(ConnectionOpened(source_ip="198.51.100.99"), T0).action == "drop"  # same /24
    assert h(event, T0 + 1).allowed
    assert not h(event, T0 + 1).allowed


ENUMERATION = """\
    rules:
      - id: enum
        description: Not found for many users.
        on: response
        match:
          status: [404]
        count: {key: source_ip, distinct: to_user, algorithm: sliding_window, window: 10m,
                limit: 3, warning: 1}
        actions: [ban]
    """


def not_found(to_user: str | None, source: str = ATTACKER, **fields: object) -> ResponseSent:
    return ResponseSent(source_ip=source, method="REGISTER", status=404,  # type: ignore[arg-type]
                        to_user=to_user, **fields)


def test_distinct_counts_different_values_not_events() -> None:
    """A phone retrying one wrong user counts once; the fourth user within the window bans,
    with the distinct count as evidence; repeats change nothing."""
    h = Harness(ENUMERATION)
    assert all(h(not_found("2001"), T0 + i) is ALLOW for i in range(1, 50))
    warned = h(not_found("2002"), T0 + 60)
    assert [(f.level, f.counts["count"]) for f in warned.fired] == [("warning", 2)]
    assert warned.bans == ()
    assert h(not_found("2002"), T0 + 61) is ALLOW  # not new: no second warning
    assert h(not_found("2003"), T0 + 62) is ALLOW
    critical = h(not_found("2004"), T0 + 63)
    # 2001 was last seen at T0 + 49: the window has room again at T0 + 649.
    assert only(critical) == Firing(
        "enum", "enforce", "critical", ATTACKER,
        {"limit": 3.0, "window": 600.0, "warning": 1.0, "count": 4, "retry_after": 586.0},
        ("ban 600s x2 source_ip",), "", "Not found for many users.")
    assert critical.bans == (SetBan(f"ip:{ATTACKER}", 600.0, "enum",
                                    f"key={ATTACKER} limit=3 window=600 warning=1 count=4 "
                                    "retry_after=586", 2.0, 604800.0, 86400.0),)
    assert h(not_found("2005", source="198.51.100.8"), T0 + 63) is ALLOW  # another key
    assert h(not_found("2003"), T0 + 64) is ALLOW  # already counted


def test_distinct_values_leave_the_window_after_their_last_sighting() -> None:
    """A value counts until ``window`` after it was last seen; then new ones fit again."""
    h = Harness(ENUMERATION.replace("warning: 1", "warning: 2"))
    for n, user in enumerate(["2001", "2002", "2003"]):
        assert h(not_found(user), T0 + n).bans == ()
    assert h(not_found("2001"), T0 + 300).bans == ()  # 2001 stays until T0 + 900
    assert h(not_found("2004"), T0 + 600.5).bans != ()  # 2001, 2002 (T0 + 1), 2003 still in
    assert h(not_found("2004"), T0 + 601).fired[0].counts["count"] == 3  # 2002 left
    assert h(not_found("2005"), T0 + 601).bans != ()  # 2001, 2003, 2004


def test_distinct_plan_skips_unknown_values_and_bounds_long_ones() -> None:
    """An event without the field is not counted; long values are hashed, domains lowered and
    addresses normalised before they are counted."""
    engine = Engine(rules(ENUMERATION))
    assert engine.plan(not_found(None), T0).ops == ()
    assert engine.plan(not_found(""), T0).ops == ()
    assert engine.plan(not_found("2001"), T0).ops == (
        DistinctHit(f"policy:enum:{ATTACKER}", "2001", 600.0, 3),)
    (op,) = engine.plan(not_found("9" * 1000), T0).ops
    assert isinstance(op, DistinctHit) and op.member.startswith("h:") and len(op.member) == 34
    h = Harness("""\
        rules:
          - id: domains
            on: request
            count: {key: source_ip, distinct: from_domain, algorithm: sliding_window,
                    window: 1h, limit: 1}
            actions: [drop]
        """)
    assert h(request(from_domain="Example.COM")).allowed
    assert h(request(from_domain="example.com")).allowed
    assert h(request(from_domain="example.org")).action == "drop"


def test_distinct_sources_per_user_bans_each_new_source_past_the_limit() -> None:
    """Counting distinct source addresses per username (credential stuffing): the third
    address bans, an IPv4-mapped address is the same address, and known ones are not banned."""
    h = Harness("""\
        rules:
          - id: stuffing
            on: auth_failure
            count: {key: username, distinct: source_ip, algorithm: sliding_window, window: 1h,
                    limit: 2}
            actions: [ban]
        """)

    def failure(source: str, now: float) -> Verdict:
        return h(AuthFailed(source_ip=source, method="REGISTER", username="2001"), now)

    assert failure("192.0.2.1", T0).bans == ()
    assert failure("::ffff:192.0.2.1", T0 + 1).bans == ()
    assert failure("2001:db8::1", T0 + 2).bans == ()
    third = failure("192.0.2.3", T0 + 3)
    assert [b.key for b in third.bans] == ["ip:192.0.2.3"] and only(third).key == "2001"
    assert failure("192.0.2.1", T0 + 4).bans == ()


def test_distinct_reject_retry_after_auto() -> None:
    """A request rule refusing a new value past the limit answers with the time until the
    oldest value leaves the window, rounded up."""
    h = Harness("""\
        rules:
          - id: callees
            on: request
            match: {method: INVITE}
            count: {key: source_ip, distinct: ruri_user, algorithm: sliding_window, window: 1m,
                    limit: 2}
            actions: [{reject: {code: 403, retry_after: auto}}]
        """)
    assert h(request(method="INVITE", ruri_user="100"), T0 + 0.5).allowed
    assert h(request(method="INVITE", ruri_user="101"), T0 + 10).allowed
    refused = h(request(method="INVITE", ruri_user="102"), T0 + 20)
    assert (refused.action, refused.code, refused.retry_after) == ("reject", 403, 41.0)
    assert h(request(method="INVITE", ruri_user="100"), T0 + 20).allowed


CONCURRENT = """\
    rules:
      - id: concurrent
        on: call_start
        count: {key: account, algorithm: concurrent, limit: 2, ttl: 2m}
        actions: [{reject: {code: 486, reason: Busy Here}}]
    """


def test_concurrent_calls_hold_leases_until_the_call_ends() -> None:
    """Concurrent calls take a lease each; the one past the limit is refused; call_end frees."""
    h = Harness(CONCURRENT)
    assert h(call("c1")).allowed and h(call("c2")).allowed
    refused = h(call("c3"))
    assert (refused.action, refused.code, refused.rule_id) == ("reject", 486, "concurrent")
    assert only(refused).counts == {"limit": 2.0, "count": 2}
    assert h(call("c4", account="bob")).allowed
    ended = h(CallEnded(source_ip=ATTACKER, call_id="c1", account="alice", duration=30.0))
    assert ended is ALLOW
    assert h(call("c3"), T0 + 1).allowed


def test_concurrent_leases_are_renewed_by_ticks_and_expire_without() -> None:
    """Call ticks renew a call's lease; a call that stops ticking frees its slot after ttl."""
    h = Harness(CONCURRENT)
    h(call("c1"))
    h(call("c2"))
    for t in (60, 120, 180):
        h(CallTick(source_ip=ATTACKER, call_id="c1", account="alice", duration=t), T0 + t)
    count = h.run([LeaseCount("policy:concurrent:alice")], T0 + 180)[0]
    assert count.count == 1  # c2 never ticked: expired after 2m; c1 is alive
    assert h(call("c3"), T0 + 180).allowed


def test_plan_for_tick_and_end_renews_and_releases() -> None:
    """Ticks plan a LeaseRenew and ends a LeaseRelease for each concurrent rule."""
    engine = Engine(rules(CONCURRENT))
    tick = engine.plan(CallTick(source_ip=ATTACKER, call_id="c9", account="alice",
                                duration=5.0), T0)
    end = engine.plan(CallEnded(source_ip=ATTACKER, call_id="c9", account="alice"), T0)
    assert tick.ops == (LeaseRenew("policy:concurrent:alice", "c9", 120.0),)
    assert end.ops == (LeaseRelease("policy:concurrent:alice", "c9"),)


def test_refused_call_gives_back_its_leases() -> None:
    """A call refused by one rule gives back the leases other rules took for it."""
    h = Harness(CONCURRENT.rstrip(" ") + """\
      - id: per-day
        on: call_start
        count: {key: account, algorithm: daily, limit: 1}
        actions: [reject]
    """)
    assert h(call("c1")).allowed
    refused = h(call("c2"))
    assert refused.rule_id == "per-day"
    assert refused.cleanup == (LeaseRelease("policy:concurrent:alice", "c2"),)
    assert h.run([LeaseCount("policy:concurrent:alice")])[0].count == 1


def test_daily_counter_resets_at_local_midnight() -> None:
    """A daily counter resets at midnight in the rule's zone, not at UTC midnight."""
    h = Harness("""\
        rules:
          - id: per-day
            on: call_start
            timezone: "+10:00"
            count: {key: account, algorithm: daily, limit: 2}
            actions: [reject]
        """)
    before = T0 + 13 * 3600.0  # 23:00 local
    assert h(call("a"), before).allowed and h(call("b"), before).allowed
    assert not h(call("c"), before + 1800).allowed  # 23:30 local, 13:30 UTC
    assert h(call("d"), T0 + 14 * 3600.0).allowed  # 00:00 local: a new day
    plan = h.engine.plan(call("f"), T0 + 14 * 3600.0)
    (op,) = [o for o in plan.ops if isinstance(o, StatIncr)]
    day = days_from_civil(2030, 1, 8)
    assert op.key == f"policy:per-day:alice@{day}"
    assert op.ttl == 86400.0 + 3600.0


def test_sequential_calls_to_the_same_number() -> None:
    """Repeated calls by one account to one number within the window fire; others do not."""
    h = Harness("""\
        rules:
          - id: same-number
            on: call_start
            count: {key: account, algorithm: sequential_same_destination, window: 10m, limit: 2}
            actions: [{tarpit: {delay: 5s, code: 486}}]
        """)
    assert h(call("1", destination="+331")).allowed and h(call("2", destination="+331")).allowed
    assert h(call("3", destination="+332")).allowed
    held = h(call("4", destination="+331"))
    assert (held.action, held.delay, held.code) == ("tarpit", 5.0, 486)
    assert only(held).key == "alice"


def test_max_call_duration_warning_then_critical() -> None:
    """Call ticks alert once when a call passes the warning duration and end it past the limit."""
    h = Harness("""\
        rules:
          - id: max-duration
            on: call_tick
            count: {algorithm: duration, limit: 1h, warning: 30m}
            actions: [{end_calls: {key: call}}, alert]
        """)

    def tick(duration: float) -> Verdict:
        return h(CallTick(source_ip=ATTACKER, call_id="c1", account="alice", duration=duration,
                          interval=60.0), T0 + duration)

    assert tick(1740.0) is ALLOW
    warned = tick(1860.0)
    assert warned.allowed and [(a.level, a.rule_id) for a in warned.alerts] == [
        ("warning", "max-duration")]
    assert only(warned).counts == {"duration": 1860.0, "limit": 3600.0, "warning": 1800.0}
    assert tick(1920.0) is ALLOW  # the warning is raised once, when crossed
    ended = tick(3660.0)
    assert ended.end_calls == (EndCallsOf("call", "c1", "max-duration"),)
    assert [a.level for a in ended.alerts] == ["critical"]
    assert only(ended).key == "c1"


# -- levels and evidence -------------------------------------------------------------------------


def test_warning_level_alerts_once_and_critical_acts() -> None:
    """Past the warning level an alert is raised once; past the limit the actions apply."""
    h = Harness("""\
        rules:
          - id: brute-force
            description: Password guessing.
            on: auth_failure
            count: {key: [source_ip, username], algorithm: fixed_window, window: 1m,
                    limit: 4, warning: 2}
            actions: [ban, {alert: {level: critical}}]
        """)
    failure = AuthFailed(source_ip=ATTACKER, method="REGISTER", username="1001")
    verdicts = [h(failure, T0 + i) for i in range(5)]
    assert [[f.level for f in v.fired] for v in verdicts] == [
        [], [], ["warning"], [], ["critical"]]
    warning = verdicts[2]
    assert warning.alerts[0].message == "brute-force: Password guessing."
    assert warning.bans == () and warning.allowed
    critical = verdicts[4]
    assert only(critical) == Firing(
        "brute-force", "enforce", "critical", f"{ATTACKER}|1001",
        {"limit": 4.0, "window": 60.0, "warning": 2.0, "count": 4.0, "retry_after": 56.0},
        ("ban 600s x2 source_ip", "alert critical"), "", "Password guessing.")
    assert critical.bans == (SetBan(f"ip:{ATTACKER}", 600.0, "brute-force",
                                    f"key={ATTACKER}|1001 limit=4 window=60 warning=2 count=4 "
                                    "retry_after=56", 2.0, 604800.0, 86400.0),)


def test_match_only_rule_fires_on_every_match() -> None:
    """A rule without count fires each time it matches, keyed by the source."""
    h = Harness("""\
        rules:
          - id: scanner
            on: request
            match: {user_agent: friendly-scanner}
            actions: [drop]
        """)
    verdict = h(request(user_agent="friendly-scanner"))
    assert verdict.action == "drop" and only(verdict).key == ATTACKER
    assert h(request(user_agent="Zoiper")) is ALLOW


def test_most_severe_disposition_wins() -> None:
    """Of several enforcing rules, drop beats tarpit beats reject; equals keep the first."""
    h = Harness("""\
        rules:
          - {id: r1, on: request, actions: [{reject: {code: 403}}]}
          - {id: r2, on: request, actions: [{reject: {code: 429}}]}
          - {id: t, on: request, match: {method: INVITE}, actions: [tarpit]}
          - {id: d, on: request, match: {method: OPTIONS}, actions: [drop]}
        """)
    assert (h(request(method="REGISTER")).rule_id, h(request(method="REGISTER")).code) == (
        "r1", 403)
    assert h(request(method="INVITE")).action == "tarpit"
    verdict = h(request(method="OPTIONS"))
    assert verdict.action == "drop" and verdict.rule_id == "d"
    assert [f.rule_id for f in verdict.fired] == ["r1", "r2", "d"]


# -- observe mode --------------------------------------------------------------------------------


def test_observe_mode_records_what_it_would_do() -> None:
    """An observe rule counts and records its would-be actions, and changes nothing."""
    h = Harness("""\
        rules:
          - id: flood
            on: request
            mode: observe
            count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 1}
            actions: [reject, ban, alert]
        """)
    assert h(request()) is ALLOW
    verdict = h(request())
    assert verdict.allowed and verdict.rule_id == ""
    assert verdict.bans == () and verdict.alerts == ()
    firing = only(verdict)
    assert (firing.mode, firing.level, firing.actions) == (
        "observe", "critical", ("reject 403", "ban 600s x2 source_ip", "alert critical"))
    assert h.run([GetBan(f"ip:{ATTACKER}")])[0].ban is None


# -- store failures ------------------------------------------------------------------------------

FAILURE_RULES = """\
    rules:
      - id: open-rule
        on: request
        fail: open
        count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 10}
        actions: [reject, ban]
      - id: closed-rule
        on: request
        fail: closed
        match: {method: INVITE}
        count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 10}
        actions: [{reject: {code: 503}}, ban, alert]
      - id: no-store
        on: request
        match: {user_agent: scanner}
        actions: [drop]
    """


def test_fail_open_skips_the_rule_and_records_it() -> None:
    """When the store fails, a fail-open rule is skipped; its Firing says why."""
    engine = Engine(rules(FAILURE_RULES))
    verdict = engine.evaluate(request(method="REGISTER"), T0, FailingStore())
    assert verdict.allowed
    assert only(verdict) == Firing("open-rule", "enforce", "unknown", ATTACKER, {}, (),
                                   "store failed, fail open (StoreError: connection refused)")


def test_fail_closed_applies_reject_and_alert_but_not_bans() -> None:
    """When the store fails, a fail-closed rule rejects and alerts; bans need the store."""
    engine = Engine(rules(FAILURE_RULES))
    verdict = engine.evaluate(request(method="INVITE"), T0, FailingStore())
    assert (verdict.action, verdict.code, verdict.rule_id) == ("reject", 503, "closed-rule")
    assert verdict.bans == () and [a.rule_id for a in verdict.alerts] == ["closed-rule"]
    closed = [f for f in verdict.fired if f.rule_id == "closed-rule"][0]
    assert closed.level == "unknown" and closed.actions == ("reject 503", "alert critical")
    assert closed.note == ("store failed, fail closed (StoreError: connection refused); "
                           "not applied: ban 600s x2 source_ip (needs the store)")


def test_rules_without_store_ops_still_decide_when_the_store_fails() -> None:
    """A rule that needs no counter decides as usual during a store outage."""
    engine = Engine(rules(FAILURE_RULES))
    plan = engine.plan(request(user_agent="scanner"), T0)
    assert plan.ops == ()  # refused without counting: no round trip at all
    verdict = engine.decide_failed(plan, StoreError("down"), T0)
    assert verdict.action == "drop" and verdict.rule_id == "no-store"


def test_locked_account_is_checked_in_the_cache_when_the_store_fails() -> None:
    """During a store outage an account lock known to the local cache still refuses calls."""
    engine = Engine(rules(CONCURRENT))
    cache = LocalBanCache()
    store = MemoryStore()
    store.subscribe_bans(cache.apply)
    store.execute([SetBan("account:alice", 3600.0, "toll-fraud")], T0)
    plan = engine.plan(call(), T0)
    verdict = engine.decide_failed(plan, StoreError("down"), T0, cache)
    assert (verdict.action, verdict.code, verdict.rule_id) == ("reject", 403, "account-locked")
    assert engine.decide_failed(plan, StoreError("down"), T0).allowed  # no cache: fail open


def test_decide_needs_one_result_per_op() -> None:
    """decide refuses results that do not match the plan's ops."""
    engine = Engine(rules(FAILURE_RULES))
    plan = engine.plan(request(), T0)
    with pytest.raises(ValueError, match="0 results for 1 ops"):
        engine.decide(plan, [], T0)


# -- trusted peers -------------------------------------------------------------------------------

TRUSTED_RULES = """\
    rules:
      - id: flood
        on: request
        count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 1}
        actions: [reject, ban]
      - id: pbx-flood
        on: request
        applies_to_trusted: true
        match: {trusted: true}
        count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 1}
        actions: [{reject: {code: 503}}, ban, alert]
      - id: pbx-fraud
        on: call_start
        applies_to_trusted: true
        actions: [lock_account, end_calls]
    """


def test_trusted_source_skips_rules_by_default() -> None:
    """Rules without applies_to_trusted never see a trusted peer's events."""
    h = Harness(TRUSTED_RULES)
    plan = h.engine.plan(request(source=PBX), T0)
    assert plan.trusted and [s.rule.id for s in plan.steps] == ["pbx-flood"]


def test_trusted_source_is_never_banned_or_locked() -> None:
    """A rule that applies to trusted peers may reject and alert them, never ban or lock."""
    h = Harness(TRUSTED_RULES)
    h(request(source=PBX))
    verdict = h(request(source=PBX))
    assert (verdict.action, verdict.code) == ("reject", 503)
    assert verdict.bans == () and len(verdict.alerts) == 1
    assert only(verdict).note == "not applied: ban 600s x2 source_ip (trusted source)"
    assert h.run([GetBan(f"ip:{PBX}")])[0].ban is None
    fraud = h(call(source=PBX))
    assert fraud.locks == () and fraud.end_calls == (EndCallsOf("account", "alice", "pbx-fraud"),)


def test_pre_parse_never_drops_a_trusted_source() -> None:
    """Even a ban in the cache (an operator's, or stale) never drops a trusted peer."""
    h = Harness(TRUSTED_RULES)
    h.run([SetBan(f"ip:{PBX}", 600.0, "manual"), SetBan("net:10.0.0.0/24", 600.0, "manual")])
    assert h.engine.pre_parse(PBX, T0, h.cache) is None
    assert h.engine.pre_parse("10.0.0.200", T0, h.cache) is None  # trusted: 10.0.0.0/24


def test_trusted_callable() -> None:
    """Trust may be given as a callable instead of networks."""
    engine = Engine(rules(TRUSTED_RULES), lambda ip: ip == ATTACKER)
    assert engine.is_trusted(ATTACKER) and not engine.is_trusted(PBX)


# -- emergency numbers ---------------------------------------------------------------------------

EMERGENCY_RULES = """\
    rules:
      - id: after-hours
        on: call_start
        actions: [reject, ban, lock_account, alert]
      - id: per-day
        on: call_start
        count: {key: account, algorithm: daily, limit: 1}
        actions: [reject, end_calls]
      - id: max-duration
        on: call_tick
        count: {algorithm: duration, limit: 10m}
        actions: [{end_calls: {key: call}}]
      - id: invite-flood
        on: request
        match: {method: INVITE}
        count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 1}
        actions: [drop]
    """


@pytest.mark.parametrize("number", ["112", "911", "999", "000", "15", "17", "18", "110"])
def test_emergency_calls_are_never_blocked_by_call_rules(number: str) -> None:
    """A call to an emergency number passes every call rule; the alert and evidence remain."""
    h = Harness(EMERGENCY_RULES)
    verdict = h(call(destination=number))
    assert verdict.allowed and verdict.bans == () and verdict.locks == ()
    assert [a.rule_id for a in verdict.alerts] == ["after-hours"]
    assert verdict.fired[0].note == (
        "not applied: reject 403 (emergency number), ban 600s x2 source_ip (emergency number),"
        " lock_account 86400s (emergency number)")
    again = h(call("c2", destination=number))
    assert again.allowed and again.end_calls == ()
    tick = h(CallTick(source_ip=ATTACKER, call_id="c1", duration=3600.0, destination=number))
    assert tick.end_calls == ()


def test_emergency_calls_pass_a_locked_account() -> None:
    """A locked account can still call an emergency number, and nothing else."""
    h = Harness(CONCURRENT)
    h.run([SetBan("account:alice", 3600.0, "fraud")])
    assert h(call(destination="112")).allowed
    assert h(call(destination="+4420")).rule_id == "account-locked"


def test_emergency_list_is_overridable() -> None:
    """settings.emergency_numbers replaces the default list."""
    h = Harness(EMERGENCY_RULES.rstrip(" ") + "    settings: {emergency_numbers: ['111']}\n")
    assert h(call(destination="111")).allowed
    assert not h(call("c2", destination="112")).allowed


def test_request_flood_rules_still_apply_to_emergency_invites() -> None:
    """Per-source request limits still hold for INVITEs to 112 (a flood is no emergency)."""
    h = Harness(EMERGENCY_RULES)
    assert h(request(method="INVITE", ruri_user="112")).allowed
    assert h(request(method="INVITE", ruri_user="112")).action == "drop"


# -- bans, escalation and locks ------------------------------------------------------------------

BAN_RULES = """\
    rules:
      - id: scanner
        on: request
        match: {user_agent: sipvicious}
        actions: [drop, {ban: {duration: 10m, factor: 2, max_duration: 30m, decay: 1d}}]
      - id: subnet
        on: malformed
        count: {key: source_net24, algorithm: fixed_window, window: 1m, limit: 0}
        actions: [drop, {ban: {duration: 1m, key: source_net24}}]
    """


def test_ban_escalates_through_the_store() -> None:
    """Each ban not yet decayed doubles the next, up to max_duration (fail2ban increment)."""
    h = Harness(BAN_RULES)
    scan = request(user_agent="sipvicious")
    durations = []
    now = T0
    for _ in range(4):
        assert h(scan, now).bans[0].key == f"ip:{ATTACKER}"
        ban = h.run([GetBan(f"ip:{ATTACKER}")], now)[0]
        assert ban.ban is not None
        durations.append(ban.ban.until - now)
        now = ban.ban.until + 1
    assert durations == [600.0, 1200.0, 1800.0, 1800.0]


def test_banned_source_is_dropped_before_parsing() -> None:
    """A ban set by a rule reaches the local cache; pre_parse drops the source at once."""
    h = Harness(BAN_RULES)
    assert h.engine.pre_parse(ATTACKER, T0, h.cache) is None
    h(request(user_agent="sipvicious"))
    verdict = h.engine.pre_parse(ATTACKER, T0 + 1, h.cache)
    assert verdict is not None and verdict.action == "drop" and verdict.rule_id == "banned"
    assert only(verdict) == Firing("banned", "enforce", "critical", f"ip:{ATTACKER}",
                                   {"until": T0 + 600}, ("drop",))
    assert h.engine.pre_parse(f"::ffff:{ATTACKER}", T0 + 1, h.cache) is not None
    assert h.engine.pre_parse(ATTACKER, T0 + 600, h.cache) is None


def test_subnet_ban_drops_the_whole_net24() -> None:
    """A source_net24 ban drops every address of the /24 before parsing."""
    h = Harness(BAN_RULES)
    verdict = h(MessageMalformed(source_ip=ATTACKER, reason="bad Via"))
    assert verdict.bans[0].key == "net:198.51.100.0/24"
    assert h.engine.pre_parse("198.51.100.200", T0, h.cache) is not None
    assert h.engine.pre_parse("198.51.101.1", T0, h.cache) is None


def test_critical_toll_fraud_ends_calls_and_locks_the_account() -> None:
    """Critical toll fraud ends the account's calls and locks it; its next call is refused."""
    h = Harness("""\
        lists:
          premium: {kind: prefixes, items: ["+1900", "+882"]}
        rules:
          - id: concurrent
            on: call_start
            count: {key: account, algorithm: concurrent, limit: 10}
            actions: [reject]
          - id: toll-fraud
            on: call_start
            match: {destination_prefix: {list: premium}}
            count: {key: [account, destination_prefix], algorithm: fixed_window, window: 1m,
                    limit: 1}
            actions: [reject, end_calls, {lock_account: {duration: 1h}}, alert]
        """)
    assert h(call("c1", destination="+19005550100")).allowed
    fraud = h(call("c2", destination="+19005550101"))
    assert (fraud.action, fraud.rule_id) == ("reject", "toll-fraud")
    assert fraud.end_calls == (EndCallsOf("account", "alice", "toll-fraud"),)
    assert fraud.locks == (SetBan("account:alice", 3600.0, "toll-fraud",
                                  "key=alice|+1900 limit=1 window=60 count=1 retry_after=60"),)
    assert fraud.fired[-1].key == "alice|+1900"
    locked = h(call("c3", destination="+4420"), T0 + 1)
    assert (locked.action, locked.code, locked.rule_id) == ("reject", 403, "account-locked")
    assert locked.fired[0].note == "locked by toll-fraud"
    assert locked.cleanup == (LeaseRelease("policy:concurrent:alice", "c3"),)
    assert h(call("c4", account="bob", destination="+4420"), T0 + 1).allowed


# -- order of evaluation -------------------------------------------------------------------------


def test_cheap_per_source_limits_are_planned_first() -> None:
    """Ops are planned per source first, then other keys, daily counters, then leases."""
    engine = Engine(rules("""\
        rules:
          - {id: lease, on: call_start, count: {key: account, algorithm: concurrent, limit: 5},
             actions: [reject]}
          - {id: daily, on: call_start, count: {key: account, algorithm: daily, limit: 5},
             actions: [reject]}
          - {id: per-account, on: call_start, actions: [reject],
             count: {key: account, algorithm: sliding_window, window: 1m, limit: 5}}
          - {id: per-source, on: call_start, actions: [reject],
             count: {key: source_ip, algorithm: token_bucket, rate: 1, burst: 5}}
          - {id: per-net, on: call_start, actions: [reject],
             count: {key: source_net24, algorithm: fixed_window, window: 1m, limit: 5}}
        """))
    plan = engine.plan(call(), T0)
    assert [type(op) for op in plan.ops] == [GetBan, TokenBucketTake, FixedWindowHit,
                                            SlidingWindowHit, StatIncr, LeaseAcquire]
    assert [s.rule.id for s in plan.steps] == ["per-source", "per-net", "per-account", "daily",
                                               "lease"]


def test_a_refusing_rule_without_count_saves_the_round_trip() -> None:
    """When a rule without count already refuses, no counter is planned (no store trip)."""
    engine = Engine(rules("""\
        rules:
          - {id: counted, on: request, actions: [alert],
             count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 5}}
          - {id: scanner, on: request, match: {user_agent: sipvicious}, actions: [drop]}
        """))
    plan = engine.plan(request(user_agent="sipvicious"), T0)
    assert plan.ops == () and plan.skipped == ("counted",)
    assert engine.decide(plan, [], T0).action == "drop"
    assert len(engine.plan(request(user_agent="zoiper"), T0).ops) == 1


def test_allow_rule_skips_the_rules_declared_after_it() -> None:
    """An enforcing allow rule that matches skips every later rule; earlier ones still apply."""
    engine = Engine(rules("""\
        rules:
          - {id: before, on: request, match: {method: OPTIONS}, actions: [alert]}
          - {id: office, on: request, match: {source: 192.0.2.0/24}, actions: [allow]}
          - {id: after, on: request, actions: [drop]}
        """))
    office = engine.evaluate(request(source="192.0.2.9", method="OPTIONS"), T0, MemoryStore())
    assert office.allowed and [f.rule_id for f in office.fired] == ["before", "office"]
    assert engine.evaluate(request(), T0, MemoryStore()).action == "drop"


def test_unknown_key_fields_are_not_counted() -> None:
    """An event without the field a counter is keyed by is not counted by that rule."""
    engine = Engine(rules(CONCURRENT))
    assert engine.plan(call(account=None), T0).ops == ()


def test_long_key_parts_are_hashed() -> None:
    """A very long account name is hashed in the store key, keeping keys bounded."""
    engine = Engine(rules(CONCURRENT))
    plan = engine.plan(call(account="a" * 1000), T0)
    (op,) = [o for o in plan.ops if isinstance(o, LeaseAcquire)]
    assert op.key.startswith("policy:concurrent:h:") and len(op.key) < 64
    assert ban_key("account", "a" * 1000).startswith("account:h:")


# -- rule set replacement and feeds --------------------------------------------------------------


def test_replace_keeps_fetched_feeds_and_old_plans_decide_with_their_rules() -> None:
    """A new rule set takes over; feeds keep their content; a pending plan keeps its rules."""
    text = """\
        feeds:
          bad: {url: 'https://feeds.example/bad.txt'}
        rules:
          - {id: feed, on: request, match: {source: {list: bad}}, actions: [drop]}
        """
    engine = Engine(rules(text))
    assert engine.evaluate(request(), T0, MemoryStore()).allowed
    assert [f.name for f in engine.feeds_due(T0)] == ["bad"]
    engine.ruleset.apply_feed("bad", f"{ATTACKER}\n", T0)
    pending = engine.plan(request(), T0)
    engine.replace(rules(text.replace("drop]", "alert]")))
    assert engine.evaluate(request(), T0, MemoryStore()).fired[0].actions == ("alert critical",)
    assert engine.decide(pending, [], T0).action == "drop"
    assert engine.feeds_due(T0) == []


def test_events_of_other_kinds_are_not_evaluated() -> None:
    """A rule applies only to its event kind."""
    engine = Engine(rules("rules:\n  - {id: r, on: response, actions: [ban]}\n"))
    assert engine.evaluate(request(), T0, MemoryStore()) is ALLOW
    sent = ResponseSent(source_ip=ATTACKER, method="REGISTER", status=404, to_user="100")
    assert engine.evaluate(sent, T0, MemoryStore()).bans[0].key == f"ip:{ATTACKER}"


def test_hot_reload_is_all_or_nothing(tmp_path: Path) -> None:
    """A reload with a broken file keeps the rules in force and returns every error."""
    good = tmp_path / "a.yaml"
    good.write_text("rules:\n  - {id: old, on: request, actions: [drop]}\n")
    other = tmp_path / "b.yaml"
    other.write_text("rules: []\n")
    engine = Engine(rules(""))
    assert engine.reload([good, other]) is None
    assert engine.evaluate(request(), T0, MemoryStore()).rule_id == "old"
    good.write_text("rules:\n  - {id: new, on: request, actions: [reject]}\n")
    other.write_text("rules:\n  - {id: broken, on: request}\n")
    errors = engine.reload([good, other])
    assert errors is not None and [str(e) for e in errors] == [
        f"{other}:2:5: rules[0].actions: missing required key 'actions' (expected a list of "
        "actions: allow, reject, drop, tarpit, ban, end_calls, lock_account, alert)"]
    assert engine.evaluate(request(), T0, MemoryStore()).rule_id == "old"
    other.write_text("")
    assert engine.reload([good, other]) is None
    assert engine.evaluate(request(), T0, MemoryStore()).rule_id == "new"
