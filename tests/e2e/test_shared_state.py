"""End to end: ``sbc run`` with the Redis state backend, on a private redis-server per test.

``state`` has no key-prefix setting (only ``backend`` and ``redis_url``), and ban notices go
over a pub/sub channel that every database of a server shares, so each test starts its own
``redis-server`` on a free port (no persistence) instead of using a database of a shared one.

4. Two nodes on one Redis enforce one limit: REGISTERs from one address, spread over both
   nodes, are counted once; a ban set through node A is enforced by node B within a second.
5. Redis stops under a running node: it keeps answering, rules fail open (registrations and
   calls go on) except the one that says ``fail: closed``, and ``state.unreachable`` is
   logged; Redis restarts on the same port: ``state.recovered``, and limits hold again.
6. Registrations are shared: with ``unknown_source: reject`` on both nodes, a phone registered
   through node A calls through node B, while another unregistered address is refused by B;
   after the phone unregisters through A, B refuses it again within ``POSITIVE_TTL``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbc.net.bindings import POSITIVE_TTL
from sbc.state.base import BindingGet, BindingsResult
from sbc.state.redis_store import RedisStore
from tests.conftest import require_tool
from tests.e2e.conftest import SbcProcess, free_port, last_counters, launched_sbc, wait_until
from tests.e2e.policy_peers import FakePbx, Phone, private_redis, sbc_config, security_events

pytestmark = pytest.mark.e2e

SHARED_RULES = """\
rules:
  - id: scanner
    on: request
    match:
      user_agent: [friendly-scanner]
    actions: [drop, {ban: {duration: 1h}}]
  - id: register-limit
    on: request
    match: {method: REGISTER}
    count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 6}
    actions:
      - reject: {code: 429, reason: Too Many Requests, retry_after: auto}
"""

OUTAGE_RULES = """\
rules:
  - id: scanner
    on: request
    match:
      user_agent: [friendly-scanner]
    actions: [drop, {ban: {duration: 1h}}]
  - id: register-limit
    on: request
    match: {method: REGISTER}
    count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 3}
    actions:
      - reject: {code: 429, reason: Too Many Requests, retry_after: auto}
  - id: calls-per-source
    description: Fails open (the default) like register-limit.
    on: call_start
    count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 100}
    actions: [reject]
  - id: premium-guard
    description: Premium calls are counted or refused; never let through uncounted.
    on: call_start
    fail: closed
    match:
      destination_prefix: ["900"]
    count: {key: account, algorithm: fixed_window, window: 1m, limit: 100}
    actions:
      - reject: {code: 480, reason: Temporarily Unavailable}
"""


ADMISSION_RULES = """\
rules:
  - id: scanner
    on: request
    match:
      user_agent: [friendly-scanner]
    actions: [drop, {ban: {duration: 1h}}]
