"""The values of the rule engine: events in, rules, and the verdict out.

Events (past tense, what happened; the edge builds them):

===================  ==================  =======================================================
class                ``on:``             when
===================  ==================  =======================================================
ConnectionOpened     ``connection``      a TCP/TLS connection was accepted
MessageMalformed     ``malformed``       the parser rejected a message (before any detail)
RequestReceived      ``request``         a SIP request arrived from outside
AuthFailed           ``auth_failure``    the PBX answered 401/407 to a request with credentials
ResponseSent         ``response``        a final response went to an external source
CallStarting         ``call_start``      an INVITE is about to be routed
CallTick             ``call_tick``       a live call, every ``interval`` seconds
CallEnded            ``call_end``        a call ended
===================  ==================  =======================================================

Every event has ``source_ip``, ``interface`` and ``transport``; the other fields are per kind
(:data:`EVENT_FIELDS`), and a rule may only match and count on the fields its kind has (the
loader checks).  A field that is ``None`` (unknown) never matches a predicate and makes a counter
keyed by it not count.

Rules (:class:`Rule`) are built by :mod:`sbc.policy.loader`; the :class:`Verdict` is built by
:mod:`sbc.policy.engine`: a disposition (allow, reject, drop, tarpit), side effects (bans and
account locks as :class:`~sbc.state.base.SetBan` ops, calls to end, alerts, leases to give back)
and the evidence (:class:`Firing`, one per rule that fired, enforced or observed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from sbc.state.base import LeaseRelease, SetBan

if TYPE_CHECKING:  # pragma: no cover
    from sbc.policy.match import Matcher

# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyEvent:
    """What every event carries: who sent it, on which interface (``external`` / ``internal``)
    and over which transport (``udp``, ``tcp``, ``tls``)."""

    kind: ClassVar[str] = ""
    source_ip: str
    interface: str = "external"
    transport: str = "udp"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOpened(PolicyEvent):
    """A TCP or TLS connection was accepted (before any byte is read)."""

    kind: ClassVar[str] = "connection"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageMalformed(PolicyEvent):
    """The parser rejected a message; ``reason`` is for the evidence only."""

    kind: ClassVar[str] = "malformed"
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived(PolicyEvent):
    """A SIP request from outside, parsed.  ``username`` is the Authorization username when the
    request carries credentials; ``registered`` whether the source has a live registration."""

    kind: ClassVar[str] = "request"
    method: str
    ruri_user: str | None = None
    ruri_domain: str | None = None
    from_user: str | None = None
    from_domain: str | None = None
    to_user: str | None = None
    to_domain: str | None = None
    user_agent: str | None = None
    username: str | None = None
    registered: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthFailed(PolicyEvent):
    """The PBX answered ``status`` (401/407) to a request that carried credentials for
    ``username``: a failed password guess.  ``account`` is the account those credentials are
    for (the digest username), so a rule may lock it."""

    kind: ClassVar[str] = "auth_failure"
    method: str
    username: str
    status: int = 401
    account: str | None = None
    ruri_user: str | None = None
    from_user: str | None = None
    from_domain: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseSent(PolicyEvent):
    """A final response (``status``) was sent to an external source, for a request of
    ``method`` to ``ruri_user``/``to_user`` (extension enumeration gets 404s, 401s, 403s)."""

    kind: ClassVar[str] = "response"
    method: str
    status: int
    ruri_user: str | None = None
    to_user: str | None = None
    from_user: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarting(PolicyEvent):
    """An INVITE about to be routed: who pays (``account``), where to (``destination``, the
    number), over which trunk, with ``call_id`` naming the call in later ticks and end."""

    kind: ClassVar[str] = "call_start"
    call_id: str
    account: str | None = None
    destination: str | None = None
    trunk: str | None = None
    from_user: str | None = None
    from_domain: str | None = None
    ruri_user: str | None = None
    ruri_domain: str | None = None
    user_agent: str | None = None
    registered: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallTick(PolicyEvent):
    """A live call, reported every ``interval`` seconds with its ``duration`` so far."""

    kind: ClassVar[str] = "call_tick"
    call_id: str
    duration: float
    interval: float = 60.0
    account: str | None = None
    destination: str | None = None
    trunk: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded(PolicyEvent):
    """A call ended (answered or not) after ``duration`` seconds; ``status`` its final status."""

    kind: ClassVar[str] = "call_end"
    call_id: str
    duration: float = 0.0
    status: int | None = None
    account: str | None = None
    destination: str | None = None
    trunk: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SrtpFailed(PolicyEvent):
    """A storm of media packets that failed SRTP authentication in one call, from
    ``source_ip``: ``count`` of them (the relay reports a call once it passes its alarm level).
    Forged or replayed media aimed at a call is an attack on it (RFC 3711 9.5)."""

    kind: ClassVar[str] = "srtp_failure"
    call_id: str
    count: int = 0
    account: str | None = None


EVENT_TYPES: dict[str, type[PolicyEvent]] = {
    cls.kind: cls
    for cls in (ConnectionOpened, MessageMalformed, RequestReceived, AuthFailed, ResponseSent,
                CallStarting, CallTick, CallEnded, SrtpFailed)
}
EVENT_KINDS = tuple(EVENT_TYPES)
EVENT_FIELDS: dict[str, frozenset[str]] = {
    kind: frozenset(f.name for f in dataclasses.fields(cls)) for kind, cls in EVENT_TYPES.items()
}
CALL_KINDS = frozenset({"call_start", "call_tick", "call_end"})

# -- rules ---------------------------------------------------------------------------------------

Mode = Literal["enforce", "observe"]
FailMode = Literal["open", "closed"]
AlertLevel = Literal["warning", "critical"]
Level = Literal["warning", "critical", "unknown"]
MODES: tuple[Mode, ...] = ("enforce", "observe")
FAIL_MODES: tuple[FailMode, ...] = ("open", "closed")
ALERT_LEVELS: tuple[AlertLevel, ...] = ("warning", "critical")
Disposition = Literal["allow", "reject", "tarpit", "drop"]

KEY_KINDS = ("source_ip", "source_net24", "username", "account", "trunk", "destination_prefix",
             "destination", "global")
# The event field each key kind reads (global reads none).
KEY_FIELDS: dict[str, str | None] = {
    "source_ip": "source_ip",
    "source_net24": "source_ip",
    "username": "username",
    "account": "account",
    "trunk": "trunk",
    "destination_prefix": "destination",
    "destination": "destination",
    "global": None,
}
# The fields a count may count the distinct values of (``count.distinct``), and the event field
# each reads (source_net24: the /24 or /64 of source_ip).  Domains are compared in lower case.
DISTINCT_FIELDS: dict[str, str] = {
    "to_user": "to_user",
    "ruri_user": "ruri_user",
    "from_user": "from_user",
    "username": "username",
    "account": "account",
    "destination": "destination",
    "trunk": "trunk",
    "user_agent": "user_agent",
    "from_domain": "from_domain",
    "to_domain": "to_domain",
    "ruri_domain": "ruri_domain",
    "source_ip": "source_ip",
    "source_net24": "source_ip",
}
ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket", "concurrent", "daily",
              "sequential_same_destination", "duration")


@dataclass(frozen=True, slots=True)
class Count:
    """What a rule counts, by which key, and its thresholds.

    ``limit`` is the critical threshold: the hit that would go past it fires the rule's
    actions (window algorithms allow ``limit`` hits per window; a token bucket fires when it
    is empty; ``concurrent`` when ``limit`` calls are live; ``duration`` when a call lasts more
    than ``limit`` seconds).  ``warning``, when set, fires an alert alone the first time the
    count goes past it.  ``distinct`` (sliding_window only) names a field of
    :data:`DISTINCT_FIELDS`: the count is then the number of its distinct values per key in the
    window (an exact sliding window), not the number of events.
    """

    key: tuple[str, ...]
    algorithm: str
    limit: float
    window: float = 0.0  # fixed/sliding windows, sequential_same_destination
    rate: float = 0.0  # token_bucket: tokens per second
    ttl: float = 0.0  # concurrent: lease time to live (renewed by call ticks)
    warning: float | None = None
    distinct: str | None = None

    @property
    def per_source(self) -> bool:
        """Keyed by the source alone: the cheap limits evaluated first."""
        return all(k in ("source_ip", "source_net24") for k in self.key)


@dataclass(frozen=True, slots=True)
class Allow:
    """Accept, and skip every rule declared after this one for this event."""


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer ``code`` with ``reason``; ``retry_after`` seconds in a Retry-After header
    (``"auto"``: the counter's own retry-after; ``None``: no header)."""

    code: int = 403
    reason: str = "Forbidden"
    retry_after: float | Literal["auto"] | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    """Discard silently (for a connection: close it)."""


