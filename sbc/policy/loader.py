"""Rule files: YAML in, a compiled, immutable :class:`RuleSet` out, or every error at once.

:func:`load_rules` reads one or more rule files (all or nothing: a rule set is never half
built, so a hot reload that fails keeps the rules in force).  Each file is composed into
PyYAML nodes that keep their positions and walked with :class:`sbc.config.reader.Reader`, so
every problem is a :class:`~sbc.errors.ConfigError` rendered
``file:line:col: key.path: message (expected ...)``, and all of them are raised together as
one :class:`~sbc.config.reader.ConfigErrors`.  Lists read from files report
``list-file:line:col``.  Nothing else escapes for a bad file (the loader is fuzzed).

Threat feeds are only declared here: the edge fetches them (:attr:`RuleSet.feeds`,
:meth:`RuleSet.feeds_due`) and hands the text to :meth:`RuleSet.apply_feed`, which parses it and
swaps the feed's networks in one step (bad lines are reported with their line numbers).

The format, every key (the reference for the shipped files and docs/rules.md; the test suite
loads this example)::

    # An sbc rule file.  Four optional top-level sections: settings, lists, feeds, rules.
    # Several files may be loaded together (rules.files in the configuration): rule ids and
    # list/feed names are unique across all of them, and a rule may use a list from any of them.
    # Durations: 30s, 5m, 1h, 1d, 1w, 1h30m, 500ms, or a plain number of seconds.

    settings:                        # in one file at most
      timezone: Europe/Paris         # zone of time windows and daily counters: UTC (default), a
                                     #   fixed offset (+02:00, -05:30) or an IANA zone name
      emergency_numbers: ["112", "911", "999", "15", "17", "18"]
                                     # replaces the default list (see DEFAULT_EMERGENCY_NUMBERS);
                                     #   exact numbers, never blocked by call rules

    lists:                           # named lists, used as {list: NAME} in match and unless
      premium:                       # a name: letters, digits, '.', '_', '-'
        kind: prefixes               # prefixes: number prefixes (digits * #, a leading +)
                                     # networks: CIDR networks or addresses
                                     # strings: text (User-Agents, users, domains; see match)
        file: lists/premium.txt      # one item per line; '#' starts a comment (at the start of a
                                     #   line or after a space); relative to this rule file
        description: Premium-rate and satellite prefixes    # optional, for people
      office:
        kind: networks
        items: [192.0.2.0/24, "2001:db8:1::/48"]           # inline instead of file (not both)
      scanners:
        kind: strings
        items: [friendly-scanner, sipvicious, sipsak, "re:^sip-?cli"]

    feeds:                           # IP/CIDR lists the SBC fetches and refreshes itself;
      spamhaus-drop:                 #   a rule uses them like networks lists
        url: https://www.spamhaus.org/drop/drop.txt   # or file: feeds/drop.txt (not both)
        refresh: 12h                 # fetch again this often (at least 1m; default 1h)

    rules:
      - id: office-allow             # required, unique; letters, digits, '.', '_', '-'
        description: The office network is never limited by the request rules below.
        on: request                  # required: the event kind, one of
                                     #   connection: a TCP/TLS connection was accepted
                                     #   malformed: the parser rejected a message
                                     #   request: a SIP request from outside
                                     #   auth_failure: the PBX answered 401/407 to credentials
                                     #   response: a final response sent to an external source
                                     #   call_start: an INVITE about to be routed
                                     #   call_tick: a live call, every few seconds
                                     #   call_end: a call ended
        match:
          source: {list: office}
        actions: [allow]             # allow: accept, and skip every rule declared after this one

      - id: scanner-user-agent
        description: Known SIP scanners are dropped and their address banned.
        on: request
        match:
          user_agent: {list: scanners}    # text lists: user_agent matches a substring, case-
                                          #   insensitive; "re:REGEX" is searched anywhere
        actions:
          - drop                          # discard silently
          - ban: {duration: 1h}

      - id: register-flood
        description: Too many REGISTERs from one address.
        on: request
        enabled: true                # default true; false keeps the rule validated but unused
        mode: enforce                # enforce (default) | observe: count and record what the
                                     #   rule would have done (Firing mode observe), change nothing
        fail: open                   # the state store failed: open (default) skips the rule and
                                     #   records it; closed applies its reject/drop/tarpit and
                                     #   alerts (bans and locks need the store)
        applies_to_trusted: false    # default false: trusted peers (PBX, trunks) skip the rule;
                                     #   true: they may be rejected or alerted, never banned/locked
        timezone: UTC                # for this rule's time windows and daily counter
        match:                       # every key must hold; absent: every event of the kind
          method: [REGISTER]         # SIP methods, in capitals; one value or a list
          interface: external        # external | internal
          transport: [udp, tcp, tls]
          trusted: false             # the source is (not) a trusted peer
          registered: false          # the source has (no) live registration
        unless:                      # none may hold; the same keys as match
          source: [198.51.100.7, {list: office}]
        count:                       # without count, a rule fires on every event it matches
          key: source_ip             # one or a list of: source_ip, source_net24 (the /24, or
                                     #   /64 for IPv6), username, account, trunk, destination,
                                     #   destination_prefix (the matched prefix), global
          algorithm: sliding_window  # see the other rules for every algorithm
          window: 1m
          limit: 20                  # critical level: the hit past it fires the actions
          warning: 10                # optional: an alert alone, once, when the count passes it
        actions:                     # a name, or a mapping of one name to its parameters
          - reject: {code: 429, reason: Too Many Requests, retry_after: auto}
                                     # code 400..699 (default 403); retry_after: seconds, or auto
                                     #   (the counter's own), or absent (no Retry-After)
          - ban: {duration: 10m, factor: 2, max_duration: 1w, decay: 1d, key: source_ip}
                                     # these are the defaults: each ban not yet forgotten (decay
                                     #   after it ended) multiplies the next by factor, up to
                                     #   max_duration (0: no cap); key source_ip | source_net24
          - alert: {level: critical} # warning | critical (default: the level the rule fired at)

      - id: known-bad-sources
        on: request
        match:
          source: [203.0.113.0/24, {list: spamhaus-drop}]
        actions: [drop]

      - id: password-guessing
        description: The PBX refused credentials too often for one address.
        on: auth_failure
        match:
          username: ["re:^[0-9]{3,5}$"]   # users: exact, or "re:REGEX" matching all of it
        count: {key: source_ip, algorithm: fixed_window, window: 10m, limit: 10}
        actions: [ban]               # events that report what already happened (auth_failure,
                                     #   response, call_tick, call_end) take no reject/drop/tarpit

      - id: extension-scan
        description: Many 401/403/404 answers to one address.
        on: response
        match:
          status: [401, 403, 404]
        count: {key: source_net24, algorithm: token_bucket, rate: 30/m, burst: 30}
                                     # token_bucket: rate per second, or n/s, n/m, n/h, n/d; burst
        actions:
          - ban: {duration: 1h, key: source_net24}

      - id: extension-walk
        description: Not found answered to one address for many different users.
        on: response
        match:
          method: [REGISTER, OPTIONS]
          status: [404, 484]
        count: {key: source_ip, distinct: to_user, algorithm: sliding_window, window: 1h,
                limit: 10}
                                     # distinct: count the different values of this field per
                                     #   key (a value already counted counts once), in an exact
                                     #   sliding window: sliding_window only, limit at most 1000;
                                     #   to_user, ruri_user, from_user, username, account,
                                     #   destination, trunk, user_agent, from_domain, to_domain,
                                     #   ruri_domain, source_ip, source_net24 (not the key's own)
        actions: [ban]

      - id: connection-flood
        on: connection
        count: {key: source_ip, algorithm: fixed_window, window: 10s, limit: 20}
        actions: [drop]              # on connection and malformed: allow or drop only

      - id: malformed-messages
        on: malformed
        count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 10}
        actions: [drop, ban]

      - id: after-hours-international
        description: International calls outside office hours, observed before enforcing.
        on: call_start
        mode: observe
        match:
          destination_prefix: ["00", "+"]
          from_domain: [pbx.example.com]  # domains: exact, case-insensitive; also to_domain,
                                          #   ruri_domain; users: from_user, to_user, ruri_user,
                                          #   username, account, trunk, destination
          time:                           # one window or a list; local time in the timezone
            - days: mon-fri               # mon..sun: a list, a range, a comma list; default all
              hours: "19:00-07:00"        # [start, end); overnight when end <= start
            - days: [sat, sun]
        actions:
          - reject: {code: 403, reason: International calls are closed}

      - id: concurrent-calls
        on: call_start
        count: {key: account, algorithm: concurrent, limit: 4, warning: 3, ttl: 5m}
                                     # concurrent: live calls (leases); on call_start only, given
                                     #   back at call_end, renewed by call_tick within ttl
        actions:
          - reject: {code: 486, reason: Busy Here}

      - id: calls-per-day
        on: call_start
        fail: closed
        count: {key: account, algorithm: daily, limit: 200, warning: 150}
                                     # daily: resets at local midnight (timezone); the calls
                                     #   it refuses count too
        actions: [reject, alert]

      - id: same-number-again
        on: call_start
        count: {key: account, algorithm: sequential_same_destination, window: 10m, limit: 5}
                                     # calls by one key to one number within the window
        actions:
          - tarpit: {delay: 5s, code: 486}  # hold (at most 5m), then answer code, or drop

      - id: toll-fraud-premium
        description: Premium destinations per account; critical ends calls and locks.
        on: call_start
        match:
          destination_prefix: {list: premium}
        count: {key: [account, destination_prefix], algorithm: fixed_window, window: 1m,
                limit: 3, warning: 2}
        actions:
          - reject
          - end_calls: {key: account}     # account (default) | call | trunk | source_ip
          - lock_account: {duration: 1d}  # the account's new calls get 403
          - alert

      - id: max-call-duration
        on: call_tick
        count: {algorithm: duration, limit: 4h, warning: 2h}
                                     # duration: on call_tick (and call_end); no key
        actions:
          - end_calls: {key: call}
          - alert

Dispositions (allow, reject, drop, tarpit): at most one per rule; ``reject`` and ``tarpit``
only on request and call_start, ``drop`` also on connection and malformed; none on the events
that report what already happened (auth_failure, response, call_tick, call_end), which act with
bans, locks, end_calls and alerts.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sbc.config.reader import ConfigErrors, Reader, Section, describe, is_null, show, suggest
from sbc.errors import ConfigError, Location
from sbc.policy import match as m
from sbc.policy.model import (
    ALERT_LEVELS,
    ALGORITHMS,
    CALL_KINDS,
    DISPOSITIONS,
    DISTINCT_FIELDS,
    EVENT_FIELDS,
    EVENT_KINDS,
    FAIL_MODES,
    KEY_FIELDS,
    KEY_KINDS,
    MODES,
    Action,
    Alert,
    AlertLevel,
    Allow,
    Ban,
    Count,
    Drop,
    EndCalls,
    FailMode,
    LockAccount,
    Mode,
    Reject,
    Rule,
    Tarpit,
)
from sbc.policy.tz import ZoneError, get_zone
from sbc.state.base import MAX_DISTINCT_LIMIT

MAX_RULE_FILE_BYTES = 1024 * 1024
MAX_LIST_FILE_BYTES = 16 * 1024 * 1024
MAX_FEED_BYTES = 64 * 1024 * 1024
MAX_REPORTED_ERRORS = 100
MAX_REGEX = 1000  # characters of one regex

# The default list, and why each number is on it (exact matches only, never prefixes: a prefix
# "100" would also exempt 1001234567 from toll-fraud rules).  Overridable with
# settings.emergency_numbers.
DEFAULT_EMERGENCY_NUMBERS: tuple[str, ...] = (
    "112",  # EU and GSM-wide (ETSI TS 122 101), routed to emergency services on most networks
    "911",  # North America (NANP), also Mexico, parts of Latin America, Philippines
    "999",  # UK, Ireland, Hong Kong, Singapore, Malaysia, Gulf states, ...
    "000",  # Australia
    "111",  # New Zealand
    "110",  # police: Germany, Austria (via 133 too), China, Japan, Indonesia; fire: Turkey
    "113",  # police: Italy, Vatican; ambulance: Norway
    "115",  # fire: Italy, Vatican
    "117",  # police: Switzerland, Liechtenstein
    "118",  # ambulance: Italy, Switzerland (fire); Japan coast guard
    "119",  # fire and ambulance: Japan, South Korea, Taiwan; fire: China
    "122",  # fire: Austria, Egypt
    "133",  # police: Austria
    "144",  # ambulance: Austria, Switzerland
    "100",  # police: India, Israel, Greece
    "101",  # fire: India; ambulance: Israel
    "102",  # ambulance: India; fire: Israel
    "15",   # SAMU (medical), France
    "17",   # police, France
    "18",   # fire, France
)

RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RULE_ID_EXPECTED = "an id of letters, digits, '.', '_' and '-' (at most 64 characters)"
PREFIX = re.compile(r"\+[0-9*#]{0,32}|[0-9*#]{1,32}")
PREFIX_EXPECTED = "digits, *, #, optionally after '+' (at most 32)"
METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_EXPECTED = "a duration such as 30s, 5m, 1h, 1d (or a number of seconds)"
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(s|m|h|d)")
RATE_EXPECTED = "a rate such as 10/s, 600/m, 1000/h (or a number per second)"
_HOURS = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-4]):([0-5]\d)")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

TOP_KEYS = ("settings", "lists", "feeds", "rules")
SETTINGS_KEYS = ("timezone", "emergency_numbers")
LIST_KEYS = ("kind", "items", "file", "description")
LIST_KINDS = ("networks", "prefixes", "strings")
FEED_KEYS = ("url", "file", "refresh", "description")
RULE_KEYS = ("id", "description", "on", "enabled", "mode", "fail", "applies_to_trusted",
             "timezone", "match", "unless", "count", "actions")
COUNT_KEYS = ("key", "algorithm", "window", "limit", "warning", "rate", "burst", "ttl",
              "distinct")
ACTION_NAMES = ("allow", "reject", "drop", "tarpit", "ban", "end_calls", "lock_account", "alert")
ACTION_KEYS: dict[str, tuple[str, ...]] = {
    "allow": (),
    "drop": (),
    "reject": ("code", "reason", "retry_after"),
    "tarpit": ("delay", "code"),
    "ban": ("duration", "factor", "max_duration", "decay", "key"),
    "end_calls": ("key",),
    "lock_account": ("duration",),
    "alert": ("level",),
}
# Which dispositions make sense for which event kind (the others report what already happened).
DISPOSITION_KINDS: dict[str, frozenset[str]] = {
    "request": frozenset({"allow", "reject", "drop", "tarpit"}),
    "call_start": frozenset({"allow", "reject", "drop", "tarpit"}),
    "connection": frozenset({"allow", "drop"}),
    "malformed": frozenset({"allow", "drop"}),
}
END_CALLS_FIELDS = {"account": "account", "call": "call_id", "trunk": "trunk",
                    "source_ip": "source_ip"}
ALGORITHM_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # algorithm: (required, optional) count keys besides key and algorithm
    "fixed_window": (("window", "limit"), ("warning",)),
    "sliding_window": (("window", "limit"), ("warning", "distinct")),
    "sequential_same_destination": (("window", "limit"), ("warning",)),
    "token_bucket": (("rate", "burst"), ("warning",)),
    "concurrent": (("limit",), ("warning", "ttl")),
    "daily": (("limit",), ("warning",)),
    "duration": (("limit",), ("warning",)),
}
ALGORITHM_KINDS = {"concurrent": ("call_start",), "duration": ("call_tick", "call_end")}
DEFAULT_LEASE_TTL = 300.0  # seconds; a call tick renews it (CallTick.interval must be shorter)
MAX_LIMIT = 1_000_000_000
DISTINCT_LIMIT_EXPECTED = (f"an integer in 0..{MAX_DISTINCT_LIMIT} (a distinct count keeps at most "
                           f"{MAX_DISTINCT_LIMIT} values per key)")


@dataclass(frozen=True, slots=True)
class _Pred:
    """How one ``match``/``unless`` key reads: the event field it tests and the value type."""

    field: str | None  # None: every event kind has it
    type: str  # choice, methods, networks, bool, trusted, text, prefixes, status, time
    text_mode: str = "exact"
    ignore_case: bool = False
    choices: tuple[str, ...] = ()


PREDICATES: dict[str, _Pred] = {
    "method": _Pred("method", "methods"),
    "interface": _Pred("interface", "choice", choices=("external", "internal")),
    "transport": _Pred("transport", "choice", choices=("udp", "tcp", "tls")),
    "source": _Pred("source_ip", "networks"),
    "trusted": _Pred(None, "trusted"),
    "registered": _Pred("registered", "bool"),
    "from_user": _Pred("from_user", "text"),
    "from_domain": _Pred("from_domain", "text", ignore_case=True),
    "to_user": _Pred("to_user", "text"),
    "to_domain": _Pred("to_domain", "text", ignore_case=True),
    "ruri_user": _Pred("ruri_user", "text"),
    "ruri_domain": _Pred("ruri_domain", "text", ignore_case=True),
    "user_agent": _Pred("user_agent", "text", text_mode="substring", ignore_case=True),
    "username": _Pred("username", "text"),
    "account": _Pred("account", "text"),
    "trunk": _Pred("trunk", "text"),
    "destination": _Pred("destination", "text"),
    "destination_prefix": _Pred("destination", "prefixes"),
    "status": _Pred("status", "status"),
    "time": _Pred(None, "time"),
}
# The list kind each predicate type takes by reference.
_LIST_KIND_OF = {"networks": "networks", "prefixes": "prefixes", "text": "strings"}


# -- the rule set --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListInfo:
    """A named list: its kind, its items (text as written, validated) and where it is."""

    name: str
    kind: str
    items: tuple[str, ...]
    location: str
    source: str = ""  # the file its items came from, if any


@dataclass(frozen=True, slots=True)
class FeedResult:
    """The outcome of :meth:`RuleSet.apply_feed`: whether the new content replaced the old,
    how many networks the feed now holds, and the bad lines (``source:line:col``)."""

    name: str
    applied: bool
    count: int
    errors: tuple[ConfigError, ...] = ()


@dataclass(frozen=True)
class RuleSet:
    """Compiled rules, immutable (threat-feed contents aside, which :meth:`apply_feed` swaps).

    ``by_kind`` holds each event kind's enabled rules in declaration order.  ``files`` are the
    rule files, ``watched`` those plus the list files they read (what a file watcher for hot
    reload should watch).
    """

    rules: tuple[Rule, ...] = ()
    by_kind: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    lists: Mapping[str, ListInfo] = field(default_factory=dict)
    feeds: Mapping[str, m.Feed] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    watched: tuple[str, ...] = ()
    timezone: str = "UTC"
    emergency_numbers: frozenset[str] = frozenset(DEFAULT_EMERGENCY_NUMBERS)

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(rule for rules in self.by_kind.values() for rule in rules)

    def reads(self, field_name: str) -> bool:
        """Whether an enabled rule's conditions (match or unless) read ``field_name``."""
        return any(field_name in rule.matcher.fields for rule in self.enabled)

    @property
    def observe_count(self) -> int:
        return sum(1 for rule in self.rules if rule.mode == "observe")

    def summary(self) -> str:
        """``N rules in M files (K observe, D disabled), L lists, F feeds``."""
        disabled = len(self.rules) - len(self.enabled)
        extra = f", {disabled} disabled" if disabled else ""
        return (f"{_plural(len(self.rules), 'rule')} in {_plural(len(self.files), 'file')} "
                f"({self.observe_count} observe{extra}), "
                f"{_plural(len(self.lists) - len(self.feeds), 'list')}, "
                f"{_plural(len(self.feeds), 'feed')}")

    def feeds_due(self, now: float) -> list[m.Feed]:
        """The feeds never fetched, or last applied ``refresh`` seconds or more before ``now``."""
        return [feed for feed in self.feeds.values()
                if feed.updated_at is None or now - feed.updated_at >= feed.refresh]

    def apply_feed(self, name: str, text: str, now: float | None = None) -> FeedResult:
        """Parse a feed's text and swap it in; see :func:`apply_feed`."""
        return apply_feed(self, name, text, now)

    def adopt_feeds(self, old: RuleSet) -> None:
        """Carry the contents of ``old``'s feeds into the feeds of this (new) rule set that have
        the same name and source, so a reload does not empty them until the next fetch."""
        for name, feed in self.feeds.items():
            previous = old.feeds.get(name)
            if previous is not None and previous.source == feed.source:
                feed.networks = previous.networks
                feed.updated_at = previous.updated_at


