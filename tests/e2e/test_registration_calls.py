"""End to end: a phone registers through a real ``sbc run`` and calls both ways.

Real sipp processes on 127.0.0.1 play both sides.  The phone's REGISTER goes through the PBX's
digest challenge (sipp computes the credentials, the PBX's sipp verifies them); then the PBX
calls the token Contact it was given and the SBC delivers the call on the phone's flow (the
same UDP address the phone registered from); then the phone calls the PBX from its registered
flow, while a phone that never registered is refused with 403.  Every message the phone side
received is checked for the inside: the PBX's and the SBC's internal ports, the token, the
PBX's Call-IDs, tags, banner and host names.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sbc.sip.message import Response, parse_message
from tests.conftest import require_tool
from tests.e2e.conftest import free_port, launched_sbc, trace_blocks

SCENARIOS = Path(__file__).parent / "scenarios"
PASSWORD = "s3cret-pass"

CONFIG = """\
node: {{id: e2e-registration}}
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
pbx: {{address: 127.0.0.1, port: {pbx}, transport: udp}}
media: {{srtp: none}}  # sipp offers plain RTP/AVP; media is still anchored
routing: {{unknown_source: reject}}
"""


def _run(args: list[str], cwd: Path, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@contextmanager
def _background(args: list[str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _received(directory: Path) -> list[str]:
    """Every message a sipp in ``directory`` received, from its -trace_msg logs."""
    return [m for log in sorted(directory.glob("*_messages.log"))
            for m in trace_blocks(log, "received")]


def _sent(directory: Path) -> list[str]:
    return [m for log in sorted(directory.glob("*_messages.log"))
            for m in trace_blocks(log, "sent")]


def _header_values(messages: list[str], header: str) -> set[str]:
    pattern = re.compile(rf"^{header}:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)
    return {m for text in messages for m in pattern.findall(text)}


def test_register_then_calls_both_ways(tmp_path: Path) -> None:
    sipp = require_tool("sipp")
    ports = dict(sip=free_port(), tls=free_port(), internal=free_port(socket.SOCK_DGRAM),
                 pbx=free_port(socket.SOCK_DGRAM))
    phone_port, pbx_caller_port = free_port(), free_port()
    phone_dir, pbx_dir = tmp_path / "phone", tmp_path / "pbx"
    phone_dir.mkdir()
    pbx_dir.mkdir()
    sbc_target = f"127.0.0.1:{ports['sip']}"
    common = ["-i", "127.0.0.1", "-nostdin", "-timeout", "30", "-timeout_error", "-trace_msg",
              "-m", "1"]
    with launched_sbc(tmp_path, CONFIG.format(**ports), tmp_path, ports) as sbc:
        # 1. Registration through the PBX's challenge.
        with _background([sipp, "-sf", str(SCENARIOS / "pbx_registrar.xml"),
                          "-p", str(ports["pbx"]), *common], pbx_dir) as registrar:
            reg = _run([sipp, sbc_target, "-sf", str(SCENARIOS / "phone_register.xml"),
                        "-p", str(phone_port), "-au", "1001", "-ap", PASSWORD, *common],
                       phone_dir)
            assert reg.returncode == 0, reg.stdout[-3000:] + sbc.log.read_text()[-3000:]
            assert registrar.wait(timeout=10) == 0
        pbx_seen = _received(pbx_dir)
        contacts = _header_values([m for m in pbx_seen if "REGISTER sip:" in m], "Contact")
        tokens = {m.group(1) for c in contacts
                  if (m := re.search(r"<sip:([^@]+)@127\.0\.0\.1:(\d+)", c))}
        assert len(tokens) == 1, contacts  # the same token across the challenge
        token = tokens.pop()
        assert f":{ports['internal']};" in contacts.pop()  # the SBC's internal address
        assert not any(str(phone_port) in m for m in pbx_seen)  # the phone stays outside

        # 2. The PBX calls the token; the SBC delivers it on the phone's registered flow.
        with _background([sipp, "-sn", "uas", "-p", str(phone_port), *common],
                         phone_dir) as phone_uas:
            call_in = _run([sipp, f"127.0.0.1:{ports['internal']}", "-sn", "uac", "-s", token,
                            "-p", str(pbx_caller_port), *common], pbx_dir)
            assert call_in.returncode == 0, call_in.stdout[-3000:] + sbc.log.read_text()[-3000:]
            assert phone_uas.wait(timeout=10) == 0

        # 3. The phone calls out from its registered flow; the PBX answers.
        with _background([sipp, "-sn", "uas", "-p", str(ports["pbx"]), *common],
                         pbx_dir) as pbx_uas:
            call_out = _run([sipp, sbc_target, "-sn", "uac", "-s", "2001",
                             "-p", str(phone_port), *common], phone_dir)
            assert call_out.returncode == 0, (call_out.stdout[-3000:]
                                              + sbc.log.read_text()[-3000:])
            assert pbx_uas.wait(timeout=10) == 0

        # 4. Another source that never registered: 403, nothing reaches the PBX.
        stranger = (
            f"INVITE sip:2001@127.0.0.1:{ports['sip']} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKstranger1;rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:evil@127.0.0.1>;tag=s1\r\n"
            "To: <sip:2001@127.0.0.1>\r\nCall-ID: stranger-1\r\nCSeq: 1 INVITE\r\n"
            "Contact: <sip:evil@127.0.0.1:9>\r\nContent-Length: 0\r\n\r\n").encode()
        reply = sbc.udp_exchange(stranger, timeout=5)
        assert reply is not None
        refused = parse_message(reply)
        assert isinstance(refused, Response) and refused.status == 403
        assert sbc.alive()

    # Nothing of the inside in anything the phone received.
    phone_seen = _received(phone_dir)
    assert len(phone_seen) >= 2 + 3 + 4  # 401, 200; INVITE, ACK, BYE; 100, 180, 200, 200
    pbx_sent = _sent(pbx_dir)
    internal = {f":{ports['pbx']}", f":{ports['internal']}", f":{pbx_caller_port}", token,
                "AcmePBX", "pbx-secret"}
    internal |= _header_values(pbx_sent, "Call-ID")
    # Tags in what the PBX sent, but for the phone's own (a REGISTER's From tag crosses as is).
    phone_tags = set(re.findall(r"tag=([\w.-]+)", "\n".join(_sent(phone_dir))))
    internal |= set(re.findall(r"tag=([\w.-]+)", "\n".join(pbx_sent))) - phone_tags
    assert len(internal) > 8
    for text in phone_seen:
        for marker in internal:
            assert marker not in text, (marker, text)
