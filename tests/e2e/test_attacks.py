"""End to end: real attack tools and floods against ``sbc run`` with the SHIPPED rules
(``rules/*.yaml``), while legitimate users keep working.

1. SIPVicious (svmap, svwar, svcrack; PyPI ``sipvicious``), each tool twice: as shipped
   (``User-Agent: friendly-scanner``) and with ``-c`` (compact headers: no User-Agent at all,
   so only behaviour gives it away).  Each runs from an address of its own and is banned
   within the bound its rule sets; the bound is read from the shipped rules themselves.
   Meanwhile a sipp phone on 127.0.0.2 registers with digest through the SBC and places a call.
2. A sipp INVITE flood from 127.0.0.77 is banned after the per-source INVITE burst; the PBX
   sees a bounded number of its calls while another address's calls go through.
3. Toll fraud: a registered phone with live calls dials a premium-rate destination again and
   again; the calls are refused, its live calls are ended (BYE to the PBX), the account is
   locked (even a national number gets 403) and 112 still goes through.

The PBX is :class:`~tests.e2e.policy_peers.FakePbx` (digest registrar, answers calls).
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sbc.policy.loader import load_rules
from sbc.policy.model import Rule
from tests.conftest import require_tool
from tests.e2e.conftest import free_port, last_counters, launched_sbc, stop_process, wait_until
from tests.e2e.policy_peers import FakePbx, Phone, sbc_config, security_events

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(str(p) for p in (REPO / "rules").glob("*.yaml"))
SCENARIOS = Path(__file__).parent / "scenarios"
PASSWORD = "s3cret-pass"  # user 1001's, as in scenarios/phone_register.xml's test

# sipvicious 0.3.8's svwar and svcrack parse -b/--bindingip but never hand it to the scanner
# (their main() omits it), so they bind 0.0.0.0 and send from 127.0.0.1 -- the PBX's address,
# which is trusted.  This runs the installed console script unchanged, with -b applied at bind().
BIND_SHIM = """\
import runpy, socket, sys
script, ip = sys.argv[1], sys.argv[2]
_bind = socket.socket.bind
def bind(self, address):
    if isinstance(address, tuple) and address[0] in ("", "0.0.0.0"):
        address = (ip, *address[1:])
    return _bind(self, address)
socket.socket.bind = bind
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def shipped_rule(rule_id: str) -> Rule:
    rules = load_rules(SHIPPED).rules
    return next(rule for rule in rules if rule.id == rule_id)