EMPTY = RuleSet()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def parse_network_lines(text: str, source: str) -> tuple[list[m.Network], list[ConfigError]]:
    """Networks from feed text: one address or CIDR per line (host bits are masked), ``#`` and
    ``;`` start comments (Spamhaus DROP: ``192.0.2.0/24 ; SBL123``); the rest of a line after
    the first token is ignored."""
    networks: list[m.Network] = []
    errors: list[ConfigError] = []
    for number, line in enumerate(text.splitlines(), 1):
        content = re.split(r"[#;]", line, maxsplit=1)[0]
        stripped = content.strip()
        if not stripped:
            continue
        token = stripped.split()[0]
        try:
            networks.append(ipaddress.ip_network(token, strict=False))
        except ValueError:
            column = content.index(token) + 1
            errors.append(ConfigError(
                f"invalid network {show(token)}", location=Location(source, number, column),
                expected="an IP address or a network in CIDR notation"))
    return networks, errors


def apply_feed(ruleset: RuleSet, name: str, text: str, now: float | None = None) -> FeedResult:
    """Parse ``text`` (what the edge fetched for feed ``name``) and replace the feed's networks.

    Bad lines are skipped and reported.  When there are more bad lines than good ones (an HTML
    error page, a truncated download), nothing is replaced: the old content stays in force.
    Raises :class:`KeyError` for a feed the rule set does not declare."""
    feed = ruleset.feeds[name]
    if len(text) > MAX_FEED_BYTES:
        error = ConfigError(f"feed is larger than {MAX_FEED_BYTES} bytes",
                            location=Location(feed.source, 1, 1))
        return FeedResult(name, False, len(feed.networks), (error,))
    networks, errors = parse_network_lines(text, feed.source)
    if len(errors) > len(networks):
        return FeedResult(name, False, len(feed.networks), tuple(errors[:MAX_REPORTED_ERRORS]))
    feed.networks = m.NetworkSet(networks)  # one store: matchers see the old set or the new
    if now is not None:
        feed.updated_at = now
    return FeedResult(name, True, len(feed.networks), tuple(errors[:MAX_REPORTED_ERRORS]))


