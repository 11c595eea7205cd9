"""Connection limits for the TCP and TLS listeners: pure bookkeeping, no sockets, no clock.

Theory of operation
-------------------
A stream listener asks :class:`ConnectionGuard` before it builds a protocol for an accepted
socket: ``admit(ip, now)`` returns :data:`ACCEPT` or the reason for a refusal, checked in this
order:

1. ``max_connections``: open TCP+TLS connections in total;
2. ``max_connections_per_ip``: open connections from this source address;
3. ``new_connections_per_second_per_ip``: connections *accepted* from this source address in the
   last second (a sliding window of accept times; refused attempts do not extend it, so a source
   that backs off gets in again one second later).

An admitted connection holds its slots until the listener calls ``release(ip)`` once, when it
closes.  Every limit that trips (a refusal here, or a timeout or buffer cap enforced by the
protocol) is an *event*: it is added to the caller's totals (``conn.<event>``, the core's
``counters``) and to :class:`PerIpEvents`, a per-source-address ``Counter`` bounded to the most
recently active addresses, which the rule engine will read to ban abusive sources.

Everything takes ``now`` (seconds, any monotonic origin) from the caller, so the tests are plain
functions with explicit times.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from typing import Final

from sbc.config.model import LimitsConfig

# Decisions of :meth:`ConnectionGuard.admit`; a refusal is also the event name counted.
ACCEPT: Final = "accept"
REFUSED_TOTAL: Final = "refused.max_connections"
REFUSED_PER_IP: Final = "refused.per_ip"
REFUSED_RATE: Final = "refused.rate"

# Events the stream protocol reports (also counted per source address).
CLOSED_IDLE: Final = "closed.idle"
CLOSED_HANDSHAKE_TIMEOUT: Final = "closed.tls_handshake_timeout"
CLOSED_INBOUND_OVERFLOW: Final = "closed.inbound_overflow"
CLOSED_OUTBOUND_OVERFLOW: Final = "closed.outbound_overflow"
CLOSED_FRAMING_LOST: Final = "closed.framing_lost"
TLS_HANDSHAKE_FAILED: Final = "tls.handshake_failed"

RATE_WINDOW = 1.0  # seconds: new_connections_per_second_per_ip counts accepts in this window
MAX_TRACKED_IPS = 4096  # source addresses whose events are kept (least recently active dropped)


# The ``limits`` section of the configuration is what governs connections; one type serves both.
StreamLimits = LimitsConfig


class PerIpEvents:
    """Event counts per source address, for at most ``max_ips`` addresses.

    Adding an event makes its address the most recently active; past ``max_ips`` the least
    recently active address is forgotten (and ``evicted`` counts how many were), so a scan from
    many addresses cannot grow memory without bound.
    """

    def __init__(self, max_ips: int = MAX_TRACKED_IPS) -> None:
        if max_ips < 1:
            raise ValueError("max_ips must be at least 1")
        self.max_ips = max_ips
        self.evicted = 0
        self._by_ip: OrderedDict[str, Counter[str]] = OrderedDict()

    def add(self, ip: str, event: str, n: int = 1) -> None:
        counts = self._by_ip.get(ip)
        if counts is None:
            counts = self._by_ip[ip] = Counter()
            if len(self._by_ip) > self.max_ips:
                self._by_ip.popitem(last=False)
                self.evicted += 1
        else:
            self._by_ip.move_to_end(ip)
        counts[event] += n

    def get(self, ip: str) -> Counter[str]:
        """A copy of the counts for ``ip`` (empty when unknown or forgotten)."""
        return Counter(self._by_ip.get(ip, ()))

    def __len__(self) -> int:
        return len(self._by_ip)

    def __contains__(self, ip: object) -> bool:
        return ip in self._by_ip

    def items(self) -> list[tuple[str, Counter[str]]]:
        """(address, counts) pairs, least recently active first."""
        return [(ip, Counter(c)) for ip, c in self._by_ip.items()]


class ConnectionGuard:
    """Admission of stream connections against the limits, and the events that trip them.

    One guard is shared by every TCP and TLS listener of the process, so ``max_connections`` is a
    process-wide cap.  ``counters`` receives the totals as ``conn.<event>`` (and
    ``conn.accepted``); pass the core's counters so that they are logged with the rest.
    """

    def __init__(
        self,
        limits: StreamLimits,
        counters: Counter[str] | None = None,
        events: PerIpEvents | None = None,
    ) -> None:
        self.limits = limits
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.events = events if events is not None else PerIpEvents()
        self.open_total = 0
        self._open: dict[str, int] = {}
        self._accepts: dict[str, deque[float]] = {}
        self._next_sweep = float("-inf")

    def open_for(self, ip: str) -> int:
        return self._open.get(ip, 0)

    def admit(self, ip: str, now: float) -> str:
        """:data:`ACCEPT` (the connection now holds its slots) or the refusal, counted."""
        self._sweep(now)
        lim = self.limits
        if self.open_total >= lim.max_connections:
            decision: str = REFUSED_TOTAL
        elif self._open.get(ip, 0) >= lim.max_connections_per_ip:
            decision = REFUSED_PER_IP
        else:
            window = self._accepts.get(ip)
            if window is not None:
                while window and window[0] <= now - RATE_WINDOW:
                    window.popleft()
            if window is not None and len(window) >= lim.new_connections_per_second_per_ip:
                decision = REFUSED_RATE
            else:
                if window is None:
                    window = self._accepts[ip] = deque()
                window.append(now)
                self.open_total += 1
                self._open[ip] = self._open.get(ip, 0) + 1
                self.counters["conn.accepted"] += 1
                return ACCEPT
        self.record(ip, decision)
        return decision

    def release(self, ip: str) -> None:
        """An admitted connection from ``ip`` has closed."""
        n = self._open.get(ip, 0)
        if n <= 0:
            return  # not admitted by us (or released twice): never go negative
        self.open_total -= 1
        if n == 1:
            del self._open[ip]
        else:
            self._open[ip] = n - 1

    def record(self, ip: str, event: str) -> None:
        """Count one limit event for ``ip``: in the totals and per source address."""
        self.counters[f"conn.{event}"] += 1
        self.events.add(ip, event)

    def _sweep(self, now: float) -> None:
        # Forget rate windows that have emptied, at most once per window, so the dict holds
        # only the addresses seen in the last second or so.
        if now < self._next_sweep:
            return
        self._next_sweep = now + RATE_WINDOW
        horizon = now - RATE_WINDOW
        stale = [ip for ip, w in self._accepts.items() if not w or w[-1] <= horizon]
        for ip in stale:
            del self._accepts[ip]
