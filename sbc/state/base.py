"""The shared-state store: one interface, two backends (memory and Redis).

Theory of operation
-------------------

The rule engine decides in two steps: it *plans* the state operations a decision needs (hit this
counter, take from that bucket, read this ban) as a list of frozen op values, then hands the whole
list to :meth:`Store.execute` with the current time, and gets one typed result per op, in order.
A Redis store sends the whole list as one pipeline, so a decision costs at most one network round
trip; the memory store runs it in place.  ``now`` always comes from the caller (seconds since the
epoch, as the reactor reports it): neither store reads a clock to decide anything, so both behave
identically under test with explicit times, and every node of a cluster agrees on window
boundaries (``floor(now / window)``) as long as their clocks are NTP-synchronised.

Each op is atomic on its own (a Redis Lua script); a batch is not a transaction (see
:mod:`sbc.state.redis_store` for why, and for what a failure in flight means).

The ops and what they return:

=====================  =====================  ======================================================
op                     result                 meaning
=====================  =====================  ======================================================
FixedWindowHit         HitResult              ``limit`` per aligned window of ``window`` seconds
SlidingWindowHit       HitResult              two-window approximation of a sliding window
TokenBucketTake        HitResult              ``rate`` tokens/s, at most ``burst``
DistinctHit            DistinctResult         distinct members of a key in a sliding window
GetBan                 BanResult              the active ban, and the ban level (prior bans)
SetBan                 BanResult              ban with escalation (fail2ban ``bantime.increment``)
ClearBan               BanResult              lift a ban (optionally forget its history)
GetTrust / SetTrust    TrustResult            an operator's "never ban this source"
ClearTrust             TrustResult
LeaseAcquire           LeaseResult            a slot of a concurrency limit, held for ``ttl``
LeaseRenew             LeaseResult            extend one's own slot
LeaseRelease           LeaseResult            give the slot back
LeaseCount             LeaseResult            how many live slots
StatIncr               StatResult             a counter in a statistics hash (fraud statistics)
StatGet                StatsResult            the whole hash
BindingPut             BindingsResult         a registration binding of an AOR, with expiry
BindingGet             BindingsResult         the live bindings of an AOR
BindingDelete          BindingsResult         one binding, or all of an AOR
AppendEvent            EventsResult           append to a capped stream of recent events
RecentEvents           EventsResult           the newest ``n`` events, newest first
=====================  =====================  ======================================================

Rate-limit semantics common to the three algorithms: a hit that is refused is *not* counted (the
caller learns ``allowed=False`` and a ``retry_after``), and ``cost=0`` peeks without consuming.

The sliding window is the two-window approximation (Cloudflare's "sliding window counter", the
``limits`` project's ``SlidingWindowCounter``): the estimate is ``previous * (1 - elapsed /
window) + current``.  Chosen over a sliding log because its cost is O(1) in memory and time per
key whatever the limit (a log of a 10 000/s flood is a 10 000-member sorted set per key, and one
key per source address under a spoofed flood), and it is exact whenever the previous window's hits
were spread evenly; the error is bounded by the previous window's count times the fraction of it
that is misattributed.  A fixed window allows up to ``2 * limit`` across a boundary; the sliding
estimate does not.

Distinct counting: ``DistinctHit(key, member, window, limit)`` counts the distinct ``member``
values seen under ``key`` in the last ``window`` seconds (an exact sliding window: each member is
kept with the time it was last seen, and leaves the count ``window`` seconds after that).  Like
the other counters, a refused hit is not counted: a member not yet counted when ``limit`` members
are is refused (``allowed=False``, ``count = limit + 1``) and not kept, while a member already
counted is always allowed and only refreshed.  So a key never holds more than ``limit`` members,
and ``limit`` is at most :data:`MAX_DISTINCT_LIMIT`: the memory of a key is bounded by ``limit``
members of at most :data:`MAX_KEY_LENGTH` characters each (callers hash longer values; the rule
engine hashes any value over 64 characters), and the key is dropped ``window`` seconds after its
newest member was last seen.  Members are opaque strings, compared exactly.

Bans and escalation: ``SetBan(key, duration, factor=2, decay=86400)`` bans for ``duration *
factor ** (level - 1)`` (capped by ``max_duration``) where ``level`` is one more than the number of
bans of this key whose history has not decayed: the history is forgotten ``decay`` seconds after
the last ban ends.  Setting a ban on a key that is already banned changes nothing and returns the
existing ban with ``created=False``, so two nodes that detect the same flood at once escalate only
once, and a retried ``SetBan`` is harmless.

Ban propagation: :meth:`Store.subscribe_bans` delivers :class:`BanNotice` (a ban set or lifted)
and :class:`BanSnapshot` (every active ban: sent on every (re)subscription, so nothing missed
while disconnected stays missed) to a callback; a :class:`sbc.state.cache.LocalBanCache` fed by it
answers "is this source banned?" before parsing, without a store round trip.

Calling a Redis store from Twisted (recommendation for the edge)
----------------------------------------------------------------

``execute`` is synchronous.  The memory store is called directly from the reactor thread (it never
blocks).  A Redis store must never be called from the reactor thread: the edge runs it with
``twisted.internet.threads.deferToThreadPool(reactor, pool, store.execute, ops, now)`` on a
*dedicated* ``ThreadPool`` (say 4 threads, started and stopped with the service), not the reactor's
default pool, which DNS resolution shares.  redis-py's connection pool is thread-safe; size it at
the thread count plus one (the ban listener).  ``subscribe_bans`` callbacks of a Redis store run on
the listener thread: the edge passes a callback that does ``reactor.callFromThread(cache.apply,
event)``.  ``redis.asyncio`` and txredisapi are not used: the first needs an asyncio loop in the
reactor, the second has no Sentinel/Cluster support; a thread pool keeps one client for all three
deployments.  The store's socket timeouts bound how long a thread is held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, Union

from sbc.errors import SbcError

MAX_KEY_LENGTH = 512  # characters; a key is built from addresses, account names and rule ids
MAX_DISTINCT_LIMIT = 1000  # members one DistinctHit key may hold (its limit), at most


class StoreError(SbcError):
    """The state backend failed (unreachable, timed out, refused the command).

    Every backend failure is wrapped in this one class, so a rule can say "fail open" or "fail
    closed" with one ``except``.  ``unavailable`` is true when the backend could not be reached
    at all (connection refused or lost, timeout, failover in progress, or the store's reconnect
    backoff is running), as opposed to a backend that answered with an error.
    """

    def __init__(self, message: str, *, unavailable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.unavailable = unavailable


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HitResult:
    """The outcome of a rate-limit hit.

    ``count`` is the usage after this hit (fixed window: hits counted in this window; sliding
    window: the weighted estimate; token bucket: ``burst`` minus the tokens left), ``remaining``
    what could still be taken now, ``retry_after`` 0 when allowed, otherwise the seconds until a
    hit of the same cost could succeed (``inf`` when ``cost`` exceeds the limit), and ``reset_at``
    the time at which usage is back to zero if nothing else happens.
    """

    allowed: bool
    count: float
    remaining: float
    retry_after: float
    reset_at: float


@dataclass(frozen=True, slots=True)
class DistinctResult:
    """The outcome of a distinct-value hit.

    ``count`` is the number of distinct members counted in the window with this one (when
    refused: the ``limit`` members held plus this one, which is not kept), ``new`` whether this
    member was not counted before the hit, and ``retry_after`` 0 when allowed, otherwise the
    seconds until the oldest member leaves the window and a new one fits (``inf`` when ``limit``
    is 0).
    """

    allowed: bool
    count: int
    new: bool
    retry_after: float


@dataclass(frozen=True, slots=True)
class Ban:
    """An active ban: until when, at which escalation level, why, and the evidence kept."""

    key: str
    until: float
    level: int
    reason: str
    evidence: str
    set_at: float


@dataclass(frozen=True, slots=True)
class BanResult:
    """``ban`` is the active ban or ``None``; ``level`` counts the bans whose history has not
    decayed (the active one included); ``created`` is true only for a ``SetBan`` that banned."""

    ban: Ban | None
    level: int
    created: bool = False


@dataclass(frozen=True, slots=True)
class TrustResult:
    """Whether ``key`` is trusted now, until when (``inf``: until cleared) and why."""

    trusted: bool
    until: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LeaseResult:
    """``ok`` is acquired / renewed / released; ``count`` the live leases after the op;
    ``expires_at`` the expiry of this lease (0 when it is not held)."""

    ok: bool
    count: int
    expires_at: float = 0.0


@dataclass(frozen=True, slots=True)
class StatResult:
    """The value of one statistics field after an increment."""

    value: int


@dataclass(frozen=True, slots=True)
class StatsResult:
    """Every field of a statistics hash (empty when absent or expired)."""

    values: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Binding:
    """One registration binding of an AOR: an id (the Contact or flow), an opaque value, and
    when it expires."""

    binding_id: str
    value: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class BindingsResult:
    """The live bindings of an AOR after the op, ordered by ``binding_id``."""

    bindings: tuple[Binding, ...]


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded event: when (the caller's ``now``) and an opaque text (e.g. JSON)."""

    at: float
    data: str


