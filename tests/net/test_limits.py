"""Connection admission and per-address event counting, with explicit ``now``."""

from __future__ import annotations

from collections import Counter

import pytest

from sbc.net.limits import (
    ACCEPT,
    CLOSED_IDLE,
    REFUSED_PER_IP,
    REFUSED_RATE,
    REFUSED_TOTAL,
    ConnectionGuard,
    PerIpEvents,
    StreamLimits,
)


def guard(total: int = 100, per_ip: int = 100, rate: int = 100) -> ConnectionGuard:
    return ConnectionGuard(StreamLimits(max_connections=total, max_connections_per_ip=per_ip,
                                        new_connections_per_second_per_ip=rate))


def test_per_ip_cap_refuses_the_extra_connection_and_release_frees_a_slot():
    """Past max_connections_per_ip one address is refused; another address is not."""
    g = guard(per_ip=2)
    assert [g.admit("192.0.2.1", 0.0), g.admit("192.0.2.1", 0.0)] == [ACCEPT, ACCEPT]
    assert g.admit("192.0.2.1", 0.0) == REFUSED_PER_IP
    assert g.admit("192.0.2.2", 0.0) == ACCEPT
    g.release("192.0.2.1")
    assert g.admit("192.0.2.1", 5.0) == ACCEPT
    assert (g.open_total, g.open_for("192.0.2.1"), g.open_for("192.0.2.2")) == (3, 2, 1)


def test_total_cap_is_checked_first_and_counts_every_address():
    """Past max_connections every address is refused, with the total as the reason."""
    g = guard(total=3, per_ip=2)
    assert [g.admit(ip, 0.0) for ip in ("192.0.2.1", "192.0.2.1", "192.0.2.2")] == [ACCEPT] * 3
    assert g.admit("192.0.2.1", 0.0) == REFUSED_TOTAL  # also over its own cap: total wins
    assert g.admit("192.0.2.3", 0.0) == REFUSED_TOTAL
    g.release("192.0.2.2")
    assert g.admit("192.0.2.3", 0.0) == ACCEPT


@pytest.mark.parametrize(
    "times, expected",
    [
        ([0.0, 0.1, 0.2], [ACCEPT, ACCEPT, REFUSED_RATE]),
        ([0.0, 0.5, 1.0], [ACCEPT, ACCEPT, ACCEPT]),  # the first accept left the window at 1.0
        # binary-exact times, so the window edge is exact
        ([0.0, 0.75, 0.875, 1.0, 1.5, 1.75], [ACCEPT, ACCEPT, REFUSED_RATE, ACCEPT, REFUSED_RATE,
                                              ACCEPT]),
    ],
)
def test_rate_window_counts_accepts_in_the_last_second(times, expected):
    """new_connections_per_second_per_ip is a sliding one-second window of accepts."""
    g = guard(rate=2)
    decisions = []
    for now in times:
        decisions.append(d := g.admit("192.0.2.1", now))
        if d == ACCEPT:
            g.release("192.0.2.1")  # closed at once: only the rate can refuse
    assert decisions == expected


def test_refused_attempts_do_not_extend_the_rate_window():
    """A source hammering while refused gets in again one second after its last accept."""
    g = guard(rate=1)
    assert g.admit("192.0.2.1", 10.0) == ACCEPT
    assert [g.admit("192.0.2.1", 10.0 + i / 10) for i in range(1, 10)] == [REFUSED_RATE] * 9
    assert g.admit("192.0.2.1", 11.0) == ACCEPT


def test_rate_windows_of_quiet_addresses_are_swept():
    """Rate windows of addresses silent for a second are forgotten."""
    g = guard()
    for i in range(50):
        g.admit(f"192.0.2.{i}", 0.0)
    assert len(g._accepts) == 50
    g.admit("198.51.100.1", 2.0)
    assert list(g._accepts) == ["198.51.100.1"]


def test_refusals_are_counted_in_totals_and_per_address():
    """Each refusal adds to conn.<reason> and to the refusing address's own counter."""
    counters: Counter[str] = Counter()
    g = ConnectionGuard(StreamLimits(max_connections=10, max_connections_per_ip=1,
                                     new_connections_per_second_per_ip=10), counters)
    g.admit("192.0.2.1", 0.0)
    g.admit("192.0.2.1", 0.0)
    g.admit("192.0.2.1", 0.0)
    g.record("192.0.2.7", CLOSED_IDLE)
    assert counters == Counter({"conn.accepted": 1, "conn.refused.per_ip": 2,
                                "conn.closed.idle": 1})
    assert g.events.get("192.0.2.1") == Counter({REFUSED_PER_IP: 2})
    assert g.events.get("192.0.2.7") == Counter({CLOSED_IDLE: 1})
    assert g.events.get("203.0.113.1") == Counter()


def test_release_never_goes_negative():
    """Releasing an address that holds no slot changes nothing."""
    g = guard(total=1)
    g.release("192.0.2.1")
    assert g.open_total == 0
    assert g.admit("192.0.2.1", 0.0) == ACCEPT
    assert g.admit("192.0.2.2", 0.0) == REFUSED_TOTAL


def test_per_ip_events_are_bounded_to_the_most_recently_active_addresses():
    """Past max_ips the least recently active address is forgotten and counted as evicted."""
    events = PerIpEvents(max_ips=3)
    for ip in ("a", "b", "c"):
        events.add(ip, "x")
    events.add("a", "x")  # a is now the most recent
    events.add("d", "y")  # evicts b
    assert [ip for ip, _ in events.items()] == ["c", "a", "d"]
    assert "b" not in events and len(events) == 3 and events.evicted == 1
    assert events.get("a") == Counter({"x": 2})
    events.get("a")["x"] = 99  # a copy: the stored counts are untouched
    assert events.get("a") == Counter({"x": 2})
