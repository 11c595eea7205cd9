"""The rule engine: plan the store ops an event needs, then decide from their results.

Theory of operation
-------------------

An event costs at most one store round trip (the edge runs the plan's ops in one
:meth:`~sbc.state.base.Store.execute`) and one more, fire and forget, for the side effects the
verdict asks for (bans, account locks, leases to give back)::

    verdict = engine.pre_parse(source_ip, now, cache)     # before parsing: local ban cache only
    if verdict is None:
        plan = engine.plan(event, now)                     # pure: no I/O
        try:
            results = store.execute(plan.ops, now) if plan.ops else []
            verdict = engine.decide(plan, results, now)
        except StoreError as exc:
            verdict = engine.decide_failed(plan, exc, now, cache)
        store.execute(verdict.followup_ops(), now)          # when not empty

Order of evaluation:

1. :meth:`Engine.pre_parse`: bans (``ip:`` and ``net:`` keys of the :class:`LocalBanCache`),
   for every datagram and connection, before anything is parsed; trusted sources are never
   dropped by it.
2. :meth:`Engine.plan` walks the rules of the event's kind in declaration order: a trusted source
   skips the rules without ``applies_to_trusted``; a rule whose predicates do not hold is
   skipped; an enforcing ``allow`` rule that holds ends the walk (later rules are skipped).  The
   rules kept are evaluated cheapest first (:attr:`Rule.tier`): rules without store ops, then
   per-source windows and buckets, other windows and buckets, repeated destinations, daily
   counters, concurrency leases.  When an enforcing rule without ``count`` already rejects,
   drops or tarpits, no counter is planned at all: the event costs no round trip.
   A ``call_start`` with an account also reads the account's lock (a ban on ``account:NAME``).
3. :meth:`Engine.decide` turns each counter result into a level (``critical``: past the limit,
   the rule's actions; ``warning``: past the warning level for the first time, an alert alone)
   and a :class:`Firing` with the counts.  The most severe enforced disposition wins (drop >
   tarpit > reject > allow; the first in evaluation order among equals); observe-mode rules
   only add their Firing.

Never blocked: trusted sources are never banned or locked by a rule, whatever it says; calls to
an emergency number (``RuleSet.emergency_numbers``, exact match) are never rejected, ended,
banned for or locked by call rules (``call_start``, ``call_tick``, ``call_end``) nor refused
for a locked account: such rules still count and may alert, and their Firing says what was
suppressed.  Request-level rules still apply to an INVITE for 112: a source flooding it at
fifty a second is not a caller in distress, and per-source flood limits must hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sbc.config.reader import ConfigErrors
from sbc.errors import ConfigError
from sbc.policy.loader import DEFAULT_EMERGENCY_NUMBERS, RuleSet, load_rules
from sbc.policy.match import (
    Context,
    Feed,
    Network,
    NetworkSet,
    net_of,
    normalise_ip,
    parse_ip,
    source_net,
)
from sbc.policy.model import (
    ALLOW,
    DISTINCT_FIELDS,
    SEVERITY,
    Alert,
    AlertLevel,
    Allow,
    Ban,
    CallStarting,
    Drop,
    EndCalls,
    EndCallsOf,
    Firing,
    Level,
    LockAccount,
    PolicyEvent,
    RaiseAlert,
    Reject,
    Rule,
    Tarpit,
    Verdict,
    describe_action,
)
from sbc.policy.tz import DAY, get_zone
from sbc.state.base import (
    BanResult,
    DistinctHit,
    DistinctResult,
    FixedWindowHit,
    GetBan,
    HitResult,
    LeaseAcquire,
    LeaseRelease,
    LeaseRenew,
    LeaseResult,
    Op,
    Result,
    SetBan,
    SlidingWindowHit,
    StatIncr,
    StatResult,
    Store,
    StoreError,
    TokenBucketTake,
)
from sbc.state.cache import LocalBanCache

__all__ = ["DEFAULT_EMERGENCY_NUMBERS", "Engine", "Plan", "Step", "ban_key"]

KEY_PART_MAX = 64  # characters of one key part kept as is; longer ones are hashed
LOCKED_CODE = 403
LOCKED_REASON = "Forbidden"
BANNED_RULE = "banned"  # rule_id of the pre-parse verdict
LOCKED_RULE = "account-locked"  # rule_id of the verdict for a locked account
_DAILY_GRACE = 3600.0  # seconds a daily counter outlives its day (clock skew between nodes)


def ban_key(kind: str, value: str) -> str:
    """The store/cache key of a ban: ``ip:ADDR``, ``net:NET/24`` (or /64), ``account:NAME``."""
    if kind == "source_ip":
        return "ip:" + normalise_ip(value)
    if kind == "source_net24":
        return "net:" + source_net(value)
    return f"{kind}:{_part(value)}"


def _part(value: str) -> str:
    if len(value) <= KEY_PART_MAX:
        return value
    return "h:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Step:
    """One rule to decide: the key it counts by (evidence text) and its op in the plan."""

    rule: Rule
    key: str = ""
    op: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The store ops an event needs (``ops``, for one :meth:`Store.execute`) and what to decide
    from them.  ``skipped`` names the counting rules not planned because a rule without count
    already refused the event."""

    event: PolicyEvent
    now: float
    ops: tuple[Op, ...] = ()
    steps: tuple[Step, ...] = ()
    trusted: bool = False
    emergency: bool = False
    lock_op: int | None = None
    skipped: tuple[str, ...] = ()


