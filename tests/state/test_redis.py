"""Redis-store specifics, against real redis-server processes: several nodes behaving as one,
ban propagation, one round trip per batch, NOSCRIPT recovery, Redis dying and coming back,
Sentinel and (single-node) Cluster, and the memory store as an oracle for random op sequences."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.cluster import RedisCluster
from redis.crc import key_slot

from sbc.state.base import (
    AppendEvent,
    BanNotice,
    BindingDelete,
    BindingGet,
    BindingPut,
    ClearBan,
    ClearTrust,
    DistinctHit,
    FixedWindowHit,
    GetBan,
    GetTrust,
    LeaseAcquire,
    LeaseCount,
    LeaseRelease,
    LeaseRenew,
    RecentEvents,
    SetBan,
    SetTrust,
    SlidingWindowHit,
    StatGet,
    StatIncr,
    StoreError,
    TokenBucketTake,
)
from sbc.state.cache import LocalBanCache
from sbc.state.memory import MemoryStore
from sbc.state.redis_store import RedisStore, encode_key
from tests.conftest import require_tool
from tests.state.conftest import delete_prefix, free_port, new_prefix, wait_until

EVERY_OP = [
    FixedWindowHit("a", 10.0, 2), FixedWindowHit("a", 10.0, 2), FixedWindowHit("a", 10.0, 2),
    SlidingWindowHit("b", 10.0, 3), TokenBucketTake("c", 0.5, 2.0),
    DistinctHit("d", "2001", 60.0, 2), DistinctHit("d", "2002", 60.0, 2),
    DistinctHit("d", "2001", 60.0, 2), DistinctHit("d", "2003", 60.0, 2),
    SetBan("x{y}", 60.0, "flood", factor=2.0, decay=100.0), GetBan("x{y}"),
    SetTrust("t", None, "pbx"), GetTrust("t"), ClearTrust("t"),
    LeaseAcquire("l", "c1", 1, 30.0), LeaseAcquire("l", "c2", 1, 30.0), LeaseRenew("l", "c1", 30.0),
    LeaseCount("l"), LeaseRelease("l", "c1"),
    StatIncr("s", "calls", 3), StatGet("s"),
    BindingPut("aor", "b1", "v|1", 60.0), BindingGet("aor"), BindingDelete("aor", "b1"),
    AppendEvent("ev", "e1", cap=2), AppendEvent("ev", "e2", cap=2), RecentEvents("ev", 5),
    ClearBan("x{y}"), GetBan("x{y}"),
]


class HealthLog:
    def __init__(self) -> None:
        self.changes: list[tuple[bool, str]] = []

    def __call__(self, healthy: bool, reason: str) -> None:
        self.changes.append((healthy, reason))


# -- several nodes, one state --------------------------------------------------------------------


def test_two_nodes_share_one_limit(redis_store_factory):
    """A limit is global: hits on two nodes add up, and the node over the limit is refused."""
    node_a, node_b = redis_store_factory(), redis_store_factory()
    op = FixedWindowHit("register:198.51.100.7", 10.0, 4)
    allowed = [node.execute([op], 1000.0)[0].allowed
               for node in (node_a, node_b, node_a, node_b, node_a, node_b)]
    assert allowed == [True, True, True, True, False, False]


def test_concurrent_hits_from_two_nodes_never_exceed_the_limit(redis_store_factory):
    """Hits racing from many threads on two nodes are allowed exactly ``limit`` times."""
    nodes = [redis_store_factory(), redis_store_factory()]
    op = FixedWindowHit("invite:acct:alice", 60.0, 100)
    allowed = []
    lock = threading.Lock()

    def worker(node: RedisStore) -> None:
        for _ in range(25):
            result = node.execute([op], 1000.0)[0]
            with lock:
                allowed.append(result.allowed)

    threads = [threading.Thread(target=worker, args=(nodes[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(allowed) == 200
    assert allowed.count(True) == 100


def test_ban_on_one_node_reaches_the_other_nodes_cache_within_a_second(redis_store_factory):
    """A ban set on node A is in node B's local cache within 1 s, and so is its lifting."""
    node_a, node_b = redis_store_factory(), redis_store_factory()
    cache = LocalBanCache()
    listener = node_b.subscribe_bans(cache.apply)
    assert listener.ready.wait(5.0)
    now = time.time()
    node_a.execute([SetBan("ip:203.0.113.9", 600.0, "flood")], now)
    assert wait_until(lambda: cache.is_banned("ip:203.0.113.9", now), timeout=1.0)
    node_a.execute([ClearBan("ip:203.0.113.9")], now + 1)
    assert wait_until(lambda: not cache.is_banned("ip:203.0.113.9", now + 1), timeout=1.0)


