"""End to end: the SBC reaches the PBX over TCP and over TLS, with its own outbound connection.

A sipp UAC plays a trunk on the external side (UDP); the PBX is a sipp UAS over TCP.  For TLS,
socat terminates TLS in front of that sipp with the development server certificate, and the
SBC verifies it against the development CA (``tls.ca_bundle``) and the name ``localhost``.
Every call must complete, over one reused connection towards the PBX.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.e2e.conftest import SBC, free_port, launched_sbc, wait_until

CALLS = 4

CONFIG = """\
node: {{id: e2e-pbx-{transport}}}
logging: {{format: json, level: info}}
interfaces:
  external:
    address: 127.0.0.1
    udp: {{enabled: true, port: {sip}}}
    tcp: {{enabled: false, port: {sip}}}
    tls: {{enabled: false, port: {tls}}}
  internal:
    address: 127.0.0.1
    udp: {{enabled: true, port: {internal}}}
    tcp: {{enabled: {tcp_on}, port: {internal}}}
    tls: {{enabled: {tls_on}, port: {internal_tls}}}
pbx: {{address: 127.0.0.1, port: {pbx}, transport: {transport}, server_name: localhost}}
media: {{srtp: none}}  # sipp offers plain RTP/AVP; media is still anchored
trusted_peers:
  - {{name: sipp-trunk, cidrs: [127.0.0.1/32]}}
tls:
  certificate: {certs}/server.crt
  private_key: {certs}/server.key
  ca_bundle: {certs}/dev-ca.crt
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _invite_statuses(sip_port: int, call_id: str, timeout: float) -> list[int]:
    """Send one INVITE from a trunk address over UDP; the statuses of the answers, up to the
    final one (bounded: three reads)."""
    invite = (
        f"INVITE sip:2001@127.0.0.1:{sip_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{call_id};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:1001@127.0.0.1>;tag={call_id}\r\n"
        f"To: <sip:2001@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:1001@127.0.0.1:9>\r\nContent-Length: 0\r\n\r\n").encode()
    statuses: list[int] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(invite, ("127.0.0.1", sip_port))
        for _ in range(3):
            try:
                data, _ = s.recvfrom(65535)
            except TimeoutError:
                break
            statuses.append(int(data.split(b" ", 2)[1]))
            if statuses[-1] >= 200:
                break
    return statuses


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_calls_reach_the_pbx_over_a_stream(tmp_path: Path, transport: str) -> None:
    sipp = require_tool("sipp")
    certs = tmp_path / "certs"
    subprocess.run([SBC, "certs", "init", "--dir", str(certs)], check=True,
                   capture_output=True, timeout=60)
    ports = dict(sip=free_port(), tls=free_port(), internal=free_port(),
                 internal_tls=free_port(), pbx=free_port())
    sipp_port = free_port() if transport == "tls" else ports["pbx"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [sipp, "-sn", "uas", "-t", "t1", "-i", "127.0.0.1", "-p", str(sipp_port),
             "-nostdin", "-m", str(CALLS), "-trace_err"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL))
        if transport == "tls":
            socat = require_tool("socat")
            procs.append(subprocess.Popen(
                [socat, f"OPENSSL-LISTEN:{ports['pbx']},bind=127.0.0.1,reuseaddr,fork,"
                 f"cert={certs}/server.crt,key={certs}/server.key,verify=0",
                 f"TCP:127.0.0.1:{sipp_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        assert wait_until(lambda: _listening(ports["pbx"]))
        config = CONFIG.format(transport=transport, certs=certs,
                               tcp_on=str(transport == "tcp").lower(),
                               tls_on=str(transport == "tls").lower(), **ports)
        with launched_sbc(tmp_path, config, certs, ports) as sbc:
            result = subprocess.run(
                [sipp, "-sn", "uac", f"127.0.0.1:{ports['sip']}", "-i", "127.0.0.1",
                 "-p", str(free_port()), "-m", str(CALLS), "-r", "5", "-nostdin",
                 "-timeout", "30", "-timeout_error"],
                cwd=tmp_path, capture_output=True, text=True, timeout=45,
                stdin=subprocess.DEVNULL)
            log = sbc.log.read_text()
            assert result.returncode == 0, result.stdout[-3000:] + log[-3000:]
            # One outbound connection carried every call.
            assert log.count(f"connecting to {transport} 127.0.0.1:{ports['pbx']}") == 1, log
            assert sbc.alive()
        procs[0].wait(timeout=10)  # it ends after CALLS calls
        # sipp over TCP exits 1 for a socket shutdown error when the SBC closes the connection
        # at its own exit; that is the only error it may report.
        errors = "".join(p.read_text() for p in tmp_path.glob("*_errors.log"))
        events = [line for line in errors.splitlines() if "\t" in line]
        assert all("Failed to shutdown socket" in line for line in events), errors[-3000:]
    finally:
        for proc in procs:
            _stop(proc)


def test_pbx_unreachable_gives_503_at_once(tmp_path: Path) -> None:
    """Nothing listens where the PBX should be: the call fails with 503 when the connection is
    refused, not after Timer B."""
    require_tool("sipp")
    certs = tmp_path / "certs"
    subprocess.run([SBC, "certs", "init", "--dir", str(certs)], check=True,
                   capture_output=True, timeout=60)
    ports = dict(sip=free_port(), tls=free_port(), internal=free_port(),
                 internal_tls=free_port(), pbx=free_port())
    config = CONFIG.format(transport="tcp", certs=certs, tcp_on="true", tls_on="false", **ports)
    with launched_sbc(tmp_path, config, certs, ports) as sbc:
        statuses = _invite_statuses(ports["sip"], "down1", timeout=5)
        assert statuses == [100, 503], (statuses, sbc.log.read_text()[-2000:])
        assert sbc.alive()


def test_pbx_certificate_for_another_name_fails_the_call_at_once(tmp_path: Path) -> None:
    """The PBX's TLS certificate does not carry pbx.server_name: the handshake fails, nothing
    is sent in clear, and the caller gets 503 at once (not after Timer B)."""
    socat = require_tool("socat")
    certs = tmp_path / "certs"
    subprocess.run([SBC, "certs", "init", "--dir", str(certs)], check=True,
                   capture_output=True, timeout=60)
    ports = dict(sip=free_port(), tls=free_port(), internal=free_port(),
                 internal_tls=free_port(), pbx=free_port())
    received = tmp_path / "pbx-received.raw"
    bridge = subprocess.Popen(
        [socat, "-r", str(received),
         f"OPENSSL-LISTEN:{ports['pbx']},bind=127.0.0.1,reuseaddr,fork,"
         f"cert={certs}/server.crt,key={certs}/server.key,verify=0", "SYSTEM:cat >/dev/null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _listening(ports["pbx"]))
        config = CONFIG.format(transport="tls", certs=certs, tcp_on="false", tls_on="true",
                               **ports).replace("server_name: localhost",
                                                "server_name: pbx.wrong.example")
        with launched_sbc(tmp_path, config, certs, ports) as sbc:
            statuses = _invite_statuses(ports["sip"], "name1", timeout=10)
            assert statuses == [100, 503], (statuses, sbc.log.read_text()[-2000:])
        assert not received.exists() or b"INVITE" not in received.read_bytes()
    finally:
        _stop(bridge)
