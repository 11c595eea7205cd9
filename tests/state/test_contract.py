"""The store contract: every test runs against the memory store and the Redis store, with
explicit times, and asserts exact values (the ``limits`` project's style)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sbc.state.base import (
    AppendEvent,
    BanNotice,
    BanSnapshot,
    Batch,
    BindingDelete,
    BindingGet,
    BindingPut,
    ClearBan,
    ClearTrust,
    DistinctHit,
    DistinctResult,
    Event,
    FixedWindowHit,
    GetBan,
    GetTrust,
    HitResult,
    LeaseAcquire,
    LeaseCount,
    LeaseRelease,
    LeaseRenew,
    LeaseResult,
    RecentEvents,
    SetBan,
    SetTrust,
    SlidingWindowHit,
    StatGet,
    StatIncr,
    StatsResult,
    Store,
    TokenBucketTake,
    TrustResult,
)
from tests.state.conftest import wait_until


def one(store: Store, op: Any, now: float) -> Any:
    return store.execute([op], now)[0]


def hits(store: Store, op: Any, now: float, n: int) -> list[HitResult]:
    return [one(store, op, now) for _ in range(n)]


# -- fixed window --------------------------------------------------------------------------------


def test_fixed_window_allows_limit_then_refuses_until_window_end(store):
    """A fixed window allows ``limit`` hits, then refuses with the time left in the window."""
    op = FixedWindowHit("src:198.51.100.7", window=10.0, limit=3)
    assert [one(store, op, t) for t in (1000.0, 1002.0, 1004.0)] == [
        HitResult(True, 1.0, 2.0, 0.0, 1010.0),
        HitResult(True, 2.0, 1.0, 0.0, 1010.0),
        HitResult(True, 3.0, 0.0, 0.0, 1010.0),
    ]
    assert one(store, op, 1006.0) == HitResult(False, 3.0, 0.0, 4.0, 1010.0)


def test_fixed_window_boundary_belongs_to_the_next_window(store):
    """A hit just before the boundary counts in the old window; at the boundary a new one starts."""
    op = FixedWindowHit("k", window=10.0, limit=1)
    assert one(store, op, 1009.75).allowed
    assert one(store, op, 1009.75) == HitResult(False, 1.0, 0.0, 0.25, 1010.0)
    assert one(store, op, 1010.0) == HitResult(True, 1.0, 0.0, 0.0, 1020.0)


def test_fixed_window_refused_hits_are_not_counted(store):
    """A refused hit leaves the count as it was, so a smaller hit can still fit."""
    assert one(store, FixedWindowHit("k", 10.0, 5, cost=3), 1000.0).count == 3.0
    assert one(store, FixedWindowHit("k", 10.0, 5, cost=3), 1001.0) == HitResult(
        False, 3.0, 2.0, 9.0, 1010.0)
    assert one(store, FixedWindowHit("k", 10.0, 5, cost=2), 1002.0) == HitResult(
        True, 5.0, 0.0, 0.0, 1010.0)


def test_fixed_window_cost_zero_peeks_and_cost_above_limit_never_fits(store):
    """cost=0 reads the count without consuming; a cost above the limit has retry_after inf."""
    one(store, FixedWindowHit("k", 60.0, 4), 1000.0)
    assert one(store, FixedWindowHit("k", 60.0, 4, cost=0), 1001.0) == HitResult(
        True, 1.0, 3.0, 0.0, 1020.0)
    assert one(store, FixedWindowHit("k", 60.0, 4, cost=5), 1001.0) == HitResult(
        False, 1.0, 3.0, math.inf, 1020.0)


def test_fixed_window_keys_are_independent(store):
    """Two keys count separately."""
    one(store, FixedWindowHit("a", 10.0, 1), 1000.0)
    assert one(store, FixedWindowHit("b", 10.0, 1), 1000.0).allowed
    assert not one(store, FixedWindowHit("a", 10.0, 1), 1000.0).allowed


# -- sliding window ------------------------------------------------------------------------------


def test_sliding_window_weights_previous_window(store):
    """The estimate is previous * (remaining fraction of window) + current, exactly."""
    op = SlidingWindowHit("k", window=10.0, limit=10)
    assert one(store, SlidingWindowHit("k", 10.0, 10, cost=10), 1005.0) == HitResult(
        True, 10.0, 0.0, 0.0, 1020.0)
    # Full: the next hit must wait until 9 of the 10 have slid out (t = 1011).
    assert one(store, op, 1005.0) == HitResult(False, 10.0, 0.0, 6.0, 1020.0)
    # 2.5 s into the next window the previous 10 weigh 7.5: two hits fit, the third does not.
    assert hits(store, op, 1012.5, 3) == [
        HitResult(True, 8.5, 1.5, 0.0, 1030.0),
        HitResult(True, 9.5, 0.5, 0.0, 1030.0),
        HitResult(False, 9.5, 0.5, 0.5, 1030.0),
    ]
    assert one(store, op, 1013.0) == HitResult(True, 10.0, 0.0, 0.0, 1030.0)


def test_sliding_window_forgets_after_two_windows(store):
    """The previous window counts in the next one only; two windows later the count is zero."""
    op = SlidingWindowHit("k", window=10.0, limit=100)
    one(store, SlidingWindowHit("k", 10.0, 100, cost=4), 1012.0)
    assert one(store, op, 1025.0) == HitResult(True, 3.0, 97.0, 0.0, 1040.0)  # 4 * 0.5 + 1
    assert one(store, op, 1040.0) == HitResult(True, 1.0, 99.0, 0.0, 1060.0)


def test_sliding_window_does_not_allow_double_limit_across_boundary(store):
    """A burst ending a sliding window blocks a burst just after it; a fixed window does not."""
    one(store, SlidingWindowHit("k", 10.0, 10, cost=10), 1009.0)
    assert not one(store, SlidingWindowHit("k", 10.0, 10, cost=5), 1010.0).allowed
    assert one(store, FixedWindowHit("f", 10.0, 10, cost=10), 1009.0).allowed
    assert one(store, FixedWindowHit("f", 10.0, 10, cost=10), 1010.0).allowed


# -- token bucket --------------------------------------------------------------------------------


def test_token_bucket_burst_then_refill_arithmetic(store):
    """A bucket starts full, gives ``burst`` at once, then refills at ``rate`` per second."""
    op = TokenBucketTake("k", rate=2.0, burst=4.0)
    assert [r.remaining for r in hits(store, op, 100.0, 4)] == [3.0, 2.0, 1.0, 0.0]
    assert one(store, op, 100.0) == HitResult(False, 4.0, 0.0, 0.5, 102.0)
    assert one(store, op, 100.25) == HitResult(False, 3.5, 0.5, 0.25, 102.0)
    assert one(store, op, 100.5) == HitResult(True, 4.0, 0.0, 0.0, 102.5)
    # Long idle: full again, never more than burst.
    assert one(store, op, 1000.0) == HitResult(True, 1.0, 3.0, 0.0, 1000.5)


def test_token_bucket_cost_above_burst_never_fits(store):
    """A take larger than the bucket is refused with retry_after inf, and takes nothing."""
    assert one(store, TokenBucketTake("k", 1.0, 3.0, cost=4), 10.0) == HitResult(
        False, 0.0, 3.0, math.inf, 10.0)
    assert one(store, TokenBucketTake("k", 1.0, 3.0, cost=3), 10.0).allowed


def test_token_bucket_clock_behind_last_update_refills_nothing(store):
    """A node whose clock is behind the bucket's last update gets no tokens from the skew."""
    op = TokenBucketTake("k", rate=1.0, burst=2.0)
    hits(store, op, 100.0, 2)
    assert one(store, op, 99.0) == HitResult(False, 2.0, 0.0, 2.0, 102.0)
    assert one(store, op, 101.0).allowed