# -- entry points --------------------------------------------------------------------------------


def load_rules(paths: Iterable[str | os.PathLike[str]]) -> RuleSet:
    """Load and compile the rule files at ``paths`` (in order) into one :class:`RuleSet`.

    Raises :class:`~sbc.config.reader.ConfigErrors` with every problem, and nothing else for a
    bad file.  No paths give an empty rule set."""
    loader = _Loader()
    for path in paths:
        source = os.fspath(path)
        text = loader.read_text(source, MAX_RULE_FILE_BYTES, "a rule file")
        if text is not None:
            loader.add(source, text, Path(source).parent)
    return loader.finish()


def parse_rules(text: str | bytes, source: str = "<string>",
                base_dir: str | os.PathLike[str] | None = None) -> RuleSet:
    """Compile one rule file given as text (``source`` names it in errors; ``base_dir``
    anchors relative list paths, default the current directory)."""
    loader = _Loader()
    if isinstance(text, bytes):
        decoded = loader.decode(text, source)
        if decoded is None:
            return loader.finish()
        text = decoded
    loader.add(source, text, Path(base_dir) if base_dir is not None else Path("."))
    return loader.finish()


# -- the loader ----------------------------------------------------------------------------------


@dataclass
class _File:
    source: str
    base_dir: Path
    reader: Reader
    root: yaml.MappingNode


@dataclass
class _ListDef:
    info: ListInfo
    networks: tuple[m.Network, ...] = ()
    feed: m.Feed | None = None


