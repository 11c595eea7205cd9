"""The policy gate with the memory store and a fake reactor: what it delivers, refuses and
records, what a ban does to the next datagram, and registrations shared through the store."""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from sbc.gateway.b2bua import EXTERNAL, INTERNAL, Origin
from sbc.gateway.registrar import BindingChange
from sbc.net.bindings import NEGATIVE_TTL, POSITIVE_TTL, SourceCache
from sbc.net.policy import EVENTS_STREAM, PolicyGate
from sbc.policy.engine import Engine
from sbc.policy.loader import parse_rules
from sbc.sip.message import Request, parse_message
from sbc.state.base import (
    Binding,
    BindingDelete,
    BindingGet,
    BindingPut,
    Op,
    RecentEvents,
    Result,
    StoreError,
)
from sbc.state.cache import LocalBanCache
from sbc.state.memory import MemoryStore

RULES = """\
rules:
  - id: scanner
    on: request
    match: {user_agent: [friendly-scanner]}
    actions: [drop, {ban: {duration: 1h}}]
  - id: options-limit
    on: request
    match: {method: OPTIONS}
    count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 2}
    actions: [{reject: {code: 429, reason: Too Many Requests, retry_after: 30}}]
"""


def options(n: int, user_agent: str = "Phone/1.0") -> Request:
    message = parse_message((
        f"OPTIONS sip:sbc.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKg{n}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:1001@sbc.example.com>;tag=t{n}\r\nTo: <sip:sbc.example.com>\r\n"
        f"Call-ID: gate-{n}\r\nCSeq: {n} OPTIONS\r\nUser-Agent: {user_agent}\r\n"
        f"Content-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def setup():  # type: ignore[no-untyped-def]
    reactor = MemoryReactorClock()
    reactor.advance(1_800_000_000.0)
    store = MemoryStore()
    cache = LocalBanCache()
    store.subscribe_bans(cache.apply)
    engine = Engine(parse_rules(RULES, "rules.yaml", "."), ["10.0.0.5/32"])
    gate = PolicyGate(engine, store, cache, reactor, Counter())
    gate.node = "node-a"
    delivered: list[Request] = []
    sent: list[bytes] = []
    gate.deliver = lambda request, origin, elsewhere: delivered.append(request)
    gate.send = lambda origin, data: sent.append(data)
    return gate, store, delivered, sent, reactor


PHONE = Origin(EXTERNAL, "udp", "192.0.2.7", 5060)


def test_requests_are_delivered_until_a_limit_answers_429() -> None:
    """Two OPTIONS reach the B2BUA; the third gets 429 with Retry-After from the gate."""
    gate, _store, delivered, sent, _ = setup()
    for n in range(1, 4):
        gate.request(options(n), PHONE)
    assert [r.cseq.seq for r in delivered] == [1, 2]
    assert len(sent) == 1 and sent[0].startswith(b"SIP/2.0 429 Too Many Requests\r\n")
    assert b"\r\nRetry-After: 30\r\n" in sent[0]


def test_a_scanner_is_banned_and_the_evidence_is_kept_in_the_store() -> None:
    """A scanner's request is dropped, its address is banned before parsing from then on, and
    the firing and the ban are in the store's recent events with this node's id."""
    gate, store, delivered, sent, reactor = setup()
    gate.request(options(1, "friendly-scanner"), PHONE)
    assert delivered == [] and sent == []
    assert gate.banned("192.0.2.7") and not gate.banned("192.0.2.8")
    (result,) = store.execute([RecentEvents(EVENTS_STREAM, 10)], reactor.seconds())
    events = [json.loads(e.data) for e in result.events]
    kinds = {e["type"] for e in events}
    assert kinds == {"policy.fired", "policy.ban"}
    ban = next(e for e in events if e["type"] == "policy.ban")
    assert ban["subject"] == "ip:192.0.2.7" and ban["node"] == "node-a"
    fired = next(e for e in events if e["type"] == "policy.fired")
    assert fired["rule"] == "scanner" and fired["disposition"] == "drop"


def test_a_bug_in_the_engine_never_stalls_a_source() -> None:
    """When deciding fails with an unexpected error, the request is let through and counted,
    and the source's next requests are not left waiting behind it."""
    gate, _store, delivered, _sent, _ = setup()

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    gate.engine.decide = broken  # type: ignore[method-assign]
    for n in range(1, 4):
        gate.request(options(n), PHONE)
    assert [r.cseq.seq for r in delivered] == [1, 2, 3]
    assert gate.counters["internal.error"] == 3
    assert not gate._busy  # noqa: SLF001 -- the per-source queue is empty again


# -- registrations shared between nodes ----------------------------------------------------------

NOT_REGISTERED_RULES = """\
rules:
  - id: unregistered-calls
    on: request
    match: {method: INVITE, registered: false}
    actions: [{reject: {code: 403, reason: Not Registered}}]
"""
COUNTING_RULES = """\
rules:
  - id: invite-limit
    on: request
    match: {method: INVITE}
    count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 1000}
    actions: [reject]
"""


def invite(n: int, host: str = "192.0.2.7") -> Request:
    message = parse_message((
        f"INVITE sip:2001@sbc.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bKi{n}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:1001@sbc.example.com>;tag=t{n}\r\nTo: <sip:2001@sbc.example.com>\r\n"
        f"Call-ID: call-{n}\r\nCSeq: {n} INVITE\r\nContact: <sip:1001@{host}:5060>\r\n"
        f"Content-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def phone(host: str, port: int = 5060) -> Origin:
    return Origin(EXTERNAL, "udp", host, port)


class ThreadedReactor(MemoryReactorClock):
    """A fake reactor whose "threads" hand their results straight back."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        f(*args, **kwargs)


class SteppedPool:
    """A thread pool that runs each store call only when the test says so."""

    def __init__(self) -> None:
        self.jobs: deque[tuple[Any, Any, tuple[Any, ...]]] = deque()

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any) -> None:  # noqa: N802
        self.jobs.append((on_result, f, args))

    def run(self, index: int = 0) -> None:
        on_result, f, args = self.jobs[index]
        del self.jobs[index]
        try:
            result = f(*args)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def run_all(self) -> None:
        while self.jobs:
            self.run()


class FailingStore(MemoryStore):
    """A memory store whose ops of the given types fail as an unreachable Redis would."""

    def __init__(self, *failing: type) -> None:
        super().__init__()
        self.failing = failing

    def execute(self, ops: Sequence[Op], now: float) -> list[Result]:
        if any(isinstance(op, self.failing) for op in ops):
            raise StoreError("connection refused")
        return super().execute(ops, now)


def shared(rules: str = RULES, *, matters: bool = True, store: MemoryStore | None = None,
           threads: SteppedPool | None = None, cache: SourceCache | None = None
           ):  # type: ignore[no-untyped-def]
    """A gate sharing registrations; ``delivered`` gets (CSeq, registered_elsewhere)."""
    reactor = ThreadedReactor()
    reactor.advance(1_800_000_000.0)
    store = store if store is not None else MemoryStore()
    cache_ = LocalBanCache()
    store.subscribe_bans(cache_.apply)
    engine = Engine(parse_rules(rules, "rules.yaml", "."), ["10.0.0.5/32"])
    gate = PolicyGate(engine, store, cache_, reactor, Counter(),
                      threads=threads)  # type: ignore[arg-type]
    gate.node = "node-a"
    gate.registered = lambda origin, now: False  # nothing registered on this node
    gate.share_registrations(lambda request, origin: matters, cache)
    delivered: list[tuple[int, bool]] = []
    sent: list[bytes] = []
    gate.deliver = lambda request, origin, elsewhere: delivered.append(
        (request.cseq.seq, elsewhere))
    gate.send = lambda origin, data: sent.append(data)
    return gate, store, delivered, sent, reactor


def elsewhere(store: MemoryStore, ip: str, now: float, ttl: float = 60.0) -> None:
    """Node B publishes a registration from ``ip`` (as its gate would)."""
    store.execute([BindingPut(f"src:{ip}", "node-b:tok9", "{}", ttl)], now)


def test_a_source_registered_on_another_node_is_registered_for_the_rules() -> None:
    """When a rule tests ``registered``, a source with a live binding in the store (put by
    another node) is registered: its INVITE passes that rule and reaches the B2BUA with the
    flag; an address without one is refused by the rule."""
    gate, store, delivered, sent, reactor = shared(NOT_REGISTERED_RULES, matters=False)
    elsewhere(store, "192.0.2.8", reactor.seconds())
    gate.request(invite(1, "192.0.2.7"), phone("192.0.2.7"))
    assert delivered == [] and len(sent) == 1 and sent[0].startswith(b"SIP/2.0 403 Not Regis")
    gate.request(invite(2, "192.0.2.8"), phone("192.0.2.8"))
    gate.request(invite(3, "192.0.2.8"), phone("192.0.2.8", 5070))  # any flow of that IP
    assert delivered == [(2, True), (3, True)]
    assert (gate.counters["bindings.lookup"], gate.counters["bindings.cached"]) == (2, 1)


def test_the_store_is_asked_only_when_it_can_matter() -> None:
    """Without a rule testing ``registered``, the store is asked only for requests whose
    admission depends on a registration, never for the internal side or a flow registered
    here; and not at all while sharing is off."""
    gate, store, delivered, _sent, reactor = shared(matters=False)
    elsewhere(store, "192.0.2.7", reactor.seconds())
    gate.request(invite(1), phone("192.0.2.7"))
    assert delivered == [(1, False)] and gate.counters["bindings.lookup"] == 0

    gate, store, delivered, _sent, reactor = shared(matters=True)
    elsewhere(store, "192.0.2.7", reactor.seconds())
    gate.request(invite(2, "10.0.0.9"), Origin(INTERNAL, "udp", "10.0.0.9", 5060))
    gate.registered = lambda origin, now: origin.port == 5070
    gate.request(invite(3), phone("192.0.2.7", 5070))
    assert gate.counters["bindings.lookup"] == 0
    gate.request(invite(4), phone("192.0.2.7"))
    assert delivered == [(2, False), (3, False), (4, True)]
    assert gate.counters["bindings.lookup"] == 1

    gate.sources = None  # sharing off
    gate.request(invite(5, "192.0.2.9"), phone("192.0.2.9"))
    assert delivered[-1] == (5, False) and gate.counters["bindings.lookup"] == 1


def test_a_negative_answer_is_kept_a_few_seconds() -> None:
    """An unregistered source costs one look-up per NEGATIVE_TTL, however many requests it
    sends; a registration made elsewhere meanwhile is seen once that time is over."""
    gate, store, delivered, _sent, reactor = shared()
    for n in range(1, 6):
        gate.request(invite(n), phone("192.0.2.7"))
    assert gate.counters["bindings.lookup"] == 1
    elsewhere(store, "192.0.2.7", reactor.seconds())
    reactor.advance(NEGATIVE_TTL - 0.01)
    gate.request(invite(6), phone("192.0.2.7"))
    reactor.advance(0.01)
    gate.request(invite(7), phone("192.0.2.7"))
    assert delivered == [(n, False) for n in range(1, 7)] + [(7, True)]
    assert gate.counters["bindings.lookup"] == 2


def test_a_positive_answer_ends_with_the_binding_or_after_a_few_seconds() -> None:
    """A found registration is trusted POSITIVE_TTL at most (so an unregistration on another
    node is seen within that time), and never past the binding's own expiry."""
    gate, store, delivered, _sent, reactor = shared()
    now = reactor.seconds()
    elsewhere(store, "192.0.2.7", now)
    gate.request(invite(1), phone("192.0.2.7"))
    store.execute([BindingDelete("src:192.0.2.7")], now)  # node B: unregistered
    reactor.advance(POSITIVE_TTL - 0.01)
    gate.request(invite(2), phone("192.0.2.7"))
    reactor.advance(0.01)
    gate.request(invite(3), phone("192.0.2.7"))
    assert delivered == [(1, True), (2, True), (3, False)]

    gate, store, delivered, _sent, reactor = shared()
    elsewhere(store, "192.0.2.7", reactor.seconds(), ttl=2.0)  # expires before POSITIVE_TTL
    gate.request(invite(1), phone("192.0.2.7"))
    reactor.advance(1.99)
    gate.request(invite(2), phone("192.0.2.7"))
    reactor.advance(0.01)
    gate.request(invite(3), phone("192.0.2.7"))
    assert delivered == [(1, True), (2, True), (3, False)]
    assert gate.counters["bindings.lookup"] == 2


def test_the_cache_is_bounded_and_forgets_the_least_recently_used() -> None:
    """A flood from many addresses keeps at most ``size`` answers; the least recently used
    goes first, so the oldest address is asked again and a recent one is not."""
    cache = SourceCache(size=8)
    gate, _store, delivered, _sent, _reactor = shared(cache=cache)
    for n in range(20):
        gate.request(invite(n, f"198.51.100.{n}"), phone(f"198.51.100.{n}"))
    assert len(cache) == 8 and gate.counters["bindings.lookup"] == 20
    gate.request(invite(20, "198.51.100.19"), phone("198.51.100.19"))
    assert gate.counters["bindings.lookup"] == 20
    gate.request(invite(21, "198.51.100.0"), phone("198.51.100.0"))
    assert gate.counters["bindings.lookup"] == 21 and len(cache) == 8

    lru = SourceCache(size=2)
    lru.put("a", None, 0.0)
    lru.put("b", None, 0.0)
    assert lru.get("a", 1.0) is False  # "a" is now the most recently used
    lru.put("c", 10.0, 1.0)
    assert (lru.get("a", 1.0), lru.get("b", 1.0), lru.get("c", 1.0)) == (False, None, True)
    assert lru.get("c", 1.0 + POSITIVE_TTL) is None and len(lru) == 1


def test_a_store_failure_means_not_registered_elsewhere() -> None:
    """A look-up that fails counts as "not registered elsewhere" (this node's truth), is
    counted, is not an internal error, and is not retried for every request; a rule testing
    ``registered`` then sees False."""
    gate, _store, delivered, sent, _reactor = shared(store=FailingStore(BindingGet))
    gate.request(invite(1), phone("192.0.2.7"))
    gate.request(invite(2), phone("192.0.2.7"))
    assert delivered == [(1, False), (2, False)]
    assert gate.counters["bindings.lookup_failed"] == 1 and gate.counters["bindings.lookup"] == 1
    assert gate.counters["internal.error"] == 0

    pool = SteppedPool()
    gate, _store, delivered, sent, _reactor = shared(
        NOT_REGISTERED_RULES, store=FailingStore(BindingGet), threads=pool)
    gate.request(invite(3), phone("192.0.2.7"))
    pool.run_all()
    assert delivered == [] and sent[0].startswith(b"SIP/2.0 403 Not Registered")
    assert gate.counters["bindings.lookup_failed"] == 1 and not gate._busy  # noqa: SLF001


def test_requests_of_one_source_keep_their_order_through_the_look_up() -> None:
    """With the store in threads, a source's requests wait behind its look-up and are
    delivered in the order they came; another source is not held up by it."""
    pool = SteppedPool()
    gate, store, delivered, _sent, reactor = shared(COUNTING_RULES, threads=pool)
    elsewhere(store, "192.0.2.7", reactor.seconds())
    for n in (1, 2, 3):
        gate.request(invite(n), phone("192.0.2.7", 5060 + n))
    gate.request(invite(4, "192.0.2.9"), phone("192.0.2.9"))
    assert delivered == [] and len(pool.jobs) == 2  # one look-up per source
    for _ in range(3):  # 192.0.2.9's look-up, its request rules, its call (the account lock)
        pool.run(1)
    assert delivered == [(4, False)] and len(pool.jobs) == 1
    pool.run_all()
    assert delivered == [(4, False), (1, True), (2, True), (3, True)]
    assert gate.counters["bindings.lookup"] == 2 and not gate._busy  # noqa: SLF001


def change(reason: str, expires_at: float | None) -> BindingChange:
    return BindingChange(reason, "tok1", "sip:1001@example.com", ("192.0.2.7", 40001),
                         Origin(EXTERNAL, "tcp", "192.0.2.7", 40001), expires_at)


def test_a_binding_is_published_by_aor_and_by_source_and_removed() -> None:
    """A live binding becomes two store records with this node's id, a compact JSON value
    and the client's remaining lifetime; its removal deletes both; this node knows the
    address is registered without asking the store."""
    gate, store, delivered, _sent, reactor = shared()
    now = reactor.seconds()
    gate.binding_changed(change("registered", now + 120))
    expires = round(now + 120, 3)
    value = (f'{{"aor":"sip:1001@example.com","expires":{expires},"interface":"external",'
             '"ip":"192.0.2.7","node":"node-a","port":40001,"transport":"tcp"}')
    record = (Binding("node-a:tok1", value, now + 120),)
    by_aor, by_source = store.execute(
        [BindingGet("sip:1001@example.com"), BindingGet("src:192.0.2.7")], now)
    assert by_aor.bindings == record and by_source.bindings == record  # type: ignore[union-attr]
    gate.request(invite(1), phone("192.0.2.7", 5060))
    assert delivered == [(1, True)] and gate.counters["bindings.lookup"] == 0

    reactor.advance(10)
    gate.binding_changed(change("refreshed", now + 130))
    (by_source,) = store.execute([BindingGet("src:192.0.2.7")], now + 10)
    assert by_source.bindings[0].expires_at == now + 130  # type: ignore[union-attr]
    gate.binding_changed(change("unregistered", None))
    by_aor, by_source = store.execute(
        [BindingGet("sip:1001@example.com"), BindingGet("src:192.0.2.7")], now + 10)
    assert by_aor.bindings == () and by_source.bindings == ()  # type: ignore[union-attr]
    gate.request(invite(2), phone("192.0.2.7", 5060))
    assert delivered[-1] == (2, False) and gate.counters["bindings.lookup"] == 1
    assert gate.counters["bindings.published"] == 3


def test_a_publication_failure_is_counted_and_holds_nothing_up() -> None:
    """A store that cannot take a binding costs a counter, not an exception or a wait, with
    the store in place or in threads; without sharing nothing is written."""
    gate, store, _delivered, _sent, reactor = shared(store=FailingStore(BindingPut))
    gate.binding_changed(change("registered", reactor.seconds() + 120))
    assert gate.counters["bindings.publish_failed"] == 1

    pool = SteppedPool()
    gate, store, _delivered, _sent, reactor = shared(store=FailingStore(BindingPut),
                                                     threads=pool)
    gate.binding_changed(change("registered", reactor.seconds() + 120))
    assert gate.counters["bindings.publish_failed"] == 0 and len(pool.jobs) == 1
    pool.run_all()
    assert gate.counters["bindings.publish_failed"] == 1
    assert gate.counters["internal.error"] == 0

    gate, store, _delivered, _sent, reactor = shared()
    gate.sources = None
    gate.binding_changed(change("registered", reactor.seconds() + 120))
    (result,) = store.execute([BindingGet("src:192.0.2.7")], reactor.seconds())
    assert result.bindings == () and "bindings.published" not in gate.counters  # type: ignore[union-attr]


def test_rules_that_test_registered_are_recognised() -> None:
    """The gate asks the store for every outside request only when a rule tests
    ``registered`` (in match or unless)."""
    def ruleset(text: str) -> Any:
        return parse_rules(text, "rules.yaml", ".")

    assert not ruleset(RULES).reads("registered")
    assert ruleset(NOT_REGISTERED_RULES).reads("registered")
    assert ruleset(RULES.replace(
        "match: {method: OPTIONS}", "match: {method: OPTIONS}\n    unless: {registered: true}"
    )).reads("registered")
    assert not ruleset(NOT_REGISTERED_RULES.replace(
        "actions:", "enabled: false\n    actions:")).reads("registered")  # disabled: not read


def test_requests_queued_behind_their_sources_ban_are_dropped() -> None:
    """A scanner's later requests wait behind its first decision; once that bans the source
    they are dropped as they would be arriving now (never reaching a shared budget), and
    another source goes on."""
    pool = SteppedPool()
    gate, _store, delivered, sent, _reactor = shared(matters=False, threads=pool)
    gate.request(options(1, "friendly-scanner"), PHONE)
    gate.request(options(2), PHONE)
    gate.request(options(3), PHONE)
    gate.request(options(4), Origin(EXTERNAL, "udp", "192.0.2.9", 5060))
    pool.run_all()
    assert [seq for seq, _ in delivered] == [4] and sent == []
    assert gate.counters["policy.dropped_queued"] == 2 and not gate._busy  # noqa: SLF001