TrustedSpec = Callable[[str], bool] | Iterable[str | Network]


class Engine:
    """Evaluates events against a :class:`RuleSet`.

    ``trusted`` tells whether a source address is a trusted peer (the PBX, configured trunks):
    a callable, or the networks themselves.  The rule set can be replaced at any time
    (:meth:`replace`, for hot reload); a plan made before keeps deciding with the rules it was
    planned with.
    """

    def __init__(self, ruleset: RuleSet, trusted: TrustedSpec = ()) -> None:
        self.ruleset = ruleset
        self._trusted_networks: NetworkSet | None = None
        if callable(trusted):
            self._trusted: Callable[[str], bool] = trusted
        else:
            networks = NetworkSet(
                n if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)
                else ipaddress.ip_network(n, strict=False) for n in trusted
            )
            self._trusted_networks = networks
            self._trusted = networks.__contains__

    # -- rule set ------------------------------------------------------------------------------

    def replace(self, ruleset: RuleSet) -> None:
        """Put a newly loaded rule set in force, keeping the feed contents already fetched."""
        ruleset.adopt_feeds(self.ruleset)
        self.ruleset = ruleset

    def reload(self, paths: Iterable[str | os.PathLike[str]]) -> ConfigErrors | None:
        """Hot reload (SIGHUP, a watched file changed): load ``paths`` again and put the new
        rules in force, or, when any file is broken, keep the rules in force and return every
        error (nothing is half applied)."""
        try:
            ruleset = load_rules(paths)
        except ConfigErrors as errors:
            return errors
        except ConfigError as error:  # pragma: no cover -- load_rules raises ConfigErrors
            return ConfigErrors([error])
        self.replace(ruleset)
        return None

    def feeds_due(self, now: float) -> list[Feed]:
        return self.ruleset.feeds_due(now)

    def is_trusted(self, source_ip: str) -> bool:
        return self._trusted(source_ip)

    # -- before parsing ------------------------------------------------------------------------

    def pre_parse(self, source_ip: str, now: float, cache: LocalBanCache) -> Verdict | None:
        """A drop verdict when ``source_ip`` (or its /24, /64) is banned in ``cache``, else
        ``None``.  No store op and no parsing: called for every datagram and connection."""
        if not len(cache):
            return None
        key = "ip:" + source_ip
        until = cache.banned_until(key, now)
        if until is None and ":" in source_ip:  # IPv6, or IPv4-mapped IPv6 to unwrap
            key = ban_key("source_ip", source_ip)
            until = cache.banned_until(key, now)
        if until is None:
            parsed = parse_ip(source_ip)
            if parsed is None:
                return None
            key = "net:" + net_of(*parsed)
            until = cache.banned_until(key, now)
        if until is None or self._trusted(source_ip):
            return None
        firing = Firing(BANNED_RULE, "enforce", "critical", key, {"until": until}, ("drop",))
        return Verdict(action="drop", rule_id=BANNED_RULE, fired=(firing,))

    # -- plan ----------------------------------------------------------------------------------

    def plan(self, event: PolicyEvent, now: float) -> Plan:
        """The rules that apply to ``event`` and the store ops they need, cheapest first."""
        ruleset = self.ruleset
        kind = event.kind
        ctx = Context(event, now)
        networks = self._trusted_networks
        if networks is None:
            trusted = self._trusted(event.source_ip)
        else:
            ip = ctx.ip
            trusted = ip is not None and networks.contains(*ip)
        ctx.trusted = trusted
        destination = getattr(event, "destination", None)
        emergency = destination is not None and destination in ruleset.emergency_numbers
        selected: list[Rule] = []
        for rule in ruleset.by_kind.get(kind, ()):
            if trusted and not rule.applies_to_trusted:
                continue
            if not rule.matcher(ctx):
                continue
            selected.append(rule)
            if rule.mode == "enforce" and isinstance(rule.disposition, Allow):
                break
        selected.sort(key=_tier)  # stable: declaration order within a tier
        refused = not emergency and any(
            r.count is None and r.mode == "enforce"
            and isinstance(r.disposition, Reject | Drop | Tarpit) for r in selected
        )
        ops: list[Op] = []
        steps: list[Step] = []
        skipped: list[str] = []
        lock_op = None
        account = getattr(event, "account", None)
        if isinstance(event, CallStarting) and account is not None and not emergency \
                and not refused:
            lock_op = len(ops)
            ops.append(GetBan(ban_key("account", account)))
        for rule in selected:
            count = rule.count
            if count is None or count.algorithm == "duration":
                # No counter: the evidence names the call (duration) or the source.
                key = getattr(event, "call_id", "") if count else ctx.ip_text
                steps.append(Step(rule, key))
                continue
            if refused:
                skipped.append(rule.id)
                continue
            key = _key(rule, ctx)
            if key is None:
                continue  # a field the key needs is unknown: this event is not counted
            op = _op(rule, key, ctx)
            if op is None:
                continue
            steps.append(Step(rule, key, len(ops)))
            ops.append(op)
        if kind in ("call_tick", "call_end"):
            self._lease_upkeep(ruleset, ctx, ops)
        return Plan(event, now, tuple(ops), tuple(steps), trusted, emergency, lock_op,
                    tuple(skipped))

    @staticmethod
    def _lease_upkeep(ruleset: RuleSet, ctx: Context, ops: list[Op]) -> None:
        """Renew (tick) or give back (end) the call's concurrency leases, whatever the rules'
        predicates say now (renewing or releasing a lease not held changes nothing)."""
        event = ctx.event
        call_id = getattr(event, "call_id", "")
        for rule in ruleset.by_kind.get("call_start", ()):
            count = rule.count
            if count is None or count.algorithm != "concurrent":
                continue
            key = _key(rule, ctx)
            if key is None:
                continue
            store_key = _store_key(rule, key)
            if event.kind == "call_tick":
                ops.append(LeaseRenew(store_key, call_id, count.ttl))
            else:
                ops.append(LeaseRelease(store_key, call_id))

    # -- decide --------------------------------------------------------------------------------

    def decide(self, plan: Plan, results: Sequence[Result], now: float) -> Verdict:
        """The verdict from the results of ``plan.ops`` (in order)."""
        if len(results) != len(plan.ops):
            raise ValueError(f"{len(results)} results for {len(plan.ops)} ops")
        return _Decision(plan, results, None, None).verdict()

    def decide_failed(self, plan: Plan, error: BaseException, now: float,
                      cache: LocalBanCache | None = None) -> Verdict:
        """The verdict when the store failed to run ``plan.ops``: each counting rule fails open
        (skipped; its Firing has level ``unknown`` and says so) or closed (its reject, drop,
        tarpit and alerts apply; bans and locks need the store).  Rules without store ops
        decide as usual; an account lock is checked in ``cache`` when given."""
        return _Decision(plan, None, error, cache).verdict()

    # -- convenience ---------------------------------------------------------------------------

    def evaluate(self, event: PolicyEvent, now: float, store: Store) -> Verdict:
        """Plan, execute, decide, then execute the follow-up ops (bans, locks, lease returns),
        for a synchronous store (the memory store).  A failure of the follow-up round trip is
        ignored: the verdict still lists the bans it asked for."""
        plan = self.plan(event, now)
        try:
            results = store.execute(plan.ops, now) if plan.ops else []
        except StoreError as exc:
            verdict = self.decide_failed(plan, exc, now)
        else:
            verdict = self.decide(plan, results, now)
        followup = verdict.followup_ops()
        if followup:
            with contextlib.suppress(StoreError):
                store.execute(followup, now)
        return verdict