@dataclass(frozen=True, slots=True)
class Tarpit:
    """Hold the request ``delay`` seconds, then answer ``code`` (or drop it when ``None``)."""

    delay: float = 10.0
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Ban:
    """Ban the source (``key``: ``source_ip`` or ``source_net24``) for ``duration`` seconds,
    times ``factor`` per earlier ban not yet forgotten (``decay`` seconds after it ended), at
    most ``max_duration`` (0: no cap): fail2ban's ``bantime.increment``."""

    duration: float = 600.0
    factor: float = 2.0
    max_duration: float = 7 * 86400.0
    decay: float = 86400.0
    key: str = "source_ip"


@dataclass(frozen=True, slots=True)
class EndCalls:
    """End the live calls of the event's ``account`` (or ``call``: this call, ``trunk``,
    ``source_ip``)."""

    key: str = "account"


@dataclass(frozen=True, slots=True)
class LockAccount:
    """Lock the event's account for ``duration`` seconds: its new calls are refused."""

    duration: float = 86400.0


@dataclass(frozen=True, slots=True)
class Alert:
    """Raise an alert at ``level`` (``None``: the level the rule fired at)."""

    level: AlertLevel | None = None


Action = Allow | Reject | Drop | Tarpit | Ban | EndCalls | LockAccount | Alert
DISPOSITIONS = (Allow, Reject, Drop, Tarpit)
# Several enforcing rules may fire at once: the most severe disposition wins (then the first).
SEVERITY: dict[Disposition, int] = {"allow": 0, "reject": 1, "tarpit": 2, "drop": 3}