# -- distinct members ----------------------------------------------------------------------------


def test_distinct_counts_each_member_once_and_refuses_a_new_one_past_the_limit(store):
    """Repeats count once; the member past the limit is refused until the oldest leaves."""
    def hit(member: str, now: float) -> DistinctResult:
        return one(store, DistinctHit("scan:198.51.100.7", member, window=60.0, limit=3), now)

    assert hit("2001", 1000.0) == DistinctResult(True, 1, True, 0.0)
    assert hit("2002", 1001.0) == DistinctResult(True, 2, True, 0.0)
    assert hit("2001", 1002.0) == DistinctResult(True, 2, False, 0.0)  # refreshed to 1002
    assert hit("2003", 1003.0) == DistinctResult(True, 3, True, 0.0)
    # The fourth distinct member: refused until 2002 (seen at 1001, the oldest) leaves at 1061.
    assert hit("2004", 1004.0) == DistinctResult(False, 4, True, 57.0)
    assert hit("2001", 1005.0) == DistinctResult(True, 3, False, 0.0)  # counted ones pass
    assert hit("2004", 1060.5) == DistinctResult(False, 4, True, 0.5)  # never kept
    assert hit("2004", 1061.0) == DistinctResult(True, 3, True, 0.0)


def test_distinct_members_leave_the_window_after_their_last_sighting(store):
    """A member counts for ``window`` seconds after it was last seen; then the set is gone."""
    def hit(member: str, now: float) -> DistinctResult:
        return one(store, DistinctHit("k", member, window=10.0, limit=100), now)

    hit("a", 1000.0)
    hit("b", 1005.0)
    assert hit("c", 1009.5).count == 3
    assert hit("c", 1010.0) == DistinctResult(True, 2, False, 0.0)  # a left at 1010
    assert hit("b", 1014.0) == DistinctResult(True, 2, False, 0.0)  # b refreshed: now 1014
    assert hit("d", 1019.5) == DistinctResult(True, 3, True, 0.0)  # c (1010) still in
    assert hit("a", 1030.0) == DistinctResult(True, 1, True, 0.0)  # everything else left


