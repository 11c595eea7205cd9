"""End to end: calls from sipp (UAC) through a real ``sbc run`` to sipp (UAS) as the PBX.

Each call is sipp's built-in scenario (INVITE, 100, 180, 200, ACK, pause, BYE, 200).  The UAC
reaches the SBC over UDP or TCP on the external interface; the SBC reaches the UAS over UDP from
its internal interface.  Both sipps trace every message (``-trace_msg``), which is what the
topology-hiding assertions read: nothing that names one side reaches the other.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.e2e.conftest import free_port, launched_sbc

CONFIG = """\
node: {{id: e2e-b2bua}}
logging: {{format: json, level: info}}
interfaces:
  external:
    address: 127.0.0.1
    udp: {{enabled: true, port: {sip}}}
    tcp: {{enabled: true, port: {sip}}}
    tls: {{enabled: false, port: {tls}}}
  internal:
    address: 127.0.0.1
    udp: {{enabled: true, port: {internal}}}
pbx: {{address: 127.0.0.1, port: {pbx}, transport: udp}}
media: {{srtp: none}}  # sipp offers plain RTP/AVP; media is still anchored
trusted_peers:  # sipp plays a trunk: calls from elsewhere need a registration
  - {{name: sipp-trunk, cidrs: [127.0.0.1/32]}}
"""

CALLS = 5


def _blocks(log: Path, direction: str) -> list[str]:
    """The messages of a sipp ``-trace_msg`` log, ``received`` or ``sent``."""
    out = []
    for block in re.split(r"^-{10,}.*$", log.read_text(errors="replace"), flags=re.M):
        head, _, body = block.strip().partition("\n")
        if f"message {direction}" in head:
            out.append(body)
    return out


def _markers(messages: list[str], header: str) -> set[str]:
    found = set()
    for text in messages:
        for m in re.finditer(rf"^{header}:\s*(.+?)\s*$", text, flags=re.M | re.I):
            found.add(m.group(1))
    return found


def _tags(messages: list[str], header: str) -> set[str]:
    return {m.group(1) for value in _markers(messages, header)
            for m in [re.search(r";tag=([^;>\s]+)", value)] if m}


def _trace(directory: Path, scenario: str) -> Path:
    logs = list(directory.glob(f"{scenario}_*_messages.log"))
    assert len(logs) == 1, logs
    return logs[0]


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_calls_through_the_sbc_with_topology_hidden(tmp_path: Path, transport: str) -> None:
    """5 calls from the UAC through the SBC to the UAS all succeed, and neither side sees the
    other's address, Call-IDs or tags."""
    sipp = require_tool("sipp")
    ports = dict(sip=free_port(), tls=free_port(), internal=free_port(socket.SOCK_DGRAM),
                 pbx=free_port(socket.SOCK_DGRAM))
    uac_port = free_port()
    uas_dir, uac_dir = tmp_path / "uas", tmp_path / "uac"
    uas_dir.mkdir()
    uac_dir.mkdir()
    uas = subprocess.Popen(
        [sipp, "-sn", "uas", "-i", "127.0.0.1", "-p", str(ports["pbx"]), "-nostdin",
         "-m", str(CALLS), "-trace_msg"],
        cwd=uas_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL)
    try:
        with launched_sbc(tmp_path, CONFIG.format(**ports), tmp_path, ports) as sbc:
            result = subprocess.run(
                [sipp, "-sn", "uac", f"127.0.0.1:{ports['sip']}", "-t", transport,
                 "-i", "127.0.0.1", "-p", str(uac_port), "-m", str(CALLS), "-r", "10",
                 "-nostdin", "-timeout", "30", "-timeout_error", "-trace_msg"],
                cwd=uac_dir, capture_output=True, text=True, timeout=45,
                stdin=subprocess.DEVNULL)
            assert result.returncode == 0, (result.stdout[-3000:] + result.stderr[-2000:]
                                            + sbc.log.read_text()[-3000:])
            assert sbc.alive()
        uas.wait(timeout=10)  # it exits by itself after its CALLS calls
    finally:
        if uas.poll() is None:
            uas.send_signal(signal.SIGTERM)
            try:
                uas.wait(timeout=5)
            except subprocess.TimeoutExpired:
                uas.kill()
                uas.wait()

    uac_log, uas_log = _trace(uac_dir, "uac"), _trace(uas_dir, "uas")
    uac_sent, uac_received = _blocks(uac_log, "sent"), _blocks(uac_log, "received")
    uas_sent, uas_received = _blocks(uas_log, "sent"), _blocks(uas_log, "received")
    assert len(uac_received) >= 4 * CALLS and len(uas_received) >= 3 * CALLS

    # What the PBX side is called: its port, its Call-IDs (made by the SBC for the B-leg) and the
    # tags the UAS wrote; none of it reaches the caller, and the reverse.
    internal = ({f"127.0.0.1:{ports['pbx']}"} | _markers(uas_sent, "Call-ID")
                | _tags(uas_sent, "To"))
    external = ({f"127.0.0.1:{uac_port}"} | _markers(uac_sent, "Call-ID")
                | _tags(uac_sent, "From"))
    assert len(_markers(uas_sent, "Call-ID")) == CALLS
    assert len(_markers(uac_sent, "Call-ID")) == CALLS
    assert _tags(uas_sent, "To") and _tags(uac_sent, "From")
    assert internal.isdisjoint(external)
    for text in uac_received:
        for marker in internal:
            assert marker not in text, (marker, text)
    for text in uas_received:
        for marker in external:
            assert marker not in text, (marker, text)