@dataclass(frozen=True, slots=True)
class EventsResult:
    """``length`` of the stream after the op; ``events`` newest first (``RecentEvents`` only)."""

    length: int
    events: tuple[Event, ...] = ()


Result = Union[  # noqa: UP007 -- a runtime alias used with isinstance()
    HitResult,
    DistinctResult,
    BanResult,
    TrustResult,
    LeaseResult,
    StatResult,
    StatsResult,
    BindingsResult,
    EventsResult,
]

R = TypeVar("R", HitResult, DistinctResult, BanResult, TrustResult, LeaseResult, StatResult,
            StatsResult, BindingsResult, EventsResult)


# -- ops -----------------------------------------------------------------------------------------


def _check_key(name: str, key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{name} must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"{name} is longer than {MAX_KEY_LENGTH} characters")


def _check_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, not {value!r}")


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, not {value!r}")


class _Op(Generic[R]):
    """Base of the op dataclasses; ``R`` is the result type the op produces."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class FixedWindowHit(_Op[HitResult]):
    """Count ``cost`` hits on ``key`` in the current window, allowing at most ``limit``.

    Windows are aligned on multiples of ``window`` seconds since the epoch, so every node agrees
    where they start."""

    key: str
    window: float
    limit: int
    cost: int = 1

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        _check_positive("window", self.window)
        _check_count("limit", self.limit)
        _check_count("cost", self.cost)


@dataclass(frozen=True, slots=True)
class SlidingWindowHit(_Op[HitResult]):
    """Like :class:`FixedWindowHit` over a window that slides (two-window approximation)."""

    key: str
    window: float
    limit: int
    cost: int = 1

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        _check_positive("window", self.window)
        _check_count("limit", self.limit)
        _check_count("cost", self.cost)


@dataclass(frozen=True, slots=True)
class TokenBucketTake(_Op[HitResult]):
    """Take ``cost`` tokens from a bucket of ``burst`` tokens refilled at ``rate`` per second; a
    bucket never seen is full."""

    key: str
    rate: float
    burst: float
    cost: int = 1

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        _check_positive("rate", self.rate)
        _check_positive("burst", self.burst)
        _check_count("cost", self.cost)


@dataclass(frozen=True, slots=True)
class DistinctHit(_Op[DistinctResult]):
    """Count ``member`` among the distinct members of ``key`` seen in the last ``window``
    seconds, allowing at most ``limit`` of them (at most :data:`MAX_DISTINCT_LIMIT`).

    A member already counted is refreshed (it now leaves the window ``window`` seconds from
    ``now``) and allowed; a new one is kept and allowed while fewer than ``limit`` are counted,
    else refused and not kept."""

    key: str
    member: str
    window: float
    limit: int

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        _check_key("member", self.member)
        _check_positive("window", self.window)
        _check_count("limit", self.limit)
        if self.limit > MAX_DISTINCT_LIMIT:
            raise ValueError(f"limit must be at most {MAX_DISTINCT_LIMIT}, not {self.limit!r}")


@dataclass(frozen=True, slots=True)
class GetBan(_Op[BanResult]):
    """Read the ban of ``key`` (active or not) and its escalation level."""

    key: str

    def __post_init__(self) -> None:
        _check_key("key", self.key)


@dataclass(frozen=True, slots=True)
class SetBan(_Op[BanResult]):
    """Ban ``key`` for ``duration * factor ** (level - 1)`` seconds, at most ``max_duration``
    (0: no cap); the level history is forgotten ``decay`` seconds after the ban ends.

    A key already banned keeps its ban (``created=False``).  Every node's subscribers are told."""

    key: str
    duration: float
    reason: str
    evidence: str = ""
    factor: float = 1.0
    max_duration: float = 0.0
    decay: float = 0.0

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        _check_positive("duration", self.duration)
        if not (self.factor >= 1.0 and math.isfinite(self.factor)):
            raise ValueError(f"factor must be a finite number >= 1, not {self.factor!r}")
        if not (self.max_duration >= 0 and math.isfinite(self.max_duration)):
            raise ValueError(f"max_duration must be >= 0 (0: no cap), not {self.max_duration!r}")
        if not (self.decay >= 0 and math.isfinite(self.decay)):
            raise ValueError(f"decay must be a finite number >= 0, not {self.decay!r}")