def _tier(rule: Rule) -> int:
    return rule.tier


def _key(rule: Rule, ctx: Context) -> str | None:
    """The text of the rule's counter key for this event (``None``: a part is unknown)."""
    count = rule.count
    assert count is not None
    event = ctx.event
    parts = []
    for kind in count.key:
        if kind == "source_ip":
            value: str | None = ctx.ip_text
        elif kind == "source_net24":
            value = ctx.net_text
        elif kind == "global":
            value = "*"
        elif kind == "destination_prefix":
            value = rule.matcher.prefix(getattr(event, "destination", None))
        else:
            value = getattr(event, kind, None)
        if value is None:
            return None
        parts.append(value)
    return "|".join(parts)


def _store_key(rule: Rule, key: str) -> str:
    return f"policy:{rule.id}:" + "|".join(_part(p) for p in key.split("|"))


def _op(rule: Rule, key: str, ctx: Context) -> Op | None:
    count = rule.count
    assert count is not None
    store_key = _store_key(rule, key)
    algorithm = count.algorithm
    limit = int(count.limit)
    if count.distinct is not None:
        value = _distinct_value(count.distinct, ctx)
        if not value:
            return None  # the field is unknown: this event is not counted
        return DistinctHit(store_key, _part(value), count.window, limit)
    if algorithm == "fixed_window":
        return FixedWindowHit(store_key, count.window, limit)
    if algorithm == "sliding_window":
        return SlidingWindowHit(store_key, count.window, limit)
    if algorithm == "token_bucket":
        return TokenBucketTake(store_key, count.rate, count.limit)
    if algorithm == "sequential_same_destination":
        destination = getattr(ctx.event, "destination", None)
        if destination is None:
            return None
        return SlidingWindowHit(f"{store_key}>{_part(destination)}", count.window, limit)
    if algorithm == "daily":
        local = ctx.local(get_zone(rule.timezone))
        day = math.floor(local / DAY)
        ttl = (day + 1) * DAY - local + _DAILY_GRACE
        return StatIncr(f"{store_key}@{day}", "n", 1, ttl)
    if algorithm == "concurrent":
        call_id = getattr(ctx.event, "call_id", None)
        if not call_id:
            return None
        return LeaseAcquire(store_key, call_id, limit, count.ttl)
    raise AssertionError(algorithm)  # pragma: no cover -- the loader knows every algorithm