def describe_action(action: Action) -> str:
    """A short text of an action for the evidence: ``reject 429``, ``ban 600s source_ip``."""
    if isinstance(action, Allow):
        return "allow"
    if isinstance(action, Reject):
        retry = "" if action.retry_after is None else f" retry_after={action.retry_after}"
        return f"reject {action.code}{retry}"
    if isinstance(action, Drop):
        return "drop"
    if isinstance(action, Tarpit):
        return f"tarpit {action.delay:g}s" + ("" if action.code is None else f" {action.code}")
    if isinstance(action, Ban):
        return f"ban {action.duration:g}s x{action.factor:g} {action.key}"
    if isinstance(action, EndCalls):
        return f"end_calls {action.key}"
    if isinstance(action, LockAccount):
        return f"lock_account {action.duration:g}s"
    return f"alert {action.level}" if action.level else "alert"


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule.  ``matcher`` holds the compiled predicates (``match`` and
    ``unless``); ``location`` is ``file:line:col`` of the rule, for messages."""

    id: str
    on: str
    actions: tuple[Action, ...]
    matcher: Matcher
    description: str = ""
    mode: Mode = "enforce"
    fail: FailMode = "open"
    count: Count | None = None
    applies_to_trusted: bool = False
    enabled: bool = True
    timezone: str = "UTC"
    location: str = ""
    order: int = 0  # declaration order over all files
    tier: int = 0  # evaluation order: 0 no store op, 1 window/bucket (per source first)...

    @property
    def disposition(self) -> Allow | Reject | Drop | Tarpit | None:
        for action in self.actions:
            if isinstance(action, DISPOSITIONS):
                return action
        return None


# -- verdict -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Firing:
    """Evidence that a rule fired: which, in which mode and at which level, for which key
    (``"198.51.100.7"``, ``"alice|+4490"``), with the counts that made it fire (``count``,
    ``limit``, ``window``...), the actions it applied (or would have applied, in observe mode)
    and ``note`` saying why some were not applied (``trusted``, ``emergency``, a store failure)."""

    rule_id: str
    mode: Mode
    level: Level
    key: str = ""
    counts: Mapping[str, float] = field(default_factory=dict)
    actions: tuple[str, ...] = ()
    note: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class EndCallsOf:
    """Command: end every live call whose ``key`` (``account``, ``call``, ``trunk``,
    ``source_ip``) is ``value``."""

    key: str
    value: str
    rule_id: str


@dataclass(frozen=True, slots=True)
class RaiseAlert:
    """Command: raise an alert for ``rule_id`` at ``level`` about ``key``."""

    rule_id: str
    level: AlertLevel
    key: str
    message: str
    counts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one event.

    ``action`` is what to do with the message or call: ``allow``, ``reject`` (with ``code``,
    ``reason`` and ``retry_after``), ``drop``, or ``tarpit`` (hold ``delay`` seconds, then answer
    ``code`` or drop).  ``rule_id`` names the rule that chose it.  Side effects for the caller:
    ``bans`` and ``locks`` are :class:`~sbc.state.base.SetBan` ops to execute (the store
    escalates repeated bans), ``end_calls`` and ``alerts`` commands, ``cleanup`` ops that give
    back what this decision took but does not keep (the lease of a refused call).  ``fired``
    is the evidence, enforced and observed, in evaluation order.
    """

    action: Disposition = "allow"
    code: int | None = None
    reason: str = ""
    retry_after: float | None = None
    delay: float = 0.0
    rule_id: str = ""
    bans: tuple[SetBan, ...] = ()
    locks: tuple[SetBan, ...] = ()
    end_calls: tuple[EndCallsOf, ...] = ()
    alerts: tuple[RaiseAlert, ...] = ()
    cleanup: tuple[LeaseRelease, ...] = ()
    fired: tuple[Firing, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.action == "allow"

    def followup_ops(self) -> list[SetBan | LeaseRelease]:
        """The store ops to run after this decision (one more round trip, or none)."""
        return [*self.bans, *self.locks, *self.cleanup]


ALLOW = Verdict()