class _Loader:
    """Collects the files, then compiles them (lists and feeds of every file first)."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self.files: list[_File] = []
        self.sources: list[str] = []
        self.watched: list[str] = []
        self.lists: dict[str, _ListDef] = {}
        self.rule_ids: dict[str, str] = {}
        self.settings_at: str = ""
        self.timezone = "UTC"
        self.emergency: frozenset[str] = frozenset(DEFAULT_EMERGENCY_NUMBERS)
        self.rules: list[Rule] = []

    # -- reading -------------------------------------------------------------------------------

    def fail(self, source: str, message: str, expected: str = "",
             line: int = 1, column: int = 1) -> None:
        self.errors.append(ConfigError(message, location=Location(source, line, column),
                                       expected=expected))

    def read_text(self, source: str, limit: int, what: str) -> str | None:
        try:
            with open(source, "rb") as f:
                data = f.read(limit + 1)
        except IsADirectoryError:
            self.fail(source, "is a directory", expected=what)
            return None
        except OSError as exc:
            self.fail(source, f"cannot read the file ({exc.strerror or type(exc).__name__})",
                      expected=what)
            return None
        if len(data) > limit:
            self.fail(source, f"the file is larger than {limit} bytes", expected=what)
            return None
        return self.decode(data, source)

    def decode(self, data: bytes, source: str) -> str | None:
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            self.fail(source, f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x})",
                      "UTF-8 text", line, column)
            return None

    def add(self, source: str, text: str, base_dir: Path) -> None:
        """Compose one rule file and read its settings, lists and feeds (rules come later)."""
        self.sources.append(source)
        self.watched.append(source)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            message = f"invalid YAML: {exc.problem or 'syntax error'}"
            if exc.context and exc.context_mark is not None:
                message += f" ({exc.context} at line {exc.context_mark.line + 1})"
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            self.fail(source, message, line=line, column=column)
            return
        except yaml.reader.ReaderError as exc:
            position = exc.position
            line = text.count("\n", 0, position) + 1
            column = position - (text.rfind("\n", 0, position) + 1) + 1
            char = exc.character if isinstance(exc.character, int) else ord(exc.character)
            self.fail(source, f"invalid character U+{char:04X} in the file ({exc.reason})",
                      line=line, column=column)
            return
        except yaml.YAMLError as exc:  # pragma: no cover -- PyYAML raises the kinds above
            self.fail(source, f"invalid YAML ({type(exc).__name__})")
            return
        except RecursionError:
            self.fail(source, "the document is nested too deeply")
            return
        expected = "a mapping with settings, lists, feeds and rules"
        if root is None or is_null(root):
            return  # an empty rule file is allowed: it holds no rules
        reader = Reader(source, base_dir, root)
        if not isinstance(root, yaml.MappingNode):
            reader.error("", f"got {describe(root)}", expected=expected, node=root)
            self.errors.extend(reader.errors)
            return
        file = _File(source, base_dir, reader, root)
        self.files.append(file)
        top = reader.section(root, "", TOP_KEYS)
        if "settings" in top:
            self._settings(file, top)
        for path, name_node, node in _entries(reader, top, "lists", "named lists"):
            self._list(file, path, name_node, node)
        for path, name_node, node in _entries(reader, top, "feeds", "named feeds"):
            self._feed(file, path, name_node, node)

    def finish(self) -> RuleSet:
        order = 0
        for file in self.files:
            rules_node = _node_of(file.root, "rules")
            for path, node in file.reader.items(rules_node, "rules", what="rules"):
                rule = self._rule(file, path, node, order)
                order += 1
                if rule is not None:
                    self.rules.append(rule)
        for file in self.files:
            self.errors.extend(file.reader.errors)
        if self.errors:
            raise ConfigErrors(self._sorted_errors())
        by_kind: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.enabled:
                by_kind.setdefault(rule.on, []).append(rule)
        return RuleSet(
            rules=tuple(self.rules),
            by_kind={kind: tuple(rules) for kind, rules in by_kind.items()},
            lists={name: d.info for name, d in self.lists.items()},
            feeds={name: d.feed for name, d in self.lists.items() if d.feed is not None},
            files=tuple(self.sources),
            watched=tuple(dict.fromkeys(self.watched)),
            timezone=self.timezone,
            emergency_numbers=self.emergency,
        )

    def _sorted_errors(self) -> list[ConfigError]:
        rank = {source: i for i, source in enumerate(dict.fromkeys(self.sources + self.watched))}

        def order(error: ConfigError) -> tuple[int, int, int]:
            loc = error.location
            if loc is None:
                return (-1, 0, 0)
            return (rank.get(loc.file, len(rank)), loc.line, loc.column)

        errors = sorted(self.errors, key=order)
        if len(errors) > MAX_REPORTED_ERRORS:
            more = len(errors) - MAX_REPORTED_ERRORS
            errors = errors[:MAX_REPORTED_ERRORS]
            errors.append(ConfigError(f"... and {more} more error(s)"))
        return errors

    # -- settings, lists, feeds ----------------------------------------------------------------

    def _settings(self, file: _File, top: Section) -> None:
        r = file.reader
        where = r.where("settings")
        if self.settings_at:
            r.error("settings", f"settings are already defined at {self.settings_at}",
                    expected="settings in one rule file only", location=where)
            return
        self.settings_at = str(where)
        s = top.section("settings", SETTINGS_KEYS)
        node = s.node_of("timezone")
        if node is not None:
            zone = _zone_name(r, node, s.path_of("timezone"))
            if zone is not None:
                self.timezone = zone
        if "emergency_numbers" in s:
            numbers = []
            for item_path, item in s.items("emergency_numbers", what="numbers"):
                text = _raw_text(r, item, item_path, "a quoted number such as \"112\"")
                if text is not None and not PREFIX.fullmatch(text):
                    r.error(item_path, f"invalid number {show(text)}", expected=PREFIX_EXPECTED,
                            node=item)
                elif text is not None:
                    numbers.append(text)
            self.emergency = frozenset(numbers)

    def _define(self, file: _File, path: str, name_node: yaml.Node) -> str | None:
        """Check a list or feed name: valid, and not defined before (in any file)."""
        r = file.reader
        name = str(name_node.value)
        if not RULE_ID.fullmatch(name):
            r.error(path, f"invalid name {show(name)}", expected=RULE_ID_EXPECTED, node=name_node)
            return None
        previous = self.lists.get(name)
        if previous is not None:
            r.error(path, f"duplicate list name '{name}' (first defined at "
                    f"{previous.info.location})", expected="unique list and feed names",
                    node=name_node)
            return None
        return name

    def _list(self, file: _File, path: str, name_node: yaml.Node, node: yaml.Node) -> None:
        r = file.reader
        name = self._define(file, path, name_node)
        s = r.section(node, path, LIST_KEYS, what="a list: a mapping with kind and items or file")
        if name is None or not s.valid:
            return
        location = str(r.location(name_node))
        if "kind" not in s:
            r.error(s.path_of("kind"), "missing required key 'kind'",
                    expected="one of: " + ", ".join(LIST_KINDS), location=r.where(path))
        kind = s.choice("kind", LIST_KINDS, "strings")
        s.string("description", "")
        if ("items" in s) == ("file" in s):
            message = ("'items' and 'file' cannot both be given" if "items" in s
                       else "missing 'items' or 'file'")
            r.error(path, message, expected="either items (inline) or file (one per line)",
                    location=r.where(s.path_of("file")) if "file" in s else r.where(path))
            return
        values: list[str] = []
        source = ""
        if "items" in s:
            for item_path, item in s.items("items", what=f"{kind}"):
                text = _raw_text(r, item, item_path, _ITEM_EXPECTED[kind])
                if text is None:
                    continue
                value, problem = _check_item(kind, text)
                if problem:
                    r.error(item_path, problem, expected=_ITEM_EXPECTED[kind], node=item)
                else:
                    values.append(value)
        else:
            file_node = s.node_of("file")
            assert file_node is not None
            text = r.string(file_node, s.path_of("file"), expected="a file path")
            if text is None:
                return
            source = str(file.base_dir / text) if not os.path.isabs(text) else text
            self.watched.append(source)
            content = self.read_text(source, MAX_LIST_FILE_BYTES, f"a file of {kind}")
            if content is None:
                # read_text reported at source:1:1; say also where the list names the file.
                problem = self.errors.pop().message
                r.error(s.path_of("file"), f"{source}: {problem}",
                        expected=f"a readable UTF-8 file of {kind}, one per line, "
                        "relative to the rule file", node=file_node)
                return
            values = self._list_lines(kind, content, source)
        definition = _ListDef(ListInfo(name, kind, tuple(values), location, source))
        if kind == "networks":
            definition.networks = tuple(ipaddress.ip_network(v) for v in values)
        self.lists[name] = definition

    def _list_lines(self, kind: str, content: str, source: str) -> list[str]:
        values = []
        for number, line in enumerate(content.splitlines(), 1):
            text = _COMMENT.sub("", line)
            stripped = text.strip()
            if not stripped:
                continue
            column = text.index(stripped) + 1
            value, problem = _check_item(kind, stripped)
            if problem:
                self.fail(source, problem, _ITEM_EXPECTED[kind], number, column)
            else:
                values.append(value)
        return values

    def _feed(self, file: _File, path: str, name_node: yaml.Node, node: yaml.Node) -> None:
        r = file.reader
        name = self._define(file, path, name_node)
        s = r.section(node, path, FEED_KEYS, what="a feed: a mapping with url or file, refresh")
        if name is None or not s.valid:
            return
        s.string("description", "")
        if ("url" in s) == ("file" in s):
            message = ("'url' and 'file' cannot both be given" if "url" in s
                       else "missing 'url' or 'file'")
            r.error(path, message, expected="either url (http or https) or file",
                    location=r.where(s.path_of("file")) if "file" in s else r.where(path))
            return
        url = s.optional_string("url", pattern=_URL, expected="an http:// or https:// URL")
        text = s.optional_string("file", expected="a file path")
        if text is not None:
            text = str(file.base_dir / text) if not os.path.isabs(text) else text
        refresh = _get(s, "refresh", 3600.0, lambda n, p: _duration(r, n, p, minimum=60,
                                                                     maximum=7 * 86400))
        feed = m.Feed(name, url, text, refresh, str(r.location(name_node)))
        info = ListInfo(name, "networks", (), feed.location, feed.source)
        self.lists[name] = _ListDef(info, feed=feed)

    # -- rules ---------------------------------------------------------------------------------

    def _rule(self, file: _File, path: str, node: yaml.Node, order: int) -> Rule | None:
        r = file.reader
        s = r.section(node, path, RULE_KEYS, what="a rule: a mapping with id, on and actions")
        if not s.valid:
            return None
        where = r.where(path)
        for key, expected in (("id", RULE_ID_EXPECTED), ("on", "one of: " + ", ".join(EVENT_KINDS)),
                              ("actions", "a list of actions: " + ", ".join(ACTION_NAMES))):
            if key not in s:
                r.error(s.path_of(key), f"missing required key '{key}'", expected=expected,
                        location=where)
        rule_id = s.string("id", "", pattern=RULE_ID, expected=RULE_ID_EXPECTED)
        if rule_id:
            first = self.rule_ids.get(rule_id)
            id_node = s.node_of("id")
            if first is not None:
                r.error(s.path_of("id"), f"duplicate rule id '{rule_id}' (first defined at "
                        f"{first})", expected="a rule id unique across all rule files",
                        node=id_node)
            else:
                self.rule_ids[rule_id] = str(r.location(id_node)) if id_node else str(where)
        kind: str | None = s.choice("on", EVENT_KINDS, "") or None
        if not r.ok(s.path_of("on")):
            kind = None
        description = s.string("description", "")
        enabled = s.boolean("enabled", True)
        mode: Mode = s.choice("mode", MODES, "enforce")
        fail: FailMode = s.choice("fail", FAIL_MODES, "open")
        applies_to_trusted = s.boolean("applies_to_trusted", False)
        zone_name = self.timezone
        zone_node = s.node_of("timezone")
        if zone_node is not None:
            zone_name = _zone_name(r, zone_node, s.path_of("timezone")) or zone_name
        predicates, prefixes, fields = self._conditions(file, s, "match", kind, zone_name)
        unless, _, unless_fields = self._conditions(file, s, "unless", kind, zone_name)
        count = self._count(file, s, kind, prefixes is not None)
        actions = self._actions(file, s, kind, count)
        return Rule(
            id=rule_id,
            on=kind or "",
            actions=actions,
            matcher=m.Matcher(predicates, unless, prefixes, fields | unless_fields),
            description=description,
            mode=mode,
            fail=fail,
            count=count,
            applies_to_trusted=applies_to_trusted,
            enabled=enabled,
            timezone=zone_name,
            location=str(where),
            order=order,
            tier=_tier(count),
        )

    def _conditions(self, file: _File, rule: Section, key: str, kind: str | None,
                    zone_name: str) -> tuple[list[m.Predicate], m.PrefixSet | None, set[str]]:
        """The predicates of ``key`` (match or unless), the destination prefixes, and the
        event fields they read."""
        r = file.reader
        s = rule.section(key, tuple(PREDICATES))
        predicates: list[m.Predicate] = []
        prefixes: m.PrefixSet | None = None
        fields: set[str] = set()
        for name, spec in PREDICATES.items():
            node = s.node_of(name)
            if node is None:
                continue
            path = s.path_of(name)
            if kind is not None and spec.field is not None and spec.field not in EVENT_FIELDS[kind]:
                valid = [n for n, p in PREDICATES.items()
                         if p.field is None or p.field in EVENT_FIELDS[kind]]
                r.error(path, f"'{name}' is not available for on: {kind}",
                        expected="one of: " + ", ".join(valid), location=r.where(path))
                continue
            predicate = self._predicate(r, spec, node, path, zone_name)
            if isinstance(predicate, m.PrefixSet):
                prefixes = predicate
                predicate = m.prefix_matches("destination", predicate)
            if predicate is not None:
                predicates.append(predicate)
                if spec.field is not None:
                    fields.add(spec.field)
        return predicates, prefixes, fields

    def _predicate(self, r: Reader, spec: _Pred, node: yaml.Node, path: str,
                   zone_name: str) -> m.Predicate | m.PrefixSet | None:
        field_name = spec.field or ""
        if spec.type in ("bool", "trusted"):
            flag = r.boolean(node, path)
            if flag is None:
                return None
            return m.trusted_is(flag) if spec.type == "trusted" else m.field_is(field_name, flag)
        if spec.type == "time":
            windows = _time_windows(r, node, path)
            return m.time_in(windows, get_zone(zone_name)) if windows else None
        if spec.type in ("choice", "methods", "status"):
            values: set[object] = set()
            expected = {"choice": "one of: " + ", ".join(spec.choices),
                        "methods": "a SIP method in capitals such as INVITE",
                        "status": "a status code in 100..699"}[spec.type]
            for text, item, item_path in self._values(r, node, path, None, expected):
                if spec.type == "status":
                    if not (text.isdigit() and 100 <= int(text) <= 699):
                        r.error(item_path, f"invalid status {show(text)}", expected=expected,
                                node=item)
                    else:
                        values.add(int(text))
                elif spec.type == "methods" and not METHOD.fullmatch(text):
                    r.error(item_path, f"invalid method {show(text)}", expected=expected,
                            node=item)
                elif spec.type == "choice" and text not in spec.choices:
                    r.error(item_path, f"invalid value {show(text)}{suggest(text, spec.choices)}",
                            expected=expected, node=item)
                else:
                    values.add(text)
            return m.field_in(field_name, frozenset(values)) if values else None
        list_kind = _LIST_KIND_OF[spec.type]
        expected = _ITEM_EXPECTED[list_kind]
        items: list[str] = []
        feeds: list[m.Feed] = []
        networks: list[m.Network] = []
        for text, item, item_path in self._values(r, node, path, list_kind, expected, feeds,
                                                  networks, items):
            value, problem = _check_item(list_kind, text)
            if problem:
                r.error(item_path, problem, expected=expected, node=item)
            elif list_kind == "networks":
                networks.append(ipaddress.ip_network(value))
            else:
                items.append(value)
        if list_kind == "networks":
            return m.source_in(m.NetworkSet(networks), tuple(feeds))
        if list_kind == "prefixes":
            return m.PrefixSet(items)
        try:
            matcher = m.TextMatcher(items, mode=spec.text_mode, ignore_case=spec.ignore_case)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            # Each regex compiled alone; together they fail only on conflicting inline flags.
            r.error(path, f"the patterns cannot be combined ({exc})",
                    expected="regexes without inline flags", location=r.where(path))
            return None
        return m.text_matches(field_name, matcher)

    def _values(
        self,
        r: Reader,
        node: yaml.Node,
        path: str,
        list_kind: str | None,
        expected: str,
        feeds: list[m.Feed] | None = None,
        networks: list[m.Network] | None = None,
        items: list[str] | None = None,
    ) -> list[tuple[str, yaml.Node, str]]:
        """The scalar items of a predicate (one scalar, a list, or {list: NAME} references,
        whose content is added to ``items``/``networks``/``feeds`` directly)."""
        out: list[tuple[str, yaml.Node, str]] = []
        entries: list[tuple[str, yaml.Node]]
        if isinstance(node, yaml.SequenceNode):
            entries = r.items(node, path, what="values")
            if not entries:
                r.error(path, "the list is empty", expected=expected, node=node)
        else:
            entries = [(path, node)]
        for item_path, item in entries:
            if isinstance(item, yaml.MappingNode):
                self._reference(r, item, item_path, list_kind, feeds, networks, items)
                continue
            text = _raw_text(r, item, item_path, expected)
            if text is not None:
                out.append((text, item, item_path))
        return out

    def _reference(self, r: Reader, node: yaml.MappingNode, path: str, list_kind: str | None,
                   feeds: list[m.Feed] | None, networks: list[m.Network] | None,
                   items: list[str] | None) -> None:
        if list_kind is None:
            r.error(path, "a list reference is not accepted here",
                    expected="values written out", node=node)
            return
        s = r.section(node, path, ("list",))
        name_node = s.node_of("list")
        if name_node is None:
            if s.valid:
                r.error(s.path_of("list"), "missing required key 'list'",
                        expected="{list: NAME}", location=r.where(path))
            return
        name = r.string(name_node, s.path_of("list"), expected="the name of a list")
        if name is None:
            return
        definition = self.lists.get(name)
        if definition is None:
            known = [n for n, d in self.lists.items() if d.info.kind == list_kind]
            r.error(s.path_of("list"), f"unknown list '{show(name)[1:-1]}'"
                    f"{suggest(name, self.lists)}",
                    expected=f"a {list_kind} list defined under lists:"
                    + (" or feeds:" if list_kind == "networks" else "")
                    + (f" ({', '.join(known)})" if known else ""),
                    node=name_node)
            return
        if definition.info.kind != list_kind:
            what = "a feed" if definition.feed is not None else f"{definition.info.kind}"
            r.error(s.path_of("list"), f"list '{name}' holds {what}",
                    expected=f"a list of {list_kind}", node=name_node)
            return
        if definition.feed is not None and feeds is not None:
            feeds.append(definition.feed)
        elif list_kind == "networks" and networks is not None:
            networks.extend(definition.networks)
        elif items is not None:
            items.extend(definition.info.items)

    def _count(self, file: _File, rule: Section, kind: str | None,
               has_prefixes: bool) -> Count | None:
        r = file.reader
        if "count" not in rule:
            return None
        s = rule.section("count", COUNT_KEYS)
        if not s.valid:
            return None
        where = r.where(s.path)
        keys: tuple[str, ...] = ()
        if "key" in s:
            keys = self._count_key(r, s, kind, has_prefixes)
        if "algorithm" not in s:
            r.error(s.path_of("algorithm"), "missing required key 'algorithm'",
                    expected="one of: " + ", ".join(ALGORITHMS), location=where)
            return None
        algorithm = s.choice("algorithm", ALGORITHMS, "")
        if not algorithm:
            return None
        allowed_kinds = ALGORITHM_KINDS.get(algorithm)
        if kind is not None and allowed_kinds is not None and kind not in allowed_kinds:
            r.error(s.path_of("algorithm"), f"{algorithm} cannot count on: {kind} events",
                    expected="on: " + " or ".join(allowed_kinds),
                    location=r.where(s.path_of("algorithm")))
        if (algorithm == "sequential_same_destination" and kind is not None
                and "destination" not in EVENT_FIELDS[kind]):
            r.error(s.path_of("algorithm"), f"{algorithm} needs a destination number",
                    expected="on: call_start", location=r.where(s.path_of("algorithm")))
        required, optional = ALGORITHM_KEYS[algorithm]
        for key in COUNT_KEYS[2:]:
            if key in s and key not in required + optional:
                expected = ("algorithm: sliding_window (distinct values are counted in an exact "
                            "sliding window)" if key == "distinct" else
                            "one of: " + ", ".join(("key", "algorithm") + required + optional))
                r.error(s.path_of(key), f"'{key}' is not used by {algorithm}",
                        expected=expected, location=r.where(s.path_of(key)))
        for key in required:
            if key not in s:
                r.error(s.path_of(key), f"missing required key '{key}' for {algorithm}",
                        expected=_COUNT_EXPECTED[key], location=where)
        if "key" not in s and algorithm != "duration":
            r.error(s.path_of("key"), "missing required key 'key'",
                    expected="one or a list of: " + ", ".join(KEY_KINDS), location=where)
        counts_distinct = "distinct" in s and algorithm == "sliding_window"
        distinct = self._count_distinct(r, s, kind, keys) if counts_distinct else None
        if algorithm == "duration":
            def read_limit(n: yaml.Node, p: str) -> float | None:
                return _duration(r, n, p, maximum=7 * 86400)
        elif counts_distinct:
            def read_limit(n: yaml.Node, p: str) -> float | None:
                value = r.integer(n, p, 0, MAX_DISTINCT_LIMIT, DISTINCT_LIMIT_EXPECTED)
                return None if value is None else float(value)
        else:
            def read_limit(n: yaml.Node, p: str) -> float | None:
                value = r.integer(n, p, 0, MAX_LIMIT)
                return None if value is None else float(value)
        limit = _get(s, "limit", 0.0, read_limit)
        if algorithm == "token_bucket":
            limit = _get(s, "burst", 1.0, lambda n, p: _as_float(r.integer(n, p, 1, MAX_LIMIT)))
        warning = _get(s, "warning", None, read_limit)
        if warning is not None and r.ok(s.path_of("limit"), s.path_of("burst")) \
                and warning >= limit:
            r.error(s.path_of("warning"), f"warning ({warning:g}) is not below the critical "
                    f"limit ({limit:g})", expected=f"a number below {limit:g}",
                    location=r.where(s.path_of("warning")))
        return Count(
            key=keys,
            algorithm=algorithm,
            limit=limit,
            window=_get(s, "window", 0.0, lambda n, p: _duration(r, n, p, maximum=30 * 86400)),
            rate=_get(s, "rate", 0.0, lambda n, p: _rate(r, n, p)),
            ttl=_get(s, "ttl", DEFAULT_LEASE_TTL,
                     lambda n, p: _duration(r, n, p, minimum=1, maximum=86400)),
            warning=warning,
            distinct=distinct,
        )

    def _count_distinct(self, r: Reader, s: Section, kind: str | None,
                        keys: tuple[str, ...]) -> str | None:
        """The field whose distinct values a count counts: one the event kind has, not a key."""
        node = s.node_of("distinct")
        path = s.path_of("distinct")
        assert node is not None
        name = r.choice(node, path, tuple(DISTINCT_FIELDS))
        if name is None:
            return None
        if kind is not None and DISTINCT_FIELDS[name] not in EVENT_FIELDS[kind]:
            valid = [n for n, f in DISTINCT_FIELDS.items() if f in EVENT_FIELDS[kind]]
            r.error(path, f"on: {kind} events have no {name}",
                    expected="one of: " + ", ".join(valid), node=node)
            return None
        if name in keys:
            r.error(path, f"{name} is also the key: it has one value per counter",
                    expected="a field other than the key's", node=node)
            return None
        return name

    def _count_key(self, r: Reader, s: Section, kind: str | None,
                   has_prefixes: bool) -> tuple[str, ...]:
        node = s.node_of("key")
        path = s.path_of("key")
        assert node is not None
        expected = "one or a list of: " + ", ".join(KEY_KINDS)
        entries = r.items(node, path, what="key kinds") if isinstance(
            node, yaml.SequenceNode) else [(path, node)]
        keys: list[str] = []
        for item_path, item in entries:
            key = r.choice(item, item_path, KEY_KINDS)
            if key is None:
                continue
            needed = KEY_FIELDS[key]
            if kind is not None and needed is not None and needed not in EVENT_FIELDS[kind]:
                valid = [k for k, f in KEY_FIELDS.items()
                         if f is None or f in EVENT_FIELDS[kind]]
                r.error(item_path, f"on: {kind} events have no {key}",
                        expected="one of: " + ", ".join(valid), node=item)
            elif key == "destination_prefix" and not has_prefixes:
                r.error(item_path, "destination_prefix counts need match.destination_prefix",
                        expected="a destination_prefix list under match", node=item)
            elif key in keys:
                r.error(item_path, f"'{key}' is listed twice", expected=expected, node=item)
            else:
                keys.append(key)
        return tuple(keys)

    def _actions(self, file: _File, rule: Section, kind: str | None,
                 count: Count | None) -> tuple[Action, ...]:
        r = file.reader
        node = rule.node_of("actions")
        path = rule.path_of("actions")
        if node is None:
            return ()
        if isinstance(node, yaml.SequenceNode):
            entries = r.items(node, path, what="actions")
            if not entries:
                r.error(path, "no actions", expected="at least one action: "
                        + ", ".join(ACTION_NAMES), node=node)
        else:
            entries = [(path, node)]
        actions: list[Action] = []
        disposition: tuple[str, yaml.Node] | None = None
        for item_path, item in entries:
            parsed = self._action(r, item, item_path, kind, count)
            if parsed is None:
                continue
            name, action = parsed
            if isinstance(action, DISPOSITIONS):
                if disposition is not None:
                    first = r.location(disposition[1])
                    r.error(item_path, f"a second disposition '{name}' (the first, "
                            f"'{disposition[0]}', is at line {first.line})",
                            expected="at most one of: allow, reject, drop, tarpit", node=item)
                    continue
                disposition = (name, item)
                allowed = DISPOSITION_KINDS.get(kind or "request", frozenset())
                if kind is not None and name not in allowed:
                    hint = ("one of: " + ", ".join(sorted(allowed)) if allowed else
                            "ban, end_calls, lock_account or alert (the event already happened)")
                    r.error(item_path, f"'{name}' is not possible on: {kind}", expected=hint,
                            node=item)
                    continue
            actions.append(action)
        if disposition is not None and disposition[0] == "allow":
            others = [a for a in actions if isinstance(a, Ban | EndCalls | LockAccount)]
            if others or count is not None:
                r.error(path, "an allow rule cannot count, ban, end calls or lock accounts",
                        expected="allow alone, or with alert", location=r.where(path))
        return tuple(actions)

    def _action(self, r: Reader, node: yaml.Node, path: str, kind: str | None,
                count: Count | None) -> tuple[str, Action] | None:
        expected = "an action: " + ", ".join(ACTION_NAMES)
        params: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            if len(node.value) != 1:
                r.error(path, f"an action mapping has {len(node.value)} keys",
                        expected="one key, the action name, e.g. {ban: {duration: 1h}}",
                        node=node)
                return None
            key_node, params = node.value[0]
            node = key_node
        name = r.string(node, path, expected=expected)
        if name is None:
            return None
        if name not in ACTION_KEYS:
            r.error(path, f"unknown action '{show(name)[1:-1]}'{suggest(name, ACTION_NAMES)}",
                    expected=expected, node=node)
            return None
        action_path = f"{path}.{name}"
        s = r.section(params, action_path, ACTION_KEYS[name],
                      what=f"the parameters of {name}: " + (", ".join(ACTION_KEYS[name])
                                                             or "none"))
        if name == "allow":
            return name, Allow()
        if name == "drop":
            return name, Drop()
        if name == "reject":
            code = s.integer("code", 403, 400, 699)
            reason = s.string("reason", REASONS.get(code, "Rejected"), pattern=_REASON,
                              expected="a reason phrase without control characters "
                              "(at most 128 characters)")
            retry_after = _get(s, "retry_after", None, lambda n, p: _retry_after(r, n, p))
            if retry_after == "auto" and (count is None or count.algorithm in
                                          ("duration", "concurrent", "daily")):
                r.error(s.path_of("retry_after"), "retry_after: auto needs a window or token "
                        "bucket count", expected="a number of seconds",
                        location=r.where(s.path_of("retry_after")))
            return name, Reject(code, reason, retry_after)
        if name == "tarpit":
            delay = _get(s, "delay", 10.0, lambda n, p: _duration(r, n, p, maximum=300))
            code = _get(s, "code", None, lambda n, p: r.integer(n, p, 400, 699))
            return name, Tarpit(delay, code)
        if name == "ban":
            defaults = Ban()
            return name, Ban(
                duration=_get(s, "duration", defaults.duration,
                              lambda n, p: _duration(r, n, p, maximum=366 * 86400)),
                factor=_get(s, "factor", defaults.factor, lambda n, p: _factor(r, n, p)),
                max_duration=_get(s, "max_duration", defaults.max_duration,
                                  lambda n, p: _duration(r, n, p, maximum=10 * 366 * 86400,
                                                         zero=True)),
                decay=_get(s, "decay", defaults.decay,
                           lambda n, p: _duration(r, n, p, maximum=366 * 86400, zero=True)),
                key=s.choice("key", ("source_ip", "source_net24"), "source_ip"),
            )
        if name == "end_calls":
            key = s.choice("key", tuple(END_CALLS_FIELDS), "account")
            needed = END_CALLS_FIELDS[key]
            if kind is not None and needed not in EVENT_FIELDS[kind]:
                r.error(action_path, f"on: {kind} events have no {key} whose calls to end",
                        expected="on: " + ", ".join(sorted(CALL_KINDS)) if key != "source_ip"
                        else "", location=r.where(action_path))
            return name, EndCalls(key)
        if name == "lock_account":
            if kind is not None and "account" not in EVENT_FIELDS[kind]:
                r.error(action_path, f"on: {kind} events have no account to lock",
                        expected="on: " + ", ".join(sorted(CALL_KINDS)),
                        location=r.where(action_path))
            duration = _get(s, "duration", 86400.0,
                            lambda n, p: _duration(r, n, p, maximum=10 * 366 * 86400))
            return name, LockAccount(duration)
        level: AlertLevel | None = s.optional_choice("level", ALERT_LEVELS)
        return name, Alert(level)


# -- value readers -------------------------------------------------------------------------------

_ITEM_EXPECTED = {
    "networks": "a network in CIDR notation such as 192.0.2.0/24, or an address",
    "prefixes": "a number prefix: " + PREFIX_EXPECTED,
    "strings": "a string, or re: and a regular expression",
}
_COUNT_EXPECTED = {
    "window": DURATION_EXPECTED,
    "limit": "an integer (a duration for algorithm duration)",
    "rate": RATE_EXPECTED,
    "burst": "an integer, the bucket size",
}
_COMMENT = re.compile(r"(?:^|\s)#.*$")
_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")
_REASON = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
           480: "Temporarily Unavailable", 486: "Busy Here", 488: "Not Acceptable Here",
           503: "Service Unavailable", 603: "Decline"}


def _node_of(root: yaml.MappingNode, key: str) -> yaml.Node | None:
    for key_node, value_node in root.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node  # type: ignore[no-any-return]
    return None


def _entries(r: Reader, top: Section, key: str,
             what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """``(path, name node, value node)`` of a mapping of named entries (lists, feeds)."""
    node = top.node_of(key)
    if node is None or is_null(node):
        return []
    if not isinstance(node, yaml.MappingNode):
        r.error(key, f"got {describe(node)}", expected=f"a mapping of {what}", node=node)
        return []
    out: list[tuple[str, yaml.Node, yaml.Node]] = []
    seen: dict[str, yaml.Node] = {}
    for name_node, value_node in node.value:
        if not isinstance(name_node, yaml.ScalarNode) or is_null(name_node):
            r.error(key, f"got {describe(name_node)} as a name", expected="a name",
                    node=name_node)
            continue
        name = str(name_node.value)
        path = f"{key}.{name}"
        if name in seen:
            r.error(path, f"duplicate key '{name}' (first defined at line "
                    f"{seen[name].start_mark.line + 1})", expected="each name once",
                    node=name_node)
            continue
        seen[name] = name_node
        r.remember(path, name_node)
        out.append((path, name_node, value_node))
    return out


def _get(s: Section, key: str, default: Any, read: Callable[[yaml.Node, str], Any]) -> Any:
    """``read`` the value of ``key`` in ``s``, or ``default`` when absent or bad."""
    node = s.node_of(key)
    if node is None:
        return default
    path = s.path_of(key)
    if is_null(node):
        s.reader.error(path, "got null", expected=_COUNT_EXPECTED.get(key, "a value"), node=node)
        return default
    value = read(node, path)
    return default if value is None else value


def _as_float(value: int | None) -> float | None:
    return None if value is None else float(value)


def _raw_text(r: Reader, node: yaml.Node, path: str, expected: str) -> str | None:
    """A scalar's text as written: ``0044`` stays ``0044`` (YAML would read an integer)."""
    scalar = r.scalar(node, path, ("str", "int"), expected)
    return None if scalar is None else str(scalar.value)