def _distinct_value(name: str, ctx: Context) -> str | None:
    """The value of ``count.distinct`` for this event: addresses normalised as for keys,
    domains in lower case (``None``: unknown)."""
    if name == "source_ip":
        return ctx.ip_text
    if name == "source_net24":
        return ctx.net_text
    value = getattr(ctx.event, DISTINCT_FIELDS[name], None)
    if value is not None and name.endswith("_domain"):
        return str(value).lower()
    return value


class _Decision:
    """Builds one verdict: the firings, the winning disposition, the side effects."""

    def __init__(self, plan: Plan, results: Sequence[Result] | None,
                 error: BaseException | None, cache: LocalBanCache | None) -> None:
        self.plan = plan
        self.results = results
        self.error = error
        self.cache = cache
        self.fired: list[Firing] = []
        self.best: tuple[int, Rule, Allow | Reject | Drop | Tarpit, float | None] | None = None
        self.locked = False
        self.bans: dict[str, SetBan] = {}
        self.locks: dict[str, SetBan] = {}
        self.end_calls: list[EndCallsOf] = []
        self.alerts: list[RaiseAlert] = []

    def verdict(self) -> Verdict:
        plan = self.plan
        self._check_lock()
        for step in plan.steps:
            self._step(step)
        cleanup: tuple[LeaseRelease, ...] = ()
        code: int | None = None
        reason, rule_id, retry_after, delay = "", "", None, 0.0
        best = self.best
        if self.locked and (best is None or best[0] <= SEVERITY["reject"]):
            action, code, reason, rule_id = "reject", LOCKED_CODE, LOCKED_REASON, LOCKED_RULE
        elif best is not None:
            _, rule, disposition, retry_after = best
            rule_id = rule.id
            if isinstance(disposition, Reject):
                action, code, reason = "reject", disposition.code, disposition.reason
            elif isinstance(disposition, Tarpit):
                action, code, delay = "tarpit", disposition.code, disposition.delay
            else:
                action = "drop" if isinstance(disposition, Drop) else "allow"
        else:
            action = "allow"
        if action != "allow" and self.results is not None:
            cleanup = self._leases_to_return()
        if (action == "allow" and not rule_id and not self.fired and not self.bans
                and not self.alerts and not self.end_calls):
            return ALLOW
        return Verdict(
            action=action,  # type: ignore[arg-type]
            code=code,
            reason=reason,
            retry_after=retry_after,
            delay=delay,
            rule_id=rule_id,
            bans=tuple(self.bans.values()),
            locks=tuple(self.locks.values()),
            end_calls=tuple(self.end_calls),
            alerts=tuple(self.alerts),
            cleanup=cleanup,
            fired=tuple(self.fired),
        )

    def _check_lock(self) -> None:
        plan = self.plan
        account = getattr(plan.event, "account", None)
        until: float | None = None
        reason = ""
        if plan.lock_op is not None and self.results is not None:
            result = self.results[plan.lock_op]
            if isinstance(result, BanResult) and result.ban is not None:
                until, reason = result.ban.until, result.ban.reason
        elif (plan.lock_op is not None and self.cache is not None and account is not None):
            until = self.cache.banned_until(ban_key("account", account), plan.now)
        if until is None:
            return
        note = f"locked by {reason}" if reason else "locked"
        self.fired.append(Firing(LOCKED_RULE, "enforce", "critical", account or "",
                                 {"until": until}, (f"reject {LOCKED_CODE}",), note))
        self.locked = True

    def _step(self, step: Step) -> None:
        rule = step.rule
        count = rule.count
        event = self.plan.event
        counts: dict[str, float] = {}
        retry: float | None = None
        level: Level | None
        if count is None:
            level = "critical"
        elif count.algorithm == "duration":
            duration = float(getattr(event, "duration", 0.0))
            interval = float(getattr(event, "interval", 0.0))
            counts = {"duration": duration, "limit": count.limit}
            if count.warning is not None:
                counts["warning"] = count.warning
            level = _crossing(duration, count.limit, count.warning, interval)
        elif self.results is None:
            self._failed(step)
            return
        else:
            assert step.op is not None
            result = self.results[step.op]
            counts = {"limit": count.limit}
            if count.window:
                counts["window"] = count.window
            if count.warning is not None:
                counts["warning"] = count.warning
            if isinstance(result, HitResult):
                counts["count"] = result.count
                if not result.allowed:
                    level = "critical"
                    counts["retry_after"] = result.retry_after
                    retry = result.retry_after
                else:
                    level = _crossing(result.count, math.inf, count.warning, 1.0)
            elif isinstance(result, DistinctResult):
                counts["count"] = result.count
                if not result.allowed:
                    level = "critical"
                    counts["retry_after"] = result.retry_after
                    retry = result.retry_after
                elif result.new:
                    level = _crossing(result.count, math.inf, count.warning, 1.0)
                else:
                    level = None  # a value already counted changes nothing
            elif isinstance(result, LeaseResult):
                counts["count"] = result.count
                level = ("critical" if not result.ok
                         else _crossing(result.count, math.inf, count.warning, 1.0))
            elif isinstance(result, StatResult):
                counts["count"] = result.value
                level = _crossing(result.value, count.limit, count.warning, 1.0)
            else:
                raise TypeError(f"unexpected result {type(result).__name__} for {rule.id}")
        if level is None:
            return
        self._fire(rule, level, step.key, counts, retry)

    def _failed(self, step: Step) -> None:
        rule = step.rule
        error = f"{type(self.error).__name__}: {self.error}"
        if rule.fail == "open":
            self.fired.append(Firing(rule.id, rule.mode, "unknown", step.key, {}, (),
                                     f"store failed, fail open ({error})", rule.description))
            return
        self._fire(rule, "unknown", step.key, {}, None, note=f"store failed, fail closed "
                   f"({error})", store_ok=False)

    def _fire(self, rule: Rule, level: Level, key: str, counts: dict[str, float],
              retry: float | None, note: str = "", store_ok: bool = True) -> None:
        plan = self.plan
        event = plan.event
        enforce = rule.mode == "enforce"
        notes = [note] if note else []
        applied: list[str] = []
        if level == "warning":
            applied.append("alert warning")
            if enforce:
                self.alerts.append(RaiseAlert(rule.id, "warning", key, _message(rule), counts))
            self.fired.append(Firing(rule.id, rule.mode, level, key, counts, tuple(applied),
                                     "; ".join(notes), rule.description))
            return
        call_rule = rule.on in ("call_start", "call_tick", "call_end")
        emergency = plan.emergency and call_rule
        suppressed: list[str] = []
        for action in rule.actions:
            text = describe_action(action)
            if isinstance(action, Allow | Reject | Drop | Tarpit):
                if emergency and not isinstance(action, Allow):
                    suppressed.append(f"{text} (emergency number)")
                    continue
                applied.append(text)
                if enforce:
                    self._dispose(rule, action, retry)
            elif isinstance(action, Ban):
                if plan.trusted or emergency or not store_ok:
                    why = ("trusted source" if plan.trusted else
                           "emergency number" if emergency else "needs the store")
                    suppressed.append(f"{text} ({why})")
                    continue
                applied.append(text)
                if enforce:
                    ban_on = ban_key(action.key, event.source_ip)
                    self.bans.setdefault(ban_on, SetBan(
                        ban_on, action.duration, rule.id, _evidence(key, counts),
                        action.factor, action.max_duration, action.decay))
            elif isinstance(action, LockAccount):
                account = getattr(event, "account", None)
                if plan.trusted or emergency or not store_ok or account is None:
                    why = ("trusted source" if plan.trusted else
                           "emergency number" if emergency else
                           "needs the store" if not store_ok else "no account")
                    suppressed.append(f"{text} ({why})")
                    continue
                applied.append(text)
                if enforce:
                    lock_on = ban_key("account", account)
                    self.locks.setdefault(lock_on, SetBan(
                        lock_on, action.duration, rule.id, _evidence(key, counts)))
            elif isinstance(action, EndCalls):
                field = {"call": "call_id"}.get(action.key, action.key)
                value = getattr(event, field, None)
                if emergency or not store_ok or value is None:
                    why = ("emergency number" if emergency else
                           "store failed" if not store_ok else f"no {action.key}")
                    suppressed.append(f"{text} ({why})")
                    continue
                applied.append(text)
                if enforce:
                    self.end_calls.append(EndCallsOf(action.key, str(value), rule.id))
            elif isinstance(action, Alert):
                alert_level: AlertLevel = action.level or "critical"
                applied.append(f"alert {alert_level}")
                if enforce:
                    self.alerts.append(RaiseAlert(rule.id, alert_level, key, _message(rule),
                                                  counts))
        if suppressed:
            notes.append("not applied: " + ", ".join(suppressed))
        self.fired.append(Firing(rule.id, rule.mode, level, key, counts, tuple(applied),
                                 "; ".join(notes), rule.description))

    def _dispose(self, rule: Rule, action: Allow | Reject | Drop | Tarpit,
                 retry: float | None) -> None:
        name = ("allow" if isinstance(action, Allow) else "reject" if isinstance(action, Reject)
                else "drop" if isinstance(action, Drop) else "tarpit")
        severity = SEVERITY[name]  # type: ignore[index]
        if self.best is not None and self.best[0] >= severity:
            return
        retry_after: float | None = None
        if isinstance(action, Reject):
            if action.retry_after == "auto":
                retry_after = (float(math.ceil(retry)) if retry is not None
                               and math.isfinite(retry) else None)
            else:
                retry_after = action.retry_after
        self.best = (severity, rule, action, retry_after)

    def _leases_to_return(self) -> tuple[LeaseRelease, ...]:
        """The leases this plan acquired for a call that is refused after all."""
        assert self.results is not None
        out = []
        for op, result in zip(self.plan.ops, self.results, strict=True):
            if isinstance(op, LeaseAcquire) and isinstance(result, LeaseResult) and result.ok:
                out.append(LeaseRelease(op.key, op.lease_id))
        return tuple(out)


def _crossing(value: float, limit: float, warning: float | None, step: float) -> Level | None:
    """``critical`` past ``limit``; ``warning`` when this step (of ``step``) crossed
    ``warning``; else ``None``."""
    if value > limit:
        return "critical"
    if warning is not None and value - step <= warning < value:
        return "warning"
    return None


def _message(rule: Rule) -> str:
    return f"{rule.id}: {rule.description}" if rule.description else rule.id


def _evidence(key: str, counts: dict[str, float]) -> str:
    shown = " ".join(f"{name}={value:g}" for name, value in counts.items())
    return " ".join(part for part in (f"key={key}" if key else "", shown) if part)
