"""The Redis store: shared state for several sbc nodes, with redis-py.

Edge code (it does I/O and runs a thread); the core only sees :class:`sbc.state.base.Store`.

Connecting
----------

:meth:`RedisStore.from_url` takes:

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) and
  ``unix:///path/to/redis.sock[?db=N]``: one Redis server (redis-py's own URL rules);
* ``redis+sentinel://[[user]:password@]host1[:26379][,host2[:26379]...]/service[/db]`` (and
  ``rediss+sentinel://`` for TLS to the master): the master of ``service`` as the listed Sentinels
  report it; the password is the master's, ``?sentinel_password=...`` is the Sentinels' own;
* ``redis+cluster://[[user]:password@]host1[:6379][,host2...]`` (and ``rediss+cluster://``):
  Redis Cluster through ``redis.cluster.RedisCluster``, the hosts being startup nodes.

Every connection has short socket timeouts (0.25 s by default) and redis-py's own retries are
switched off (``Retry(NoBackoff(), 0)``): redis-py would otherwise resend a whole pipeline after a
connection error, which double-counts every hit in it.

Key schema (``prefix`` defaults to ``sbc:``; ``K`` is the caller's key with ``%``, ``{``, ``}``
percent-encoded so it is one whole hash tag)::

    {prefix}fw:{K}              hash  i (window index), c (count), x       fixed window
    {prefix}sw:{K}              hash  i, c (current), p (previous), x      sliding window
    {prefix}tb:{K}              hash  t (tokens), s (last update), x       token bucket
    {prefix}dv:{K}              zset  member -> last seen                  distinct members
    {prefix}dv:{K}:x            str   expiry of the set (newest + window)
    {prefix}{bans}:ban:K        hash  u (until) l (level) r (reason) e (evidence) s (set at)
                                      f (history forgotten at)             ban record
    {prefix}{bans}:index        zset  key -> until                         active bans (snapshot)
    {prefix}trust:{K}           hash  u (until or inf), r (reason)         trust
    {prefix}lease:{K}           zset  lease id -> expiry                   concurrency leases
    {prefix}stat:{K}            hash  field -> integer; '' -> expiry       statistics
    {prefix}bind:{K}            hash  binding id -> 'expiry|value'         registration bindings
    {prefix}ev:{K}              list  'at|data', newest first              recent events
    {prefix}ev:{K}:exp          str   expiry of the stream
    {prefix}bans                pub/sub channel of ban notices (JSON: k, u, l, r)

Every key an op touches shares one hash tag, so each op's Lua script is legal on Redis Cluster
and the keys of different subjects spread over the slots.  Bans deliberately share the one tag
``{bans}`` (one slot, one node): a ban and the index of active bans are then updated atomically
by one script, and the whole ban list can be read back in one command for the snapshot a
reconnecting node needs.  Bans are few and written rarely, and reads go to each node's local
cache, so that slot is not hot.  Redis TTLs are garbage collection only (logical expiry + 5 s,
see :mod:`sbc.state.redis_scripts`); ``x`` is a counter's logical expiry.

One round trip per decision
---------------------------

``execute`` sends every op of the batch as one ``EVALSHA`` in one pipeline (``transaction=False``)
and reads the replies in order: one round trip.  redis-py's ``Script`` objects are not used in
the pipeline because they add a ``SCRIPT EXISTS`` round trip to every pipeline; instead the SHA1
of each script is computed locally and, when a reply is ``NOSCRIPT`` (first use, server restart,
failover to a replica that never loaded them, ``SCRIPT FLUSH``), the scripts are loaded and *only
the ops that answered NOSCRIPT* are sent again (with the reads that followed them, so that
reads still see the writes planned before them): a NOSCRIPT op did not run, so this never counts
twice.  On Redis Cluster the batch is split by node: one plain pipeline per node touched, in turn
(redis-py's ``ClusterPipeline`` is avoided because it re-sends, one by one, every command of a
node whose connection failed mid-batch, including those that ran); an op answered MOVED or ASK
(it did not run) is sent again alone through the cluster client, which follows the redirection.

Failure semantics
-----------------

* Each op is atomic (one Lua script).  The batch is *not*: it is a pipeline, not MULTI/EXEC.  A
  transaction would not help anyway: on Cluster the keys of a decision live in many slots (MULTI
  needs one), and when a connection dies after the batch was sent the client cannot know whether
  EXEC ran, so the uncertainty is the same.
* When Redis becomes unreachable during ``execute`` (connection refused or reset, socket timeout,
  failover in progress) the call raises :class:`StoreError` (``unavailable=True``) within the
  socket timeout.  The ops of that batch may have run on the server: none, a prefix, or all of
  them (Redis runs a pipeline's commands in order).  Nothing is retried, so nothing is counted
  twice by the store.  What that means per op:

  - hits (fixed/sliding window, bucket), ``StatIncr``, ``AppendEvent``: at most counted once
    although the caller saw an error (an over-count of at most one batch per failure); a caller
    must not retry them (it would count again);
  - ``DistinctHit``: the member may be counted although the caller saw an error; a retry counts
    it once (it is then not ``new``);
  - ``LeaseAcquire``: the slot may be held although the caller saw an error; it frees itself
    after ``ttl``, or the caller retries with the same ``lease_id`` (idempotent), or releases it;
  - ``SetBan``, ``ClearBan``, ``SetTrust``, ``ClearTrust``, ``LeaseRenew``, ``LeaseRelease``,
    bindings: idempotent, safe to retry;
  - reads: nothing to lose.

  A Redis server that answers with an error (a full ``maxmemory``, a script error) raises
  ``StoreError`` with ``unavailable=False`` after the whole batch ran (other ops did run).
* After a failure the store is unhealthy (``healthy`` False, ``on_health_change(False, reason)``
  called once, the hook for the "Redis unreachable" security event) and ``execute`` fails fast,
  without touching the network, until a backoff delay has passed (0.1 s doubling to 5 s by
  default); the first call after the delay tries Redis again, and its success makes the store
  healthy (``on_health_change(True, "")``).  ``ping`` always tries, so a health check can bring
  the store back without traffic.  redis-py reconnects its pooled connections by itself.
* Sentinel failover: Redis replicates asynchronously, so writes acknowledged by the old master in
  the last moment before it died can be lost: counters roll back by those hits, a ban may vanish
  from the store (the nodes that received its notice keep it in their cache until it expires).
  While no master is known, calls fail as above.
* Ban notices are pub/sub: fire and forget.  The listener thread of :meth:`subscribe_bans`
  reconnects with capped exponential backoff and, after every (re)subscription, delivers a
  :class:`BanSnapshot` read from the ban index, so a node misses no ban for longer than its
  disconnection.  A silently dead connection (no RST) is noticed by a PING every 5 s of silence
  and abandoned after 15 s without any answer.

Tested for real against local redis-server processes: a single server (including killed and
restarted under a live store, and SCRIPT FLUSH), Sentinel (master discovery and ban propagation
through a real ``redis-server --sentinel``) and a two-node Cluster (ops spread over both nodes,
a slot moved under a live client: MOVED followed, counted once).  Not tested: Sentinel failover,
ASK during a live slot migration, a Cluster node failure/failover, TLS (``rediss``), Unix sockets,
and the detection of a silently dead pub/sub connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from sbc.config.secrets import mask_url, scrub_urls
from sbc.state import algorithms as alg
from sbc.state import redis_scripts
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
    Event,
    EventsResult,
    FixedWindowHit,
    GetBan,
    GetTrust,
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
    StoreError,
    TokenBucketTake,
    TrustResult,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "sbc:"
DEFAULT_SOCKET_TIMEOUT = 0.25  # seconds, connect and read
BACKOFF_INITIAL = 0.1  # seconds before the first retry after a failure
BACKOFF_MAX = 5.0  # seconds, the cap of the doubling
LISTENER_POLL = 0.2  # seconds a listener waits for a message before checking it is stopped
LISTENER_PING_AFTER = 5.0  # seconds of pub/sub silence before a PING
LISTENER_DEAD_AFTER = 15.0  # seconds of silence (PINGs unanswered) before reconnecting

# Errors that mean "Redis cannot be reached now": they trip the backoff.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # includes sentinel.MasterNotFoundError and BusyLoadingError
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,  # a failover demoted the server we talk to
    ClusterDownError,
    TryAgainError,
    ClusterError,
    RedisClusterException,
    OSError,
)

_SCRIPTS: dict[str, tuple[str, str]] = {
    name: (hashlib.sha1(source.encode()).hexdigest(), source)
    for name, source in redis_scripts.ALL.items()
}


def _num(x: float) -> str:
    """A number as text Lua's ``tonumber`` reads back exactly."""
    return repr(float(x))