def test_subscriber_gets_bans_set_before_it_subscribed(redis_store_factory):
    """A node that (re)subscribes learns the bans already active from the snapshot."""
    node_a, node_b = redis_store_factory(), redis_store_factory()
    now = time.time()
    node_a.execute([SetBan("early", 600.0, "flood")], now)
    cache = LocalBanCache()
    listener = node_b.subscribe_bans(cache.apply)
    assert listener.ready.wait(5.0)
    assert cache.banned_until("early", now) == now + 600.0


def test_failing_subscriber_does_not_stop_propagation(redis_store_factory):
    """A callback that raises is logged, and the next notices are still delivered."""
    node = redis_store_factory()
    seen: list[Any] = []

    def callback(event: Any) -> None:
        seen.append(event)
        if isinstance(event, BanNotice) and event.key == "first":
            raise RuntimeError("subscriber bug")

    listener = node.subscribe_bans(callback)
    assert listener.ready.wait(5.0)
    node.execute([SetBan("first", 60.0, "r"), SetBan("second", 60.0, "r")], 1000.0)
    assert wait_until(lambda: any(getattr(e, "key", "") == "second" for e in seen), 2.0)


# -- wire behaviour ------------------------------------------------------------------------------


def test_a_batch_is_one_round_trip(redis_store_factory, monkeypatch):
    """Once the scripts are loaded, a whole batch goes out in one write on one connection."""
    store = redis_store_factory()
    store.execute(EVERY_OP, 1000.0)  # loads the scripts
    sends = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    results = store.execute(EVERY_OP, 2000.0)
    assert len(results) == len(EVERY_OP)
    assert len(sends) == 1


def test_results_match_the_memory_store_for_every_op(redis_store_factory):
    """Every op gives the same result on Redis as on the memory store."""
    assert redis_store_factory().execute(EVERY_OP, 1000.5) == MemoryStore().execute(
        EVERY_OP, 1000.5)


def test_noscript_reruns_only_what_did_not_run(redis_server):
    """After SCRIPT FLUSH a batch still counts each hit once and its reads see its writes."""
    server = redis_server()
    store = RedisStore.from_url(server.url, clock=time.monotonic)
    try:
        store.execute([FixedWindowHit("k", 60.0, 10)], 1000.0)
        server.client().script_flush()
        results = store.execute(
            [FixedWindowHit("k", 60.0, 10), SetBan("b", 60.0, "r"), GetBan("b"),
             StatIncr("s", "n", 5), StatGet("s")], 1001.0)
        assert results[0].count == 2.0
        assert results[2].ban is not None
        assert results[4].values == {"n": 5}
        assert store.execute([FixedWindowHit("k", 60.0, 10, cost=0)], 1002.0)[0].count == 2.0
    finally:
        store.close()


def test_every_op_keeps_its_keys_in_one_hash_slot():
    """The keys of each op share a hash tag (Cluster-safe), whatever characters the key has."""
    store = RedisStore(lambda: None, clock=time.monotonic, prefix="sbc:")
    for key in ("ip:198.51.100.7", "a}{b", "{x}", "%", "sip:alice@example.com"):
        ops = [FixedWindowHit(key, 1.0, 1), SlidingWindowHit(key, 1.0, 1),
               TokenBucketTake(key, 1.0, 1.0), DistinctHit(key, "m", 1.0, 1),
               SetBan(key, 1.0, "r"), ClearBan(key),
               LeaseAcquire(key, "id", 1, 1.0), StatIncr(key, "f"), BindingPut(key, "b", "v", 1.0),
               AppendEvent(key, "d"), RecentEvents(key)]
        for op in ops:
            command = store._planners[type(op)](op, "1000.0")
            assert len({key_slot(k.encode()) for k in command.keys}) == 1, (key, op)
        assert encode_key(key).count("{") == 0 and encode_key(key).count("}") == 0


