"""End to end: calls over TLS, a certificate reload under a live call, and connection limits
that cut abusers off while a call is being served.

The caller is sipp, which has no TLS here: it speaks plain TCP to a socat on 127.0.0.1 that
opens a verified TLS connection (development CA, name 127.0.0.1) to the SBC's external TLS
listener for each of its connections (``conftest.tls_bridge``).  What sipp receives is therefore
exactly what the SBC sent over TLS, decrypted; socat also dumps those bytes raw (``-R``), which
is what the topology-hiding assertions read besides sipp's own trace.  The PBX is a sipp UAS over
UDP (``scenarios/uas_pbx.xml``) whose messages are full of markers that name the inside.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
from pathlib import Path

from sbc.app import certs as devcerts
from tests.conftest import require_tool
from tests.e2e.conftest import (
    ask_options,
    closed_within,
    free_port,
    last_counters,
    launched_sbc,
    peer_serial,
    sipp_trace,
    sipp_uas,
    stop_process,
    tcp_from,
    tls_bridge,
    trace_blocks,
    trace_branches,
    trace_markers,
    trace_tags,
    wait_until,
)

SCENARIOS = Path(__file__).parent / "scenarios"

CONFIG = """\
node: {{id: e2e-tls-calls}}
logging: {{format: json, level: info}}
interfaces:
  external:
    address: 127.0.0.1
    udp: {{enabled: true, port: {sip}}}
    tcp: {{enabled: true, port: {sip}}}
    tls: {{enabled: true, port: {tls}}}
  internal:
    address: 127.0.0.1
    udp: {{enabled: true, port: {internal}}}
pbx: {{address: 127.0.0.1, port: {pbx}, transport: udp}}
media: {{srtp: none}}  # sipp offers plain RTP/AVP; media is still anchored
trusted_peers:  # the sipp caller plays a trunk: calls from unknown sources may be refused
  - {{name: e2e-caller, cidrs: [127.0.0.1/32]}}
