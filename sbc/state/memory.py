"""The embedded store: all state in this process, deterministic, time passed in.

The default when ``state.backend`` is ``memory``, and the reference the Redis store is tested
against (the same contract suite runs on both).  It never reads a clock and never blocks: the
reactor thread calls it directly.

Bounded memory: every kind of record (fixed windows, sliding windows, buckets, distinct-member
sets, bans, trust, leases, statistics, bindings, event streams) lives in its own table of at most
``max_keys`` entries.  Each entry has a logical expiry; expired entries are pruned at the start of
every ``execute`` (a heap of expiries, so the cost is proportional to what expires).  When a table
is full and a new key arrives, the least recently used entry of that table is evicted (and counted
in ``evictions``): under a flood of new source addresses the counters of the oldest, quietest
sources go first, and, because bans have a table of their own, a flood of counters never evicts a
ban.  A distinct-member set holds at most its op's ``limit`` members (``MAX_DISTINCT_LIMIT``
at most, see :mod:`sbc.state.base`).  ``now`` must not go backwards by more than the shortest
window in use: entries already pruned are not resurrected.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sbc.state import algorithms as alg
from sbc.state.base import (
    AppendEvent,
    Ban,
    BanCallback,
    BanNotice,
    BanResult,
    BanSnapshot,
    Binding,
    BindingDelete,
    BindingGet,
    BindingPut,
    BindingsResult,
    ClearBan,
    ClearTrust,
    DistinctHit,
    DistinctResult,
    Event,
    EventsResult,
    FixedWindowHit,
    GetBan,
    GetTrust,
    HitResult,
    LeaseAcquire,
    LeaseCount,
    LeaseRelease,
    LeaseRenew,
    LeaseResult,
    Op,
    RecentEvents,
    Result,
    SetBan,
    SetTrust,
    SlidingWindowHit,
    StatGet,
    StatIncr,
    StatResult,
    StatsResult,
    TokenBucketTake,
    TrustResult,
)

DEFAULT_MAX_KEYS = 100_000  # entries per table


class _Entry:
    __slots__ = ("value", "expires_at")

    def __init__(self, value: Any, expires_at: float) -> None:
        self.value = value
        self.expires_at = expires_at


class _Table:
    """An LRU table of entries with logical expiry, at most ``cap`` of them."""

    __slots__ = ("data", "heap", "cap", "evictions")

    def __init__(self, cap: int) -> None:
        self.data: OrderedDict[str, _Entry] = OrderedDict()
        self.heap: list[tuple[float, str]] = []  # (expires_at, key); stale entries skipped
        self.cap = cap
        self.evictions = 0

    def get(self, key: str, now: float) -> Any:
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self.data[key]
            return None
        self.data.move_to_end(key)
        return entry.value

    def put(self, key: str, value: Any, expires_at: float, now: float) -> None:
        if expires_at <= now:
            self.data.pop(key, None)
            return
        entry = self.data.get(key)
        if entry is None:
            if len(self.data) >= self.cap:
                self.prune(now)
                while len(self.data) >= self.cap:
                    self.data.popitem(last=False)
                    self.evictions += 1
            self.data[key] = _Entry(value, expires_at)
        else:
            entry.value = value
            entry.expires_at = expires_at
            self.data.move_to_end(key)
        if expires_at != math.inf:
            heapq.heappush(self.heap, (expires_at, key))
            if len(self.heap) > 2 * len(self.data) + 64:
                self.heap = [(e.expires_at, k) for k, e in self.data.items()
                             if e.expires_at != math.inf]
                heapq.heapify(self.heap)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def prune(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            entry = self.data.get(key)
            if entry is not None and entry.expires_at <= now:
                del self.data[key]

    def __len__(self) -> int:
        return len(self.data)


@dataclass(slots=True)
class _BanRecord:
    until: float
    level: int
    reason: str
    evidence: str
    set_at: float
    forget_at: float


class _MemorySubscription:
    __slots__ = ("_store", "_callback")

    def __init__(self, store: MemoryStore, callback: BanCallback) -> None:
        self._store = store
        self._callback = callback

    def close(self) -> None:
        self._store._unsubscribe(self._callback)


class MemoryStore:
    """The in-process :class:`sbc.state.base.Store`.

    Ban subscribers are called synchronously, in the thread that ran ``execute``, after the whole
    batch ran; a subscriber's exception is not caught (it is a bug in the caller)."""

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_keys = max_keys
        self._fixed = _Table(max_keys)
        self._sliding = _Table(max_keys)
        self._buckets = _Table(max_keys)
        self._distinct = _Table(max_keys)
        self._bans = _Table(max_keys)
        self._trust = _Table(max_keys)
        self._leases = _Table(max_keys)
        self._stats = _Table(max_keys)
        self._bindings = _Table(max_keys)
        self._events = _Table(max_keys)
        self._tables = (self._fixed, self._sliding, self._buckets, self._distinct, self._bans,
                        self._trust, self._leases, self._stats, self._bindings, self._events)
        self._subscribers: list[BanCallback] = []
        self._closed = False
        self._last_now = -math.inf
        self._handlers: dict[type, Callable[[Any, float, list[BanNotice]], Result]] = {
            FixedWindowHit: self._fixed_window,
            SlidingWindowHit: self._sliding_window,
            TokenBucketTake: self._token_bucket,
            DistinctHit: self._distinct_hit,
            GetBan: self._get_ban,
            SetBan: self._set_ban,
            ClearBan: self._clear_ban,
            GetTrust: self._get_trust,
            SetTrust: self._set_trust,
            ClearTrust: self._clear_trust,
            LeaseAcquire: self._lease_acquire,
            LeaseRenew: self._lease_renew,
            LeaseRelease: self._lease_release,
            LeaseCount: self._lease_count,
            StatIncr: self._stat_incr,
            StatGet: self._stat_get,
            BindingPut: self._binding_put,
            BindingGet: self._binding_get,
            BindingDelete: self._binding_delete,
            AppendEvent: self._append_event,
            RecentEvents: self._recent_events,
        }

    # -- Store ---------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return not self._closed

    @property
    def evictions(self) -> int:
        """How many live entries were evicted because a table was full."""
        return sum(t.evictions for t in self._tables)

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables)

    def execute(self, ops: Sequence[Op], now: float) -> list[Result]:
        """Run ``ops`` in order at time ``now``; ValueError for an unknown op."""
        self._last_now = now
        for table in self._tables:
            table.prune(now)
        notices: list[BanNotice] = []
        results = []
        for op in ops:
            handler = self._handlers.get(type(op))
            if handler is None:
                raise ValueError(f"not a store op: {op!r}")
            results.append(handler(op, now, notices))
        for notice in notices:
            for callback in list(self._subscribers):
                callback(notice)
        return results

    def subscribe_bans(self, callback: BanCallback) -> _MemorySubscription:
        """Call ``callback`` with a snapshot of the bans active at the last ``now`` seen, then
        with every ban set or lifted."""
        self._subscribers.append(callback)
        callback(BanSnapshot(tuple(
            BanNotice(key, entry.value.until)
            for key, entry in self._bans.data.items() if entry.value.until > self._last_now
        )))
        return _MemorySubscription(self, callback)

    def _unsubscribe(self, callback: BanCallback) -> None:
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        self._closed = True
        self._subscribers.clear()

    # -- counters ------------------------------------------------------------------------------

    def _fixed_window(self, op: FixedWindowHit, now: float, _: list[BanNotice]) -> HitResult:
        allowed, state, expires_at = alg.fixed_window_step(
            self._fixed.get(op.key, now), op.window, op.limit, op.cost, now)
        self._fixed.put(op.key, state, expires_at, now)
        return alg.fixed_window_result(allowed, state[0], state[1], op.window, op.limit,
                                       op.cost, now)

    def _sliding_window(self, op: SlidingWindowHit, now: float, _: list[BanNotice]) -> HitResult:
        allowed, state, expires_at = alg.sliding_window_step(
            self._sliding.get(op.key, now), op.window, op.limit, op.cost, now)
        self._sliding.put(op.key, state, expires_at, now)
        return alg.sliding_window_result(allowed, *state, op.window, op.limit, op.cost, now)

    def _token_bucket(self, op: TokenBucketTake, now: float, _: list[BanNotice]) -> HitResult:
        allowed, state, expires_at = alg.token_bucket_step(
            self._buckets.get(op.key, now), op.rate, op.burst, op.cost, now)
        self._buckets.put(op.key, state, expires_at, now)
        return alg.token_bucket_result(allowed, state[0], state[1], op.rate, op.burst, op.cost,
                                       now)

    def _distinct_hit(self, op: DistinctHit, now: float, _: list[BanNotice]) -> DistinctResult:
        members: alg.DistinctState | None = self._distinct.get(op.key, now)
        if members is None:
            members = {}
        allowed, count, new, oldest = alg.distinct_step(members, op.member, op.window, op.limit,
                                                         now)
        if members:
            self._distinct.put(op.key, members, max(members.values()) + op.window, now)
        else:
            self._distinct.delete(op.key)
        return alg.distinct_result(allowed, count, new, oldest, op.window, op.limit, now)

    # -- bans and trust ------------------------------------------------------------------------

    @staticmethod
    def _ban_result(key: str, record: _BanRecord | None, now: float,
                    created: bool = False) -> BanResult:
        if record is None or record.forget_at <= now:
            return BanResult(None, 0, created)
        ban = None
        if record.until > now:
            ban = Ban(key, record.until, record.level, record.reason, record.evidence,
                      record.set_at)
        return BanResult(ban, record.level, created)

    def _get_ban(self, op: GetBan, now: float, _: list[BanNotice]) -> BanResult:
        return self._ban_result(op.key, self._bans.get(op.key, now), now)

    def _set_ban(self, op: SetBan, now: float, notices: list[BanNotice]) -> BanResult:
        record: _BanRecord | None = self._bans.get(op.key, now)
        if record is not None and record.until > now:
            return self._ban_result(op.key, record, now)
        prior = record.level if record is not None and record.forget_at > now else 0
        level = prior + 1
        until = now + alg.ban_duration(op.duration, op.factor, op.max_duration, level)
        record = _BanRecord(until, level, op.reason, op.evidence, now, until + op.decay)
        self._bans.put(op.key, record, record.forget_at, now)
        notices.append(BanNotice(op.key, until, level, op.reason))
        return self._ban_result(op.key, record, now, created=True)

    def _clear_ban(self, op: ClearBan, now: float, notices: list[BanNotice]) -> BanResult:
        record: _BanRecord | None = self._bans.get(op.key, now)
        before = self._ban_result(op.key, record, now)
        if record is not None:
            if op.forget:
                self._bans.delete(op.key)
            elif record.until > now:
                record.until = now
        notices.append(BanNotice(op.key, 0.0))
        level = 0 if op.forget else before.level
        return BanResult(before.ban, level)

    def _get_trust(self, op: GetTrust, now: float, _: list[BanNotice]) -> TrustResult:
        value = self._trust.get(op.key, now)
        return TrustResult(False) if value is None else TrustResult(True, *value)

    def _set_trust(self, op: SetTrust, now: float, _: list[BanNotice]) -> TrustResult:
        until = math.inf if op.duration is None else now + op.duration
        self._trust.put(op.key, (until, op.reason), until, now)
        return TrustResult(True, until, op.reason)

    def _clear_trust(self, op: ClearTrust, now: float, _: list[BanNotice]) -> TrustResult:
        self._trust.delete(op.key)
        return TrustResult(False)

    # -- leases --------------------------------------------------------------------------------

    def _live_leases(self, key: str, now: float) -> dict[str, float]:
        leases: dict[str, float] | None = self._leases.get(key, now)
        if leases is None:
            return {}
        for lease_id in [i for i, expires in leases.items() if expires <= now]:
            del leases[lease_id]
        return leases

    def _store_leases(self, key: str, leases: dict[str, float], now: float) -> None:
        if leases:
            self._leases.put(key, leases, max(leases.values()), now)
        else:
            self._leases.delete(key)

    def _lease_acquire(self, op: LeaseAcquire, now: float, _: list[BanNotice]) -> LeaseResult:
        leases = self._live_leases(op.key, now)
        if op.lease_id not in leases and len(leases) >= op.limit:
            self._store_leases(op.key, leases, now)
            return LeaseResult(False, len(leases))
        expires_at = now + op.ttl
        leases[op.lease_id] = expires_at
        self._store_leases(op.key, leases, now)
        return LeaseResult(True, len(leases), expires_at)

    def _lease_renew(self, op: LeaseRenew, now: float, _: list[BanNotice]) -> LeaseResult:
        leases = self._live_leases(op.key, now)
        if op.lease_id not in leases:
            self._store_leases(op.key, leases, now)
            return LeaseResult(False, len(leases))
        expires_at = now + op.ttl
        leases[op.lease_id] = expires_at
        self._store_leases(op.key, leases, now)
        return LeaseResult(True, len(leases), expires_at)

    def _lease_release(self, op: LeaseRelease, now: float, _: list[BanNotice]) -> LeaseResult:
        leases = self._live_leases(op.key, now)
        held = leases.pop(op.lease_id, None) is not None
        self._store_leases(op.key, leases, now)
        return LeaseResult(held, len(leases))

    def _lease_count(self, op: LeaseCount, now: float, _: list[BanNotice]) -> LeaseResult:
        leases = self._live_leases(op.key, now)
        self._store_leases(op.key, leases, now)
        return LeaseResult(True, len(leases))

    # -- statistics ----------------------------------------------------------------------------

    def _stat_incr(self, op: StatIncr, now: float, _: list[BanNotice]) -> StatResult:
        values: dict[str, int] | None = self._stats.get(op.key, now)
        if values is None:
            values = {}
        value = values.get(op.field, 0) + op.amount
        values[op.field] = value
        self._stats.put(op.key, values, now + op.ttl, now)
        return StatResult(value)

    def _stat_get(self, op: StatGet, now: float, _: list[BanNotice]) -> StatsResult:
        values = self._stats.get(op.key, now)
        return StatsResult(dict(values) if values else {})

    # -- registration bindings -----------------------------------------------------------------

    def _live_bindings(self, aor: str, now: float) -> dict[str, tuple[str, float]]:
        bindings: dict[str, tuple[str, float]] | None = self._bindings.get(aor, now)
        if bindings is None:
            return {}
        for binding_id in [i for i, (_, expires) in bindings.items() if expires <= now]:
            del bindings[binding_id]
        return bindings

    def _bindings_result(self, aor: str, bindings: dict[str, tuple[str, float]],
                         now: float) -> BindingsResult:
        if bindings:
            self._bindings.put(aor, bindings, max(e for _, e in bindings.values()), now)
        else:
            self._bindings.delete(aor)
        return BindingsResult(tuple(
            Binding(i, value, expires) for i, (value, expires) in sorted(bindings.items())
        ))

    def _binding_put(self, op: BindingPut, now: float, _: list[BanNotice]) -> BindingsResult:
        bindings = self._live_bindings(op.aor, now)
        bindings[op.binding_id] = (op.value, now + op.ttl)
        return self._bindings_result(op.aor, bindings, now)

    def _binding_get(self, op: BindingGet, now: float, _: list[BanNotice]) -> BindingsResult:
        return self._bindings_result(op.aor, self._live_bindings(op.aor, now), now)

    def _binding_delete(self, op: BindingDelete, now: float,
                        _: list[BanNotice]) -> BindingsResult:
        bindings = self._live_bindings(op.aor, now)
        if op.binding_id is None:
            bindings.clear()
        else:
            bindings.pop(op.binding_id, None)
        return self._bindings_result(op.aor, bindings, now)

    # -- events --------------------------------------------------------------------------------

    def _append_event(self, op: AppendEvent, now: float, _: list[BanNotice]) -> EventsResult:
        events: list[Event] | None = self._events.get(op.stream, now)
        if events is None:
            events = []
        events.insert(0, Event(now, op.data))
        del events[op.cap:]
        self._events.put(op.stream, events, now + op.ttl, now)
        return EventsResult(len(events))

    def _recent_events(self, op: RecentEvents, now: float, _: list[BanNotice]) -> EventsResult:
        events: list[Event] | None = self._events.get(op.stream, now)
        if events is None:
            return EventsResult(0)
        return EventsResult(len(events), tuple(events[:op.n]))