def _check_item(kind: str, text: str) -> tuple[str, str]:
    """``(normalised item, "")`` or ``("", problem)`` for one list item of ``kind``."""
    if kind == "networks":
        try:
            return str(ipaddress.ip_network(text, strict=True)), ""
        except ValueError as exc:
            reason = "has host bits set" if "host bits" in str(exc) else "is not a valid network"
            return "", f"{show(text)} {reason}"
    if kind == "prefixes":
        if not PREFIX.fullmatch(text):
            return "", f"invalid prefix {show(text)}"
        return text, ""
    if not text:
        return "", "empty string"
    if text.startswith(m.REGEX_PREFIX):
        pattern = text[len(m.REGEX_PREFIX):]
        if not pattern or len(pattern) > MAX_REGEX:
            return "", f"invalid regular expression {show(pattern)} (empty or too long)"
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            return "", f"invalid regular expression {show(pattern)} ({exc})"
    return text, ""


def _duration(r: Reader, node: yaml.Node, path: str, *, maximum: float,
              minimum: float = 0.0, zero: bool = False) -> float | None:
    scalar = r.scalar(node, path, ("str", "int", "float"), DURATION_EXPECTED)
    if scalar is None:
        return None
    text = str(scalar.value).strip()
    value: float
    if scalar.tag.endswith(":str"):
        if not _DURATION.fullmatch(text):
            r.error(path, f"invalid duration {show(text)}", expected=DURATION_EXPECTED, node=node)
            return None
        value = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    else:
        try:
            value = float(r.construct(scalar))  # type: ignore[arg-type]
        except (ValueError, TypeError, OverflowError, yaml.YAMLError):
            r.error(path, f"invalid number {show(text)}", expected=DURATION_EXPECTED, node=node)
            return None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        r.error(path, f"{show(text)[1:-1]} is not a positive duration",
                expected=DURATION_EXPECTED, node=node)
        return None
    if value > maximum or (value and value < minimum):
        r.error(path, f"{show(text)[1:-1]} is out of range",
                expected=f"a duration from {minimum:g}s to {maximum:g}s", node=node)
        return None
    return value