tls:
  certificate: {certs}/server.crt
  private_key: {certs}/server.key
{limits}"""

# What the PBX scenario writes that names the inside (reason phrases, Server, X-Pbx-Marker,
# Contact and Record-Route hosts, To tag prefix, SDP o=/s=/i=); none may reach the caller.
PBX_MARKERS = ("pbx-secret", "AcmePBX", "pbx-leak-marker", "PbxTag", "pbxadmin", "8675309",
               "X-Pbx-Marker", "rr.pbx-secret")
# What the caller scenario writes that names it (User-Agent, X-Caller-Marker, SDP o=/s=).
CALLER_MARKERS = ("extphone", "ext-leak-marker", "X-Caller-Marker", "extuser")


def _ports() -> dict[str, int]:
    return dict(sip=free_port(), tls=free_port(), internal=free_port(socket.SOCK_DGRAM),
                pbx=free_port(socket.SOCK_DGRAM))


def _start(base: Path, ports: dict[str, int], limits: str = ""):
    """A fresh sbc with its own development certificates in ``base/certs``."""
    certs = base / "certs"
    devcerts.init_dev_certs(certs)
    return launched_sbc(base, CONFIG.format(certs=certs, limits=limits, **ports), certs, ports)


def _uac(sipp: str, scenario: str, target: int, transport: str, calls: int, pause_ms: int,
         directory: Path) -> list[str]:
    """The sipp UAC command line: ``calls`` calls to 127.0.0.1:``target``, one at a time."""
    directory.mkdir(exist_ok=True)
    return [sipp, f"127.0.0.1:{target}", "-sf", str(SCENARIOS / scenario), "-t", transport,
            "-i", "127.0.0.1", "-p", str(free_port()), "-m", str(calls), "-l", "1",
            "-r", "10", "-d", str(pause_ms), "-nostdin", "-timeout", "30", "-timeout_error",
            "-trace_msg", "-trace_err"]


def _background(cmd: list[str], directory: Path) -> subprocess.Popen:
    """Start sipp ``cmd`` in ``directory``, its screen output going to ``sipp.out`` there."""
    with (directory / "sipp.out").open("wb") as out:
        return subprocess.Popen(cmd, cwd=directory, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _finished(proc: subprocess.Popen, directory: Path) -> str:
    """Wait (bounded) for sipp ``proc`` to exit; its screen output."""
    proc.wait(timeout=30)
    return (directory / "sipp.out").read_text(errors="replace")


def _sent(directory: Path, scenario: str, method: str) -> bool:
    """Whether sipp has traced sending a ``method`` request yet (sipp flushes each trace)."""
    logs = list(directory.glob(f"{scenario}_*_messages.log"))
    return bool(logs) and any(m.startswith(f"{method} ")
                              for m in trace_blocks(logs[0], "sent"))


def _leaks(texts: list[str], markers: set[str], ports: set[int]) -> list[tuple[str, str]]:
    """(marker, its surroundings) for every marker, or ``:port`` of ``ports``, in ``texts``."""
    patterns = [re.escape(m) for m in markers] + [rf":{p}(?!\d)" for p in ports]
    found = []
    for text in texts:
        for pattern in patterns:
            for m in re.finditer(pattern, text):
                found.append((m.group(0), text[max(0, m.start() - 120):m.end() + 40]))
    return found


def _socat_upstream_ports(notices: str) -> set[int]:
    """The local ports of socat's TLS connections to the SBC: the caller's address as the SBC
    sees it."""
    return {int(p) for p in re.findall(r"successfully connected from local address "
                                       r"AF=2 127\.0\.0\.1:(\d+)", notices)}


# -- 1. calls over TLS, topology hidden ----------------------------------------------------------


CALLS = 3


def test_calls_over_tls_with_topology_hidden(tmp_path: Path) -> None:
    """Three calls from sipp through socat (TLS to the SBC) to the sipp PBX over UDP all
    succeed over one TLS connection, and not one byte the SBC sent to the caller names the
    inside: no internal listener or PBX port, no PBX host name, banner or custom header, no
    B-leg Call-ID, tag or branch; nor does the PBX see the caller's."""
    sipp, socat = require_tool("sipp"), require_tool("socat")
    ports = _ports()
    uas_dir, uac_dir = tmp_path / "uas", tmp_path / "uac"
    uas = sipp_uas(sipp, SCENARIOS / "uas_pbx.xml", ports["pbx"], CALLS, uas_dir)
    try:
        with _start(tmp_path, ports) as sbc, tls_bridge(
                socat, sbc.tls_port, sbc.certs / "dev-ca.crt", tmp_path) as bridge:
            cmd = _uac(sipp, "uac_call.xml", bridge.port, "t1", CALLS, 200, uac_dir)
            result = subprocess.run(cmd, cwd=uac_dir, capture_output=True, text=True,
                                    timeout=45, stdin=subprocess.DEVNULL)
            assert result.returncode == 0, (result.stdout[-3000:] + result.stderr[-2000:]
                                            + bridge.notices() + sbc.log.read_text()[-3000:])
            uas.wait(timeout=10)  # it exits by itself after its CALLS calls
            assert uas.returncode == 0
            assert sbc.alive()
            notices = bridge.notices()
    finally:
        stop_process(uas)

    # The calls really went over TLS, all on one connection, verified against the dev CA.
    assert bridge.connections() == 1, notices
    assert "SSL connection using" in notices and "trusting certificate" in notices, notices
    caller_as_seen = _socat_upstream_ports(notices)
    assert len(caller_as_seen) == 1, notices

    uac_log, uas_log = sipp_trace(uac_dir, "uac_call"), sipp_trace(uas_dir, "uas_pbx")
    uac_sent, uac_received = trace_blocks(uac_log, "sent"), trace_blocks(uac_log, "received")
    uas_sent, uas_received = trace_blocks(uas_log, "sent"), trace_blocks(uas_log, "received")
    from_sbc = bridge.dump.read_bytes().decode("utf-8", "surrogateescape")
    # Not vacuous: every call's 180, 200 (INVITE) and 200 (BYE) came back over TLS, with the
    # SBC's own reason phrases, and the PBX saw INVITE, ACK and BYE of each call.
    assert len(re.findall(r"^SIP/2\.0 180 Ringing\r$", from_sbc, re.M)) == CALLS, from_sbc
    assert len(re.findall(r"^SIP/2\.0 200 OK\r$", from_sbc, re.M)) >= 2 * CALLS, from_sbc
    assert len([m for m in uac_received if m.startswith("SIP/2.0 ")]) >= 3 * CALLS
    for method in ("INVITE", "ACK", "BYE"):
        assert len([m for m in uas_received if m.startswith(f"{method} ")]) >= CALLS, method

    # The SBC's Contact for the caller is its TLS listener, so that a phone that follows it
    # (sipp does not) keeps its in-dialog requests on TLS (RFC 3261 8.1.1.8, 26.2).
    contacts = set(re.findall(r"^Contact:\s*(.*?)\r$", from_sbc, re.M))
    assert contacts, from_sbc
    for contact in contacts:
        assert re.search(rf"[:@]127\.0\.0\.1:{ports['tls']}(?!\d)", contact), contact
        assert contact.lower().startswith("<sips:") or ";transport=tls" in contact.lower(), \
            contact

    b_call_ids = trace_markers(uas_received, "Call-ID")
    internal = (set(PBX_MARKERS) | b_call_ids | trace_tags(uas_sent, "To")
                | trace_tags(uas_received, "From") | trace_branches(uas_received))
    external = (set(CALLER_MARKERS) | trace_markers(uac_sent, "Call-ID")
                | trace_tags(uac_sent, "From") | trace_branches(uac_sent))
    assert len(b_call_ids) == CALLS and len(trace_markers(uac_sent, "Call-ID")) == CALLS
    assert internal.isdisjoint(external)
    internal_ports = {ports["internal"], ports["pbx"]}
    external_ports = {bridge.port, *caller_as_seen}
    external_ports |= {int(p) for v in trace_markers(uac_sent, "Via")
                       for p in re.findall(r"127\.0\.0\.1:(\d+)", v)}
    assert internal_ports.isdisjoint(external_ports)

    assert _leaks([from_sbc], internal, internal_ports) == []
    assert _leaks(uac_received, internal, internal_ports) == []
    assert _leaks(uas_received, external, external_ports) == []