@dataclass(frozen=True, slots=True)
class ClearBan(_Op[BanResult]):
    """Lift the ban of ``key``; with ``forget`` also its escalation history.  The result holds
    the ban that was lifted (``None`` if there was none)."""

    key: str
    forget: bool = False

    def __post_init__(self) -> None:
        _check_key("key", self.key)


@dataclass(frozen=True, slots=True)
class GetTrust(_Op[TrustResult]):
    """Is ``key`` trusted now?"""

    key: str

    def __post_init__(self) -> None:
        _check_key("key", self.key)


@dataclass(frozen=True, slots=True)
class SetTrust(_Op[TrustResult]):
    """Trust ``key`` for ``duration`` seconds (``None``: until cleared)."""

    key: str
    duration: float | None
    reason: str = ""

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        if self.duration is not None:
            _check_positive("duration", self.duration)


@dataclass(frozen=True, slots=True)
class ClearTrust(_Op[TrustResult]):
    """Stop trusting ``key``."""

    key: str

    def __post_init__(self) -> None:
        _check_key("key", self.key)


@dataclass(frozen=True, slots=True)
class LeaseAcquire(_Op[LeaseResult]):
    """Hold one of ``limit`` slots of ``key`` (e.g. concurrent calls of an account) as
    ``lease_id`` until ``now + ttl``.

    Expired leases are pruned first, so the slots of a crashed node free themselves ``ttl``
    seconds after its last renewal.  Acquiring a lease already held renews it (idempotent)."""

    key: str
    lease_id: str
    limit: int
    ttl: float

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        _check_key("lease_id", self.lease_id)
        _check_count("limit", self.limit)
        _check_positive("ttl", self.ttl)


