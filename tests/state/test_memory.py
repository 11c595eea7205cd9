"""Memory-store specifics: bounded tables, LRU eviction, pruning, synchronous notices."""

from __future__ import annotations

import pytest

from sbc.state.base import BanNotice, DistinctHit, FixedWindowHit, GetBan, SetBan, SetTrust
from sbc.state.memory import MemoryStore


def test_full_table_evicts_least_recently_used_key():
    """When a table is full, the key used least recently is evicted and counted."""
    store = MemoryStore(max_keys=3)
    for key in ("a", "b", "c"):
        store.execute([FixedWindowHit(key, 60.0, 10)], 1000.0)
    store.execute([FixedWindowHit("a", 60.0, 10)], 1001.0)  # a is now the most recent
    store.execute([FixedWindowHit("d", 60.0, 10)], 1002.0)
    assert store.evictions == 1
    assert store.execute([FixedWindowHit("b", 60.0, 10)], 1003.0)[0].count == 1.0  # b restarted
    assert store.execute([FixedWindowHit("a", 60.0, 10)], 1003.0)[0].count == 3.0


def test_counter_flood_never_evicts_a_ban():
    """Bans have their own table: a flood of new counter keys cannot unban anyone."""
    store = MemoryStore(max_keys=2)
    store.execute([SetBan("attacker", 3600.0, "flood")], 1000.0)
    store.execute([FixedWindowHit(f"src:{i}", 60.0, 10) for i in range(100)], 1001.0)
    assert store.execute([GetBan("attacker")], 1002.0)[0].ban is not None
    assert len(store) == 3  # one ban, two counters


def test_expired_entries_are_pruned():
    """Entries are dropped from memory once their logical expiry passes."""
    store = MemoryStore()
    store.execute([FixedWindowHit("k", 10.0, 5), SetBan("b", 30.0, "r"),
                   SetTrust("t", 20.0)], 1000.0)
    assert len(store) == 3
    store.execute([], 1010.0)
    assert len(store) == 2
    store.execute([], 1030.0)
    assert len(store) == 0
    assert store.evictions == 0


def test_distinct_sets_hold_at_most_limit_members_and_expire():
    """A scan of 10 000 members keeps ``limit`` of them; the set is gone a window after the last
    member was kept."""
    store = MemoryStore()
    for n in range(10_000):
        store.execute([DistinctHit("scan", f"{n}", 600.0, 15)], 1000.0 + n / 100)
    (members,) = store._distinct.data.values()
    assert len(members.value) == 15
    assert members.expires_at == 1000.0 + 14 / 100 + 600.0
    store.execute([], 1600.14)
    assert len(store) == 0


def test_notices_are_delivered_synchronously_after_the_batch():
    """Memory-store subscribers hear of a ban before execute returns; closed ones hear nothing."""
    store = MemoryStore()
    heard: list[object] = []
    subscription = store.subscribe_bans(heard.append)
    store.execute([SetBan("k", 10.0, "r")], 1000.0)
    assert heard[-1] == BanNotice("k", 1010.0, 1, "r")
    subscription.close()
    store.execute([SetBan("j", 10.0, "r")], 1000.0)
    assert len(heard) == 2  # the snapshot and the first notice


def test_capacity_must_be_positive():
    """A store that can hold nothing is refused."""
    with pytest.raises(ValueError):
        MemoryStore(max_keys=0)
