"""The rule engine at the edge: where events are raised, verdicts applied and the store called.

:class:`PolicyGate` owns the :class:`~sbc.policy.engine.Engine`, the store
(:class:`~sbc.state.memory.MemoryStore` in process, or :class:`~sbc.state.redis_store.
RedisStore` through a dedicated thread pool, never from the reactor thread) and the
:class:`~sbc.state.cache.LocalBanCache` the store's ban notices keep current.  The transports
and the driver call it at each step of a message's life:

1. :meth:`banned` for every datagram and accepted connection, before anything is parsed (the
   local ban cache only: no store round trip);
2. :meth:`connection` for a new TCP/TLS connection and :meth:`malformed` for a message the
   parser refused;
3. :meth:`request` for every well-formed request: the ``request`` rules, then for a new call
   (an INVITE outside a dialog) the ``call_start`` rules; the message reaches the B2BUA only when
   both allow it.  Requests from one source stay in order: while one is being decided (a Redis
   round trip), the next wait behind it;
4. :meth:`event` for what the B2BUA reports afterwards (failed authentications, final responses
   sent outside, calls that end) and, every :data:`TICK` seconds, a ``call_tick`` per live call;
5. :meth:`binding_changed` for each registration that became live, was refreshed or went away:
   written to the store (fire and forget) so that the other nodes see it.

Registrations shared between nodes (:mod:`sbc.net.bindings`): a request from the outside whose
flow is not registered here is looked up in the store by source IP before its ``request`` event
is built, when that can matter: a rule tests ``registered``, or the B2BUA's admission depends on
it (:meth:`~sbc.gateway.b2bua.B2BUA.registration_matters`).  A live binding from that IP on any
node makes the event's ``registered`` true and is handed to the B2BUA with the request
(``registered_elsewhere``).  The answers are cached per IP (:class:`~sbc.net.bindings.
SourceCache`); the look-up holds the source's queue like a decision does, so order is kept; a
store failure counts as "not registered elsewhere" (this node's own registrations still hold).

Side effects of a verdict are applied here: bans and account locks go to the store (a second
round trip, fire and forget), ``end_calls`` to the B2BUA, and every rule that fired -- enforced
or observed -- is a structured security event in the ``sbc.security`` log namespace with its
evidence (the rule, the key, the counts).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from sbc.errors import SbcError
from sbc.gateway.b2bua import EXTERNAL
from sbc.gateway.b2bua import digest_username as username_of
from sbc.gateway.b2bua import uri_user as user_of
from sbc.gateway.registrar import BindingChange
from sbc.net.bindings import (
    SourceCache,
    binding_ops,
    registered_until,
    source_key,
)
from sbc.policy.engine import Engine
from sbc.policy.model import (
    CallStarting,
    CallTick,
    ConnectionOpened,
    MessageMalformed,
    PolicyEvent,
    RequestReceived,
    Verdict,
)
from sbc.sip.message import Request, build_response
from sbc.state.base import (
    AppendEvent,
    BanNotice,
    BindingGet,
    BindingsResult,
    Op,
    SetBan,
    Store,
    StoreError,
)
from sbc.state.cache import LocalBanCache

log = Logger(namespace="sbc.policy")
security_log = Logger(namespace="sbc.security")

TICK = 10.0  # seconds between call_tick events for each live call
EVENTS_STREAM = "security"  # the store's stream of recent security events (all nodes)
EVENTS_KEPT = 10000  # the newest events kept in it
MAX_QUEUED = 64  # requests held per source while one of its decisions is in flight


class PolicyGate:
    """See the module docstring.  ``deliver(message, origin, registered_elsewhere)`` hands an
    admitted request to the B2BUA; ``send(origin, data)`` writes a response the gate itself
    makes (a policy reject).  ``sources`` (None: registrations are not shared) caches the
    store's answers about source addresses; ``registration_matters(request, origin)`` says
    whether the B2BUA's admission of a request depends on a registration."""

    def __init__(self, engine: Engine, store: Store, cache: LocalBanCache, reactor: Any,
                 counters: Any, *, threads: ThreadPool | None = None) -> None:
        self.engine = engine
        self.store = store
        self.cache = cache
        self.reactor = reactor
        self.counters = counters
        self.threads = threads  # None: the store is called in place (the memory store)
        self._busy: dict[str, deque[Callable[[], None]]] = {}
        self.deliver: Callable[[Request, Any, bool], None] | None = None
        self.send: Callable[[Any, bytes], None] | None = None
        self.end_calls: Callable[[str, str, float], int] | None = None
        self.registered: Callable[[Any, float], bool] | None = None
        self.trunk_of: Callable[[Any, Request], str | None] | None = None
        self.flush: Callable[[], None] | None = None  # write what ending calls produced
        self._quiet: dict[str, float] = {}  # rule id -> until when its store failures are quiet
        self.node = ""  # this node's id, in every event kept in the store
        self.sources: SourceCache | None = None  # shared registrations: None means off
        self.registration_matters: Callable[[Request, Any], bool] | None = None
        self._reads_registered: tuple[object, bool] | None = None  # (rule set, answer)

    # -- before parsing ---------------------------------------------------------------------

    def banned(self, source_ip: str) -> bool:
        """Whether a ban holds ``source_ip`` (or its /24): drop without parsing."""
        if not len(self.cache):
            return False
        verdict = self.engine.pre_parse(source_ip, self.reactor.seconds(), self.cache)
        if verdict is None:
            return False
        self.counters["policy.banned"] += 1
        return True

    def connection(self, source_ip: str, interface: str, transport: str) -> bool:
        """A TCP/TLS connection was accepted: False to close it (a ``connection`` rule; with
        a Redis store the decision is still in flight, so the connection stays and only the
        bans it leads to act on later ones)."""
        allowed = True

        def done(verdict: Verdict) -> None:
            nonlocal allowed
            allowed = verdict.allowed

        self._evaluate(ConnectionOpened(source_ip=source_ip, interface=interface,
                                        transport=transport), done)
        return allowed  # a decision still in flight (Redis) admits the connection

    def malformed(self, source_ip: str, interface: str, transport: str, reason: str) -> None:
        self._evaluate(MessageMalformed(source_ip=source_ip, interface=interface,
                                      transport=transport, reason=reason), _ignore)

    # -- requests ----------------------------------------------------------------------------

    def request(self, request: Request, origin: Any) -> None:
        """Decide ``request`` from ``origin`` and deliver, reject, hold or drop it."""
        source = origin.host
        queue = self._busy.get(source)
        if queue is not None:
            if len(queue) >= MAX_QUEUED:
                self.counters["policy.queue_full"] += 1
                return
            queue.append(lambda: self._start(request, origin))
            return
        self._busy[source] = deque()
        self._start(request, origin)

    def _start(self, request: Request, origin: Any) -> None:
        """Decide the request at the head of its source's queue: first, when it can matter,
        whether its source is registered on another node (see the module docstring)."""
        now = self.reactor.seconds()
        if self.banned(origin.host):
            # Queued before its source was banned: dropped, as it would be arriving now (and
            # it never reaches a shared budget such as the calls-per-second admission limit).
            self.counters["policy.dropped_queued"] += 1
            self._next(origin.host)
            return
        try:
            local = self.registered(origin, now) if self.registered is not None else None
            ask = not local and self._shared_needed(request, origin)
        except Exception:
            self._bug("the rule engine could not describe a request")
            self._admit(request, origin)
            return
        if not ask:
            self._decide(request, origin, local, False)
            return

        def found(elsewhere: bool) -> None:
            self._decide(request, origin, True if elsewhere else local, elsewhere)

        self._look_up(origin.host, now, found)

    def _decide(self, request: Request, origin: Any, registered: bool | None,
                elsewhere: bool) -> None:
        try:
            event = self._request_event(request, origin, registered)
        except Exception:
            self._bug("the rule engine could not describe a request")
            self._admit(request, origin, elsewhere)
            return

        def refuse(verdict: Verdict) -> None:
            try:
                self._refuse(request, origin, verdict)
            except Exception:
                self._bug("refusing a request failed")
            finally:
                self._next(origin.host)

        def after_request(verdict: Verdict) -> None:
            if not verdict.allowed:
                refuse(verdict)
            elif request.method == "INVITE" and request.to.tag is None:
                try:
                    call = self._call_event(request, origin, event)
                except Exception:
                    self._bug("the rule engine could not describe a call")
                    self._admit(request, origin, elsewhere)
                    return
                self._evaluate(call, after_call)
            else:
                self._admit(request, origin, elsewhere)

        def after_call(verdict: Verdict) -> None:
            if verdict.allowed:
                self._admit(request, origin, elsewhere)
            else:
                refuse(verdict)

        self._evaluate(event, after_request)

    def _admit(self, request: Request, origin: Any, elsewhere: bool = False) -> None:
        try:
            if self.deliver is not None:
                self.deliver(request, origin, elsewhere)
        finally:
            self._next(origin.host)

    def _next(self, source: str) -> None:
        queue = self._busy.get(source)
        if not queue:
            self._busy.pop(source, None)
            return
        queue.popleft()()

    def _refuse(self, request: Request, origin: Any, verdict: Verdict) -> None:
        """Answer (reject), hold then answer or drop (tarpit), or say nothing (drop)."""
        self.counters[f"policy.{verdict.action}"] += 1
        if request.method == "ACK" or verdict.action == "drop":
            return
        code = verdict.code
        if verdict.action == "tarpit":
            if code is None:
                return
            self.reactor.callLater(verdict.delay, self._answer, request, origin, verdict, code)
            return
        self._answer(request, origin, verdict, code or 403)

    def _answer(self, request: Request, origin: Any, verdict: Verdict, code: int) -> None:
        extra: list[tuple[str, str]] = []
        if verdict.retry_after is not None:
            extra.append(("Retry-After", str(max(1, round(verdict.retry_after)))))
        tag = None if request.to.tag is not None else "p" + str(abs(hash(request.call_id)))[:10]
        response = build_response(request, code, verdict.reason or None, to_tag=tag, extra=extra)
        if self.send is not None:
            self.send(origin, response.to_bytes())

    def _request_event(self, request: Request, origin: Any,
                       registered: bool | None) -> RequestReceived:
        from_ = request.from_
        to = request.to
        uri = request.uri
        return RequestReceived(
            source_ip=origin.host, interface=origin.interface,
            transport=origin.transport.lower(),
            method=request.method,
            ruri_user=user_of(uri), ruri_domain=getattr(uri, "host", None),
            from_user=user_of(from_.uri), from_domain=getattr(from_.uri, "host", None),
            to_user=user_of(to.uri), to_domain=getattr(to.uri, "host", None),
            user_agent=request.headers.get("user-agent"),
            username=username_of(request),
            registered=registered,
        )

    def _call_event(self, request: Request, origin: Any, seen: RequestReceived) -> CallStarting:
        trunk = self.trunk_of(origin, request) if self.trunk_of is not None else None
        return CallStarting(
            source_ip=origin.host, interface=origin.interface,
            transport=origin.transport.lower(),
            call_id=request.call_id, account=seen.from_user, destination=seen.ruri_user,
            trunk=trunk, from_user=seen.from_user, from_domain=seen.from_domain,
            ruri_user=seen.ruri_user, ruri_domain=seen.ruri_domain,
            user_agent=seen.user_agent, registered=seen.registered,
        )

    # -- registrations shared between nodes ----------------------------------------------------

    def share_registrations(self, matters: Callable[[Request, Any], bool] | None,
                            cache: SourceCache | None = None) -> None:
        """Turn on registrations shared through the store: publish this node's
        (:meth:`binding_changed`) and look up the others' (``matters``: the B2BUA's
        :meth:`~sbc.gateway.b2bua.B2BUA.registration_matters`)."""
        self.sources = cache if cache is not None else SourceCache()
        self.registration_matters = matters

    def _shared_needed(self, request: Request, origin: Any) -> bool:
        """Whether the store must be asked about ``origin``'s other registrations: sharing is
        on, the request comes from the outside, and a rule tests ``registered`` or the B2BUA's
        admission depends on it."""
        if self.sources is None or origin.interface != EXTERNAL:
            return False
        ruleset = self.engine.ruleset
        if self._reads_registered is None or self._reads_registered[0] is not ruleset:
            self._reads_registered = (ruleset, ruleset.reads("registered"))  # once per load
        if self._reads_registered[1]:
            return True
        matters = self.registration_matters
        return matters is not None and matters(request, origin)

    def _look_up(self, ip: str, now: float, then: Callable[[bool], None]) -> None:
        """Call ``then`` exactly once with whether a live binding from ``ip`` is in the store:
        from the cache, or after one ``BindingGet`` (in the thread pool with Redis).  A failure
        is "no" (counted ``bindings.lookup_failed``) and is cached like a "no", so a store that
        is down is not asked again for every request."""
        sources = self.sources
        assert sources is not None
        cached = sources.get(ip, now)
        if cached is not None:
            self.counters["bindings.cached"] += 1
            then(cached)
            return
        try:
            ops: list[Op] = [BindingGet(source_key(ip))]
        except ValueError:  # not an address the store can key (empty, absurdly long)
            then(False)
            return
        self.counters["bindings.lookup"] += 1

        def answer(results: Any) -> bool:
            if isinstance(results, Failure):
                if not isinstance(results.value, SbcError):
                    log.failure("the state store failed", results)
                self.counters["bindings.lookup_failed"] += 1
                sources.put(ip, None, now)
                return False
            result = results[0] if results else None
            until = registered_until(result, now) if isinstance(result, BindingsResult) else None
            sources.put(ip, until, now)
            return until is not None

        if self.threads is None:
            try:
                results: Any = self.store.execute(ops, now)
            except Exception:
                results = Failure()
            then(answer(results))
            return
        d = deferToThreadPool(self.reactor, self.threads, self.store.execute, ops, now)
        d.addBoth(lambda results: then(answer(results)))
        d.addErrback(lambda f: log.failure("a registration look-up's continuation failed", f))

    def binding_changed(self, change: BindingChange) -> None:
        """Publish a registration that became live, was refreshed or went away (fire and
        forget; a failure is counted ``bindings.publish_failed`` and never holds anything up:
        the records of a live binding are written again at its next refresh)."""
        if self.sources is None:
            return
        now = self.reactor.seconds()
        ip = change.source[0]
        if change.live:  # this node knows at once; the store may still be writing it
            self.sources.put(ip, change.expires_at, now)
        else:  # other bindings from the address may remain: ask the store next time
            self.sources.forget(ip)
        try:
            ops = binding_ops(change, self.node, now)
        except ValueError:  # an AOR longer than the store takes (the PBX accepted it)
            self.counters["bindings.publish_failed"] += 1
            return
        if not ops:
            return
        self.counters["bindings.published"] += 1
        if self.threads is None:
            try:
                self.store.execute(ops, now)
            except StoreError:
                self.counters["bindings.publish_failed"] += 1
            return
        d = deferToThreadPool(self.reactor, self.threads, self.store.execute, ops, now)
        d.addErrback(self._publish_failed)

    def _publish_failed(self, failure: Failure) -> None:
        self.counters["bindings.publish_failed"] += 1
        if not isinstance(failure.value, SbcError):
            log.failure("the state store failed", failure)

    # -- what happened -------------------------------------------------------------------------

    def event(self, event: PolicyEvent) -> None:
        """A fact the B2BUA reports (auth failure, response sent, call ended): its side effects
        (bans, locks, ended calls, alerts) apply; nothing waits for it."""
        self._evaluate(event, _ignore)

    def tick(self, calls: list[CallTick]) -> None:
        for event in calls:
            self._evaluate(event, _ignore)

    # -- the engine and the store ------------------------------------------------------------

    def _evaluate(self, event: PolicyEvent, done: Callable[[Verdict], None]) -> None:
        """Decide ``event`` and call ``done`` with the verdict exactly once, whatever fails:
        a bug in the engine or in applying a verdict is logged and counted and the event is
        allowed (the per-source queue must never stall on it)."""
        now = self.reactor.seconds()
        try:
            plan = self.engine.plan(event, now)
        except Exception:
            self._bug("the rule engine failed to plan an event")
            done(Verdict())
            return
        if self.threads is None or not plan.ops:
            try:
                if not plan.ops:
                    verdict = self.engine.decide(plan, [], now)
                else:
                    try:
                        results = self.store.execute(plan.ops, now)
                    except StoreError as e:
                        self.counters["policy.store_failed"] += 1
                        verdict = self.engine.decide_failed(plan, e, now, self.cache)
                    else:
                        verdict = self.engine.decide(plan, results, now)
                verdict = self._finish(event, verdict, now)
            except Exception:
                self._bug("the rule engine failed on an event")
                verdict = Verdict()
            done(verdict)
            return
        d = deferToThreadPool(self.reactor, self.threads, self.store.execute, plan.ops, now)

        def decided(results: Any) -> Verdict:
            if isinstance(results, Failure):
                error = results.value
                if not isinstance(error, SbcError):
                    log.failure("the state store failed", results)
                self.counters["policy.store_failed"] += 1
                return self.engine.decide_failed(plan, error, now, self.cache)
            return self.engine.decide(plan, results, now)

        def finish(results: Any) -> None:
            try:
                verdict = self._finish(event, decided(results), now)
            except Exception:
                self._bug("the rule engine failed on an event")
                verdict = Verdict()
            done(verdict)

        d.addBoth(finish)
        d.addErrback(lambda f: log.failure("a policy decision's continuation failed", f))

    def _bug(self, what: str) -> None:
        self.counters["internal.error"] += 1
        log.failure(what)

    def _finish(self, event: PolicyEvent, verdict: Verdict, now: float) -> Verdict:
        """Apply the verdict's side effects, log its evidence as security events and keep them
        in the store's recent-events stream (:data:`EVENTS_STREAM`); return the verdict."""
        records: list[tuple[str, dict[str, Any]]] = []
        source = event.source_ip
        for firing in verdict.fired:
            self.counters[f"policy.fired.{firing.rule_id}"] += 1
            if firing.level == "unknown":  # skipped for a store failure: logged once a minute
                if self._quiet.get(firing.rule_id, 0.0) > now:
                    continue
                self._quiet[firing.rule_id] = now + 60.0
            records.append(("rule {rule} fired ({mode}, {severity}) for {source}", dict(
                type="policy.fired", rule=firing.rule_id, mode=firing.mode,
                severity=firing.level, subject=firing.key, counts=dict(firing.counts),
                actions=list(firing.actions), note=firing.note, source=source,
                event=event.kind,
                disposition=verdict.action if firing.rule_id == verdict.rule_id else None)))
        for ban in verdict.bans:
            self.counters["policy.ban"] += 1
            records.append(("ban {subject}", dict(type="policy.ban", subject=ban.key,
                                                  source=source, reason=ban.reason)))
        for lock in verdict.locks:
            self.counters["policy.lock"] += 1
            records.append(("account lock {subject}", dict(type="policy.lock", subject=lock.key,
                                                           source=source, reason=lock.reason)))
        for alert in verdict.alerts:
            self.counters[f"policy.alert.{alert.level}"] += 1
            records.append(("alert {rule}: {message}", dict(
                type="policy.alert", rule=alert.rule_id, severity=alert.level,
                subject=alert.key, message=alert.message, counts=dict(alert.counts),
                source=source)))
        if verdict.end_calls and self.flush is not None:
            self.reactor.callLater(0, self.flush)  # the BYEs go now, not with the next message
        for end in verdict.end_calls:
            if self.end_calls is not None:
                ended = self.end_calls(end.key, end.value, now)
                self.counters["policy.calls_ended"] += ended
                records.append(("calls ended: {by}={value} ({count})", dict(
                    type="policy.end_calls", by=end.key, value=end.value, count=ended,
                    rule=end.rule_id, source=source)))
        ops: list[Any] = verdict.followup_ops()
        for text, fields in records:
            security_log.warn(text, **fields)
            ops.append(AppendEvent(EVENTS_STREAM, json.dumps(
                {"time": now, "node": self.node, **fields}, sort_keys=True, default=str),
                cap=EVENTS_KEPT))
        for op in ops:
            if isinstance(op, SetBan):
                # Held here at once: this source's requests already queued, and those arriving
                # before the store answers, are dropped (the store's notice then sets the
                # escalated expiry on every node, this one included).
                self.cache.apply(BanNotice(op.key, now + op.duration, reason=op.reason))
        if ops:
            self._run(ops, now)
        return verdict

    def _run(self, ops: list[Any], now: float) -> None:
        """Fire-and-forget ops (bans, locks, released leases).  A ban or lock the store could
        not take still holds on this node: it goes into the local cache (other nodes learn it
        only from the store, so a note says so)."""
        if self.threads is None:
            try:
                self.store.execute(ops, now)
            except StoreError:
                self._not_stored(ops, now)
            return
        d = deferToThreadPool(self.reactor, self.threads, self.store.execute, ops, now)
        d.addErrback(lambda f: self._not_stored(ops, now))

    def _not_stored(self, ops: list[Any], now: float) -> None:
        self.counters["policy.store_failed"] += 1
        for op in ops:
            if isinstance(op, SetBan):
                self.cache.apply(BanNotice(op.key, now + op.duration, reason=op.reason))
                self.counters["policy.ban_local_only"] += 1
                security_log.warn("ban {subject} held on this node only: the store is down",
                                  type="policy.ban_local_only", subject=op.key)


def _ignore(verdict: Verdict) -> None:
    return None