@dataclass(frozen=True, slots=True)
class LeaseRenew(_Op[LeaseResult]):
    """Extend ``lease_id`` to ``now + ttl``; ``ok=False`` when it had expired (it is lost)."""

    key: str
    lease_id: str
    ttl: float

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        _check_key("lease_id", self.lease_id)
        _check_positive("ttl", self.ttl)


@dataclass(frozen=True, slots=True)
class LeaseRelease(_Op[LeaseResult]):
    """Give back ``lease_id``; ``ok`` tells whether it was held."""

    key: str
    lease_id: str

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        _check_key("lease_id", self.lease_id)


@dataclass(frozen=True, slots=True)
class LeaseCount(_Op[LeaseResult]):
    """How many leases of ``key`` are live now."""

    key: str

    def __post_init__(self) -> None:
        _check_key("key", self.key)


@dataclass(frozen=True, slots=True)
class StatIncr(_Op[StatResult]):
    """Add ``amount`` to ``field`` of the statistics hash ``key`` (e.g. ``acct:alice:20240501``)
    and keep the hash until ``now + ttl``.  Field names must come from a bounded set."""

    key: str
    field: str
    amount: int = 1
    ttl: float = 86400.0

    def __post_init__(self) -> None:
        _check_key("key", self.key)
        _check_key("field", self.field)
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise ValueError(f"amount must be an integer, not {self.amount!r}")
        _check_positive("ttl", self.ttl)


@dataclass(frozen=True, slots=True)
class StatGet(_Op[StatsResult]):
    """Read every field of the statistics hash ``key``."""

    key: str

    def __post_init__(self) -> None:
        _check_key("key", self.key)


@dataclass(frozen=True, slots=True)
class BindingPut(_Op[BindingsResult]):
    """Set binding ``binding_id`` of AOR ``aor`` to ``value`` until ``now + ttl``."""

    aor: str
    binding_id: str
    value: str
    ttl: float

    def __post_init__(self) -> None:
        _check_key("aor", self.aor)
        _check_key("binding_id", self.binding_id)
        if not isinstance(self.value, str):
            raise ValueError("value must be a string")
        _check_positive("ttl", self.ttl)


@dataclass(frozen=True, slots=True)
class BindingGet(_Op[BindingsResult]):
    """The live bindings of ``aor``."""

    aor: str

    def __post_init__(self) -> None:
        _check_key("aor", self.aor)


