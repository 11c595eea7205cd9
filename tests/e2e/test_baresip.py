"""End to end: a real SIP phone (baresip) calls through ``sbc run`` with SRTP mandatory outside.

baresip 1.0 (Debian's ``baresip-core``) signals over TLS to the SBC's external listener and
offers RTP/SAVP with SDES keys (``mediaenc=srtp-mand``, libre's own SRTP).  The SBC bridges the
call to a sipp UAS on UDP (the PBX, ``pbx.srtp: none``; ``scenarios/uas_pbx.xml``) that answers
with plain RTP/AVP PCMU and echoes every RTP packet back to where it came from
(``-rtp_echo``).  So audio crosses the SBC both ways: baresip's SRTP in, decrypted, plain RTP to
sipp, echoed, encrypted again with the key the SBC answered, SRTP back to baresip, which
decrypts it.

baresip runs headless: the audio source is ``ausine`` (a 440 Hz tone; it only does 48 kHz
stereo, resampled to PCMU by baresip), the player is ``aubridge`` (a device no source ever
reads, i.e. a sink), no terminal UI.  It is driven over ``ctrl_tcp`` (netstring-framed JSON on
127.0.0.1): dial, wait for the CALL_ESTABLISHED event, talk for :data:`TALK` seconds, hang up,
quit.  ``-s`` makes it print every SIP message it sends and receives, which is where the answer
SDP it got is read from.

What is checked: the SBC's call record (``sbc.cdr``) shows SRTP on the external leg only and
packets counted both ways with nothing lost; baresip's own RTP statistics agree; the SDP baresip
received is RTP/SAVP with an ``a=crypto`` and the one sipp received is RTP/AVP without.

Two things about baresip 1.0 the test has to live with:

* It does not verify the server's certificate.  ``sip_cafile`` only adds the CA to libre's
  context; libre 1.1's verify callback accepts every certificate and baresip 1.0 has no
  ``sip_verify_server`` option (it appeared in later releases).  A call with a CA that did not
  sign the SBC's certificate goes through just the same.  The TLS is real (the call record says
  ``tls:``), the SBC's certificate is merely not checked here; ``test_tls_calls`` checks it
  with socat (``verify=1``, name 127.0.0.1).
* It sends two RTCP packets in the clear: an RTCP APP "PING"/"PONG" (16 bytes, to open NAT
  pinholes) as the stream starts, before its SRTP context is installed, and the RTCP BYE of
  libre's RTCP session as the call ends, after SRTP is torn down.  The SBC rightly drops both
  as failing authentication, so the record shows up to two ``auth`` drops from 127.0.0.1.  None
  of them is RTP: every RTP packet baresip sent is counted as accepted and none is lost.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sbc.app import certs as devcerts
from tests.conftest import require_tool
from tests.e2e.conftest import (
    free_port,
    launched_sbc,
    sipp_trace,
    stop_process,
    trace_blocks,
    wait_until,
)

pytestmark = pytest.mark.e2e

SCENARIOS = Path(__file__).parent / "scenarios"

# Below Linux's ephemeral range (32768-60999), where free_port() and baresip's own RTP ports
# come from, and apart from test_media's 31000-31999 and the default 20000-29999.
PORTS = (30000, 30999)
TALK = 3.0  # seconds of audio: ~150 packets each way at 20 ms
MIN_PACKETS = 100
# baresip's RTCP sent in the clear (see the module docstring): the start-up APP and the BYE.
CLEAR_RTCP = 2

CONFIG = """\
node: {{id: e2e-baresip}}
logging: {{format: json, level: info}}
interfaces:
  external:
    address: 127.0.0.1
    udp: {{enabled: true, port: {sip}}}
    tcp: {{enabled: false}}
    tls: {{enabled: true, port: {tls}}}
  internal:
    address: 127.0.0.1
    udp: {{enabled: true, port: {internal}}}
pbx: {{address: 127.0.0.1, port: {pbx}, transport: udp, srtp: none}}
routing: {{unknown_source: allow}}
media:
  port_range: {{start: {start}, end: {end}}}
  srtp: require
  allow_sdes_over_insecure_transport: false  # keys only over TLS: the secure default
tls:
  certificate: {certs}/server.crt
  private_key: {certs}/server.key