# -- 2. certificate reload under a live call ---------------------------------------------------


def test_certificate_reload_under_a_live_tls_call(tmp_path: Path) -> None:
    """With a TLS call up, the certificate files are replaced by a certificate from another CA
    and SIGHUP sent: a new TLS connection gets the new certificate, while the call, on its
    connection opened before the reload, ends normally: BYE and its 200 cross that connection
    (socat trusts only the old CA, and accepted one connection only), and sipp counts one
    successful call."""
    sipp, socat = require_tool("sipp"), require_tool("socat")
    ports = _ports()
    uas_dir, uac_dir = tmp_path / "uas", tmp_path / "uac"
    uas = sipp_uas(sipp, SCENARIOS / "uas_pbx.xml", ports["pbx"], 1, uas_dir)
    uac = None
    try:
        with _start(tmp_path, ports) as sbc, tls_bridge(
                socat, sbc.tls_port, sbc.certs / "dev-ca.crt", tmp_path) as bridge:
            with socket.create_connection(("127.0.0.1", sbc.tls_port), timeout=5) as raw, \
                    ssl.create_default_context(cafile=str(sbc.certs / "dev-ca.crt")).wrap_socket(
                        raw, server_hostname="localhost") as before:
                old_serial = peer_serial(before)
            uac = _background(_uac(sipp, "uac_call.xml", bridge.port, "t1", 1, 4000, uac_dir),
                              uac_dir)
            assert wait_until(lambda: _sent(uac_dir, "uac_call", "ACK") or uac.poll() is not None,
                              attempts=100), "the call was never answered"
            assert uac.poll() is None, _finished(uac, uac_dir)[-3000:]

            new_ca = devcerts.create_ca("sbc reload test CA")
            new = devcerts.issue_server_cert(new_ca, ["localhost", "127.0.0.1"])
            assert new.certificate.serial_number != old_serial
            devcerts.write_key_pair(new, sbc.certs / "server.crt", sbc.certs / "server.key",
                                    overwrite=True)
            sbc.proc.send_signal(signal.SIGHUP)
            trusts_new = ssl.create_default_context(cadata=new_ca.certificate_pem().decode())

            def sees_new() -> bool:
                try:
                    with socket.create_connection(("127.0.0.1", sbc.tls_port), timeout=5) as r, \
                            trusts_new.wrap_socket(r, server_hostname="localhost") as s:
                        return peer_serial(s) == new.certificate.serial_number
                except ssl.SSLCertVerificationError:
                    return False  # still the old certificate

            assert wait_until(sees_new, attempts=50)
            # The reload happened during the call: its BYE has not been sent yet.
            assert uac.poll() is None and not _sent(uac_dir, "uac_call", "BYE"), \
                "the call ended before the reload; lengthen its pause"

            out = _finished(uac, uac_dir)
            assert uac.returncode == 0, out[-3000:] + bridge.notices() + sbc.log.read_text()
            assert re.search(r"Successful call\s*\|\s*\d+\s*\|\s*1\b", out), out[-3000:]
            uas.wait(timeout=10)
            assert uas.returncode == 0
            assert sbc.alive()
            log = sbc.log.read_text()
        counters = last_counters(sbc.log)
    finally:
        if uac is not None:
            stop_process(uac)
        stop_process(uas)

    assert bridge.connections() == 1, bridge.notices()  # the BYE rode the pre-reload connection
    uac_log = sipp_trace(uac_dir, "uac_call")
    assert any(m.startswith("BYE ") for m in trace_blocks(uac_log, "sent"))
    assert any(re.search(r"^CSeq:\s*2 BYE", m, re.M) and m.startswith("SIP/2.0 200 ")
               for m in trace_blocks(uac_log, "received"))
    assert any(m.startswith("BYE ") for m in trace_blocks(sipp_trace(uas_dir, "uas_pbx"),
                                                          "received"))
    assert f"serial {new.certificate.serial_number:x}" in log
    assert counters.get("tls.reloaded") == 1 and not counters.get("tls.reload_failed"), counters