def test_distinct_limit_zero_refuses_everything_and_keeps_nothing(store):
    """With limit 0 every member is refused for ever, and nothing is stored."""
    op = DistinctHit("k", "a", window=10.0, limit=0)
    assert one(store, op, 1000.0) == DistinctResult(False, 1, True, math.inf)
    assert one(store, op, 1001.0) == DistinctResult(False, 1, True, math.inf)
    assert one(store, DistinctHit("k", "a", 10.0, 5), 1002.0) == DistinctResult(
        True, 1, True, 0.0)


def test_distinct_lowered_limit_keeps_the_newest_members(store):
    """After a lower limit (a reloaded rule) the oldest members beyond it are forgotten."""
    for n, member in enumerate("abcd"):
        one(store, DistinctHit("k", member, 60.0, 10), 1000.0 + n)
    assert one(store, DistinctHit("k", "a", 60.0, 2), 1010.0) == DistinctResult(
        False, 3, True, 1002.0 + 60.0 - 1010.0)  # c and d kept
    assert one(store, DistinctHit("k", "d", 60.0, 2), 1011.0) == DistinctResult(
        True, 2, False, 0.0)
    assert one(store, DistinctHit("k", "b", 60.0, 10), 1012.0) == DistinctResult(
        True, 3, True, 0.0)  # a and b were dropped, not just hidden


def test_distinct_clock_behind_last_sighting_does_not_move_it_back(store):
    """A node whose clock is behind another's does not shorten a member's stay."""
    one(store, DistinctHit("k", "a", 10.0, 5), 1000.0)
    one(store, DistinctHit("k", "a", 10.0, 5), 999.0)
    assert one(store, DistinctHit("k", "b", 10.0, 5), 1009.5).count == 2
    assert one(store, DistinctHit("k", "b", 10.0, 5), 1010.0).count == 1


def test_distinct_keys_and_members_are_exact(store):
    """Keys count apart; members with braces, bars or non-ASCII text are distinct values."""
    members = ["a", "A", "a}{b", "a|b", "é", "sip:2001@example.com", "x" * 512]
    assert [one(store, DistinctHit("{k}", m, 10.0, 100), 1000.0).count for m in members] == [
        1, 2, 3, 4, 5, 6, 7]
    assert one(store, DistinctHit("%7Bk%7D", "a", 10.0, 100), 1000.0).count == 1


# -- bans ----------------------------------------------------------------------------------------


