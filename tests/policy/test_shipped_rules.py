"""The shipped default policy (rules/*.yaml): it loads and passes `sbc check-rules`, every rule is
documented, an office's normal day never trips it, each attack it is built for is stopped within
the bound docs/rules.md states, and trusted peers, exempt sources and emergency calls are spared.

The engine runs over the memory store with explicit time, wired as the edge wires it: bans reach a
local cache, and a banned source is dropped by ``pre_parse`` before its packets are parsed, so its
later requests never reach the rules."""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sbc.app.cli import main
from sbc.policy.engine import Engine
from sbc.policy.loader import RuleSet, load_rules
from sbc.policy.model import (
    ALLOW,
    AuthFailed,
    CallEnded,
    CallStarting,
    CallTick,
    ConnectionOpened,
    EndCallsOf,
    MessageMalformed,
    PolicyEvent,
    RequestReceived,
    ResponseSent,
    SrtpFailed,
    Verdict,
)
from sbc.policy.tz import days_from_civil
from sbc.state.base import GetBan, Op, Result, StoreError
from sbc.state.cache import LocalBanCache
from sbc.state.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "rules"
SHIPPED = sorted(RULES_DIR.glob("*.yaml"))
DOCS = ROOT / "docs" / "rules.md"

T0 = days_from_civil(2030, 1, 7) * 86400.0  # Monday 2030-01-07 00:00 UTC (the shipped zone)
HOUR = 3600.0
TICK = 10.0  # seconds between call ticks (sbc/net/policy.py)
PBX = "10.0.0.5"
OFFICE = "203.0.113.10"  # thirty phones behind one NAT address
REMOTE = "192.0.2.50"  # a remote worker's softphone
ATTACKER = "198.51.100.7"

# Events that come from a source's own packets: dropped before parsing once it is banned.
FROM_PACKETS = (RequestReceived, ConnectionOpened, MessageMalformed)


class Edge:
    """The shipped rules over a memory store whose bans feed a local cache, as the edge runs
    them; ``__call__`` returns the verdict, or ``None`` when the source was dropped before
    parsing because it is banned."""

    def __init__(self, paths: Sequence[Path] = SHIPPED, trusted: Sequence[str] = (PBX,)) -> None:
        self.ruleset = load_rules(paths)
        self.engine = Engine(self.ruleset, list(trusted))
        self.store = MemoryStore()
        self.cache = LocalBanCache()
        self.store.subscribe_bans(self.cache.apply)

    def __call__(self, event: PolicyEvent, now: float) -> Verdict | None:
        if isinstance(event, FROM_PACKETS) and self.banned(event.source_ip, now):
            return None
        return self.engine.evaluate(event, now, self.store)

    def banned(self, ip: str, now: float) -> bool:
        return self.engine.pre_parse(ip, now, self.cache) is not None

    def ban_of(self, key: str, now: float) -> float | None:
        result = self.store.execute([GetBan(key)], now)[0]
        ban = getattr(result, "ban", None)
        return None if ban is None else ban.until


class FailingStore(MemoryStore):
    """A store whose backend is down."""

    def execute(self, ops: Sequence[Op], now: float) -> list[Result]:
        raise StoreError("connection refused")


def fired(verdict: Verdict | None) -> list[str]:
    return [] if verdict is None else [f.rule_id for f in verdict.fired]


def register(source: str = ATTACKER, **fields: object) -> RequestReceived:
    return RequestReceived(source_ip=source, method="REGISTER", **fields)


def call(call_id: str, account: str | None, destination: str, source: str = REMOTE,
         registered: bool = True, **fields: object) -> CallStarting:
    """A new call as the edge reports it: the account is the INVITE's From user."""
    return CallStarting(source_ip=source, call_id=call_id, account=account,
                        destination=destination, from_user=account, ruri_user=destination,
                        registered=registered, **fields)


def challenged_call(edge: Edge, call_id: str, account: str, destination: str, now: float,
                    source: str = REMOTE) -> Verdict | None:
    """A call the PBX challenges, as the edge reports it: call_start for the INVITE without
    credentials, its end at the 407, call_start again for the retry with credentials (same
    Call-ID).  The verdict of the first refusal, else of the retry."""
    first = edge(call(call_id, account, destination, source), now)
    if first is None or not first.allowed:
        return first
    edge(end(call_id, account, destination, 0.0, source), now + 0.05)
    return edge(call(call_id, account, destination, source), now + 0.1)


def end(call_id: str, account: str | None, destination: str, duration: float,
        source: str = REMOTE) -> CallEnded:
    return CallEnded(source_ip=source, call_id=call_id, account=account, destination=destination,
                     duration=duration, status=200)


