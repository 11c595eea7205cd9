"""The arithmetic of the counters, shared by both stores.

The memory store runs the ``*_step`` functions; the Redis store runs the same steps as Lua
(:mod:`sbc.state.redis_scripts`) and both derive the caller's :class:`HitResult` with the
``*_result`` functions here.  The Lua code performs the same IEEE-754 double operations in the
same order, and numbers cross the wire as ``%.17g`` text (Lua to Python) or ``repr`` (Python to
Lua), which round-trip doubles exactly, so the two stores give bit-identical results.

Each stored state carries its own logical expiry (computed with the parameters of the op that
wrote it), checked against the caller's ``now``: past it, the state is absent.  The memory store
drops the entry at that time; Redis keeps the expiry in the record (field ``x``) and lets the key
live a little longer (a TTL that is only garbage collection), which makes no difference to
results.  A state whose new expiry is already past (a full bucket) is deleted, not written.
"""

from __future__ import annotations

import math

from sbc.state.base import DistinctResult, HitResult

INF = math.inf

# -- fixed window: state (window index, count) ---------------------------------------------------

FixedState = tuple[float, float]


def fixed_window_step(
    state: FixedState | None, window: float, limit: int, cost: int, now: float
) -> tuple[bool, FixedState, float]:
    """Count a hit: (allowed, new state, state expiry)."""
    index = math.floor(now / window)
    count = state[1] if state is not None and state[0] == index else 0.0
    allowed = count + cost <= limit
    if allowed:
        count = count + cost
    return allowed, (index, count), index * window + window


def fixed_window_result(
    allowed: bool, index: float, count: float, window: float, limit: int, cost: int, now: float
) -> HitResult:
    reset_at = index * window + window
    if allowed:
        retry_after = 0.0
    elif cost > limit:
        retry_after = INF
    else:
        retry_after = reset_at - now
    return HitResult(allowed, count, max(0.0, limit - count), retry_after,
                     reset_at if count > 0 else now)


# -- sliding window (two-window approximation): state (window index, current, previous) ---------

SlidingState = tuple[float, float, float]


def sliding_counts(state: SlidingState | None, window: float, now: float) -> tuple[float, ...]:
    """(window index, current count, previous count) as seen at ``now``."""
    index = math.floor(now / window)
    if state is None:
        return index, 0.0, 0.0
    if state[0] == index:
        return index, state[1], state[2]
    if state[0] == index - 1:
        return index, 0.0, state[1]
    return index, 0.0, 0.0


def sliding_estimate(index: float, current: float, previous: float, window: float,
                     now: float) -> float:
    start = index * window
    weight = (window - (now - start)) / window
    return previous * weight + current


def sliding_window_step(
    state: SlidingState | None, window: float, limit: int, cost: int, now: float
) -> tuple[bool, SlidingState, float]:
    """Count a hit: (allowed, new state, state expiry)."""
    index, current, previous = sliding_counts(state, window, now)
    allowed = sliding_estimate(index, current, previous, window, now) + cost <= limit
    if allowed:
        current = current + cost
    return allowed, (index, current, previous), index * window + 2 * window


def sliding_window_result(
    allowed: bool, index: float, current: float, previous: float,
    window: float, limit: int, cost: int, now: float,
) -> HitResult:
    estimate = sliding_estimate(index, current, previous, window, now)
    start = index * window
    if allowed:
        retry_after = 0.0
    elif cost > limit:
        retry_after = INF
    elif current + cost <= limit:
        # Wait for the previous window's share to decay:
        # previous * (window - (t - start)) / window + current + cost <= limit.
        retry_after = start + window - (limit - current - cost) * window / previous - now
    else:
        # Wait into the next window, where this window's count decays instead.
        retry_after = start + 2 * window - (limit - cost) * window / current - now
    if current > 0:
        reset_at = start + 2 * window
    elif previous > 0:
        reset_at = start + window
    else:
        reset_at = now
    return HitResult(allowed, estimate, max(0.0, limit - estimate), max(0.0, retry_after),
                     reset_at)


# -- token bucket: state (tokens, last update) ---------------------------------------------------

BucketState = tuple[float, float]


def token_bucket_step(
    state: BucketState | None, rate: float, burst: float, cost: int, now: float
) -> tuple[bool, BucketState, float]:
    """Take tokens: (allowed, new state, state expiry = when the bucket is full again).

    ``state`` is ``None`` when absent or past its expiry (a full bucket is not stored)."""
    if state is None:
        tokens, stamp = burst, now
    else:
        tokens, stamp = state
        if now > stamp:
            tokens = min(burst, tokens + (now - stamp) * rate)
            stamp = now
        # A clock behind the last update (another node's skew) refills nothing.
    allowed = tokens >= cost
    if allowed:
        tokens = tokens - cost
    return allowed, (tokens, stamp), stamp + (burst - tokens) / rate


def token_bucket_result(
    allowed: bool, tokens: float, stamp: float, rate: float, burst: float, cost: int, now: float
) -> HitResult:
    if allowed:
        retry_after = 0.0
    elif cost > burst:
        retry_after = INF
    else:
        retry_after = max(0.0, stamp - now) + (cost - tokens) / rate
    return HitResult(allowed, burst - tokens, tokens, retry_after,
                     stamp + (burst - tokens) / rate)


# -- distinct members (an exact sliding window): state {member: last seen} ----------------------

DistinctState = dict[str, float]


def distinct_step(
    members: DistinctState, member: str, window: float, limit: int, now: float
) -> tuple[bool, int, bool, float]:
    """Count ``member`` in ``members`` (changed in place): (allowed, count, new, oldest).

    Members last seen ``window`` seconds ago or more are dropped; then, should more than ``limit``
    be held (a limit lowered since they were counted), the oldest (by last seen, then by member,
    Redis's sorted-set order) until ``limit`` are.  ``oldest`` is the earliest last-seen time of
    the members kept (0 when none).  The state's expiry is its newest member's last-seen time
    plus ``window``."""
    cutoff = now - window
    for gone in [m for m, seen in members.items() if seen <= cutoff]:
        del members[gone]
    if len(members) > limit:
        ranked = sorted(members.items(), key=lambda item: (item[1], item[0]))
        for gone, _ in ranked[:len(members) - limit]:
            del members[gone]
    seen = members.get(member)
    if seen is not None:
        if now > seen:  # a clock behind the last sighting (another node's skew) changes nothing
            members[member] = now
        allowed, new, count = True, False, len(members)
    elif len(members) < limit:
        members[member] = now
        allowed, new, count = True, True, len(members)
    else:
        allowed, new, count = False, True, len(members) + 1
    oldest = min(members.values()) if members else 0.0
    return allowed, count, new, oldest


def distinct_result(allowed: bool, count: int, new: bool, oldest: float, window: float,
                    limit: int, now: float) -> DistinctResult:
    if allowed:
        retry_after = 0.0
    elif limit == 0:
        retry_after = INF
    else:
        retry_after = max(0.0, oldest + window - now)
    return DistinctResult(allowed, count, new, retry_after)


# -- bans ----------------------------------------------------------------------------------------


def ban_duration(duration: float, factor: float, max_duration: float, level: int) -> float:
    """fail2ban's ``bantime.increment``: ``duration * factor ** (level - 1)``, capped."""
    seconds = duration * factor ** (level - 1)
    if max_duration > 0 and seconds > max_duration:
        seconds = max_duration
    return seconds