def test_ban_escalates_caps_and_decays(store):
    """Each ban within the decay period doubles (capped); after the decay the level restarts."""
    def ban(now: float) -> Any:
        return one(store, SetBan("ip:203.0.113.9", 60.0, "flood", factor=2.0,
                                 max_duration=200.0, decay=1000.0), now)

    first = ban(1000.0)
    assert first.created and first.level == 1 and first.ban.until == 1060.0
    assert one(store, GetBan("ip:203.0.113.9"), 1059.5).ban.until == 1060.0
    expired = one(store, GetBan("ip:203.0.113.9"), 1060.0)
    assert expired.ban is None and expired.level == 1
    assert (ban(1100.0).level, ban(1100.0).ban.until) == (2, 1220.0)
    third = ban(1300.0)
    assert (third.level, third.ban.until) == (3, 1500.0)  # 240 s capped at 200 s
    # The history is forgotten decay (1000 s) after the last ban ended (1500).
    assert one(store, GetBan("ip:203.0.113.9"), 2499.0).level == 3
    assert one(store, GetBan("ip:203.0.113.9"), 2500.0).level == 0
    fresh = ban(2500.0)
    assert (fresh.level, fresh.ban.until) == (1, 2560.0)


def test_ban_on_banned_key_keeps_existing_ban(store):
    """Banning a key already banned changes nothing (no double escalation from two nodes)."""
    one(store, SetBan("k", 60.0, "flood", evidence="120 REGISTER/10s", factor=2.0,
                      decay=100.0), 1000.0)
    again = one(store, SetBan("k", 60.0, "scan", factor=2.0, decay=100.0), 1010.0)
    assert not again.created
    assert again.level == 1
    assert again.ban is not None
    assert (again.ban.until, again.ban.reason, again.ban.evidence, again.ban.set_at) == (
        1060.0, "flood", "120 REGISTER/10s", 1000.0)


def test_clear_ban_lifts_and_keeps_history_unless_forgotten(store):
    """ClearBan lifts the ban and returns it; the level survives unless ``forget``."""
    one(store, SetBan("k", 60.0, "flood", factor=2.0, decay=500.0), 1000.0)
    cleared = one(store, ClearBan("k"), 1010.0)
    assert cleared.ban is not None and cleared.ban.until == 1060.0 and cleared.level == 1
    assert one(store, GetBan("k"), 1011.0).ban is None
    assert one(store, SetBan("k", 60.0, "flood", factor=2.0, decay=500.0), 1020.0).level == 2
    forgotten = one(store, ClearBan("k", forget=True), 1030.0)
    assert forgotten.level == 0 and forgotten.ban is not None
    assert one(store, GetBan("k"), 1031.0).level == 0
    assert one(store, SetBan("k", 60.0, "flood", factor=2.0, decay=500.0), 1040.0).level == 1


def test_get_ban_of_unknown_key(store):
    """A key never banned has no ban and level 0."""
    result = one(store, GetBan("nobody"), 1000.0)
    assert (result.ban, result.level, result.created) == (None, 0, False)


def test_ban_keys_with_hash_tag_characters_stay_distinct(store):
    """Keys containing braces or percent signs are stored exactly, without collisions."""
    one(store, SetBan("a}{b", 60.0, "x"), 1000.0)
    assert one(store, GetBan("a}{b"), 1001.0).ban is not None
    assert one(store, GetBan("a%7D%7Bb"), 1001.0).ban is None
    one(store, FixedWindowHit("{x}", 10.0, 1), 1000.0)
    assert one(store, FixedWindowHit("%7Bx%7D", 10.0, 1), 1000.0).allowed


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def notices(self) -> list[BanNotice]:
        return [e for e in self.events if isinstance(e, BanNotice)]


def test_ban_subscribers_get_snapshot_then_notices(store):
    """A subscriber first gets the bans that exist, then a notice per ban set or lifted."""
    one(store, SetBan("early", 60.0, "flood"), 1000.0)
    recorder = Recorder()
    subscription = store.subscribe_bans(recorder)
    try:
        assert wait_until(lambda: recorder.events, timeout=2.0)
        assert recorder.events[0] == BanSnapshot((BanNotice("early", 1060.0),))
        one(store, SetBan("late", 30.0, "scan"), 1001.0)
        one(store, ClearBan("late"), 1002.0)
        assert wait_until(lambda: len(recorder.notices()) == 2, timeout=2.0)
        assert recorder.notices() == [BanNotice("late", 1031.0, 1, "scan"),
                                      BanNotice("late", 0.0)]
    finally:
        subscription.close()