def events_until_stopped(edge: Edge, source: str,
                         attempts: Iterator[tuple[float, list[PolicyEvent]]]) -> int:
    """Feed an attack (each attempt: a time and the events it causes, the first one a packet of
    the source, the others what answering it causes) until the source is dropped before
    parsing; how many attempts reached the rules."""
    reached = 0
    for now, events in attempts:
        if edge.banned(source, now):
            return reached
        reached += 1
        for event in events:
            verdict = edge(event, now)
            if verdict is not None and verdict.action == "drop":
                break  # a dropped request gets no answer
    return reached


# -- the files -----------------------------------------------------------------------------------


def test_shipped_rules_load_cleanly() -> None:
    """The shipped files load together without an error, with the expected rules and lists."""
    ruleset = load_rules(SHIPPED)
    assert [Path(f).name for f in ruleset.files] == [
        "00-common.yaml", "10-dos.yaml", "15-admission.yaml", "20-scanners.yaml",
        "25-media.yaml", "30-brute-force.yaml", "40-toll-fraud.yaml"]
    assert ruleset.summary() == "32 rules in 7 files (1 observe), 4 lists, 0 feeds"
    assert [r.id for r in ruleset.rules if r.mode == "observe"] == ["scanner-options-sweep"]
    assert all(r.enabled and r.description for r in ruleset.rules)
    assert ruleset.timezone == "UTC"
    assert {"112", "911", "999", "000", "15", "17", "18"} <= ruleset.emergency_numbers
    lists = ruleset.lists
    assert lists["exempt-sources"].items == ()
    assert {"friendly-scanner", "pplsip", "VaxSIPUserAgent", "re:^sipcli/"} <= set(
        lists["scanner-user-agents"].items)
    for name in ("premium-destinations", "high-risk-destinations"):
        items = set(lists[name].items)
        plus = {i[1:] for i in items if i.startswith("+")}
        zero = {i[2:] for i in items if i.startswith("00")}
        assert plus and plus == zero, f"{name}: every prefix in both + and 00 forms"
        assert not items & ruleset.emergency_numbers


def test_check_rules_accepts_the_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    """`sbc check-rules rules/*.yaml` exits 0 and prints the summary."""
    assert main(["check-rules", *map(str, SHIPPED)]) == 0
    assert capsys.readouterr().out == "OK: 32 rules in 7 files (1 observe), 4 lists, 0 feeds\n"


def test_every_shipped_rule_is_documented() -> None:
    """docs/rules.md has a section for every shipped rule, and none for a rule that is gone."""
    headings = set(re.findall(r"^#### `([A-Za-z0-9_.-]+)`", DOCS.read_text(), re.MULTILINE))
    assert headings == {r.id for r in load_rules(SHIPPED).rules}


# -- an office's normal day ----------------------------------------------------------------------


@dataclass(order=True)
class _At:
    at: float
    seq: int
    event: PolicyEvent = field(compare=False)