@dataclass(frozen=True, slots=True)
class BindingDelete(_Op[BindingsResult]):
    """Remove binding ``binding_id`` of ``aor``, or all of them when it is ``None``."""

    aor: str
    binding_id: str | None = None

    def __post_init__(self) -> None:
        _check_key("aor", self.aor)
        if self.binding_id is not None:
            _check_key("binding_id", self.binding_id)


@dataclass(frozen=True, slots=True)
class AppendEvent(_Op[EventsResult]):
    """Append ``data`` to ``stream``, keeping the newest ``cap`` events; the stream is dropped
    ``ttl`` seconds after its last append."""

    stream: str
    data: str
    cap: int = 1000
    ttl: float = 7 * 86400.0

    def __post_init__(self) -> None:
        _check_key("stream", self.stream)
        if not isinstance(self.data, str):
            raise ValueError("data must be a string")
        if not isinstance(self.cap, int) or self.cap < 1:
            raise ValueError(f"cap must be an integer >= 1, not {self.cap!r}")
        _check_positive("ttl", self.ttl)


@dataclass(frozen=True, slots=True)
class RecentEvents(_Op[EventsResult]):
    """The newest ``n`` events of ``stream``, newest first."""

    stream: str
    n: int = 100

    def __post_init__(self) -> None:
        _check_key("stream", self.stream)
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, not {self.n!r}")


Op = Union[  # noqa: UP007 -- a runtime alias used with isinstance()
    FixedWindowHit,
    SlidingWindowHit,
    TokenBucketTake,
    DistinctHit,
    GetBan,
    SetBan,
    ClearBan,
    GetTrust,
    SetTrust,
    ClearTrust,
    LeaseAcquire,
    LeaseRenew,
    LeaseRelease,
    LeaseCount,
    StatIncr,
    StatGet,
    BindingPut,
    BindingGet,
    BindingDelete,
    AppendEvent,
    RecentEvents,
]


# -- typed batches -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slot(Generic[R]):
    """Where the result of one op of a :class:`Batch` will be; typed by the op's result."""

    index: int


class Batch:
    """A decision's ops, planned first, run in one :meth:`Store.execute`, read back typed.

    >>> batch = Batch()
    >>> hit = batch.add(FixedWindowHit("register:198.51.100.7", 10.0, 20))
    >>> results = batch.run(store, now)        # doctest: +SKIP
    >>> results[hit].allowed                   # doctest: +SKIP
    """

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(self, op: _Op[R]) -> Slot[R]:
        self.ops.append(op)  # type: ignore[arg-type]  # every _Op subclass is an Op
        return Slot(len(self.ops) - 1)

    def run(self, store: Store, now: float) -> BatchResults:
        """Execute the ops in one call (one round trip on Redis); raises :class:`StoreError`."""
        return BatchResults(store.execute(self.ops, now))

    def __len__(self) -> int:
        return len(self.ops)


class BatchResults:
    """The results of a :class:`Batch`, indexed by the slots ``Batch.add`` returned."""

    __slots__ = ("results",)

    def __init__(self, results: list[Result]) -> None:
        self.results = results

    def __getitem__(self, slot: Slot[R]) -> R:
        return self.results[slot.index]  # type: ignore[return-value]


# -- ban propagation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BanNotice:
    """A ban was set (``until`` in the future) or lifted (``until`` 0) on some node."""

    key: str
    until: float
    level: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BanSnapshot:
    """Every ban the store holds (some may have expired since): replaces a cache's content.

    Sent first on every (re)subscription, so bans set while a node was disconnected are not
    missed.  ``level`` and ``reason`` are not carried (0 and ``""``)."""

    bans: tuple[BanNotice, ...]


BanEvent = Union[BanNotice, BanSnapshot]  # noqa: UP007
BanCallback = Callable[[BanEvent], Any]


class Subscription(Protocol):
    """A ban subscription; ``close`` stops it (idempotent)."""

    def close(self) -> None: ...


class Store(Protocol):
    """The state store the rule engine, the registrar and the event log share.

    ``execute`` runs the ops in order and returns one result per op (on Redis in one round
    trip); it raises :class:`StoreError` and nothing else for a backend failure, and
    ``ValueError`` for ops the store cannot take.  ``healthy`` is false while the backend is
    unreachable.  ``ping`` probes the backend (raises :class:`StoreError`) and updates
    ``healthy``.
    """

    @property
    def healthy(self) -> bool: ...

    def execute(self, ops: Sequence[Op], now: float) -> list[Result]: ...

    def subscribe_bans(self, callback: BanCallback) -> Subscription: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...