# -- trust ---------------------------------------------------------------------------------------


def test_trust_expires_or_lasts_until_cleared(store):
    """Trust with a duration ends exactly then; trust without one lasts until cleared."""
    assert one(store, SetTrust("peer:pbx", 30.0, "pbx"), 1000.0) == TrustResult(
        True, 1030.0, "pbx")
    assert one(store, GetTrust("peer:pbx"), 1029.5) == TrustResult(True, 1030.0, "pbx")
    assert one(store, GetTrust("peer:pbx"), 1030.0) == TrustResult(False)
    one(store, SetTrust("peer:trunk", None, "operator"), 1000.0)
    assert one(store, GetTrust("peer:trunk"), 1e9) == TrustResult(True, math.inf, "operator")
    assert one(store, ClearTrust("peer:trunk"), 1e9) == TrustResult(False)
    assert one(store, GetTrust("peer:trunk"), 1e9) == TrustResult(False)


# -- leases --------------------------------------------------------------------------------------


def test_leases_limit_concurrency(store):
    """At most ``limit`` leases are held; releasing one makes room."""
    key = "calls:acct:alice"
    assert one(store, LeaseAcquire(key, "call-1", 2, 30.0), 1000.0) == LeaseResult(
        True, 1, 1030.0)
    assert one(store, LeaseAcquire(key, "call-2", 2, 30.0), 1000.0) == LeaseResult(
        True, 2, 1030.0)
    assert one(store, LeaseAcquire(key, "call-3", 2, 30.0), 1000.0) == LeaseResult(False, 2)
    assert one(store, LeaseRelease(key, "call-1"), 1001.0) == LeaseResult(True, 1)
    assert one(store, LeaseRelease(key, "call-1"), 1001.0) == LeaseResult(False, 1)
    assert one(store, LeaseAcquire(key, "call-3", 2, 30.0), 1001.0) == LeaseResult(
        True, 2, 1031.0)


def test_lease_acquire_is_idempotent(store):
    """Acquiring a lease already held renews it and does not take a second slot."""
    one(store, LeaseAcquire("k", "call-1", 5, 30.0), 1000.0)
    assert one(store, LeaseAcquire("k", "call-1", 5, 30.0), 1010.0) == LeaseResult(
        True, 1, 1040.0)


def test_crashed_node_leases_expire_after_ttl(store):
    """Leases a crashed node stops renewing stop counting after their ttl; live ones stay."""
    key = "calls:trunk:1"
    one(store, LeaseAcquire(key, "node-a:call-1", 3, 30.0), 1000.0)
    one(store, LeaseAcquire(key, "node-a:call-2", 3, 30.0), 1000.0)
    one(store, LeaseAcquire(key, "node-b:call-1", 3, 30.0), 1000.0)
    assert not one(store, LeaseAcquire(key, "node-b:call-2", 3, 30.0), 1010.0).ok
    # node-a crashed; node-b keeps renewing its call.
    assert one(store, LeaseRenew(key, "node-b:call-1", 30.0), 1020.0) == LeaseResult(
        True, 3, 1050.0)
    assert one(store, LeaseCount(key), 1029.5) == LeaseResult(True, 3)
    assert one(store, LeaseCount(key), 1030.0) == LeaseResult(True, 1)
    assert one(store, LeaseRenew(key, "node-a:call-1", 30.0), 1030.0) == LeaseResult(False, 1)
    assert one(store, LeaseAcquire(key, "node-b:call-2", 3, 30.0), 1030.0).ok


# -- statistics ----------------------------------------------------------------------------------


def test_stats_accumulate_and_expire_ttl_after_last_increment(store):
    """Stat fields add up; the hash lives ``ttl`` after its last increment, then starts over."""
    key = "fraud:acct:alice:20240501"
    assert one(store, StatIncr(key, "calls", 1, ttl=100.0), 1000.0).value == 1
    assert one(store, StatIncr(key, "seconds", 90, ttl=100.0), 1050.0).value == 90
    assert one(store, StatIncr(key, "calls", 2, ttl=100.0), 1050.0).value == 3
    assert one(store, StatIncr(key, "seconds", -30, ttl=100.0), 1050.0).value == 60
    assert one(store, StatGet(key), 1149.0) == StatsResult({"calls": 3, "seconds": 60})
    assert one(store, StatGet(key), 1150.0) == StatsResult({})
    assert one(store, StatIncr(key, "calls", 1, ttl=100.0), 1150.0).value == 1