def tool(name: str) -> str:
    """A console script of this virtualenv (sipvicious), else one on PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else require_tool(name)


@pytest.fixture()
def shipped() -> list[str]:
    if not SHIPPED or not any(p.endswith("20-scanners.yaml") for p in SHIPPED):
        pytest.fail("the shipped rules (rules/*.yaml) are missing")
    return SHIPPED


def _ports() -> dict[str, int]:
    return dict(sip=free_port(), tls=0, internal=free_port(socket.SOCK_DGRAM))


def _banned(log: Path, source: str) -> list[dict]:
    return [e for e in security_events(log, "policy.ban") if e.get("subject") == f"ip:{source}"]


# -- 1. SIPVicious ------------------------------------------------------------------------------


@dataclass
class Attack:
    """One sipvicious run from ``source``; ``rule`` is the shipped rule expected to ban it."""

    name: str
    script: str
    source: str
    args: list[str]
    rule: str
    proc: subprocess.Popen[bytes] | None = None
    out: Path | None = None

    def start(self, directory: Path) -> None:
        self.out = directory / f"{self.name}.out"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BIND_SHIM, tool(self.script), self.source, *self.args],
                cwd=directory, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env)

    def output(self) -> str:
        assert self.out is not None
        return self.out.read_text(errors="replace")

    def answers(self, sbc_port: int) -> int:
        """SIP messages the tool received (its --debug / -vvv output)."""
        text = self.output()
        if self.script.endswith("svcrack"):
            return len(re.findall(r"Received response: SIP/2\.0", text))
        return len(re.findall(rf"^\('127\.0\.0\.1', {sbc_port}\)$", text, flags=re.M))


def _attacks(port: int) -> list[Attack]:
    p = str(port)
    svmap, svwar, svcrack = "sipvicious_svmap", "sipvicious_svwar", "sipvicious_svcrack"
    war = ["-p", p, "--maximumtime", "1", "--debug", "127.0.0.1"]
    crack = ["-p", p, "-u", "1003", "-r", "1-9999", "--maximumtime", "1", "-vvv", "127.0.0.1"]
    return [
        Attack("svmap", svmap, "127.0.0.66", ["-b", "127.0.0.66", "-p", p, "-d", "127.0.0.1"],
               "scanner-user-agent"),
        Attack("svmap-compact", svmap, "127.0.0.67",
               ["-c", "-b", "127.0.0.67", "-p", p, "-d", "127.0.0.1"], "scanner-svmap-from"),
        Attack("svwar", svwar, "127.0.0.68", ["-b", "127.0.0.68", "-e", "3000-3299", *war],
               "scanner-user-agent"),
        Attack("svwar-compact", svwar, "127.0.0.69",
               ["-c", "-b", "127.0.0.69", "-e", "2000-2299", *war],
               "scanner-extension-enumeration"),
        Attack("svcrack", svcrack, "127.0.0.70", ["-b", "127.0.0.70", *crack],
               "scanner-user-agent"),
        Attack("svcrack-compact", svcrack, "127.0.0.71", ["-c", "-b", "127.0.0.71", *crack],
               "brute-force-source-user"),
    ]


def _wait_for_silence(attacks: list[Attack], sbc_port: int) -> None:
    last, quiet = None, 0
    for _ in range(50):  # bounded: 5 s
        now = [a.answers(sbc_port) for a in attacks]
        quiet = quiet + 1 if now == last else 0
        if quiet >= 5 or all(a.proc is not None and a.proc.poll() is not None
                             for a in attacks):
            return
        last = now
        time.sleep(0.1)


def _run(args: list[str], cwd: Path, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_sipvicious_is_banned_within_the_rule_bounds_while_a_phone_works(
        tmp_path: Path, shipped: list[str]) -> None:
    sipp = require_tool("sipp")
    # The bounds, from the shipped rules: signature rules (no count) ban at the first request;
    # a token bucket bans at the answer or failure past its burst.
    enumeration = shipped_rule("scanner-extension-enumeration").count
    brute = shipped_rule("brute-force-source-user").count
    assert enumeration is not None and brute is not None
    in_flight = 3  # requests already relayed when the ban lands (the tools do not wait)
    war_bound = int(enumeration.limit) + 1 + in_flight
    crack_bound = int(brute.limit) + 1 + in_flight  # failed logins (each one a guess)

    users = {"1001": PASSWORD, "1003": "never-guessed-4f9a"}
    phone_port = free_port()
    phone_dir = tmp_path / "phone"
    phone_dir.mkdir()
    with FakePbx(users=users) as pbx:
        ports = _ports()
        config = sbc_config(ports["sip"], ports["internal"], pbx.port, shipped)
        with launched_sbc(tmp_path, config, tmp_path, ports) as sbc:
            attacks = _attacks(sbc.sip_port)
            try:
                for attack in attacks:
                    attack.start(tmp_path)
                # The phone, during the attack: digest registration, then a call.
                common = ["-i", "127.0.0.2", "-p", str(phone_port), "-nostdin", "-m", "1",
                          "-timeout", "10", "-timeout_error", "-trace_msg"]
                target = f"127.0.0.1:{sbc.sip_port}"
                reg = _run([sipp, target, "-sf", str(SCENARIOS / "phone_register.xml"),
                            "-au", "1001", "-ap", PASSWORD, *common], phone_dir)
                assert reg.returncode == 0, reg.stdout[-2000:] + sbc.log.read_text()[-3000:]
                call = _run([sipp, target, "-sf", str(SCENARIOS / "uac_call.xml"),
                             "-s", "2001", "-d", "200", *common], phone_dir)
                assert call.returncode == 0, call.stdout[-2000:] + sbc.log.read_text()[-3000:]

                # Every tool is banned by the rule meant for it.
                for attack in attacks:
                    assert wait_until(lambda a=attack: _banned(sbc.log, a.source)), (
                        attack.name, attack.output()[-2000:])
                # The bans hold: once no tool has received anything for half a second (the
                # answers in flight are in), stop what still runs (svcrack waits 10 s).
                _wait_for_silence(attacks, sbc.sip_port)
            finally:
                for attack in attacks:
                    if attack.proc is not None:
                        stop_process(attack.proc)
            assert sbc.alive()
            counts = {}
            for attack in attacks:
                bans = _banned(sbc.log, attack.source)
                assert bans[0]["reason"] == attack.rule, (attack.name, bans)
                counts[attack.name] = attack.answers(sbc.sip_port)
            print("sipvicious answers received:", counts)
        # What crossed to the PBX for each tool.
        war_seen = [s.to_user or "" for s in pbx.requests("REGISTER") if s.to_user not in users]
        cracked = [s for s in pbx.requests("REGISTER") if s.to_user == "1003"]
        guesses = [s for s in cracked if s.request.headers.get("authorization")]
        default_war = [u for u in war_seen if len(u) == 4 and u.startswith("3")]
        print(f"PBX saw: svwar -c {len(war_seen)} REGISTERs, svcrack -c {len(cracked)} "
              f"REGISTERs ({len(guesses)} guesses), svwar {len(default_war)}; bounds "
              f"{war_bound}, {crack_bound}")

    # Signature rules: the first request is dropped, nothing is answered or relayed.
    for attack in attacks:
        if attack.rule in ("scanner-user-agent", "scanner-svmap-from"):
            assert counts[attack.name] == 0, (attack.name, attack.output()[-2000:])
    assert default_war == []
    # Behaviour rules: banned past the bucket's burst.
    assert int(enumeration.limit) < counts["svwar-compact"] <= war_bound, counts
    assert len(war_seen) <= war_bound
    assert int(brute.limit) < len(guesses) <= crack_bound, len(guesses)
    assert counts["svcrack-compact"] <= 2 * crack_bound  # a challenge and a failure per guess
    # The phone: registered and called through the SBC (the PBX saw its call and BYE).
    assert any(s.user == "2001" for s in pbx.requests("INVITE")) and pbx.calls("BYE")
    assert len([s for s in pbx.requests("REGISTER") if s.to_user == "1001"]) >= 2


# -- 2. INVITE flood ----------------------------------------------------------------------------


def _flood(sipp: str, sbc_port: int, source: str, port: int, number: str, rate: int, calls: int,
           directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sipp, f"127.0.0.1:{sbc_port}", "-sf", str(SCENARIOS / "invite_flood.xml"),
         "-s", number, "-i", source, "-p", str(port), "-r", str(rate), "-m", str(calls),
         "-nostdin", "-timeout", "10"],
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL)


def test_invite_flood_is_cut_off_while_another_source_calls(tmp_path: Path,
                                                             shipped: list[str]) -> None:
    """Two floods at once: from a registered phone (127.0.0.77: its calls are admitted until
    the per-source INVITE burst is spent, then 503 past the calls-per-second budget, then the
    ban) and from an address that never registered (127.0.0.78: refused uncounted, banned the
    same).  A third phone's calls go through while both floods go on."""
    sipp = require_tool("sipp")
    flood_rule = shipped_rule("dos-invite-flood").count
    assert flood_rule is not None
    calls, rate = 3000, 300  # at most 10 s at 300 calls/s each; stopped once the test is done
    # docs/rules.md: a token bucket (burst B, rate r) refuses event floor(B*R/(R-r)) + 1 of a
    # flood at R/s.  sipp aims at 300/s; at 100/s or faster, at most this many INVITEs pass:
    bound = math.floor(flood_rule.limit * 100 / (100 - flood_rule.rate))
    assert bound < calls / 2
    flooder_port = free_port()
    with FakePbx(users={"1001": PASSWORD, "1002": "pass-1002"}, busy_prefixes=("7",)) as pbx:
        ports = _ports()
        config = sbc_config(ports["sip"], ports["internal"], pbx.port, shipped)
        with launched_sbc(tmp_path, config, tmp_path, ports) as sbc:
            target = f"127.0.0.1:{sbc.sip_port}"
            reg = _run([sipp, target, "-sf", str(SCENARIOS / "phone_register.xml"),
                        "-au", "1001", "-ap", PASSWORD, "-i", "127.0.0.77", "-p",
                        str(flooder_port), "-nostdin", "-m", "1", "-timeout", "10",
                        "-timeout_error"], tmp_path)
            assert reg.returncode == 0, reg.stdout[-2000:]
            phone = Phone("127.0.0.2", sbc.sip_port, user="1002", password="pass-1002")
            registered = phone.register()
            assert registered is not None and registered.status == 200, registered
            floods = [_flood(sipp, sbc.sip_port, "127.0.0.77", flooder_port, "7000", rate,
                             calls, tmp_path),
                      _flood(sipp, sbc.sip_port, "127.0.0.78", free_port(), "7800", rate,
                             calls, tmp_path)]
            try:
                for source in ("127.0.0.77", "127.0.0.78"):
                    assert wait_until(lambda s=source: _banned(sbc.log, s), attempts=100), \
                        sbc.log.read_text()[-3000:]
                assert all(f.poll() is None for f in floods)  # still flooding
                for _ in range(3):
                    ok = phone.call("2001")
                    if ok is not None and ok.status == 503:
                        # The registered flooder's first INVITEs drained the SBC-wide
                        # calls-per-second budget before its ban (admission-cps-external,
                        # 30/s); the phone honours Retry-After (RFC 3261 21.4.18) as phones
                        # do, and by then the budget has refilled.
                        retry = int(ok.headers.get("retry-after") or "0")
                        assert 1 <= retry <= 3, ok
                        time.sleep(retry)
                        ok = phone.call("2001")
                    assert ok is not None and ok.status == 200, ok
                    bye = phone.bye(ok)
                    assert bye is not None and bye.status == 200
                assert all(f.poll() is None for f in floods)  # the phone called during both
            finally:
                for flood in floods:
                    stop_process(flood)
                phone.close()
            assert sbc.alive()
            seen = len(pbx.calls("INVITE", user="7000"))
            assert pbx.calls("INVITE", user="7800") == set()
            assert len(pbx.calls("INVITE", user="2001")) == 3
        for source in ("127.0.0.77", "127.0.0.78"):
            assert _banned(sbc.log, source)[0]["reason"] == "dos-invite-flood"
        events = security_events(sbc.log, "policy.fired")
        # Past the flood rule, a registered flooder's INVITE reaches the PBX or is refused by a
        # call_start rule (503: the calls-per-second budget); an unregistered one's is refused
        # (403) by admission-unknown-caller.
        refused = [e["rule"] for e in events if e["source"] == "127.0.0.77"
                   and e["event"] == "call_start" and e["disposition"] == "reject"]
        unknown = [e["rule"] for e in events if e["source"] == "127.0.0.78"]
    counters = last_counters(sbc.log)
    passed = seen + len(refused)
    print(f"flood: INVITEs at {rate}/s from a registered phone: {passed} passed the "
          f"flood rule (bound {bound}), {seen} reached the PBX, {len(refused)} got 503; from an "
          f"unregistered address: {unknown.count('admission-unknown-caller')} passed, 0 reached "
          f"the PBX; counters "
          f"{({k: v for k, v in counters.items() if k.startswith('policy')})}")
    assert seen > 0 and passed <= bound
    assert set(refused) == {"admission-cps-external"}  # 503 before the ban
    assert unknown.count("admission-unknown-caller") <= bound
    assert set(unknown) == {"admission-unknown-caller", "dos-invite-flood"}
    assert counters.get("policy.banned", 0) >= 10  # the floods went on, dropped unparsed