# -- failures ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_redis_killed_and_restarted(redis_server, monkeypatch):
    """Redis dying raises StoreError, fails fast in backoff, and the store recovers on restart."""
    server = redis_server()
    health = HealthLog()
    clock = FakeClock()
    store = RedisStore.from_url(server.url, clock=clock, backoff_initial=1.0, backoff_max=8.0,
                                on_health_change=health)
    try:
        assert store.execute([FixedWindowHit("k", 60.0, 10)], 1000.0)[0].allowed
        server.kill()
        started = time.monotonic()
        with pytest.raises(StoreError) as failure:
            store.execute([FixedWindowHit("k", 60.0, 10)], 1001.0)
        assert time.monotonic() - started < 2.0
        assert failure.value.unavailable
        assert not store.healthy
        assert [healthy for healthy, _ in health.changes] == [False]

        # During the backoff (1 s on the store's clock) nothing touches the network.
        def no_network(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("connected during the backoff")

        with monkeypatch.context() as patch:
            patch.setattr(redis.connection.AbstractConnection, "connect", no_network)
            clock.now = 0.5
            with pytest.raises(StoreError, match="next attempt in 0.50 s"):
                store.execute([GetBan("k")], 1001.0)
        clock.now = 1.0  # backoff over: the next call tries again, fails, doubles the backoff
        with pytest.raises(StoreError):
            store.execute([GetBan("k")], 1001.0)
        clock.now = 2.5
        with pytest.raises(StoreError, match="next attempt in 0.50 s"):
            store.execute([GetBan("k")], 1001.0)
        assert [healthy for healthy, _ in health.changes] == [False]

        server.start()
        clock.now = 3.0
        assert store.execute([FixedWindowHit("k", 60.0, 10)], 1002.0)[0].allowed
        assert store.healthy
        assert [healthy for healthy, _ in health.changes] == [False, True]
    finally:
        store.close()


def test_ban_listener_resubscribes_after_restart(redis_server):
    """The ban listener reconnects after Redis restarts and delivers bans set afterwards."""
    server = redis_server()
    node_a = RedisStore.from_url(server.url, clock=time.monotonic, backoff_initial=0.05,
                                 backoff_max=0.2)
    node_b = RedisStore.from_url(server.url, clock=time.monotonic, backoff_initial=0.05,
                                 backoff_max=0.2)
    cache = LocalBanCache()
    try:
        listener = node_b.subscribe_bans(cache.apply)
        assert listener.ready.wait(5.0)
        server.kill()
        assert wait_until(lambda: not listener.connected, timeout=5.0)
        server.start()
        assert wait_until(lambda: listener.connected, timeout=5.0)
        assert listener.reconnects >= 1
        assert wait_until(lambda: _reachable(node_a), timeout=5.0)
        node_a.execute([SetBan("after-restart", 600.0, "r")], 1000.0)
        assert wait_until(lambda: cache.is_banned("after-restart", 1000.0), timeout=1.0)
    finally:
        node_a.close()
        node_b.close()


def _reachable(store: RedisStore) -> bool:
    try:
        store.ping()
        return True
    except StoreError:
        return False


def test_unreachable_at_start_raises_store_error_quickly():
    """A store whose Redis never answered raises StoreError within the connect timeout."""
    health = HealthLog()
    store = RedisStore.from_url(f"redis://:hunter2@127.0.0.1:{free_port()}/0",
                                clock=time.monotonic, on_health_change=health)
    started = time.monotonic()
    with pytest.raises(StoreError) as failure:
        store.execute([FixedWindowHit("k", 1.0, 1)], 1000.0)
    assert time.monotonic() - started < 2.0
    assert not store.healthy and health.changes[0][0] is False
    assert "hunter2" not in str(failure.value) and "hunter2" not in store.description
    store.close()


def test_server_error_is_a_store_error_but_not_an_outage(redis_store_factory, shared_redis_url):
    """A command Redis refuses (wrong type) raises StoreError(unavailable=False), store healthy."""
    store = redis_store_factory()
    client = redis.Redis.from_url(shared_redis_url)
    try:
        client.set(f"{store.prefix}fw:{{k}}", "not a hash")
    finally:
        client.close()
    with pytest.raises(StoreError) as failure:
        store.execute([FixedWindowHit("k", 1.0, 1)], 1000.0)
    assert not failure.value.unavailable
    assert store.healthy


def test_record_not_written_by_the_store_is_a_store_error(redis_store_factory, shared_redis_url):
    """A record someone else corrupted raises StoreError(unavailable=False), not ValueError."""
    store = redis_store_factory()
    client = redis.Redis.from_url(shared_redis_url)
    try:
        client.hset(f"{store.prefix}trust:{{k}}", mapping={"u": "garbage", "r": ""})
    finally:
        client.close()
    with pytest.raises(StoreError) as failure:
        store.execute([GetTrust("k")], 1000.0)
    assert not failure.value.unavailable


def test_closed_store_refuses_work(redis_store_factory):
    """After close, execute raises StoreError instead of reconnecting."""
    store = redis_store_factory()
    store.close()
    with pytest.raises(StoreError):
        store.execute([GetBan("k")], 1000.0)
    assert not store.healthy


# -- URLs, Sentinel, Cluster ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379",
    "redis+sentinel://127.0.0.1:26379",
    "redis+sentinel://127.0.0.1:26379/a/b/c",
    "redis+cluster://:pw@",
    "redis://127.0.0.1:notaport/0",
])
def test_unsupported_or_incomplete_urls_are_refused(url):
    """A URL that names no usable server is a ValueError when the store is built."""
    with pytest.raises(ValueError):
        RedisStore.from_url(url, clock=time.monotonic)