def _rate(r: Reader, node: yaml.Node, path: str) -> float | None:
    scalar = r.scalar(node, path, ("str", "int", "float"), RATE_EXPECTED)
    if scalar is None:
        return None
    text = str(scalar.value).strip()
    match = _RATE.fullmatch(text)
    try:
        if match is not None:
            value = float(match[1]) / _UNIT_SECONDS[match[2]]
        elif not scalar.tag.endswith(":str"):
            value = float(r.construct(scalar))  # type: ignore[arg-type]
        else:
            raise ValueError(text)
    except (ValueError, TypeError, OverflowError, yaml.YAMLError):
        r.error(path, f"invalid rate {show(text)}", expected=RATE_EXPECTED, node=node)
        return None
    if not (math.isfinite(value) and 0 < value <= 1e6):
        r.error(path, f"rate {show(text)[1:-1]} is out of range",
                expected="more than 0 and at most 1000000 per second", node=node)
        return None
    return value


def _factor(r: Reader, node: yaml.Node, path: str) -> float | None:
    expected = "a number from 1 to 100"
    scalar = r.scalar(node, path, ("int", "float"), expected)
    if scalar is None:
        return None
    try:
        value = float(r.construct(scalar))  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError, yaml.YAMLError):
        value = math.nan
    if not (1 <= value <= 100):
        r.error(path, f"invalid factor {show(str(scalar.value))[1:-1]}", expected=expected,
                node=node)
        return None
    return value


