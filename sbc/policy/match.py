"""Predicates, compiled once when the rules load, tested per event.

* :class:`NetworkSet` -- IPv4/IPv6 networks as one ``set`` of network numbers per prefix length:
  a lookup costs one shift and one set probe per distinct length present (at most 33 / 129,
  usually a handful), whatever the number of networks (threat feeds hold tens of thousands).
* :class:`PrefixSet` -- number prefixes as one ``set`` per length; :meth:`PrefixSet.longest`
  returns the longest prefix of a number (its key for per-prefix counters).
* :class:`TextMatcher` -- exact strings in a ``frozenset`` plus every substring and ``re:``
  regex of a list joined into one compiled alternation (one scan per test).
* :class:`TimeWindow` -- weekdays and ``HH:MM-HH:MM`` in a zone (:mod:`sbc.policy.tz`); a window
  that ends before it starts runs overnight into the next day.
* :class:`Matcher` -- a rule's predicates: all of ``match`` must hold and none of ``unless``.

Everything is tested against a :class:`Context` that carries the event, the caller's ``now``,
whether the source is trusted, and caches the parsed source address and local times.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sbc.policy.model import PolicyEvent
from sbc.policy.tz import DAY, Zone

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_TEXT = 512  # characters of a header value tested against patterns (bounds regex time)
REGEX_PREFIX = "re:"


def parse_ip(text: str) -> tuple[int, int] | None:
    """``(version, integer)`` of an address; an IPv4-mapped IPv6 address counts as IPv4."""
    parts = text.split(".")
    if len(parts) == 4:  # the common case, ten times faster than ipaddress
        value = 0
        for part in parts:
            if not (part.isascii() and part.isdigit() and len(part) <= 3) or (
                    len(part) > 1 and part[0] == "0"):
                break
            octet = int(part)
            if octet > 255:
                break
            value = value << 8 | octet
        else:
            return 4, value
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6:
        mapped = address.ipv4_mapped  # type: ignore[union-attr]
        if mapped is not None:
            return 4, int(mapped)
    return address.version, int(address)


def format_ip(version: int, value: int) -> str:
    if version == 4:
        return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
    return str(ipaddress.IPv6Address(value))


def normalise_ip(text: str) -> str:
    """The canonical text of an address (mapped IPv4 unwrapped), or ``text`` if it is none."""
    parsed = parse_ip(text)
    return text if parsed is None else format_ip(*parsed)


def net_of(version: int, value: int) -> str:
    """The /24 (IPv4) or /64 (IPv6) network of an address, as text."""
    if version == 4:
        return f"{format_ip(4, value & ~0xFF)}/24"
    return f"{format_ip(6, value & ~((1 << 64) - 1))}/64"


def source_net(text: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) network of an address, as text."""
    parsed = parse_ip(text)
    return text if parsed is None else net_of(*parsed)


class NetworkSet:
    """A set of IPv4 and IPv6 networks with an O(distinct prefix lengths) membership test."""

    __slots__ = ("_tables", "_lengths", "_count")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        tables: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        count = 0
        for network in networks:
            bits = network.max_prefixlen
            table = tables[network.version].setdefault(network.prefixlen, set())
            value = int(network.network_address) >> (bits - network.prefixlen)
            if value not in table:
                table.add(value)
                count += 1
        self._tables = tables
        self._lengths = {v: sorted(t, reverse=True) for v, t in tables.items()}
        self._count = count

    def contains(self, version: int, value: int) -> bool:
        bits = 32 if version == 4 else 128
        table = self._tables[version]
        # A loop, not any(): this runs per packet and a generator costs more.
        for length in self._lengths[version]:  # noqa: SIM110
            if value >> (bits - length) in table[length]:
                return True
        return False

    def __contains__(self, address: object) -> bool:
        parsed = parse_ip(address) if isinstance(address, str) else None
        return parsed is not None and self.contains(*parsed)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0


class Feed:
    """A threat-feed list of networks, refreshed by the edge every ``refresh`` seconds from
    ``url`` or ``path``.  Its content (``networks``) is the one mutable part of a rule set: it
    is replaced whole (one attribute store) by :func:`sbc.policy.loader.apply_feed`."""

    __slots__ = ("name", "url", "path", "refresh", "networks", "updated_at", "location")

    def __init__(self, name: str, url: str | None, path: str | None, refresh: float,
                 location: str = "") -> None:
        self.name = name
        self.url = url
        self.path = path
        self.refresh = refresh
        self.networks = NetworkSet()
        self.updated_at: float | None = None
        self.location = location

    @property
    def source(self) -> str:
        return self.url or self.path or ""

    def __repr__(self) -> str:
        return f"Feed({self.name!r}, {self.source!r}, {len(self.networks)} networks)"


class PrefixSet:
    """Number prefixes (digits, ``*``, ``#``, an optional leading ``+``), longest match wins."""

    __slots__ = ("_by_length", "_lengths")

    def __init__(self, prefixes: Iterable[str] = ()) -> None:
        by_length: dict[int, set[str]] = {}
        for prefix in prefixes:
            by_length.setdefault(len(prefix), set()).add(prefix)
        self._by_length = by_length
        self._lengths = sorted(by_length, reverse=True)

    def longest(self, number: str) -> str | None:
        """The longest prefix of ``number`` in the set, or ``None``."""
        size = len(number)
        for length in self._lengths:
            if length <= size and number[:length] in self._by_length[length]:
                return number[:length]
        return None

    def __contains__(self, number: object) -> bool:
        return isinstance(number, str) and self.longest(number) is not None

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_length.values())