def office_day() -> list[_At]:
    """Monday 08:00-18:00 of an office behind one NAT address: 30 phones (20 call-centre agents
    and 10 staff, 10 of them over TLS) boot within 10 s, re-register every 60 s (every ninth
    refresh reaches the PBX with an expired nonce and is challenged: an auth failure), send an
    OPTIONS keepalive every 30 s; agents start at 09:00 all at once and then call every 150 s
    (redials, a misdial of a different wrong number an hour, a call to Latvia every two hours),
    staff call every 20 minutes, one of them for 90 minutes; one user mistypes a password once;
    three phones of people who left still try to register their deleted extensions all day (every
    60 s, 90 s and 5 minutes; the PBX answers 404).  Every call is challenged (407), so it starts
    twice as the edge reports it (the first attempt ends at the 407), ticks every 10 s once
    answered, and ends with a BYE.  Responses carry the To user, as the B2BUA reports them."""
    out: list[_At] = []

    def at(t: float, event: PolicyEvent) -> None:
        out.append(_At(t, len(out), event))

    users = [f"20{n:02d}" for n in range(1, 31)]
    start, close = T0 + 8 * HOUR, T0 + 18 * HOUR
    for i, user in enumerate(users):
        boot = start + i * 0.33
        ua = "Yealink SIP-T46U 108.86.0.20" if i % 2 else "Poly VVX 450 6.4.3"
        tls = i < 10
        transport = "tls" if tls else "udp"
        if tls:
            at(boot, ConnectionOpened(source_ip=OFFICE, transport="tls"))
        req = {"source_ip": OFFICE, "transport": transport, "user_agent": ua,
               "from_user": user, "to_user": user}
        at(boot, RequestReceived(method="REGISTER", registered=False, **req))
        at(boot + 0.05, ResponseSent(source_ip=OFFICE, transport=transport, method="REGISTER",
                                     status=401, to_user=user, user_agent=ua))
        at(boot + 0.1, RequestReceived(method="REGISTER", registered=False, username=user,
                                       **req))
        refresh = 0
        t = boot + 60.0
        while t < close:
            refresh += 1
            at(t, RequestReceived(method="REGISTER", registered=True, username=user,
                                  **req))
            if refresh % 9 == 0:  # the PBX-side refresh: stale nonce, challenged, answered
                at(t + 0.05, AuthFailed(source_ip=OFFICE, transport=transport, method="REGISTER",
                                        username=user, account=user, status=401, user_agent=ua))
                at(t + 0.05, ResponseSent(source_ip=OFFICE, transport=transport,
                                          method="REGISTER", status=401, to_user=user))
                at(t + 0.1, RequestReceived(method="REGISTER", registered=True, username=user,
                                            **req))
            t += 60.0
        t = boot + 15.0
        while t < close:
            at(t, RequestReceived(method="OPTIONS", registered=True, **req))
            t += 30.0

    calls = 0

    def place(user: str, i: int, t: float, destination: str, duration: float) -> None:
        nonlocal calls
        calls += 1
        call_id = f"call-{calls}"
        transport = "tls" if i < 10 else "udp"
        req = {"source_ip": OFFICE, "transport": transport, "from_user": user,
               "ruri_user": destination, "registered": True}
        started = {"source_ip": OFFICE, "transport": transport, "call_id": call_id,
                   "account": user, "destination": destination}
        at(t, RequestReceived(method="INVITE", **req))
        at(t, CallStarting(from_user=user, ruri_user=destination, registered=True,
                           **started))
        at(t + 0.05, ResponseSent(source_ip=OFFICE, transport=transport, method="INVITE",
                                  status=407, to_user=destination, from_user=user))
        at(t + 0.05, CallEnded(duration=0.0, status=407, **started))
        at(t + 0.06, RequestReceived(method="ACK", **req))
        at(t + 0.1, RequestReceived(method="INVITE", username=user, **req))
        at(t + 0.1, CallStarting(from_user=user, ruri_user=destination, registered=True,
                                 **started))
        at(t + 3.0, RequestReceived(method="ACK", **req))
        tick = TICK
        while tick < duration:  # the edge ticks every live call every TICK seconds
            at(t + 3.0 + tick, CallTick(duration=tick, interval=TICK, **started))
            tick += TICK
        at(t + duration, RequestReceived(method="BYE", **req))
        at(t + duration, CallEnded(duration=duration - 3.0, status=200,
                                   **started))

    for i, agent in enumerate(users[:20]):
        t = T0 + 9 * HOUR + i * 0.5  # 09:00: every agent dials within ten seconds
        n = 0
        while t < T0 + 17.5 * HOUR:
            n += 1
            if n % 40 == 0:
                destination = f"+37167{i:02d}{n:04d}"  # Latvia, every 100 minutes
            elif n % 24 == 0:  # a misdial an hour, every agent near the same time: 404
                wrong = f"0199{i:02d}{n:03d}"
                at(t, RequestReceived(source_ip=OFFICE, method="INVITE", from_user=agent,
                                      ruri_user=wrong, to_user=wrong, registered=True,
                                      username=agent))
                at(t + 0.1, ResponseSent(source_ip=OFFICE, method="INVITE", status=404,
                                         to_user=wrong, from_user=agent))
                t += 150.0
                continue
            elif n % 10 in (1, 2, 3):  # the same number three times: busy, busy, answered
                destination = f"0142{i:02d}{n // 10:04d}"
            else:
                destination = f"+4420{i:02d}{n:05d}" if n % 2 else f"06{i:02d}{n:06d}"
            place(agent, i, t, destination, 40.0 + (n * 7 % 70))
            t += 150.0 + (i % 5)
    for i, user in enumerate(users[20:], start=20):
        t = T0 + 8.5 * HOUR + i * 13.0
        while t < T0 + 17.5 * HOUR:
            long_call = user == "2021" and T0 + 10 * HOUR <= t < T0 + 10 * HOUR + 1200
            place(user, i, t, "2005" if i % 3 else "+33142000000", 5400.0 if long_call else 180.0)
            t += 1200.0 + (5400.0 if long_call else 0.0)
    at(T0 + 10 * HOUR, AuthFailed(source_ip=OFFICE, method="REGISTER", username="2030",
                                  account="2030", status=403))  # a mistyped password, once
    for user, every in (("2031", 60.0), ("2032", 90.0), ("2033", 300.0)):  # deleted users
        t = start + 5.0
        while t < close:
            at(t, RequestReceived(source_ip=OFFICE, method="REGISTER", registered=False,
                                  from_user=user, to_user=user, user_agent="Poly VVX 450 6.4.3"))
            at(t + 0.05, ResponseSent(source_ip=OFFICE, method="REGISTER", status=404,
                                      to_user=user, from_user=user))
            t += every
    return sorted(out)


def test_an_office_day_never_trips_anything() -> None:
    """30 phones behind one address for a working day (see office_day) get a plain allow."""
    edge = Edge()
    day = office_day()
    assert len(day) > 80_000
    starts = 0
    for item in day:
        verdict = edge(item.event, item.at)
        assert verdict is ALLOW, (item.event, verdict)
        starts += isinstance(item.event, CallStarting)
    assert starts > 3000
    assert len(edge.cache) == 0