def _retry_after(r: Reader, node: yaml.Node, path: str) -> float | str | None:
    if isinstance(node, yaml.ScalarNode) and node.value == "auto" and node.tag.endswith(":str"):
        return "auto"
    return _duration(r, node, path, maximum=86400, zero=True)


def _zone_name(r: Reader, node: yaml.Node, path: str) -> str | None:
    expected = "UTC, an offset such as +02:00, or an IANA zone name such as Europe/Paris"
    text = r.string(node, path, expected=expected)
    if text is None:
        return None
    try:
        get_zone(text)
    except ZoneError as exc:
        r.error(path, str(exc), expected=expected, node=node)
        return None
    return text


def _time_windows(r: Reader, node: yaml.Node, path: str) -> list[m.TimeWindow]:
    entries = (r.items(node, path, what="time windows") if isinstance(node, yaml.SequenceNode)
               else [(path, node)])
    windows = []
    for item_path, item in entries:
        s = r.section(item, item_path, ("days", "hours"),
                      what="a time window: a mapping with days and hours")
        if not s.valid:
            continue
        days = frozenset(range(7))
        days_node = s.node_of("days")
        if days_node is not None:
            days = _days(r, days_node, s.path_of("days")) or days
        start, end = 0, 1440
        hours = s.optional_string("hours", pattern=_HOURS,
                                  expected="HH:MM-HH:MM such as 08:00-18:00 (quoted)")
        if hours is not None:
            match = _HOURS.fullmatch(hours)
            assert match is not None
            start = int(match[1]) * 60 + int(match[2])
            end = int(match[3]) * 60 + int(match[4])
            if start >= 1440 or end > 1440 or start == end:
                r.error(s.path_of("hours"), f"invalid hours {show(hours)}",
                        expected="a start in 00:00..23:59 and a different end up to 24:00",
                        node=s.node_of("hours"))
                continue
        windows.append(m.TimeWindow(days, start, end))
    return windows