def encode_key(key: str) -> str:
    """``key`` with ``%``, ``{`` and ``}`` percent-encoded, so it can be a whole hash tag."""
    if "%" in key or "{" in key or "}" in key:
        return key.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return key


class _Command:
    """One op, planned: what to send and how to read the reply."""

    __slots__ = ("script", "name", "keys", "args", "decode")

    def __init__(self, script: str | None, name: str, keys: tuple[str, ...],
                 args: tuple[str, ...], decode: Callable[[Any], Result]) -> None:
        self.script = script  # a name in _SCRIPTS, or None for a plain command
        self.name = name  # the plain command, when script is None
        self.keys = keys
        self.args = args
        self.decode = decode

    def args_list(self) -> tuple[Any, ...]:
        if self.script is None:
            return (self.name, *self.keys, *self.args)
        return ("EVALSHA", _SCRIPTS[self.script][0], len(self.keys), *self.keys, *self.args)

    def queue(self, pipe: Any) -> None:
        pipe.execute_command(*self.args_list())


HealthHook = Callable[[bool, str], Any]


class RedisStore:
    """A :class:`sbc.state.base.Store` on Redis (single server, Sentinel or Cluster).

    ``client_factory`` builds the redis-py client (called lazily, again after a failure if it
    failed: a Cluster client connects when built); ``clock`` is a monotonic clock used only to
    time the reconnect backoff (pass ``time.monotonic``); decisions use the callers' ``now``.
    ``on_health_change(healthy, reason)`` is called on every transition, from the thread that
    noticed it.  Thread-safe: call ``execute`` from a pool of worker threads, never from the
    reactor thread (see :mod:`sbc.state.base`).
    """

    def __init__(
        self,
        client_factory: Callable[[], Any],
        *,
        clock: Callable[[], float],
        prefix: str = DEFAULT_PREFIX,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        on_health_change: HealthHook | None = None,
        description: str = "redis",
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain '{' or '}' (hash tags)")
        if not (0 < backoff_initial <= backoff_max):
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self._factory = client_factory
        self._client: Any = None
        self._clock = clock
        self.prefix = prefix
        self.channel = prefix + "bans"
        self._ban_index = prefix + "{bans}:index"
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_health_change = on_health_change
        self.description = description
        self._lock = threading.Lock()
        self._healthy = True
        self._failures = 0
        self._retry_at = 0.0
        self._closed = False
        self._refresh_topology = False
        self._listeners: list[BanListener] = []
        self._planners: dict[type, Callable[[Any, str], _Command]] = {
            FixedWindowHit: self._plan_fixed,
            SlidingWindowHit: self._plan_sliding,
            TokenBucketTake: self._plan_bucket,
            DistinctHit: self._plan_distinct,
            GetBan: self._plan_get_ban,
            SetBan: self._plan_set_ban,
            ClearBan: self._plan_clear_ban,
            GetTrust: self._plan_get_trust,
            SetTrust: self._plan_set_trust,
            ClearTrust: self._plan_clear_trust,
            LeaseAcquire: self._plan_lease_acquire,
            LeaseRenew: self._plan_lease_renew,
            LeaseRelease: self._plan_lease_release,
            LeaseCount: self._plan_lease_count,
            StatIncr: self._plan_stat_incr,
            StatGet: self._plan_stat_get,
            BindingPut: self._plan_binding_put,
            BindingGet: self._plan_binding_get,
            BindingDelete: self._plan_binding_delete,
            AppendEvent: self._plan_append_event,
            RecentEvents: self._plan_recent_events,
        }

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Callable[[], float],
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        connect_timeout: float | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        on_health_change: HealthHook | None = None,
    ) -> RedisStore:
        """A store for ``url`` (see the module docstring for the forms); ValueError if the URL
        is not one of them.  Nothing is connected yet: a single-server or Sentinel client is
        built at once (that does not connect), a Cluster client on first use (that connects)."""
        factory = client_factory(url, socket_timeout=socket_timeout,
                                 connect_timeout=connect_timeout)
        store = cls(factory, clock=clock, prefix=prefix, backoff_initial=backoff_initial,
                    backoff_max=backoff_max, on_health_change=on_health_change,
                    description=mask_url(url))
        if not url.partition("://")[0].lower().endswith("+cluster"):
            store._get_client()  # a malformed URL fails here, not on the first decision
        return store

    # -- Store ---------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    def execute(self, ops: Sequence[Op], now: float) -> list[Result]:
        """Run ``ops`` in one round trip; :class:`StoreError` on any backend failure (see the
        module docstring for what may have run)."""
        if not ops:
            return []
        now_arg = _num(now)
        commands = []
        for op in ops:
            planner = self._planners.get(type(op))
            if planner is None:
                raise ValueError(f"not a store op: {op!r}")
            commands.append(planner(op, now_arg))
        replies = self._guarded(lambda client: self._run(client, commands))
        try:
            return [command.decode(reply) for command, reply in zip(commands, replies, strict=True)]
        except (ValueError, TypeError, IndexError, KeyError) as exc:  # a record we did not write
            raise StoreError(f"{self.description}: unexpected reply ({exc})",
                             unavailable=False) from exc

    def ping(self) -> None:
        """One PING, whatever the backoff says; updates ``healthy``."""
        self._guarded(lambda client: client.ping(), probe=True)

    def ban_snapshot(self) -> BanSnapshot:
        """Every ban in the index (expired ones included until the next SetBan prunes them)."""
        pairs = self._guarded(
            lambda client: client.zrange(self._ban_index, 0, -1, withscores=True), probe=True)
        return BanSnapshot(tuple(BanNotice(key, float(until)) for key, until in pairs))

    def subscribe_bans(self, callback: BanCallback) -> BanListener:
        """Start a listener thread that calls ``callback`` with a :class:`BanSnapshot` after
        every (re)subscription and a :class:`BanNotice` for every ban set or lifted anywhere."""
        if self._closed:
            raise StoreError("the store is closed")
        listener = BanListener(self, callback)
        self._listeners.append(listener)
        listener.start()
        return listener

    def close(self) -> None:
        """Stop the listeners and close the connections (idempotent)."""
        self._closed = True
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # -- failure handling ----------------------------------------------------------------------

    def _get_client(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
                client = self._client
        return client

    def _guarded(self, action: Callable[[Any], Any], probe: bool = False) -> Any:
        if self._closed:
            raise StoreError("the store is closed")
        if not self._healthy and not probe:
            wait = self._retry_at - self._clock()
            if wait > 0:
                raise StoreError(f"{self.description} unavailable (next attempt in {wait:.2f} s)")
        try:
            result = action(self._get_client())
        except _UNAVAILABLE as exc:
            reason = scrub_urls(f"{type(exc).__name__}: {exc}")
            self._failed(reason)
            raise StoreError(f"{self.description} unavailable: {reason}") from exc
        except RedisError as exc:
            raise StoreError(scrub_urls(f"{self.description} error: {type(exc).__name__}: {exc}"),
                             unavailable=False) from exc
        if not self._healthy or self._failures:
            self._recovered()
        return result

    def _failed(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            delay = min(self.backoff_max, self.backoff_initial * 2 ** (self._failures - 1))
            self._retry_at = self._clock() + delay
            was_healthy, self._healthy = self._healthy, False
        if was_healthy and self.on_health_change is not None:
            self.on_health_change(False, reason)

    def _recovered(self) -> None:
        with self._lock:
            was_healthy, self._healthy = self._healthy, True
            self._failures = 0
        if not was_healthy and self.on_health_change is not None:
            self.on_health_change(True, "")

    def _run(self, client: Any, commands: list[_Command]) -> list[Any]:
        replies = self._send(client, commands, list(range(len(commands))))
        noscript = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if noscript:
            # Those ops did not run: load the scripts and send them again, together with the
            # plain commands (reads and DEL, idempotent) that followed the first of them, so a
            # read still sees the writes planned before it.  Scripted ops that did run are not
            # sent again.
            again = sorted(set(noscript) | {
                i for i in range(noscript[0], len(commands)) if commands[i].script is None})
            for _sha, source in _SCRIPTS.values():
                client.script_load(source)  # on Cluster: on every primary
            for i, reply in zip(again, self._send(client, commands, again), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _send(self, client: Any, commands: list[_Command], indices: list[int]) -> list[Any]:
        """Send ``commands[i]`` for ``i`` in ``indices``; their replies (errors as values)."""
        if not isinstance(client, RedisCluster):
            pipe = client.pipeline(transaction=False)
            for i in indices:
                commands[i].queue(pipe)
            return list(pipe.execute(raise_on_error=False))
        return self._send_cluster(client, commands, indices)

    def _send_cluster(self, client: RedisCluster, commands: list[_Command],
                      indices: list[int]) -> list[Any]:
        """Cluster: one plain pipeline per node (a round trip per node touched, in turn).

        redis-py's ClusterPipeline is not used: when a node's connection fails or times out
        mid-batch it re-sends every command of that node one by one, including those that ran
        (double counting).  Here a connection failure raises, and only commands answered MOVED
        or ASK (which did not run) are sent again, through ``RedisCluster.execute_command``,
        which follows the redirection and learns the new slot owner.
        """
        if self._refresh_topology:
            client.nodes_manager.initialize()
            self._refresh_topology = False
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i in indices:
            node = client.get_node_from_key(commands[i].keys[0])
            by_node.setdefault(node.name, (node, []))[1].append(i)
        replies: dict[int, Any] = {}
        try:
            for node, positions in by_node.values():
                pipe = client.get_redis_connection(node).pipeline(transaction=False)
                for i in positions:
                    commands[i].queue(pipe)
                for i, reply in zip(positions, pipe.execute(raise_on_error=False), strict=True):
                    replies[i] = reply
        except _UNAVAILABLE:
            self._refresh_topology = True  # a failover may have moved the slots
            raise
        for i in indices:
            if isinstance(replies[i], (MovedError, AskError)):
                try:
                    replies[i] = client.execute_command(*commands[i].args_list())
                except RedisError as exc:
                    replies[i] = exc
        return [replies[i] for i in indices]

    # -- keys ----------------------------------------------------------------------------------

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{{{encode_key(key)}}}"

    def _ban_key(self, key: str) -> str:
        return f"{self.prefix}{{bans}}:ban:{key}"

    # -- planners: an op becomes one command and a decoder of its reply -------------------------

    def _plan_fixed(self, op: FixedWindowHit, now: str) -> _Command:
        def decode(reply: Any) -> Result:
            allowed, index, count = bool(reply[0]), float(reply[1]), float(reply[2])
            return alg.fixed_window_result(allowed, index, count, op.window, op.limit, op.cost,
                                           float(now))
        return _Command("fixed_window", "", (self._key("fw", op.key),),
                        (now, _num(op.window), str(op.limit), str(op.cost)), decode)

    def _plan_sliding(self, op: SlidingWindowHit, now: str) -> _Command:
        def decode(reply: Any) -> Result:
            return alg.sliding_window_result(
                bool(reply[0]), float(reply[1]), float(reply[2]), float(reply[3]),
                op.window, op.limit, op.cost, float(now))
        return _Command("sliding_window", "", (self._key("sw", op.key),),
                        (now, _num(op.window), str(op.limit), str(op.cost)), decode)

    def _plan_bucket(self, op: TokenBucketTake, now: str) -> _Command:
        def decode(reply: Any) -> Result:
            return alg.token_bucket_result(bool(reply[0]), float(reply[1]), float(reply[2]),
                                           op.rate, op.burst, op.cost, float(now))
        return _Command("token_bucket", "", (self._key("tb", op.key),),
                        (now, _num(op.rate), _num(op.burst), str(op.cost)), decode)

    def _plan_distinct(self, op: DistinctHit, now: str) -> _Command:
        def decode(reply: Any) -> Result:
            return alg.distinct_result(bool(reply[0]), int(reply[1]), bool(reply[2]),
                                       float(reply[3]), op.window, op.limit, float(now))
        key = self._key("dv", op.key)
        return _Command("distinct", "", (key, key + ":x"),
                        (now, op.member, _num(op.window), str(op.limit)), decode)

    @staticmethod
    def _ban_result(key: str, fields: Sequence[Any], now: float,
                    created: bool = False) -> BanResult:
        """A ban record (until, level, reason, evidence, set_at, forget_at) seen at ``now``."""
        if fields[0] is None or float(fields[5]) <= now:
            return BanResult(None, 0, created)
        until, level = float(fields[0]), int(fields[1])
        ban = None
        if until > now:
            ban = Ban(key, until, level, fields[2], fields[3], float(fields[4]))
        return BanResult(ban, level, created)

    def _plan_get_ban(self, op: GetBan, now: str) -> _Command:
        return _Command(None, "HMGET", (self._ban_key(op.key),), ("u", "l", "r", "e", "s", "f"),
                        lambda reply: self._ban_result(op.key, reply, float(now)))

    def _plan_set_ban(self, op: SetBan, now: str) -> _Command:
        def decode(reply: Any) -> Result:
            return self._ban_result(op.key, reply[1:], float(now), created=bool(reply[0]))
        return _Command(
            "set_ban", "", (self._ban_key(op.key), self._ban_index),
            (now, _num(op.duration), _num(op.factor), _num(op.max_duration), _num(op.decay),
             op.reason, op.evidence, self.channel, op.key),
            decode)

    def _plan_clear_ban(self, op: ClearBan, now: str) -> _Command:
        def decode(reply: Any) -> Result:
            before = self._ban_result(op.key, reply, float(now))
            return BanResult(before.ban, 0 if op.forget else before.level)
        return _Command("clear_ban", "", (self._ban_key(op.key), self._ban_index),
                        (now, "1" if op.forget else "0", self.channel, op.key), decode)

    def _plan_get_trust(self, op: GetTrust, now: str) -> _Command:
        def decode(reply: Any) -> Result:
            if reply[0] is None or float(reply[0]) <= float(now):
                return TrustResult(False)
            return TrustResult(True, float(reply[0]), reply[1])
        return _Command(None, "HMGET", (self._key("trust", op.key),), ("u", "r"), decode)

    def _plan_set_trust(self, op: SetTrust, now: str) -> _Command:
        until = math.inf if op.duration is None else float(now) + op.duration
        return _Command("set_trust", "", (self._key("trust", op.key),),
                        (now, "inf" if until == math.inf else _num(until), op.reason),
                        lambda reply: TrustResult(True, until, op.reason))

    def _plan_clear_trust(self, op: ClearTrust, now: str) -> _Command:
        return _Command(None, "DEL", (self._key("trust", op.key),), (),
                        lambda reply: TrustResult(False))

    @staticmethod
    def _lease_result(reply: Any) -> Result:
        return LeaseResult(bool(reply[0]), int(reply[1]), float(reply[2]))

    def _plan_lease_acquire(self, op: LeaseAcquire, now: str) -> _Command:
        return _Command("lease_acquire", "", (self._key("lease", op.key),),
                        (now, op.lease_id, str(op.limit), _num(op.ttl)), self._lease_result)

    def _plan_lease_renew(self, op: LeaseRenew, now: str) -> _Command:
        return _Command("lease_renew", "", (self._key("lease", op.key),),
                        (now, op.lease_id, _num(op.ttl)), self._lease_result)

    def _plan_lease_release(self, op: LeaseRelease, now: str) -> _Command:
        return _Command("lease_release", "", (self._key("lease", op.key),), (now, op.lease_id),
                        lambda reply: LeaseResult(bool(reply[0]), int(reply[1])))

    def _plan_lease_count(self, op: LeaseCount, now: str) -> _Command:
        return _Command("lease_count", "", (self._key("lease", op.key),), (now,),
                        lambda reply: LeaseResult(True, int(reply)))

    def _plan_stat_incr(self, op: StatIncr, now: str) -> _Command:
        return _Command("stat_incr", "", (self._key("stat", op.key),),
                        (now, op.field, str(op.amount), _num(op.ttl)),
                        lambda reply: StatResult(int(reply)))

    def _plan_stat_get(self, op: StatGet, now: str) -> _Command:
        def decode(reply: Any) -> Result:
            values = dict(reply)
            expires = values.pop("", None)
            if expires is None or float(expires) <= float(now):
                return StatsResult({})
            return StatsResult({name: int(value) for name, value in values.items()})
        return _Command(None, "HGETALL", (self._key("stat", op.key),), (), decode)

    @staticmethod
    def _bindings(reply: Any) -> Result:
        bindings = []
        for binding_id, packed in zip(reply[::2], reply[1::2], strict=True):
            expires, _, value = packed.partition("|")
            bindings.append(Binding(binding_id, value, float(expires)))
        bindings.sort(key=lambda b: b.binding_id)
        return BindingsResult(tuple(bindings))

    def _plan_binding_put(self, op: BindingPut, now: str) -> _Command:
        return _Command("binding_put", "", (self._key("bind", op.aor),),
                        (now, op.binding_id, op.value, _num(op.ttl)), self._bindings)

    def _plan_binding_get(self, op: BindingGet, now: str) -> _Command:
        return _Command("binding_get", "", (self._key("bind", op.aor),), (now,), self._bindings)

    def _plan_binding_delete(self, op: BindingDelete, now: str) -> _Command:
        return _Command("binding_delete", "", (self._key("bind", op.aor),),
                        (now, op.binding_id or ""), self._bindings)

    def _event_keys(self, stream: str) -> tuple[str, str]:
        key = self._key("ev", stream)
        return key, key + ":exp"

    def _plan_append_event(self, op: AppendEvent, now: str) -> _Command:
        return _Command("append_event", "", self._event_keys(op.stream),
                        (now, op.data, str(op.cap), _num(op.ttl)),
                        lambda reply: EventsResult(int(reply)))

    def _plan_recent_events(self, op: RecentEvents, now: str) -> _Command:
        def decode(reply: Any) -> Result:
            events = []
            for item in reply[1:]:
                at, _, data = item.partition("|")
                events.append(Event(float(at), data))
            return EventsResult(int(reply[0]), tuple(events))
        return _Command("recent_events", "", self._event_keys(op.stream), (now, str(op.n)),
                        decode)


def _parse_ban_message(data: str) -> BanNotice:
    fields = json.loads(data)
    return BanNotice(str(fields["k"]), float(fields["u"]), int(fields["l"]), str(fields["r"]))


class BanListener:
    """The thread behind :meth:`RedisStore.subscribe_bans`.

    ``ready`` is set once the first snapshot has been delivered; ``connected`` tells whether the
    subscription is live now.  ``close`` stops the thread within about ``LISTENER_POLL``.
    """

    def __init__(self, store: RedisStore, callback: BanCallback) -> None:
        self._store = store
        self._callback = callback
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.connected = False
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="sbc-ban-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _deliver(self, event: BanNotice | BanSnapshot) -> None:
        try:
            self._callback(event)
        except Exception:  # a subscriber's bug must not kill ban propagation
            log.exception("ban subscriber failed on %r", event)

    def _run(self) -> None:
        delay = self._store.backoff_initial
        while not self._stop.is_set():
            try:
                self._listen()
                delay = self._store.backoff_initial
            except (RedisError, OSError, StoreError, ValueError, KeyError) as exc:
                log.warning("ban listener on %s lost: %s", self._store.description,
                            scrub_urls(str(exc)))
            self.connected = False
            if self._stop.wait(delay):
                break
            delay = min(self._store.backoff_max, delay * 2)
            self.reconnects += 1

    def _listen(self) -> None:
        clock = self._store._clock
        pubsub = self._store._get_client().pubsub()
        try:
            pubsub.subscribe(self._store.channel)
            last_heard = clock()
            pinged = False
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=LISTENER_POLL)
                if message is None:
                    silent = clock() - last_heard
                    if silent > LISTENER_DEAD_AFTER:
                        raise RedisConnectionError("ban channel silent, PINGs unanswered")
                    if silent > LISTENER_PING_AFTER and not pinged:
                        pubsub.ping()
                        pinged = True
                    continue
                last_heard = clock()
                pinged = False
                kind = message.get("type")
                if kind == "subscribe":
                    self._deliver(self._store.ban_snapshot())
                    self.connected = True
                    self.ready.set()
                elif kind == "message":
                    self._deliver(_parse_ban_message(message["data"]))
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()


# -- URLs ----------------------------------------------------------------------------------------


def _hosts(netloc: str, default_port: int) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    userinfo, _, hostlist = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    hosts = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise ValueError(f"no host in {item!r}")
        hosts.append((host, int(port) if port else default_port))
    if not hosts:
        raise ValueError("no host")
    return username, password, hosts


def client_factory(
    url: str, *, socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: float | None = None,
) -> Callable[[], Any]:
    """A function building the redis-py client for ``url``; ValueError for a bad URL."""
    connect_timeout = socket_timeout if connect_timeout is None else connect_timeout
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
        "protocol": 2,
    }
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return lambda: redis.Redis.from_url(url, **common)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    tls = scheme.startswith("rediss+")
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        username, password, hosts = _hosts(parts.netloc, 26379)
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise ValueError("a Sentinel URL names the service: redis+sentinel://host/service[/db]")
        service = unquote(path[0])
        db = int(path[1]) if len(path) == 2 else 0
        sentinel_kwargs = {"socket_timeout": socket_timeout,
                           "socket_connect_timeout": connect_timeout,
                           "retry": Retry(NoBackoff(), 0), "decode_responses": True,
                           "protocol": 2}
        if "sentinel_password" in query:
            sentinel_kwargs["password"] = query["sentinel_password"][0]

        def sentinel_client() -> Any:
            sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **common)
            return sentinel.master_for(service, db=db, username=username, password=password,
                                       ssl=tls, **common)
        return sentinel_client
    if scheme in ("redis+cluster", "rediss+cluster"):
        username, password, hosts = _hosts(parts.netloc, 6379)
        nodes = [ClusterNode(host, port) for host, port in hosts]
        return lambda: RedisCluster(startup_nodes=nodes, username=username, password=password,
                                    ssl=tls, **common)
    raise ValueError(
        f"unsupported Redis URL scheme {scheme!r} (expected redis, rediss, unix, "
        "redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster)")
