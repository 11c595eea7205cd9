"""End to end: the rule engine inside a real ``sbc run`` (memory store), driven over UDP.

A scanner's User-Agent is dropped and its address banned before parsing, while another address
is still answered; a per-source REGISTER limit answers 429 with Retry-After past the limit.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, launched_sbc, wait_until

pytestmark = pytest.mark.e2e

RULES = """\
rules:
  - id: scanner
    on: request
    match:
      user_agent: [friendly-scanner]
    actions: [drop, {ban: {duration: 1h}}]
  - id: register-rate
    on: request
    match: {method: REGISTER}
    count: {key: source_ip, algorithm: fixed_window, window: 1m, limit: 3}
    actions:
      - reject: {code: 429, reason: Too Many Requests, retry_after: 30}
"""

CONFIG = """\
node: {{id: e2e-policy}}
logging: {{format: json, level: info}}
interfaces:
  external:
    address: 127.0.0.1
    udp: {{enabled: true, port: {sip}}}
    tcp: {{enabled: false}}
    tls: {{enabled: false}}
  internal:
    address: 127.0.0.1
    udp: {{enabled: true, port: {internal}}}
pbx: {{address: 127.0.0.1, port: {pbx}, transport: udp}}
rules:
  files: [{rules}]
"""


def _request(method: str, source: socket.socket, sbc_port: int, n: int,
             user_agent: str = "Phone/1.0") -> bytes:
    host, port = source.getsockname()
    return (
        f"{method} sip:127.0.0.1:{sbc_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKpol{method}{n};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:100@127.0.0.1>;tag=p{n}\r\n"
        f"To: <sip:100@127.0.0.1>\r\nCall-ID: pol-{method}-{n}@{host}\r\n"
        f"CSeq: {n} {method}\r\nContact: <sip:100@{host}:{port}>\r\n"
        f"User-Agent: {user_agent}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _ask(sock: socket.socket, data: bytes, port: int, timeout: float = 0.5) -> bytes | None:
    sock.sendto(data, ("127.0.0.1", port))
    sock.settimeout(timeout)
    try:
        return sock.recv(65535)
    except TimeoutError:
        return None


@pytest.fixture()
def policy_sbc(tmp_path: Path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pbx.bind(("127.0.0.1", 0))
    ports = dict(sip=free_port(socket.SOCK_DGRAM), tls=0, internal=free_port(socket.SOCK_DGRAM),
                 pbx=pbx.getsockname()[1])
    text = CONFIG.format(rules=rules, **ports)
    with launched_sbc(tmp_path, text, tmp_path, ports) as sbc:
        yield sbc, pbx
    pbx.close()


def _events(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"sbc.security"' in line:
            out.append(json.loads(line))
    return out


def test_a_scanner_is_dropped_and_banned_before_parsing(policy_sbc) -> None:
    """A friendly-scanner OPTIONS gets no answer and bans its address: its next, well-behaved
    request is dropped too, while another address is answered; the ban is a security event."""
    sbc, _pbx = policy_sbc
    scanner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    scanner.bind(("127.0.0.3", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.4", 0))
    assert _ask(scanner, _request("OPTIONS", scanner, sbc.sip_port, 1, "friendly-scanner"),
                sbc.sip_port) is None
    assert _ask(scanner, _request("OPTIONS", scanner, sbc.sip_port, 2), sbc.sip_port) is None
    answer = _ask(other, _request("OPTIONS", other, sbc.sip_port, 3), sbc.sip_port, 2.0)
    assert answer is not None and answer.startswith(b"SIP/2.0 200 ")
    assert wait_until(lambda: any(e.get("type") == "policy.ban" for e in _events(sbc.log)))
    bans = [e for e in _events(sbc.log) if e.get("type") == "policy.ban"]
    assert bans[0]["subject"] == "ip:127.0.0.3" and bans[0]["source"] == "127.0.0.3"
    fired = [e for e in _events(sbc.log) if e.get("type") == "policy.fired"]
    assert fired[0]["rule"] == "scanner" and fired[0]["disposition"] == "drop"


def test_register_rate_limit_answers_429_with_retry_after(policy_sbc) -> None:
    """Past three REGISTERs a minute from one address, the next gets 429 and Retry-After: 30
    from the SBC itself; the first three reach the PBX."""
    sbc, pbx = policy_sbc
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.5", 0))
    for n in range(1, 4):
        phone.sendto(_request("REGISTER", phone, sbc.sip_port, n), ("127.0.0.1", sbc.sip_port))
    pbx.settimeout(2.0)
    seen = 0
    deadline = time.monotonic() + 3
    while seen < 3 and time.monotonic() < deadline:
        try:
            data = pbx.recv(65535)
        except TimeoutError:
            break
        seen += data.startswith(b"REGISTER ")
    assert seen == 3
    answer = _ask(phone, _request("REGISTER", phone, sbc.sip_port, 4), sbc.sip_port, 2.0)
    assert answer is not None and answer.startswith(b"SIP/2.0 429 Too Many Requests\r\n")
    assert b"\r\nRetry-After: 30\r\n" in answer


FEED_RULES = """\
feeds:
  blocklist:
    file: blocklist.txt
    refresh: 1m