def test_prefix_with_hash_tag_braces_is_refused():
    """A prefix containing braces would break the hash tags, so it is refused."""
    with pytest.raises(ValueError):
        RedisStore(lambda: None, clock=time.monotonic, prefix="sbc:{x}:")


def test_sentinel_url_reaches_the_master(redis_server, tmp_path: Path):
    """Through redis+sentinel:// the store finds the master the Sentinel monitors and works."""
    binary = require_tool("redis-server")
    master = redis_server()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
                    "sentinel down-after-milliseconds mymaster 5000\n")
    proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    store = None
    try:
        sentinel = redis.Redis(port=port, socket_timeout=0.5, decode_responses=True)

        def knows_master() -> bool:
            try:
                return sentinel.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster") is not None
            except redis.RedisError:
                return False

        assert wait_until(knows_master, timeout=10.0, interval=0.05)
        sentinel.close()
        store = RedisStore.from_url(f"redis+sentinel://127.0.0.1:{port}/mymaster/0",
                                    clock=time.monotonic)
        assert store.execute(EVERY_OP, 1000.5) == MemoryStore().execute(EVERY_OP, 1000.5)
        assert master.client().exists("sbc:fw:{a}") == 1
        cache = LocalBanCache()
        listener = store.subscribe_bans(cache.apply)
        assert listener.ready.wait(5.0)
        store.execute([SetBan("via-sentinel", 60.0, "r")], 1000.0)
        assert wait_until(lambda: cache.is_banned("via-sentinel", 1000.0), timeout=1.0)
    finally:
        if store is not None:
            store.close()
        proc.kill()
        proc.wait(timeout=10)