# -- registration bindings -----------------------------------------------------------------------


def test_bindings_put_get_expire_delete(store):
    """Bindings are kept per AOR, sorted by id, each expiring on its own."""
    aor = "sip:alice@example.com"
    one(store, BindingPut(aor, "flow-2", '{"contact": "a|b"}', 60.0), 1000.0)
    put = one(store, BindingPut(aor, "flow-1", "v1", 30.0), 1000.0)
    assert [(b.binding_id, b.value, b.expires_at) for b in put.bindings] == [
        ("flow-1", "v1", 1030.0), ("flow-2", '{"contact": "a|b"}', 1060.0)]
    later = one(store, BindingGet(aor), 1030.0)
    assert [b.binding_id for b in later.bindings] == ["flow-2"]
    replaced = one(store, BindingPut(aor, "flow-2", "v2", 60.0), 1031.0)
    assert [(b.value, b.expires_at) for b in replaced.bindings] == [("v2", 1091.0)]
    assert one(store, BindingDelete(aor, "flow-2"), 1032.0).bindings == ()
    one(store, BindingPut(aor, "x", "1", 60.0), 1033.0)
    one(store, BindingPut(aor, "y", "2", 60.0), 1033.0)
    assert one(store, BindingDelete(aor), 1034.0).bindings == ()
    assert one(store, BindingGet(aor), 1034.0).bindings == ()


# -- events --------------------------------------------------------------------------------------


def test_events_are_capped_newest_first(store):
    """A stream keeps the newest ``cap`` events and returns them newest first."""
    for i in range(1, 6):
        assert one(store, AppendEvent("security", f"e{i}", cap=3), 1000.0 + i).length == min(i, 3)
    recent = one(store, RecentEvents("security", 10), 1010.0)
    assert recent.length == 3
    assert recent.events == (Event(1005.0, "e5"), Event(1004.0, "e4"), Event(1003.0, "e3"))
    assert one(store, RecentEvents("security", 2), 1010.0).events == (
        Event(1005.0, "e5"), Event(1004.0, "e4"))


def test_event_stream_expires_ttl_after_last_append(store):
    """A stream is dropped ``ttl`` after its last append; the next append starts it over."""
    one(store, AppendEvent("s", "old", ttl=10.0), 1000.0)
    assert one(store, RecentEvents("s"), 1009.5).length == 1
    assert one(store, RecentEvents("s"), 1010.0).length == 0
    assert one(store, AppendEvent("s", "new", ttl=10.0), 1010.0).length == 1
    assert one(store, RecentEvents("s"), 1010.0).events == (Event(1010.0, "new"),)


# -- batches -------------------------------------------------------------------------------------


def test_batch_results_come_back_in_order_and_typed(store):
    """A batch's results are in op order, and later ops see earlier ones of the same batch."""
    batch = Batch()
    trust = batch.add(GetTrust("src"))
    ban = batch.add(SetBan("src", 60.0, "flood"))
    seen = batch.add(GetBan("src"))
    hit = batch.add(FixedWindowHit("src", 10.0, 1))
    hit2 = batch.add(FixedWindowHit("src", 10.0, 1))
    results = batch.run(store, 1000.0)
    assert len(batch) == 5
    assert results[trust] == TrustResult(False)
    assert results[ban].created
    assert results[seen].ban == results[ban].ban
    assert results[hit].allowed and not results[hit2].allowed


def test_empty_batch_returns_nothing(store):
    """Executing no ops returns an empty list."""
    assert store.execute([], 1000.0) == []


def test_unknown_op_is_a_value_error(store):
    """Something that is not an op is refused with ValueError before anything runs."""
    with pytest.raises(ValueError):
        store.execute([FixedWindowHit("k", 1.0, 1), object()], 1000.0)  # type: ignore[list-item]
    assert one(store, FixedWindowHit("k", 1.0, 1), 1000.0).count == 1.0
