"""The policy gate with the memory store and a fake reactor: what it delivers, refuses and
records, and what a ban does to the next datagram."""

from __future__ import annotations

import json
from collections import Counter

from twisted.internet.testing import MemoryReactorClock

from sbc.gateway.b2bua import EXTERNAL, Origin
from sbc.net.policy import EVENTS_STREAM, PolicyGate
from sbc.policy.engine import Engine
from sbc.policy.loader import parse_rules
from sbc.sip.message import Request, parse_message
from sbc.state.base import RecentEvents
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
    gate.deliver = lambda request, origin: delivered.append(request)
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