def _cluster_node(redis_server: Any, first: int, last: int) -> tuple[Any, int, str]:
    bus = free_port()
    node = redis_server("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-port", str(bus))  # explicit: port + 10000 may overflow
    admin = node.client()
    admin.execute_command("CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
    node_id = admin.execute_command("CLUSTER", "MYID")
    admin.close()
    return node, bus, node_id


def _slot_owner(node: Any, slot: int) -> str:
    admin = node.client()
    try:
        for start, end, primary, *_ in admin.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return str(primary[2])
        return ""
    finally:
        admin.close()


@pytest.fixture
def two_node_cluster(redis_server):
    """Two primaries, slots 0-8191 on the first and 8192-16383 on the second."""
    a, _, a_id = _cluster_node(redis_server, 0, 8191)
    b, b_bus, b_id = _cluster_node(redis_server, 8192, 16383)
    admin = a.client()
    admin.execute_command("CLUSTER", "MEET", "127.0.0.1", str(b.port), str(b_bus))
    admin.close()

    def ready() -> bool:
        for node in (a, b):
            info = node.client().execute_command("CLUSTER", "INFO")
            if "cluster_state:ok" not in info or "cluster_known_nodes:2" not in info:
                return False
        return _slot_owner(a, 9000) == b_id and _slot_owner(b, 0) == a_id

    assert wait_until(ready, timeout=15.0, interval=0.05)
    return a, b, a_id, b_id


def test_cluster_spreads_keys_and_runs_every_op(two_node_cluster):
    """On a two-node Cluster every op works across slots and nodes, as on the memory store."""
    a, b, _, _ = two_node_cluster
    store = RedisStore.from_url(f"redis+cluster://127.0.0.1:{a.port}", clock=time.monotonic)
    try:
        assert store.execute(EVERY_OP, 1000.5) == MemoryStore().execute(EVERY_OP, 1000.5)
        assert isinstance(store._client, RedisCluster)
        assert a.client().dbsize() > 0 and b.client().dbsize() > 0
        cache = LocalBanCache()
        listener = store.subscribe_bans(cache.apply)
        assert listener.ready.wait(5.0)
        store.execute([SetBan("via-cluster", 60.0, "r")], 1000.0)
        assert wait_until(lambda: cache.is_banned("via-cluster", 1000.0), timeout=1.0)
    finally:
        store.close()


def test_cluster_moved_slot_is_followed_without_double_counting(two_node_cluster, monkeypatch):
    """An op sent to a node that no longer owns its slot is redirected and counted once."""
    a, b, a_id, b_id = two_node_cluster
    name = next(f"k{i}" for i in range(10_000) if key_slot(f"sbc:fw:{{k{i}}}".encode()) < 8192)
    slot = key_slot(f"sbc:fw:{{{name}}}".encode())
    store = RedisStore.from_url(f"redis+cluster://127.0.0.1:{a.port}", clock=time.monotonic)
    try:
        store.execute([FixedWindowHit("warm-up", 60.0, 1)], 1000.0)  # slot table and scripts
        # Move the (empty) slot from a to b: the documented resharding steps.
        b.client().execute_command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", a_id)
        a.client().execute_command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", b_id)
        b.client().execute_command("CLUSTER", "SETSLOT", str(slot), "NODE", b_id)
        a.client().execute_command("CLUSTER", "SETSLOT", str(slot), "NODE", b_id)
        assert _slot_owner(a, slot) == b_id
        redirected = []
        original = RedisCluster.execute_command

        def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
            redirected.append(args[0])
            return original(self, *args, **kwargs)

        monkeypatch.setattr(RedisCluster, "execute_command", spy)
        result = store.execute([FixedWindowHit(name, 60.0, 10)], 1001.0)[0]
        assert redirected == ["EVALSHA"]
        assert result.count == 1.0
        assert b.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", str(slot)) == 1
        assert a.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", str(slot)) == 0
        assert store.execute([FixedWindowHit(name, 60.0, 10)], 1002.0)[0].count == 2.0
    finally:
        store.close()


# -- the memory store as an oracle ---------------------------------------------------------------

KEYS = st.sampled_from(["k1", "k2"])
OPS = st.one_of(
    st.builds(FixedWindowHit, KEYS, st.sampled_from([0.1, 1.0, 2.5, 10.0]), st.integers(0, 4),
              st.integers(0, 3)),
    st.builds(SlidingWindowHit, KEYS, st.sampled_from([0.1, 1.0, 2.5, 10.0]), st.integers(0, 4),
              st.integers(0, 3)),
    st.builds(TokenBucketTake, KEYS, st.sampled_from([0.3, 0.5, 1.0, 3.0]),
              st.sampled_from([1.0, 2.0, 4.5]), st.integers(0, 3)),
    st.builds(DistinctHit, KEYS, st.sampled_from(["a", "b", "c", "d"]),
              st.sampled_from([0.1, 1.0, 2.5, 10.0]), st.integers(0, 3)),
    st.builds(SetBan, KEYS, st.sampled_from([1.0, 5.0]), st.just("r"),
              factor=st.sampled_from([1.0, 2.0, 1.5]), max_duration=st.sampled_from([0.0, 8.0]),
              decay=st.sampled_from([0.0, 10.0])),
    st.builds(GetBan, KEYS),
    st.builds(ClearBan, KEYS, st.booleans()),
    st.builds(LeaseAcquire, KEYS, st.sampled_from(["a", "b", "c"]), st.integers(0, 2),
              st.sampled_from([1.0, 3.0])),
    st.builds(LeaseRenew, KEYS, st.sampled_from(["a", "b", "c"]), st.sampled_from([1.0, 3.0])),
    st.builds(LeaseRelease, KEYS, st.sampled_from(["a", "b", "c"])),
    st.builds(StatIncr, KEYS, st.sampled_from(["x", "y"]), st.integers(-2, 5),
              st.sampled_from([1.0, 4.0])),
    st.builds(StatGet, KEYS),
    st.builds(BindingPut, KEYS, st.sampled_from(["b1", "b2"]), st.just("v"),
              st.sampled_from([1.0, 3.0])),
    st.builds(BindingDelete, KEYS, st.sampled_from([None, "b1"])),
    st.builds(AppendEvent, KEYS, st.just("e"), st.integers(1, 3), st.sampled_from([2.0, 5.0])),
    st.builds(RecentEvents, KEYS, st.integers(1, 4)),
)
ADVANCES = st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 1.0, 2.5, 7.0])  # seconds between batches
STEPS = st.lists(st.tuples(ADVANCES, st.lists(OPS, max_size=4)), min_size=1, max_size=12)


@given(steps=STEPS)
def test_redis_store_matches_memory_store(shared_redis_url, steps):
    """Random batches at random (edge-hitting) times give identical results on both stores."""
    prefix = new_prefix()
    redis_store = RedisStore.from_url(shared_redis_url, clock=time.monotonic, prefix=prefix)
    memory = MemoryStore()
    now = 1_000_000.0
    try:
        for advance, ops in steps:
            now += advance
            assert redis_store.execute(ops, now) == memory.execute(ops, now), (now, ops)
    finally:
        redis_store.close()
        delete_prefix(shared_redis_url, prefix)