# -- scanners ------------------------------------------------------------------------------------


@pytest.mark.parametrize("user_agent", [
    "friendly-scanner",
    "sipvicious 0.3.4",
    "sipcli/v1.8",
    "VaxSIPUserAgent/3.1",
    "pplsip",
    "sipsak 0.9.8",
    "sip-scan",
    "SIPScan 1.0",
    "iWar",
    "sundayddr",
])
def test_scanner_user_agent_is_dropped_and_banned_on_its_first_request(user_agent: str) -> None:
    """A request with a known scanner User-Agent is dropped and its source banned at once."""
    edge = Edge()
    verdict = edge(RequestReceived(source_ip=ATTACKER, method="OPTIONS", user_agent=user_agent,
                                   registered=False), T0)
    assert verdict is not None and verdict.action == "drop"
    assert verdict.rule_id == "scanner-user-agent"
    assert [b.key for b in verdict.bans] == [f"ip:{ATTACKER}"]
    assert edge.ban_of(f"ip:{ATTACKER}", T0) == T0 + HOUR
    assert edge(register(user_agent="Zoiper rv2.10"), T0 + 1) is None  # dropped before parsing


@pytest.mark.parametrize("user_agent", [
    "Yealink SIP-T46U 108.86.0.20",
    "Zoiper rv2.10.19.3",
    "MySipClient 2.0",
    "Cisco-SIPGateway/IOS-12.x",
    "Linphone/5.2.0 (belle-sip/5.2.0)",
    "Bria 6 release 6.5.2",
    "Asterisk PBX 20.5.0",
    "Kiwari phone",
])
def test_ordinary_user_agents_are_not_scanners(user_agent: str) -> None:
    """Phones, softphones and gateways, including names close to a listed one, pass."""
    edge = Edge()
    assert edge(register(user_agent=user_agent), T0) is ALLOW


def test_svmap_from_address_is_banned_even_with_another_user_agent() -> None:
    """svmap's From (sip:100@1.1.1.1) gives it away when its User-Agent was changed."""
    edge = Edge()
    verdict = edge(RequestReceived(source_ip=ATTACKER, method="OPTIONS", from_user="100",
                                   from_domain="1.1.1.1", to_user="100", user_agent="Asterisk",
                                   registered=False), T0)
    assert verdict is not None and (verdict.action, verdict.rule_id) == (
        "drop", "scanner-svmap-from")
    assert edge.banned(ATTACKER, T0 + 1)


def svwar(source: str, status: int, rate: float, user_agent: str | None = None,
          method: str = "REGISTER", count: int = 900
          ) -> Iterator[tuple[float, list[PolicyEvent]]]:
    """svwar's scan of extensions 100..999 at ``rate`` requests per second, each answered
    ``status``."""
    for n in range(count):
        ext = str(100 + n)
        request = RequestReceived(source_ip=source, method=method, to_user=ext, from_user=ext,
                                  ruri_user=None if method == "REGISTER" else ext,
                                  user_agent=user_agent, registered=False)
        answer = ResponseSent(source_ip=source, method=method, status=status, to_user=ext,
                              user_agent=user_agent)
        if method == "INVITE":  # a new call too; refused uncounted (admission-unknown-caller)
            started = CallStarting(source_ip=source, call_id=f"svwar-{n}", account=ext,
                                   destination=ext, registered=False)
            yield T0 + n / rate, [request, started]
        else:
            yield T0 + n / rate, [request, answer]


def test_svwar_extension_scan_is_banned_within_21_requests() -> None:
    """svwar (User-Agent changed), 100 extensions in 2 s answered 404: banned at the 21st."""
    edge = Edge()
    assert events_until_stopped(edge, ATTACKER, svwar(ATTACKER, 404, 50.0, count=100)) == 21
    assert edge.ban_of(f"ip:{ATTACKER}", T0 + 2) == pytest.approx(T0 + 20 / 50 + HOUR)


def test_slow_svwar_is_banned_at_the_21st_extension_within_an_hour() -> None:
    """Enumeration counts extensions, not speed: one every 2.5 minutes is banned at the 21st
    (50 minutes in); 20 an hour or fewer stay below the limit."""
    edge = Edge()
    assert events_until_stopped(edge, ATTACKER, svwar(ATTACKER, 404, 1 / 150, count=100)) == 21
    assert edge.ban_of(f"ip:{ATTACKER}", T0 + 3001) == T0 + 3000 + HOUR
    other = "198.51.100.8"
    assert events_until_stopped(Edge(), other, svwar(other, 404, 1 / 180, count=100)) == 100