class TextMatcher:
    """Strings matched exactly (or as substrings) and ``re:`` regexes, in one pass.

    ``mode`` ``exact``: a value matches an item equal to it or a regex that matches all of it;
    ``substring``: an item found anywhere in it or a regex found anywhere in it.  With
    ``ignore_case`` the comparison is case-insensitive (domains, User-Agent).
    """

    __slots__ = ("_exact", "_regex", "mode", "ignore_case")

    def __init__(self, items: Sequence[str], *, mode: str = "exact",
                 ignore_case: bool = False) -> None:
        self.mode = mode
        self.ignore_case = ignore_case
        exact: set[str] = set()
        patterns: list[str] = []
        for item in items:
            if item.startswith(REGEX_PREFIX):
                patterns.append(f"(?:{item[len(REGEX_PREFIX):]})")
            elif mode == "substring":
                patterns.append(re.escape(item.casefold() if ignore_case else item))
            else:
                exact.add(item.casefold() if ignore_case else item)
        self._exact = frozenset(exact)
        flags = re.IGNORECASE if ignore_case else 0
        self._regex = re.compile("|".join(patterns), flags) if patterns else None

    def __call__(self, value: str) -> bool:
        value = value[:MAX_TEXT]
        if self.ignore_case:
            value = value.casefold()
        if value in self._exact:
            return True
        regex = self._regex
        if regex is None:
            return False
        if self.mode == "substring":
            return regex.search(value) is not None
        return regex.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Weekdays (Monday 0) and minutes of the day ``[start, end)``; ``end <= start`` runs
    overnight: the part after midnight belongs to the day the window started."""

    days: frozenset[int]
    start: int  # minutes after midnight, 0..1439
    end: int  # 1..1440

    def contains(self, local: float) -> bool:
        day = int(local // DAY)
        minute = int(local - day * DAY) // 60
        today = (day + 3) % 7  # 1970-01-01 was a Thursday
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        return ((today in self.days and minute >= self.start)
                or ((today - 1) % 7 in self.days and minute < self.end))


class Context:
    """One event being evaluated: caches what several predicates and keys need (the source
    address parsed once, its canonical text and network, local times per zone)."""

    __slots__ = ("event", "now", "trusted", "_ip", "_local")

    def __init__(self, event: PolicyEvent, now: float, trusted: bool = False) -> None:
        self.event = event
        self.now = now
        self.trusted = trusted
        self._ip: tuple[int, int] | None | bool = False
        self._local: dict[str, float] = {}

    @property
    def ip(self) -> tuple[int, int] | None:
        if self._ip is False:
            self._ip = parse_ip(self.event.source_ip)
        return self._ip  # type: ignore[return-value]

    @property
    def ip_text(self) -> str:
        ip = self.ip
        return self.event.source_ip if ip is None else format_ip(*ip)

    @property
    def net_text(self) -> str:
        ip = self.ip
        return self.event.source_ip if ip is None else net_of(*ip)

    def local(self, zone: Zone) -> float:
        value = self._local.get(zone.name)
        if value is None:
            value = self._local[zone.name] = zone.local(self.now)
        return value


Predicate = Callable[[Context], bool]


def field_in(name: str, values: frozenset[object]) -> Predicate:
    def test(ctx: Context) -> bool:
        return getattr(ctx.event, name, None) in values
    return test


def field_is(name: str, value: bool) -> Predicate:
    def test(ctx: Context) -> bool:
        return getattr(ctx.event, name, None) is value
    return test


def trusted_is(value: bool) -> Predicate:
    def test(ctx: Context) -> bool:
        return ctx.trusted is value
    return test


def source_in(networks: NetworkSet, feeds: Sequence[Feed]) -> Predicate:
    def test(ctx: Context) -> bool:
        ip = ctx.ip
        if ip is None:
            return False
        if networks.contains(*ip):
            return True
        return any(feed.networks.contains(*ip) for feed in feeds)
    return test


def text_matches(name: str, matcher: TextMatcher) -> Predicate:
    def test(ctx: Context) -> bool:
        value = getattr(ctx.event, name, None)
        return value is not None and matcher(value)
    return test


def prefix_matches(name: str, prefixes: PrefixSet) -> Predicate:
    def test(ctx: Context) -> bool:
        value = getattr(ctx.event, name, None)
        return value is not None and prefixes.longest(value) is not None
    return test


def time_in(windows: Sequence[TimeWindow], zone: Zone) -> Predicate:
    def test(ctx: Context) -> bool:
        local = ctx.local(zone)
        return any(window.contains(local) for window in windows)
    return test


class Matcher:
    """A rule's compiled conditions: every ``match`` predicate holds and no ``unless`` one.

    ``prefixes`` is the rule's ``destination_prefix`` list (its longest match keys
    ``destination_prefix`` counters); ``fields`` names the event fields the conditions read
    (``match`` and ``unless``; not those every event kind has, such as the source), so that
    the edge fetches ``registered`` only when a rule tests it."""

    __slots__ = ("predicates", "unless", "prefixes", "fields")

    def __init__(self, predicates: Sequence[Predicate] = (), unless: Sequence[Predicate] = (),
                 prefixes: PrefixSet | None = None, fields: Iterable[str] = ()) -> None:
        self.predicates = tuple(predicates)
        self.unless = tuple(unless)
        self.prefixes = prefixes
        self.fields = frozenset(fields)

    def __call__(self, ctx: Context) -> bool:
        for predicate in self.predicates:
            if not predicate(ctx):
                return False
        return not any(predicate(ctx) for predicate in self.unless)

    def prefix(self, number: str | None) -> str | None:
        if number is None or self.prefixes is None:
            return None
        return self.prefixes.longest(number)


MATCH_ALL = Matcher()