"""

# baresip 1.0 configuration: no sound hardware, no terminal, everything on 127.0.0.1.
BARESIP_CONFIG = """\
poll_method		epoll
net_interface		127.0.0.1
sip_listen		127.0.0.1:0
sip_cafile		{cafile}
call_local_timeout	30
call_max_calls		1
audio_source		ausine,440
audio_player		aubridge,sink
audio_alert		aubridge,sink
ausrc_srate		48000
ausrc_channels		2
auplay_srate		48000
auplay_channels		2
rtp_stats		yes
module_path		/usr/lib/baresip/modules
module			g711.so
module			ausine.so
module			aubridge.so
module			srtp.so
module_tmp		account.so
module_app		menu.so
module_app		ctrl_tcp.so
ctrl_tcp_listen		127.0.0.1:{ctrl}
"""

# No registration (regint=0: the SBC lets unknown sources call), SIP over TLS, SRTP mandatory.
BARESIP_ACCOUNT = (
    "<sip:alice@127.0.0.1;transport=tls>;regint=0;mediaenc=srtp-mand;audio_codecs=pcmu"
    ";answermode=manual\n"
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Control:
    """baresip's ``ctrl_tcp``: commands out, responses and events in (netstrings of JSON)."""

    def __init__(self, port: int, baresip: subprocess.Popen) -> None:
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.seen: list[dict] = []
        for _ in range(100):  # bounded: about 10 s for baresip to start listening
            if baresip.poll() is not None:
                break
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        assert self.sock is not None, "baresip's ctrl_tcp never accepted a connection"

    def send(self, command: str, params: str | None = None) -> None:
        message: dict[str, str] = {"command": command, "token": command}
        if params is not None:
            message["params"] = params
        data = json.dumps(message).encode()
        assert self.sock is not None
        self.sock.sendall(b"%d:%s," % (len(data), data))

    def wait(self, predicate, timeout: float = 10.0) -> dict:
        """The first message from now on that matches ``predicate``; fails after ``timeout``."""
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while True:
            while (message := self._next()) is not None:
                self.seen.append(message)
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no such baresip message within {timeout} s; seen: {self.seen}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                pytest.fail(f"baresip closed ctrl_tcp; seen: {self.seen}")
            self.buffer += data

    def event(self, kind: str, timeout: float = 10.0) -> dict:
        return self.wait(lambda m: m.get("event") and m.get("type") == kind, timeout)

    def response(self, command: str, timeout: float = 10.0) -> dict:
        return self.wait(lambda m: m.get("response") and m.get("token") == command, timeout)

    def _next(self) -> dict | None:
        length, colon, rest = self.buffer.partition(b":")
        if not colon or len(rest) < int(length) + 1:
            return None
        assert rest[int(length):int(length) + 1] == b",", self.buffer
        self.buffer = rest[int(length) + 1:]
        return json.loads(rest[:int(length)])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _records(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("namespace") == "sbc.cdr":
                out.append(event)
    return out


def _sip_messages(output: str) -> list[str]:
    """The SIP messages of baresip's ``-s`` trace: blocks after a ``#`` line and a
    ``TLS a -> b`` line, each starting with its start line."""
    out = []
    for block in re.split(r"^#\n", ANSI.sub("", output), flags=re.M)[1:]:
        _route, _, message = block.partition("\n")
        out.append(message)
    return out


def _rtp_stats(output: str) -> tuple[int, int, int, int]:
    """baresip's end-of-call audio statistics: packets sent, received, errors sent, received."""
    text = ANSI.sub("", output)
    packets = re.search(r"^packets:\s+(\d+)\s+(\d+)\s*$", text, flags=re.M)
    errors = re.search(r"^errors:\s+(\d+)\s+(\d+)\s*$", text, flags=re.M)
    assert packets and errors, f"no RTP statistics in baresip's output:\n{text[-3000:]}"
    return (int(packets[1]), int(packets[2]), int(errors[1]), int(errors[2]))


def _media_port(message: str) -> tuple[str, int]:
    """The profile and port of the first ``m=audio`` line of a message."""
    m = re.search(r"^m=audio (\d+) (\S+) ", message, flags=re.M)
    assert m, message
    return m[2], int(m[1])


def _free_pair() -> int:
    """A UDP port ``p`` with ``p + 2`` free as well (sipp's RTP echo binds both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port + 2))
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP port pair")


def test_baresip_srtp_call_carries_audio_both_ways(tmp_path: Path) -> None:
    """baresip -> (TLS, SRTP) -> SBC -> (UDP, RTP) -> sipp echoing: about TALK seconds of
    20 ms audio each way, counted by the SBC and by baresip."""
    baresip = require_tool("baresip")
    sipp = require_tool("sipp")
    assert Path("/usr/lib/baresip/modules/srtp.so").exists(), "baresip without its modules"

    certs = tmp_path / "certs"
    devcerts.init_dev_certs(certs)
    ports = dict(sip=free_port(), tls=free_port(), internal=free_port(socket.SOCK_DGRAM),
                 pbx=free_port(socket.SOCK_DGRAM))
    text = CONFIG.format(certs=certs, start=PORTS[0], end=PORTS[1], **ports)

    phone = tmp_path / "baresip"
    phone.mkdir()
    ctrl_port = free_port()
    (phone / "config").write_text(BARESIP_CONFIG.format(cafile=certs / "dev-ca.crt",
                                                        ctrl=ctrl_port))
    (phone / "accounts").write_text(BARESIP_ACCOUNT)
    (phone / "contacts").write_text("")
    pbx_dir = tmp_path / "pbx"
    pbx_dir.mkdir()
    output = tmp_path / "baresip.out"

    with launched_sbc(tmp_path, text, certs, ports) as sbc:
        pbx = subprocess.Popen(
            [sipp, "-sf", str(SCENARIOS / "uas_pbx.xml"), "-i", "127.0.0.1",
             "-p", str(ports["pbx"]), "-t", "u1", "-mi", "127.0.0.1", "-mp", str(_free_pair()),
             "-rtp_echo", "-m", "1", "-nostdin", "-trace_msg", "-trace_err"],
            cwd=pbx_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL)
        phone_proc = control = None
        try:
            with output.open("wb") as out:
                phone_proc = subprocess.Popen([baresip, "-f", str(phone), "-s"], stdout=out,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            control = Control(ctrl_port, phone_proc)
            control.send("dial", f"sip:1000@127.0.0.1:{sbc.tls_port}")
            assert control.response("dial")["ok"], control.seen
            menc = control.event("CALL_MENC")  # SRTP keys in place on baresip's side
            assert menc["param"].startswith("0,audio,"), menc
            control.event("CALL_ESTABLISHED")
            time.sleep(TALK)
            control.send("hangup")
            control.event("CALL_CLOSED")
            # The record is written once the BYE has been answered on both legs.
            assert wait_until(lambda: _records(sbc.log), attempts=100), sbc.log.read_text()
            control.send("quit")
            phone_proc.wait(timeout=10)
            assert pbx.wait(timeout=10) == 0, "sipp (the PBX) did not complete its call"
        finally:
            if control is not None:
                control.close()
            if phone_proc is not None:
                stop_process(phone_proc)
            stop_process(pbx)

    said = output.read_text(errors="replace")
    (record,) = _records(sbc.log)
    assert record["a"].startswith("tls:127.0.0.1:") and record["b"].startswith("udp:")
    assert record["end_reason"] is None  # ended by baresip's BYE, not by the SBC
    (stream,) = record["media"]["streams"]
    a, b = stream["a"], stream["b"]  # a: baresip's leg (external), b: sipp's (internal)

    # SRTP outside, plain RTP inside, both legs latched on the peers' real addresses.
    assert a["srtp"] is True and b["srtp"] is False
    assert a["latched"] and b["latched"]
    assert PORTS[0] <= a["port"] <= PORTS[1] and PORTS[0] <= b["port"] <= PORTS[1]

    # Audio both ways, counted by the SBC: baresip -> SBC (a.packets, decrypted and accepted),
    # SBC -> sipp, sipp's echo -> SBC (b.packets), SBC -> baresip (a.sent, encrypted).
    assert a["packets"] >= MIN_PACKETS and b["packets"] >= MIN_PACKETS, stream
    assert a["packets"] - 5 <= b["packets"] <= a["packets"], stream  # an echo, nothing more
    assert a["sent"] >= b["packets"] and a["lost"] == 0 and b["lost"] == 0, stream
    # Nothing dropped but baresip's clear RTCP (module docstring); no RTP failed.
    assert set(a["drops"]) <= {"auth"} and a["drops"].get("auth", 0) <= CLEAR_RTCP, stream
    assert set(a["auth_failure_sources"]) <= {"127.0.0.1"}, stream
    assert b["drops"] == {}, stream

    # baresip's own counters: it sent what the SBC accepted, decrypted what the SBC sent.
    sent, received, tx_errors, rx_errors = _rtp_stats(said)
    assert abs(sent - a["packets"]) <= 2, (sent, stream)
    assert MIN_PACKETS <= received <= a["sent"], (received, stream)
    assert (tx_errors, rx_errors) == (0, 0)
    assert "srtp: failed to decrypt" not in said and "srtp: failed to encrypt" not in said

    # The SDP on each side: SDES over TLS to baresip, none of it towards the PBX.
    messages = _sip_messages(said)
    (offer,) = [m for m in messages if m.startswith("INVITE ")]
    (answer,) = [m for m in messages if m.startswith("SIP/2.0 200 ")
                 and re.search(r"^CSeq: \d+ INVITE", m, flags=re.M)]
    crypto = re.compile(r"^a=crypto:\d+ (\S+) inline:", flags=re.M)
    assert _media_port(offer)[0] == "RTP/SAVP" and crypto.findall(offer), offer
    assert _media_port(answer) == ("RTP/SAVP", a["port"]), answer
    (suite,) = crypto.findall(answer)
    assert suite in crypto.findall(offer) and menc["param"] == f"0,audio,{suite}"
    (inside,) = [m for m in trace_blocks(sipp_trace(pbx_dir, "uas_pbx"), "received")
                 if m.startswith("INVITE ")]
    assert _media_port(inside) == ("RTP/AVP", b["port"]), inside
    assert "a=crypto" not in inside