def _days(r: Reader, node: yaml.Node, path: str) -> frozenset[int] | None:
    expected = "weekdays mon..sun: a list, a range (mon-fri) or a comma list (sat,sun)"
    entries = (r.items(node, path, what="weekdays") if isinstance(node, yaml.SequenceNode)
               else [(path, node)])
    days: set[int] = set()
    for item_path, item in entries:
        text = r.string(item, item_path, expected=expected)
        if text is None:
            continue
        for part in text.lower().replace(" ", "").split(","):
            first, _, last = part.partition("-")
            if first not in _DAYS or (last and last not in _DAYS):
                r.error(item_path, f"invalid weekdays {show(text)}", expected=expected,
                        node=item)
                break
            a = _DAYS.index(first)
            b = _DAYS.index(last) if last else a
            days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days) if days else None


def _tier(count: Count | None) -> int:
    """Evaluation order: rules without store ops, then per-source windows and buckets, then
    the other windows and buckets, repeated destinations, daily counters, concurrency leases
    (which hold something and may need to be given back)."""
    if count is None or count.algorithm == "duration":
        return 0
    if count.algorithm in ("fixed_window", "sliding_window", "token_bucket"):
        return 1 if count.per_source else 2
    return {"sequential_same_destination": 3, "daily": 4, "concurrent": 5}[count.algorithm]