# -- 3. Toll fraud ------------------------------------------------------------------------------


def test_toll_fraud_ends_calls_and_locks_the_account_but_not_112(
        tmp_path: Path, shipped: list[str]) -> None:
    repeat = shipped_rule("toll-premium-repeat").count
    assert repeat is not None
    premium = "+881234567"  # Global Mobile Satellite System: on the shipped premium list
    with FakePbx(users={"1001": PASSWORD}) as pbx:
        ports = _ports()
        config = sbc_config(ports["sip"], ports["internal"], pbx.port, shipped)
        with launched_sbc(tmp_path, config, tmp_path, ports) as sbc:
            phone = Phone("127.0.0.3", sbc.sip_port, user="1001", password=PASSWORD)
            try:
                registered = phone.register()
                assert registered is not None and registered.status == 200, registered
                # Two live calls: a national number and a high-risk country (allowed).
                live = [phone.call("0142000001"), phone.call("+5355512345")]
                assert all(ok is not None and ok.status == 200 for ok in live), live
                # Premium: refused each time; past the repeat limit, the account is stopped.
                refused = []
                for _ in range(int(repeat.limit) + 1):
                    answer = phone.call(premium)
                    refused.append(answer.status if answer else None)
                stopped_at = time.monotonic()
                assert refused == [403] * (int(repeat.limit) + 1), refused
                # The live calls are ended at once: the PBX gets a BYE for each.
                assert wait_until(lambda: len(pbx.calls("BYE")) >= 2), pbx.requests()
                assert pbx.calls("BYE") == pbx.calls("INVITE")
                delay = max(s.at for s in pbx.requests("BYE")) - stopped_at
                assert delay < 0.5, f"the BYEs reached the PBX {delay:.2f} s after the lock"
                # Locked: a national number is refused too; 112 still goes through.
                locked = phone.call("0142000002")
                assert locked is not None and locked.status == 403, locked
                emergency = phone.call("112")
                assert emergency is not None and emergency.status == 200, emergency
                assert phone.bye(emergency) is not None
                # The phone's side of the ended calls got its BYE too.
                byes = {m.call_id for m in phone.inbox
                        if getattr(m, "method", None) == "BYE"}
                assert byes == {ok.call_id for ok in live if ok is not None}, phone.inbox
            finally:
                phone.close()
            invited = [s.user for s in pbx.requests("INVITE")]
            assert invited == ["0142000001", "+5355512345", "112"], invited
            assert sbc.alive()
        locks = security_events(sbc.log, "policy.lock")
        assert [e["subject"] for e in locks] == ["account:1001"]
        assert locks[0]["reason"] == "toll-premium-repeat"
        ended = security_events(sbc.log, "policy.end_calls")
        assert ended and ended[0]["value"] == "1001" and ended[0]["count"] == 2
        alerts = [e for e in security_events(sbc.log, "policy.alert")
                  if e.get("rule") == "toll-premium-repeat"]
        assert alerts and alerts[0]["severity"] == "critical"