def test_phones_retrying_deleted_extensions_are_not_enumeration() -> None:
    """A phone retrying its deleted extension every 2 s counts once, and 20 such phones behind
    one address are never banned; a 21st user answered 404 within the hour is."""
    edge = Edge()
    for n in range(1800):
        now = T0 + 2.0 * n
        user = "3000" if n % 2 else str(3001 + n // 2 % 19)  # 3000 every 2 s, 19 others
        assert edge(register(OFFICE, from_user=user, to_user=user, registered=False),
                    now) is ALLOW
        assert edge(ResponseSent(source_ip=OFFICE, method="REGISTER", status=404, to_user=user),
                    now + 0.05) is ALLOW
    later = T0 + 3600.0
    assert edge(register(OFFICE, to_user="4000", registered=False), later) is ALLOW
    verdict = edge(ResponseSent(source_ip=OFFICE, method="REGISTER", status=404,
                                to_user="4000"), later)
    assert fired(verdict) == ["scanner-extension-enumeration"]
    assert verdict is not None and verdict.fired[0].counts["count"] == 21  # 20 users + 4000


def test_misdials_to_many_numbers_are_not_enumeration() -> None:
    """INVITEs answered 404/484 are not counted: 100 different wrong numbers dialled from one
    address in ten minutes (a call centre's misdials, a dialler's bad list) ban nothing."""
    edge = Edge()
    for n in range(100):
        answer = ResponseSent(source_ip=OFFICE, method="INVITE", status=404 if n % 2 else 484,
                              to_user=f"0199{n:04d}", from_user="2001")
        assert edge(answer, T0 + 6.0 * n) is ALLOW


def test_svwar_with_its_default_user_agent_is_banned_on_the_first_request() -> None:
    """svwar unchanged says friendly-scanner: one request."""
    edge = Edge()
    scan = svwar(ATTACKER, 404, 50.0, user_agent="friendly-scanner", count=100)
    assert events_until_stopped(edge, ATTACKER, scan) == 1


# The documented bounds of the token-bucket rules: a tool at R per second against a bucket of
# `burst` refilled at `rate` per second is refused at request floor(burst * R / (R - rate)) + 1.
def bucket_bound(burst: int, rate: float, speed: float) -> int:
    return math.floor(burst * speed / (speed - rate)) + 1


def test_forced_svwar_against_a_pbx_that_answers_401_is_banned_by_the_register_limit() -> None:
    """svwar --force, all answered 401: dos-register-flood bans at 207 (100/s)."""
    edge = Edge()
    reached = events_until_stopped(edge, ATTACKER, svwar(ATTACKER, 401, 100.0))
    assert reached == bucket_bound(200, 3.0, 100.0) == 207


def test_svwar_invite_scan_is_banned_by_the_invite_limit() -> None:
    """svwar -m INVITE, calls refused uncounted: dos-invite-flood bans at 103 (100/s)."""
    edge = Edge()
    reached = events_until_stopped(edge, ATTACKER, svwar(ATTACKER, 403, 100.0, method="INVITE"))
    assert reached == bucket_bound(100, 2.0, 100.0) == 103


def test_svwar_options_scan_is_banned_by_the_options_limit() -> None:
    """svwar -m OPTIONS (all answered 200): dos-options-flood bans at 211 (100/s)."""
    edge = Edge()
    reached = events_until_stopped(edge, ATTACKER, svwar(ATTACKER, 200, 100.0, method="OPTIONS"))
    assert reached == bucket_bound(200, 5.0, 100.0) == 211


def test_request_flood_of_any_method_is_banned() -> None:
    """A MESSAGE flood (no limit of its own): dos-request-flood bans at 613 (1000/s)."""
    edge = Edge()
    flood = ((T0 + n / 1000.0, [RequestReceived(source_ip=ATTACKER, method="MESSAGE")])
             for n in range(5000))
    assert events_until_stopped(edge, ATTACKER, flood) == bucket_bound(600, 20.0, 1000.0) == 613


def test_malformed_flood_and_connection_flood_are_banned() -> None:
    """Garbage at 100/s is banned at the 31st message, connections at 20/s at the 64th."""
    edge = Edge()
    garbage = ((T0 + n / 100.0, [MessageMalformed(source_ip=ATTACKER, reason="bad start line")])
               for n in range(1000))
    assert events_until_stopped(edge, ATTACKER, garbage) == bucket_bound(30, 10 / 60, 100.0) == 31
    other = "198.51.100.8"
    connections = ((T0 + n / 20.0, [ConnectionOpened(source_ip=other, transport="tcp")])
                   for n in range(1000))
    assert events_until_stopped(edge, other, connections) == bucket_bound(60, 1.0, 20.0) == 64


def test_options_sweep_is_observed_not_enforced() -> None:
    """The 11th unregistered OPTIONS of a /24 in an hour is only recorded (observe)."""
    edge = Edge()
    verdicts = [edge(RequestReceived(source_ip=f"198.51.100.{10 + n}", method="OPTIONS",
                                     registered=False), T0 + n * 60.0) for n in range(11)]
    assert all(v is ALLOW for v in verdicts[:10])
    last = verdicts[10]
    assert last is not None and last.allowed and last.bans == ()
    (firing,) = last.fired
    assert (firing.rule_id, firing.mode, firing.key) == (
        "scanner-options-sweep", "observe", "198.51.100.0/24")
    assert firing.actions == ("drop", "ban 3600s x2 source_net24")


# -- brute force ---------------------------------------------------------------------------------


def guesses(source: str | Callable[[int], str], username: str | Callable[[int], str],
            rate: float, count: int, first: str | None = None
            ) -> Iterator[tuple[float, list[PolicyEvent]]]:
    """Password guesses at ``rate`` per second: a REGISTER with credentials, then the PBX's 401."""
    for n in range(count):
        ip = source(n) if callable(source) else source
        user = username(n) if callable(username) else username
        yield T0 + n / rate, [
            register(ip, username=user, from_user=user, to_user=user, registered=False),
            AuthFailed(source_ip=ip, method="REGISTER", username=user, account=user, status=401),
        ]


def test_svcrack_is_banned_after_11_failed_guesses() -> None:
    """svcrack (User-Agent changed) on one extension: the 11th failed guess bans."""
    edge = Edge()
    assert events_until_stopped(edge, ATTACKER, guesses(ATTACKER, "2001", 50.0, 1000)) == 11
    assert edge.ban_of(f"ip:{ATTACKER}", T0 + 1) == pytest.approx(T0 + 10 / 50 + HOUR)


def test_password_spraying_from_one_address_is_banned_after_62_failures() -> None:
    """Three passwords per extension from one address at 20/s: the 62nd failure bans."""
    edge = Edge()
    spray = guesses(ATTACKER, lambda n: str(2000 + n // 3), 20.0, 1000)
    assert events_until_stopped(edge, ATTACKER, spray) == bucket_bound(60, 0.5, 20.0) == 62


def stuffing(edge: Edge) -> list[Verdict | None]:
    """One username, one failed login from each of 50 addresses, two a second."""
    verdicts = []
    for n in range(50):
        ip = f"192.0.2.{100 + n}" if n < 25 else f"198.51.100.{100 + n}"
        now = T0 + n * 0.5
        assert edge(register(ip, username="2001", registered=False), now) is not None
        verdicts.append(edge(AuthFailed(source_ip=ip, method="REGISTER", username="2001",
                                        account="2001", status=401), now))
    return verdicts


def test_credential_stuffing_bans_every_source_past_the_per_user_limit() -> None:
    """One user failing from 50 addresses: warned at 11, each address banned from the 31st."""
    edge = Edge()
    verdicts = stuffing(edge)
    assert all(fired(v) == [] for v in verdicts[:10] + verdicts[11:30])
    warned = verdicts[10]
    assert warned is not None and [(a.rule_id, a.level, a.key) for a in warned.alerts] == [
        ("brute-force-user", "warning", "2001")]
    for n, verdict in enumerate(verdicts[30:], start=30):
        assert verdict is not None and fired(verdict) == ["brute-force-user"]
        assert [b.key for b in verdict.bans] == [
            f"ip:{'192.0.2' if n < 25 else '198.51.100'}.{100 + n}"]
        assert [(a.level, a.key) for a in verdict.alerts] == [("critical", "2001")]


def test_credential_stuffing_locks_the_account() -> None:
    """Credential stuffing past the per-user limit locks the account."""
    edge = Edge()
    verdicts = stuffing(edge)
    assert any(v is not None and v.locks for v in verdicts)


# -- toll fraud ----------------------------------------------------------------------------------


def test_premium_burst_is_stopped_and_the_account_locked_but_112_goes_through() -> None:
    """Premium calls refused; the 3rd ends calls and locks; 112 still goes through."""
    edge = Edge()
    assert edge(call("ok", "alice", "+442079460000"), T0) is ALLOW  # a live call
    first = edge(call("p1", "alice", "+881631234567"), T0 + 10)
    assert first is not None and (first.action, first.code, first.rule_id) == (
        "reject", 403, "toll-premium-blocked")
    assert [(a.rule_id, a.level) for a in first.alerts] == [("toll-premium-blocked", "warning")]
    assert first.end_calls == () and first.locks == ()
    second = edge(call("p2", "alice", "0088216123456"), T0 + 20)
    assert second is not None and second.action == "reject" and second.locks == ()
    third = edge(call("p3", "alice", "+8707712345678"), T0 + 30)
    assert third is not None and (third.action, third.code) == ("reject", 403)
    assert third.end_calls == (EndCallsOf("account", "alice", "toll-premium-repeat"),)
    assert [(lock.key, lock.duration, lock.reason) for lock in third.locks] == [
        ("account:alice", 86400.0, "toll-premium-repeat")]
    assert ("toll-premium-repeat", "critical") in [(a.rule_id, a.level) for a in third.alerts]
    assert edge.ban_of("account:alice", T0 + 31) == T0 + 30 + 86400.0
    emergency = edge(call("sos", "alice", "112"), T0 + 40)
    assert emergency is not None and emergency.allowed and emergency.locks == ()
    locked = edge(call("p4", "alice", "+33142000000"), T0 + 50)
    assert locked is not None and (locked.action, locked.code, locked.rule_id) == (
        "reject", 403, "account-locked")
    assert edge(call("b1", "bob", "+33142000000"), T0 + 50) is ALLOW


def test_premium_destinations_are_refused_even_from_the_pbx_and_with_the_store_down() -> None:
    """toll-premium-blocked applies to trusted peers (refused, never locked) and fails closed."""
    edge = Edge()
    verdict = edge(call("t1", "2001", "+88216555", source=PBX, registered=False,
                        interface="internal"), T0)
    assert verdict is not None and verdict.action == "reject" and verdict.locks == ()
    engine = Engine(load_rules(SHIPPED), [PBX])
    down = engine.evaluate(call("d1", "carol", "+979123456"), T0, FailingStore())
    assert (down.action, down.code, down.rule_id) == ("reject", 403, "toll-premium-blocked")
    assert engine.evaluate(call("d2", "carol", "+33142000000"), T0, FailingStore()).allowed


def test_high_risk_burst_warns_then_locks() -> None:
    """Challenged calls to one high-risk code: warned at the 3rd call, locked at the 6th."""
    edge = Edge()
    outcomes = []
    for n in range(6):
        now = T0 + n * 60.0
        number = f"+5352{n:06d}"
        first = edge(call(f"c{n}", "dave", number), now)
        assert first is not None
        outcomes.append([(f.rule_id, f.level) for f in first.fired])
        if first.allowed:
            edge(end(f"c{n}", "dave", number, 0.0), now + 0.05)  # 407 from the PBX
            again = edge(call(f"c{n}", "dave", number), now + 0.1)
            assert again is not None and again.allowed and again.fired == ()
            edge(end(f"c{n}", "dave", number, 30.0), now + 30)
    assert outcomes == [[], [], [("toll-high-risk-burst", "warning")], [], [],
                        [("toll-high-risk-burst", "critical")]]
    assert edge.ban_of("account:dave", T0 + 301) == T0 + 300 + 86400.0


def test_parallel_calls_lock_the_account() -> None:
    """A seventh call in progress for one account ends its calls and locks it."""
    edge = Edge()
    verdicts = [edge(call(f"c{n}", "erin", f"+44207946{n:04d}"), T0 + n) for n in range(7)]
    assert [fired(v) for v in verdicts[:4]] == [[], [], [], []]
    assert fired(verdicts[4]) == ["toll-concurrent-calls"]  # warning: a fifth at once
    last = verdicts[6]
    assert last is not None and last.action == "reject" and fired(last)[-1] == (
        "toll-concurrent-calls")
    assert last.end_calls == (EndCallsOf("account", "erin", "toll-concurrent-calls"),)
    assert last.locks[0].key == "account:erin"


def test_max_call_duration_ends_the_call() -> None:
    """A call tick past four hours ends that call; past two hours it warns once."""
    edge = Edge()
    assert edge(call("long", "frank", "+33142000000"), T0) is ALLOW

    def tick(duration: float) -> Verdict | None:
        return edge(CallTick(source_ip=REMOTE, call_id="long", duration=duration, interval=60.0,
                             account="frank", destination="+33142000000"), T0 + duration)

    warned = tick(7230.0)
    assert warned is not None and warned.allowed and [
        (a.rule_id, a.level) for a in warned.alerts] == [("toll-max-call-duration", "warning")]
    assert tick(7290.0) is ALLOW
    ended = tick(14460.0)
    assert ended is not None and ended.end_calls == (
        EndCallsOf("call", "long", "toll-max-call-duration"),)
    assert ended.locks == ()


# -- admission -----------------------------------------------------------------------------------


def test_call_rate_past_the_external_limit_gets_503_with_retry_after() -> None:
    """The 61st call in one instant gets 503 Retry-After 1, no ban; 112 still passes."""
    edge = Edge()
    verdicts = [edge(call(f"c{n}", f"u{n}", "+33142000000", source=f"192.0.2.{n}"), T0)
                for n in range(61)]
    assert all(v is ALLOW for v in verdicts[:60])
    refused = verdicts[60]
    assert refused is not None and (refused.action, refused.code, refused.retry_after,
                                    refused.rule_id) == (
        "reject", 503, 1.0, "admission-cps-external")
    assert refused.bans == () and refused.locks == ()
    emergency = edge(call("sos", "u99", "112", source="192.0.2.99"), T0)
    assert emergency is not None and emergency.allowed


def test_concurrent_calls_past_the_global_limit_get_503_even_for_the_pbx() -> None:
    """Past 1000 live calls, phone and PBX alike get 503 Retry-After 10, no ban."""
    edge = Edge()
    for n in range(500):
        now = T0 + n * 0.1
        assert edge(call(f"in{n}", f"u{n}", "+33142000000", source=f"192.0.{n // 250}.{n % 250}"),
                    now) is ALLOW
        assert edge(call(f"out{n}", None, f"+4420794{n:05d}", source=PBX, registered=False,
                         interface="internal"), now) is ALLOW
    now = T0 + 50.0
    for verdict in (edge(call("x1", "zed", "+33142000000", source="192.0.2.250"), now),
                    edge(call("x2", None, "+442079400000", source=PBX, registered=False,
                              interface="internal"), now)):
        assert verdict is not None and (verdict.action, verdict.code, verdict.retry_after,
                                        verdict.rule_id) == ("reject", 503, 10.0,
                                                             "admission-calls")
        assert verdict.bans == () and verdict.locks == ()


def test_calls_from_unknown_sources_are_refused_before_they_are_counted() -> None:
    """Calls from unregistered sources forging a user are refused 403 and counted nowhere."""
    edge = Edge()
    for n in range(200):
        refused = edge(call(f"x{n}", "2001", "+33142000000", source=f"198.51.100.{n}",
                            registered=False), T0 + n / 200)
        assert refused is not None and (refused.action, refused.code, refused.rule_id) == (
            "reject", 403, "admission-unknown-caller")
        assert refused.locks == () and refused.bans == ()
    assert edge.engine.plan(call("y", "2001", "+331", source=ATTACKER, registered=False),
                            T0 + 1).ops == ()
    real = challenged_call(edge, "real", "2001", "+33142000000", T0 + 1, source=OFFICE)
    assert real is ALLOW


# -- who is spared -------------------------------------------------------------------------------


def test_trusted_pbx_is_never_banned() -> None:
    """The PBX misbehaving in every way the rules watch is never banned, locked or dropped."""
    edge = Edge()
    verdicts: list[Verdict | None] = []
    for n in range(3000):
        now = T0 + n / 1000.0
        verdicts.append(edge(RequestReceived(source_ip=PBX, method="INVITE", interface="internal",
                                             user_agent="friendly-scanner", from_domain="1.1.1.1",
                                             registered=False), now))
        if n % 10 == 0:
            verdicts.append(edge(AuthFailed(source_ip=PBX, method="REGISTER", username="2001",
                                            account="2001"), now))
            verdicts.append(edge(ResponseSent(source_ip=PBX, method="INVITE", status=404), now))
            verdicts.append(edge(MessageMalformed(source_ip=PBX, interface="internal"), now))
            verdicts.append(edge(ConnectionOpened(source_ip=PBX, transport="tcp"), now))
        if n % 100 == 0:
            verdicts.append(edge(call(f"p{n}", "2001", "+88216000", source=PBX,
                                      registered=False, interface="internal"), now))
    assert all(v is not None for v in verdicts)
    assert all(v.bans == () and v.locks == () for v in verdicts if v is not None)
    assert {v.rule_id for v in verdicts if v is not None and not v.allowed} == {
        "toll-premium-blocked"}
    assert not edge.banned(PBX, T0 + 5) and len(edge.cache) == 0


def test_exempt_sources_are_not_banned_by_volume_but_still_by_signature(tmp_path: Path) -> None:
    """An exempt office is never banned for volume, but still for a scanner User-Agent."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    (rules / "lists" / "exempt-sources.txt").write_text(f"{OFFICE}  # head office\n")
    edge = Edge(sorted(rules.glob("*.yaml")))
    for n in range(2000):
        now = T0 + n / 500.0
        assert edge(register(OFFICE, username="2001"), now) is ALLOW
        failed = AuthFailed(source_ip=OFFICE, method="REGISTER", username="2001", account="2001")
        assert edge(failed, now) is ALLOW
        assert edge(ResponseSent(source_ip=OFFICE, method="INVITE", status=404), now) is ALLOW
    verdict = edge(register(OFFICE, user_agent="friendly-scanner"), T0 + 10)
    assert verdict is not None and verdict.rule_id == "scanner-user-agent" and verdict.bans


def test_the_shipped_rules_cover_every_event_kind_but_call_end() -> None:
    """The shipped rules act on every event kind except call_end."""
    ruleset: RuleSet = load_rules(SHIPPED)
    assert set(ruleset.by_kind) == {"request", "malformed", "connection", "response",
                                    "auth_failure", "call_start", "call_tick", "srtp_failure"}


# -- media ---------------------------------------------------------------------------------------


def test_srtp_forgery_in_a_second_call_bans_the_source() -> None:
    """One storm of unauthenticated SRTP from a source alerts nothing yet; a storm in a second
    call within the hour bans it and raises a critical alert."""
    edge = Edge()
    first = edge(SrtpFailed(source_ip=ATTACKER, call_id="c1", count=25), T0)
    assert first is not None and not first.bans and not first.alerts
    second = edge(SrtpFailed(source_ip=ATTACKER, call_id="c2", count=40), T0 + 600)
    assert second is not None and [b.key for b in second.bans] == [f"ip:{ATTACKER}"]
    assert [a.level for a in second.alerts] == ["critical"]
    assert edge.banned(ATTACKER, T0 + 601)
