"""Each node's local copy of the active bans, fed by :meth:`Store.subscribe_bans`.

"Is this source banned?" is asked for every datagram and connection before anything is parsed,
so it must not cost a store round trip: the edge keeps one :class:`LocalBanCache`, applies every
:class:`BanNotice` / :class:`BanSnapshot` the store delivers (from the Redis listener thread via
``reactor.callFromThread``), and the core asks it with the packet's ``now``.  A ban set on any node
reaches every node's cache within the pub/sub latency (milliseconds); bans set while a node was
disconnected arrive with the snapshot that follows every reconnection.  During a Redis outage the
cache keeps answering with what it knew, so bans keep holding.

Pure: no clock, no I/O; expiry is checked against the caller's ``now``.
"""

from __future__ import annotations

import heapq

from sbc.state.base import BanEvent, BanNotice, BanSnapshot

DEFAULT_MAX_ENTRIES = 100_000


class LocalBanCache:
    """Active bans by key, with their expiry.

    At most ``max_entries`` bans are kept; when full, the ban that ends soonest is dropped to
    make room (the store still holds it: a ``GetBan`` finds it).  Expired bans are pruned as
    lookups and inserts find them.
    """

    __slots__ = ("_until", "_heap", "max_entries", "dropped")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (until, key); stale entries skipped
        self.max_entries = max_entries
        self.dropped = 0

    def apply(self, event: BanEvent) -> None:
        """Take a notice (ban set or lifted) or a snapshot (replace everything)."""
        if isinstance(event, BanSnapshot):
            self._until.clear()
            self._heap.clear()
            for notice in event.bans:
                self._set(notice)
        else:
            self._set(event)

    def _set(self, notice: BanNotice) -> None:
        if notice.until <= 0:
            self._until.pop(notice.key, None)
            return
        if notice.key not in self._until and len(self._until) >= self.max_entries:
            self._drop_soonest()
        self._until[notice.key] = notice.until
        heapq.heappush(self._heap, (notice.until, notice.key))
        if len(self._heap) > 2 * len(self._until) + 64:
            self._heap = [(until, key) for key, until in self._until.items()]
            heapq.heapify(self._heap)

    def _drop_soonest(self) -> None:
        while self._heap:
            until, key = heapq.heappop(self._heap)
            if self._until.get(key) == until:
                del self._until[key]
                self.dropped += 1
                return

    def banned_until(self, key: str, now: float) -> float | None:
        """When the ban of ``key`` ends, or ``None`` if it is not banned at ``now``."""
        until = self._until.get(key)
        if until is None:
            return None
        if until <= now:
            del self._until[key]
            return None
        return until

    def is_banned(self, key: str, now: float) -> bool:
        return self.banned_until(key, now) is not None

    def prune(self, now: float) -> int:
        """Forget the bans that ended by ``now``; how many were forgotten."""
        removed = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            until, key = heapq.heappop(heap)
            if self._until.get(key) == until:
                del self._until[key]
                removed += 1
        return removed

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, key: object) -> bool:
        return key in self._until
