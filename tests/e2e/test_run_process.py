"""End to end: a real ``sbc run`` process on 127.0.0.1, real sockets, real TLS, real sipp."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from sbc.sip.message import Response, parse_message
from tests.conftest import require_tool
from tests.e2e.conftest import SbcProcess, options

SCENARIOS = Path(__file__).parent / "scenarios"
TORTURE = Path(__file__).parent.parent / "fixtures" / "sip-torture"


def run_sipp(sbc: SbcProcess, scenario: str, transport: str, calls: int = 5) -> str:
    sipp = require_tool("sipp")
    cmd = [sipp, f"127.0.0.1:{sbc.sip_port}", "-sf", str(SCENARIOS / scenario), "-t", transport,
           "-m", str(calls), "-r", "20", "-i", "127.0.0.1", "-p", "0", "-nostdin",
           "-timeout", "20", "-timeout_error", "-max_recv_loops", "100"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options_answered(sbc_process, transport):
    """sipp's OPTIONS pings over UDP and TCP all get 200 OK from the running SBC."""
    out = run_sipp(sbc_process, "options.xml", transport)
    assert "Successful call" in out


def test_udp_answer_goes_to_source_with_received_and_rport(sbc_process):
    """The answer comes back to the source port, with received and rport filled in (RFC 3581)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        port = s.getsockname()[1]
        s.sendto(options("rport1", port=1), ("127.0.0.1", sbc_process.sip_port))
        data, addr = s.recvfrom(65535)
    resp = parse_message(data)
    assert isinstance(resp, Response) and resp.status == 200
    via = resp.top_via
    assert via is not None
    assert (via.rport, via.received, via.branch) == (port, "127.0.0.1", "z9hG4bKrport1")
    assert addr[1] == sbc_process.sip_port
    assert resp.to.tag  # a To tag of its own
    assert resp.headers.get("server") is None and resp.headers.get("user-agent") is None


@pytest.mark.parametrize(
    "name, status",
    [("badvers.dat", 505), ("lwsstart.dat", 400), ("mismatch01.dat", 400),
     ("scalar02.dat", 400), ("escruri.dat", 400), ("bext01.dat", 420), ("zeromf.dat", 483),
     ("unkscm.dat", 416), ("insuf.dat", 400), ("badinv01.dat", 400)],
)
def test_torture_requests_get_the_right_answer(sbc_process, name, status):
    """RFC 4475 torture requests sent over UDP get the status the RFC asks for."""
    reply = sbc_process.udp_exchange((TORTURE / name).read_bytes(), timeout=5)
    assert reply is not None
    # The status line only: a 400 echoes the request's own (possibly broken) CSeq and From.
    assert reply.split(b"\r\n", 1)[0].split(b" ", 2)[1] == str(status).encode()


def test_undeserving_datagrams_are_dropped_and_the_sbc_keeps_serving(sbc_process):
    """Malformed responses and garbage get no answer; the next valid request still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        junks = [(TORTURE / name).read_bytes()
                 for name in ("bigcode.dat", "scalarlg.dat", "bcast.dat", "test.dat")]
        for junk in [*junks, b"\x00" * 100, b"\xff" * 2000]:
            s.sendto(junk, ("127.0.0.1", sbc_process.sip_port))
        s.sendto(options("after-junk"), ("127.0.0.1", sbc_process.sip_port))
        first = parse_message(s.recv(65535))  # the only answer is the one to OPTIONS
    assert isinstance(first, Response) and first.call_id == "after-junk"


def _tcp(sbc: SbcProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", sbc.sip_port), timeout=5)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    chunks = []
    while True:
        b = s.recv(65535)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def test_tcp_keepalive_pong_and_framing(sbc_process):
    """Over TCP a CRLFCRLF ping gets a CRLF pong, and a split message is framed correctly."""
    with _tcp(sbc_process) as s:
        s.sendall(b"\r\n\r\n")
        assert s.recv(16) == b"\r\n"
        msg = options("tcp1", transport="TCP")
        s.sendall(msg[:10])
        s.sendall(msg[10:])
        resp = parse_message(s.recv(65535))
        assert isinstance(resp, Response) and resp.status == 200 and resp.call_id == "tcp1"


def test_tcp_without_content_length_gets_400_and_close(sbc_process):
    """A stream message without Content-Length is answered 400 and the connection closed."""
    msg = options("nocl", transport="TCP").replace(b"Content-Length: 0\r\n", b"")
    with _tcp(sbc_process) as s:
        s.sendall(msg)
        data = _read_until_closed(s)
    resp = parse_message(data)
    assert isinstance(resp, Response) and resp.status == 400


def test_tcp_buffer_cap_closes_connection(sbc_process):
    """A peer that streams a never-ending header past the buffer cap is disconnected."""
    with _tcp(sbc_process) as s:
        s.sendall(b"OPTIONS sip:x SIP/2.0\r\n")
        sent = 0
        try:
            while sent < 4_000_000:  # bounded
                s.sendall(b"X-Junk: " + b"a" * 1000 + b"\r\n")
                sent += 1010
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(5)
        try:
            rest = _read_until_closed(s)
        except ConnectionResetError:
            rest = b""
    assert sent < 4_000_000 or rest == b"" or rest.startswith(b"SIP/2.0 513")


def _tls_client(sbc: SbcProcess, **kw) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(sbc.certs / "dev-ca.crt"))
    for k, v in kw.items():
        setattr(ctx, k, v)
    raw = socket.create_connection(("127.0.0.1", sbc.tls_port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def test_tls_options_over_verified_connection(sbc_process):
    """A TLS client that verifies the dev CA gets 200 to OPTIONS and a pong to a ping."""
    with _tls_client(sbc_process) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        s.sendall(options("tls1", transport="TLS"))
        resp = parse_message(s.recv(65535))
        assert isinstance(resp, Response) and resp.status == 200
        s.sendall(b"\r\n\r\n")
        assert s.recv(16) == b"\r\n"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_below_1_2_is_refused(sbc_process, version):
    """TLS 1.0 and 1.1 handshakes are refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = version
        ctx.maximum_version = version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip(f"this OpenSSL cannot even offer {version.name}")
    raw = socket.create_connection(("127.0.0.1", sbc_process.tls_port), timeout=5)
    with pytest.raises(ssl.SSLError) as info, ctx.wrap_socket(
            raw, server_hostname="localhost") as s:
        s.sendall(b"\r\n\r\n")
    if info.value.reason == "NO_PROTOCOLS_AVAILABLE":
        pytest.skip(f"this OpenSSL cannot offer {version.name}")
    # The server's alert, not a local failure: it saw the hello and refused the version.
    assert info.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


def test_logs_are_json_lines_without_tracebacks(sbc_process):
    """The running SBC logs one JSON object per line and no traceback after all of the above."""
    assert sbc_process.alive()
    lines = [line for line in sbc_process.log.read_text().splitlines() if line.strip()]
    assert lines
    events = [json.loads(line) for line in lines]
    assert any("listening" in e.get("message", "") for e in events)
    assert not any("Traceback" in line for line in lines)