SCENARIOS = Path(__file__).parent / "scenarios"


def test_an_update_while_the_call_rings_reaches_the_caller_hidden(tmp_path: Path) -> None:
    """A sipp PBX sends an UPDATE without SDP after its 180 (a connected-line update naming an
    internal host); the sipp caller receives it in its early dialog, answers 200, and the call
    then completes.  Nothing of the PBX's identity reaches the caller."""
    sipp = require_tool("sipp")
    ports = dict(sip=free_port(), tls=free_port(), internal=free_port(socket.SOCK_DGRAM),
                 pbx=free_port(socket.SOCK_DGRAM))
    uac_port = free_port()
    uas_dir, uac_dir = tmp_path / "uas", tmp_path / "uac"
    uas_dir.mkdir()
    uac_dir.mkdir()
    uas = subprocess.Popen(
        [sipp, "-sf", str(SCENARIOS / "pbx_early_update.xml"), "-i", "127.0.0.1",
         "-p", str(ports["pbx"]), "-nostdin", "-m", "1", "-trace_msg", "-trace_err"],
        cwd=uas_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL)
    try:
        with launched_sbc(tmp_path, CONFIG.format(**ports), tmp_path, ports) as sbc:
            result = subprocess.run(
                [sipp, "-sf", str(SCENARIOS / "phone_early_update.xml"),
                 f"127.0.0.1:{ports['sip']}", "-s", "2000", "-i", "127.0.0.1",
                 "-p", str(uac_port), "-m", "1", "-nostdin", "-timeout", "20",
                 "-timeout_error", "-trace_msg", "-trace_err"],
                cwd=uac_dir, capture_output=True, text=True, timeout=30,
                stdin=subprocess.DEVNULL)
            errors = "".join(p.read_text(errors="replace") for p in uac_dir.glob("*errors*"))
            assert result.returncode == 0, (result.stdout[-3000:] + result.stderr[-2000:]
                                            + errors + sbc.log.read_text()[-3000:])
            assert sbc.alive()
        assert uas.wait(timeout=10) == 0  # its one call completed
    finally:
        if uas.poll() is None:
            uas.send_signal(signal.SIGTERM)
            try:
                uas.wait(timeout=5)
            except subprocess.TimeoutExpired:
                uas.kill()
                uas.wait()

    uac_received = _blocks(_trace(uac_dir, "phone_early_update"), "received")
    (update,) = [m for m in uac_received if m.lstrip().startswith("UPDATE ")]
    assert re.search(r"^To:.*;tag=\d+Phone1\s*$", update, flags=re.M), update  # its dialog
    uas_sent = _blocks(_trace(uas_dir, "pbx_early_update"), "sent")
    internal = ({f"127.0.0.1:{ports['pbx']}", "pbx.internal.example", "AcmePBX"}
                | _markers(uas_sent, "Call-ID") | _tags(uas_sent, "From"))
    for text in uac_received:
        for marker in internal:
            assert marker not in text, (marker, text)