"""


def _state(url: str) -> str:
    return f"state:\n  backend: redis\n  redis_url: {url}\n"


@contextlib.contextmanager
def _node(base: Path, name: str, pbx: int, rules: Path, url: str,
          unknown_source: str = "allow") -> Iterator[SbcProcess]:
    directory = base / name
    directory.mkdir()
    ports = dict(sip=free_port(), tls=0, internal=free_port(socket.SOCK_DGRAM))
    config = sbc_config(ports["sip"], ports["internal"], pbx, [str(rules)], node=name,
                        unknown_source=unknown_source, state=_state(url))
    with launched_sbc(directory, config, directory, ports) as sbc:
        yield sbc


def _statuses(phone: Phone, times: int) -> list[int | None]:
    out = []
    for _ in range(times):
        response = phone.register(timeout=2.0)
        out.append(response.status if response is not None else None)
    return out


def test_two_nodes_share_one_limit_and_one_ban(tmp_path: Path) -> None:
    require_tool("redis-server")
    rules = tmp_path / "rules.yaml"
    rules.write_text(SHARED_RULES)
    with private_redis(tmp_path, free_port()) as redis, FakePbx() as pbx, \
            _node(tmp_path, "node-a", pbx.port, rules, redis.url) as a, \
            _node(tmp_path, "node-b", pbx.port, rules, redis.url) as b:
        # One limit: 12 REGISTERs from one address (a new user each, so that no node answers
        # one from its registration cache), alternating between the nodes; 6 pass.
        phone = Phone("127.0.0.20", a.sip_port)
        statuses = []
        for n in range(12):
            phone.sbc_port = (a, b)[n % 2].sip_port
            phone.user = f"20{n:02d}"
            response = phone.register(timeout=2.0)
            statuses.append(response.status if response is not None else None)
        assert statuses == [200] * 6 + [429] * 6, statuses
        assert len(pbx.requests("REGISTER")) == 6

        # One ban: banned through node A, dropped by node B within a second.
        suspect = Phone("127.0.0.21", b.sip_port, user="1021")
        bystander = Phone("127.0.0.22", b.sip_port, user="1022")
        answer = suspect.options()
        assert answer is not None and answer.status == 200
        scanner = Phone("127.0.0.21", a.sip_port, user="1021", user_agent="friendly-scanner")
        banned_at = time.monotonic()
        assert scanner.options(timeout=0.05) is None  # dropped by A, and the address banned
        dropped_at, answered = None, 0
        for _ in range(40):  # bounded: 40 x 0.05 s
            if suspect.options(timeout=0.05) is None:
                dropped_at = time.monotonic()
                break
            answered += 1
        assert dropped_at is not None and dropped_at - banned_at < 1.0, dropped_at
        assert all(suspect.options(timeout=0.2) is None for _ in range(3))
        assert wait_until(lambda: security_events(a.log, "policy.ban"), attempts=20)
        answer = bystander.options()
        assert answer is not None and answer.status == 200
        for p in (phone, suspect, bystander, scanner):
            p.close()
        assert a.alive() and b.alive()
    assert [e["subject"] for e in security_events(a.log, "policy.ban")] == ["ip:127.0.0.21"]
    assert security_events(b.log, "policy.ban") == []  # B never decided the ban itself
    assert last_counters(b.log).get("policy.banned", 0) >= 4
    print(f"ban enforced by node B {dropped_at - banned_at:.3f} s after the scanner's request "
          f"to node A (two 0.05 s probe timeouts included); B answered {answered} probe(s) "
          "from the banned address before")


def test_redis_outage_fails_open_closed_rules_refuse_and_recovery(tmp_path: Path) -> None:
    require_tool("redis-server")
    rules = tmp_path / "rules.yaml"
    rules.write_text(OUTAGE_RULES)
    port = free_port()
    with private_redis(tmp_path, port) as redis, FakePbx() as pbx, \
            _node(tmp_path, "node", pbx.port, rules, redis.url) as sbc:
        phones = [Phone(f"127.0.0.{30 + n}", sbc.sip_port, user=f"10{30 + n}")
                  for n in range(4)]
        first, second, third, fourth = phones
        try:
            # Redis up: the limit holds; a premium call is counted and goes through.
            assert _statuses(first, 4) == [200, 200, 200, 429]
            ok = first.call("9001")
            assert ok is not None and ok.status == 200, ok
            first.bye(ok)

            # Redis down: the SBC still answers; fail-open rules let everything through.
            redis.stop()
            assert _statuses(second, 5) == [200] * 5
            assert _statuses(first, 1) == [200]  # over its limit, but the count is unknown
            ok = second.call("2001")
            assert ok is not None and ok.status == 200, ok
            second.bye(ok)
            refused = second.call("9001")  # fail: closed
            assert refused is not None and refused.status == 480, refused
            answer = third.options()
            assert answer is not None and answer.status == 200
            assert wait_until(lambda: security_events(sbc.log, "state.unreachable"))
            assert sbc.alive()
            # A ban decided while the store is down still holds on this node.
            intruder = Phone("127.0.0.36", sbc.sip_port, user_agent="friendly-scanner")
            phones.append(intruder)
            assert intruder.options(timeout=0.05) is None
            intruder.user_agent = "TestPhone/1.0"
            assert wait_until(lambda: intruder.options(timeout=0.05) is None, attempts=20)
            assert wait_until(lambda: security_events(sbc.log, "policy.ban_local_only"))

            # Redis back on the same port (empty): the store recovers with the next requests.
            redis.start()
            recovered = False
            for _ in range(40):  # bounded: the store's backoff is at most 5 s
                third.register(timeout=1.0)
                if security_events(sbc.log, "state.recovered"):
                    recovered = True
                    break
                time.sleep(0.2)
            assert recovered, sbc.log.read_text()[-3000:]
            assert _statuses(fourth, 4) == [200, 200, 200, 429]
            ok = fourth.call("9001")
            assert ok is not None and ok.status == 200, ok
            fourth.bye(ok)
            # Bans again: set in Redis, back in this node's cache through its ban listener
            # (reconnected by itself: its backoff is at most 5 s).
            scanner = Phone("127.0.0.35", sbc.sip_port, user_agent="friendly-scanner")
            phones.append(scanner)
            assert scanner.options(timeout=0.05) is None
            scanner.user_agent = "TestPhone/1.0"
            assert wait_until(lambda: scanner.options(timeout=0.05) is None, attempts=80)
        finally:
            for phone in phones:
                phone.close()
        assert sbc.alive()
        fired = security_events(sbc.log, "policy.fired")
        assert any(e["rule"] == "register-limit" and "fail open" in (e.get("note") or "")
                   for e in fired)
        assert any(e["rule"] == "premium-guard" and e.get("disposition") == "reject"
                   and "fail closed" in (e.get("note") or "") for e in fired)
        # Who reached the PBX: every REGISTER but the refused ones, never the refused call.
        assert len(pbx.calls("INVITE", user="9001")) == 2
    unreachable = security_events(sbc.log, "state.unreachable")
    assert len(unreachable) == 1 and len(security_events(sbc.log, "state.recovered")) == 1
    counters = last_counters(sbc.log)
    assert counters.get("policy.store_failed", 0) >= 1


def _bindings(store: RedisStore, aor: str) -> list[dict]:
    (result,) = store.execute([BindingGet(aor)], time.time())
    assert isinstance(result, BindingsResult)
    return [dict(json.loads(b.value), id=b.binding_id) for b in result.bindings]


def test_a_phone_registered_through_one_node_calls_through_the_other(tmp_path: Path) -> None:
    require_tool("redis-server")
    rules = tmp_path / "rules.yaml"
    rules.write_text(ADMISSION_RULES)
    with private_redis(tmp_path, free_port()) as redis, FakePbx() as pbx, \
            _node(tmp_path, "node-a", pbx.port, rules, redis.url, "reject") as a, \
            _node(tmp_path, "node-b", pbx.port, rules, redis.url, "reject") as b:
        store = RedisStore.from_url(redis.url, clock=time.monotonic)
        phone = Phone("127.0.0.40", a.sip_port, user="1040")
        stranger = Phone("127.0.0.41", b.sip_port, user="1041")
        try:
            # Asked through A (B would remember the "no" for NEGATIVE_TTL): registered nowhere.
            refused = phone.call("2001")
            assert refused is not None and refused.status == 403, refused

            ok = phone.register()
            assert ok is not None and ok.status == 200, ok
            # The operator's view: who is registered, through which node, from where.
            assert wait_until(lambda: _bindings(store, "sip:1040@127.0.0.1"), attempts=20)
            (record,) = _bindings(store, "sip:1040@127.0.0.1")
            assert (record["node"], record["ip"], record["port"], record["transport"],
                    record["interface"]) == ("node-a", "127.0.0.40", phone.port, "udp",
                                             "external")
            assert record["id"].startswith("node-a:")
            assert [r["id"] for r in _bindings(store, "src:127.0.0.40")] == [record["id"]]

            # Node B never saw the REGISTER; it admits the phone's call all the same.
            phone.sbc_port = b.sip_port
            answered = phone.call("2002")
            assert answered is not None and answered.status == 200, answered
            assert len(pbx.calls("INVITE", user="2002")) == 1
            bye = phone.bye(answered)
            assert bye is not None and bye.status == 200, bye
            refused = stranger.call("2003")  # another address, registered nowhere
            assert refused is not None and refused.status == 403, refused

            # Unregistered through A: both records go, and B refuses the phone again once
            # its cached answer is POSITIVE_TTL old at most.
            phone.sbc_port = a.sip_port
            gone = phone.register(expires=0)
            assert gone is not None and gone.status == 200, gone
            unregistered_at = time.monotonic()
            assert wait_until(lambda: not _bindings(store, "src:127.0.0.40"), attempts=20)
            assert _bindings(store, "sip:1040@127.0.0.1") == []
            phone.sbc_port = b.sip_port
            status = None
            for n in range(int(POSITIVE_TTL / 0.5) + 4):  # bounded: one try per 0.5 s
                answer = phone.call(f"2004{n}")
                status = answer.status if answer is not None else None
                if status == 403:
                    break
                if answer is not None and status == 200:
                    phone.bye(answer)
                time.sleep(0.5)
            assert status == 403, status
            assert time.monotonic() - unregistered_at < POSITIVE_TTL + 2.0
        finally:
            store.close()
            phone.close()
            stranger.close()
        assert a.alive() and b.alive()
        assert pbx.calls("INVITE", user="2003") == set()
    counters_a, counters_b = last_counters(a.log), last_counters(b.log)
    assert counters_a.get("bindings.published", 0) >= 2  # registered, unregistered
    assert counters_b.get("admitted.registered_elsewhere", 0) >= 1
    assert counters_b.get("refused.external", 0) >= 2  # the stranger, the unregistered phone
    assert counters_b.get("bindings.lookup", 0) >= 1
    assert "bindings.publish_failed" not in counters_a