rules:
  - id: blocklisted
    on: request
    match:
      source: {list: blocklist}
    actions: [drop]
"""


def test_rules_follow_their_files_and_feeds(tmp_path: Path) -> None:
    """A threat feed read from a file drops its addresses; editing the rule file reloads the
    rules within seconds, and a broken edit keeps the running rules and logs the error."""
    (tmp_path / "blocklist.txt").write_text("# test feed\n127.0.0.9\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(FEED_RULES)
    pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pbx.bind(("127.0.0.1", 0))
    ports = dict(sip=free_port(socket.SOCK_DGRAM), tls=0, internal=free_port(socket.SOCK_DGRAM),
                 pbx=pbx.getsockname()[1])
    listed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listed.bind(("127.0.0.9", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.10", 0))
    try:
        with launched_sbc(tmp_path, CONFIG.format(rules=rules, **ports), tmp_path, ports) as sbc:
            port = sbc.sip_port
            assert _ask(listed, _request("OPTIONS", listed, port, 1), port) is None
            answer = _ask(other, _request("OPTIONS", other, port, 2), port, 2.0)
            assert answer is not None and answer.startswith(b"SIP/2.0 200 ")

            # An edit that does not load: the running rules stay (the feed still drops).
            rules.write_text(FEED_RULES + "  - id: broken\n    on: nowhere\n")
            assert wait_until(lambda: "rules not reloaded" in sbc.log.read_text(), attempts=60)
            assert _ask(listed, _request("OPTIONS", listed, port, 3), port) is None

            # A good edit: every OPTIONS is now refused with 403, from anyone.
            rules.write_text(FEED_RULES + "  - id: no-options\n    on: request\n"
                             "    match: {method: OPTIONS}\n    actions: [reject]\n")
            assert wait_until(lambda: "rules reloaded" in sbc.log.read_text(), attempts=60)
            answer = _ask(other, _request("OPTIONS", other, port, 4), port, 2.0)
            assert answer is not None and answer.startswith(b"SIP/2.0 403 ")
    finally:
        for s in (pbx, listed, other):
            s.close()


def test_a_ban_cuts_a_connection_opened_before_it(tmp_path: Path) -> None:
    """A TCP connection opened before its source is banned (through UDP) is cut at its next
    request instead of being answered."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pbx.bind(("127.0.0.1", 0))
    sip = free_port()
    ports = dict(sip=sip, tls=0, internal=free_port(socket.SOCK_DGRAM), pbx=pbx.getsockname()[1])
    text = CONFIG.format(rules=rules, **ports).replace(
        "tcp: {enabled: false}", f"tcp: {{enabled: true, port: {sip}}}")
    stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stream.bind(("127.0.0.22", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.22", 0))
    try:
        with launched_sbc(tmp_path, text, tmp_path, ports):
            stream.settimeout(2.0)
            stream.connect(("127.0.0.1", sip))
            stream.sendall(_request("OPTIONS", stream, sip, 1).replace(b"/UDP", b"/TCP"))
            assert stream.recv(65535).startswith(b"SIP/2.0 200 ")  # answered before the ban
            assert _ask(udp, _request("OPTIONS", udp, sip, 2, "friendly-scanner"), sip) is None
            stream.sendall(_request("OPTIONS", stream, sip, 3).replace(b"/UDP", b"/TCP"))
            try:
                data = stream.recv(65535)
            except ConnectionResetError:
                data = b""
            assert data == b""  # closed (reset), nothing answered
    finally:
        for s in (pbx, stream, udp):
            s.close()