# -- 3. limits while serving -------------------------------------------------------------------


PER_IP = 3
RATE = 4  # new connections per second per address
IDLE = 1.0  # seconds
LIMITS = f"""\
limits:
  max_connections_per_ip: {PER_IP}
  new_connections_per_second_per_ip: {RATE}
  idle_timeout: {IDLE}
"""
FLOOD_EXTRA = 5  # connections past PER_IP in the flood
FLOOD_SOURCE, CHURN_SOURCE, SLOW_SOURCE = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def _refused(s: socket.socket) -> bool:
    """Whether the SBC closed ``s`` at once, without reading or answering anything."""
    return ask_options(s, "flood") is None and closed_within(s, 2.0) is not None


def test_flood_and_slowloris_are_cut_off_while_a_call_is_served(tmp_path: Path) -> None:
    """While a call from 127.0.0.1 over TCP is up: a flood of connections from 127.0.0.2 is
    refused past max_connections_per_ip, a churn of short connections from 127.0.0.3 past
    new_connections_per_second_per_ip, and a slowloris from 127.0.0.4 (one byte, then silence)
    is closed by the idle timeout; then the call ends normally and the SBC's counters show each
    refusal."""
    sipp = require_tool("sipp")
    ports = _ports()
    uas_dir, uac_dir = tmp_path / "uas", tmp_path / "uac"
    uas = sipp_uas(sipp, SCENARIOS / "uas_pbx.xml", ports["pbx"], 1, uas_dir)
    uac = None
    held: list[socket.socket] = []
    try:
        with _start(tmp_path, ports, LIMITS) as sbc:
            uac = _background(
                _uac(sipp, "uac_call_pinging.xml", sbc.sip_port, "t1", 1, 0, uac_dir), uac_dir)
            scenario = "uac_call_pinging"
            assert wait_until(lambda: _sent(uac_dir, scenario, "ACK") or uac.poll() is not None,
                              attempts=100), "the call was never answered"
            assert uac.poll() is None, _finished(uac, uac_dir)[-3000:]

            slow = tcp_from(SLOW_SOURCE, sbc.sip_port)
            held.append(slow)
            slow.sendall(b"I")  # the first byte of an INVITE that never comes

            # Flood: PER_IP connections are admitted and served, every one past them refused.
            admitted = [tcp_from(FLOOD_SOURCE, sbc.sip_port) for _ in range(PER_IP)]
            held += admitted
            for i, s in enumerate(admitted):
                resp = ask_options(s, f"flood-held-{i}")
                assert resp is not None and resp.status == 200
            extras = [tcp_from(FLOOD_SOURCE, sbc.sip_port) for _ in range(FLOOD_EXTRA)]
            held += extras
            assert [_refused(s) for s in extras] == [True] * FLOOD_EXTRA
            for s in admitted + extras:
                s.close()

            # Churn: one short connection at a time; past RATE per second they are refused.
            outcomes = []
            for i in range(RATE + 4):
                with tcp_from(CHURN_SOURCE, sbc.sip_port) as s:
                    resp = ask_options(s, f"churn-{i}")
                    outcomes.append(resp is not None and resp.status == 200)
                    if resp is not None:
                        s.shutdown(socket.SHUT_WR)
                        assert closed_within(s, 2.0) is not None  # released before the next
            assert outcomes.count(False) >= 1, outcomes
            assert outcomes.index(False) >= RATE, outcomes  # never before RATE admissions

            # Slowloris: closed after its only byte, with nothing sent back.
            assert closed_within(slow, IDLE + 3.0) is not None

            # All of it happened during the call, which then ends normally.
            assert uac.poll() is None and not _sent(uac_dir, scenario, "BYE"), \
                "the call ended before the abusers were cut off; lengthen its hold"
            out = _finished(uac, uac_dir)
            assert uac.returncode == 0, out[-3000:] + sbc.log.read_text()[-3000:]
            assert re.search(r"Successful call\s*\|\s*\d+\s*\|\s*1\b", out), out[-3000:]
            uas.wait(timeout=10)
            assert uas.returncode == 0
            assert sbc.alive()
        counters = last_counters(sbc.log)
    finally:
        for s in held:
            s.close()
        if uac is not None:
            stop_process(uac)
        stop_process(uas)

    assert counters.get("conn.refused.per_ip") == FLOOD_EXTRA, counters
    assert counters.get("conn.refused.rate") == outcomes.count(False), counters
    assert counters.get("conn.closed.idle", 0) >= 1, counters
    assert not counters.get("conn.refused.max_connections"), counters
