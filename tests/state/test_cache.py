"""LocalBanCache: each node's copy of the active bans, pure and driven by explicit times."""

from __future__ import annotations

import pytest

from sbc.state.base import BanNotice, BanSnapshot
from sbc.state.cache import LocalBanCache


def test_notice_bans_until_exactly_its_end():
    """A ban notice bans the key until ``until``; at ``until`` it is over."""
    cache = LocalBanCache()
    cache.apply(BanNotice("ip:198.51.100.7", 1060.0, 1, "flood"))
    assert cache.banned_until("ip:198.51.100.7", 1059.9) == 1060.0
    assert cache.is_banned("ip:198.51.100.7", 1059.9)
    assert not cache.is_banned("ip:198.51.100.7", 1060.0)
    assert "ip:198.51.100.7" not in cache
    assert not cache.is_banned("ip:192.0.2.1", 1000.0)


def test_lift_notice_removes_ban():
    """A notice with until 0 (ClearBan on some node) lifts the ban at once."""
    cache = LocalBanCache()
    cache.apply(BanNotice("k", 1060.0))
    cache.apply(BanNotice("k", 0.0))
    assert not cache.is_banned("k", 1000.0)
    assert len(cache) == 0


def test_snapshot_replaces_everything():
    """A snapshot (after a reconnection) drops bans it does not hold and adds those it does."""
    cache = LocalBanCache()
    cache.apply(BanNotice("lifted-while-away", 2000.0))
    cache.apply(BanSnapshot((BanNotice("set-while-away", 2000.0), BanNotice("old", 900.0))))
    assert not cache.is_banned("lifted-while-away", 1000.0)
    assert cache.is_banned("set-while-away", 1000.0)
    assert not cache.is_banned("old", 1000.0)


def test_reban_with_later_end_survives_prune_of_the_earlier_one():
    """A key banned again for longer keeps the new end when the old end passes."""
    cache = LocalBanCache()
    cache.apply(BanNotice("k", 1060.0))
    cache.apply(BanNotice("k", 1200.0))
    assert cache.prune(1100.0) == 0
    assert cache.banned_until("k", 1100.0) == 1200.0


def test_prune_forgets_ended_bans():
    """prune removes the bans that ended and says how many."""
    cache = LocalBanCache()
    for i, until in enumerate((1010.0, 1020.0, 1030.0)):
        cache.apply(BanNotice(f"k{i}", until))
    assert cache.prune(1020.0) == 2
    assert len(cache) == 1 and "k2" in cache


def test_full_cache_drops_the_ban_that_ends_soonest():
    """At capacity, a new ban evicts the one ending soonest, and the drop is counted."""
    cache = LocalBanCache(max_entries=2)
    cache.apply(BanNotice("long", 5000.0))
    cache.apply(BanNotice("short", 1100.0))
    cache.apply(BanNotice("new", 3000.0))
    assert not cache.is_banned("short", 1000.0)
    assert cache.is_banned("long", 1000.0) and cache.is_banned("new", 1000.0)
    assert cache.dropped == 1


def test_capacity_must_be_positive():
    """A cache that can hold nothing is refused."""
    with pytest.raises(ValueError):
        LocalBanCache(max_entries=0)
