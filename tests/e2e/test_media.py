"""End to end: media anchored on a real ``sbc run``, SRTP outside and plain RTP inside.

The phone and the PBX are Python peers (:mod:`tests.e2e.media_peers`) that encrypt and decrypt
with their own pylibsrtp sessions, so what is checked is the bytes that reach each end: the
payload the phone encrypted arrives intact at the PBX in plain RTP, and the other way round.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, launched_sbc, wait_until
from tests.e2e.media_peers import (
    answer,
    in_dialog,
    invite,
    is_request,
    is_response,
    key,
    new_media,
    new_sip,
    rtp_packet,
    sdp_answer,
    sdp_of,
    sdp_offer,
    srtp_session,
)

pytestmark = pytest.mark.e2e

SUITE = "AES_CM_128_HMAC_SHA1_80"
PORTS = (31000, 31999)
INACTIVITY = 3  # seconds

CONFIG = """\
node: {{id: e2e-media}}
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
pbx: {{address: 127.0.0.1, port: {pbx}, transport: udp, srtp: none}}
routing: {{unknown_source: allow}}
media:
  port_range: {{start: {start}, end: {end}}}
  srtp: require
  allow_sdes_over_insecure_transport: true   # the test signals over UDP
  inactivity_timeout: {inactivity}
  workers: {workers}
"""


# 0: the relay runs in the SBC's process; 2: in two media worker processes.
WORKERS = [pytest.param(0, id="in-process"), pytest.param(2, id="workers")]


@pytest.fixture(scope="module", params=WORKERS)
def media_sbc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("media")
    pbx = new_sip()
    ports = dict(sip=free_port(socket.SOCK_DGRAM), tls=0,
                 internal=free_port(socket.SOCK_DGRAM), pbx=pbx.address[1])
    text = CONFIG.format(start=PORTS[0], end=PORTS[1], inactivity=INACTIVITY,
                         workers=request.param, **ports)
    with launched_sbc(base, text, base, ports) as sbc:
        yield sbc, pbx


def _call(sbc, pbx, call_id: str):
    """Set up a call phone -> SBC -> PBX with SRTP outside; the two media ends, keyed."""
    phone, phone_media, pbx_media = new_sip(), new_media(), new_media()
    phone_key = key()
    offer = sdp_offer("127.0.0.1", phone_media.port, [(1, SUITE, phone_key)])
    target = ("127.0.0.1", sbc.sip_port)
    phone.send(invite(phone, target, offer, call_id), target)
    inv = pbx.wait(lambda m: is_request("INVITE")(m) and m.body)
    inside = sdp_of(inv).media[0]
    assert inside.proto == "RTP/AVP" and not inside.crypto  # plain RTP towards the PBX
    assert PORTS[0] <= inside.port <= PORTS[1]
    pbx_media.remote = ("127.0.0.1", inside.port)
    answer(pbx, inv, 200, sdp_answer("127.0.0.1", pbx_media.port), to_tag=f"t{call_id}")
    ok = phone.wait(is_response(200))
    outside = sdp_of(ok).media[0]
    assert outside.proto == "RTP/SAVP" and PORTS[0] <= outside.port <= PORTS[1]
    (crypto,) = outside.crypto
    assert crypto.tag == 1 and crypto.suite == SUITE and crypto.key_salt != phone_key
    phone_media.remote = ("127.0.0.1", outside.port)
    phone_media.tx = srtp_session(SUITE, phone_key, outbound=True)
    phone_media.rx = srtp_session(SUITE, crypto.key_salt, outbound=False)
    phone.send(in_dialog("ACK", phone, target, ok, 1, f"ack{call_id}"), target)
    pbx.wait(is_request("ACK"))
    return phone, ok, phone_media, pbx_media, phone_key


def _hang_up(sbc, pbx, phone, ok, call_id: str) -> None:
    target = ("127.0.0.1", sbc.sip_port)
    phone.send(in_dialog("BYE", phone, target, ok, 2, f"bye{call_id}"), target)
    bye = pbx.wait(is_request("BYE"))
    answer(pbx, bye, 200, to_tag=f"t{call_id}")
    phone.wait(is_response(200, "BYE"))


def _records(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("namespace") == "sbc.cdr":
            out.append(event)
    return out


def test_srtp_outside_plain_inside_carries_the_payload_both_ways(media_sbc) -> None:
    """The phone's SRTP arrives at the PBX as plain RTP with the payload intact, the PBX's RTP
    reaches the phone encrypted with the key the SBC answered; a packet with a bad tag and a
    valid packet from a third address are dropped, and the call record counts both."""
    sbc, pbx = media_sbc
    phone, ok, phone_media, pbx_media, phone_key = _call(sbc, pbx, "media1")
    payloads = [bytes([i]) * 160 for i in range(1, 6)]
    for seq, payload in enumerate(payloads, 100):
        phone_media.send(rtp_packet(seq, 0x11111111, payload))
    got = pbx_media.drain(1.0)
    assert [p[12:] for p in got] == payloads  # decrypted by the SBC, plain inside
    assert [int.from_bytes(p[2:4], "big") for p in got] == list(range(100, 105))
    for seq, payload in enumerate(payloads, 500):
        pbx_media.send(rtp_packet(seq, 0x22222222, payload))
    back = phone_media.drain(1.0)  # decrypted by the phone with the SBC's key
    assert [p[12:] for p in back] == payloads

    # A forged authentication tag: never reaches the PBX.
    forged = bytearray(srtp_session(SUITE, phone_key, outbound=True).protect(
        rtp_packet(900, 0x11111111, b"\x55" * 160)))
    forged[-1] ^= 0xFF
    phone_media.sock.sendto(bytes(forged), phone_media.remote)
    # A third party that even knows the key, from another address: the stream is latched.
    intruder = new_media("127.0.0.2")
    intruder.remote, intruder.tx = phone_media.remote, srtp_session(SUITE, phone_key, True)
    intruder.send(rtp_packet(901, 0x11111111, b"\x66" * 160))
    assert pbx_media.drain(0.5) == []
    phone_media.send(rtp_packet(105, 0x11111111, b"\x77" * 160))  # the phone still gets through
    assert [p[12:] for p in pbx_media.drain(1.0)] == [b"\x77" * 160]

    _hang_up(sbc, pbx, phone, ok, "media1")
    assert wait_until(lambda: any(r.get("call_id") == "media1" for r in _records(sbc.log)))
    records = [r for r in _records(sbc.log) if r.get("call_id") == "media1"]
    assert len(records) == 1
    (stream,) = records[0]["media"]["streams"]
    assert stream["a"]["srtp"] is True and stream["b"]["srtp"] is False
    assert stream["a"]["packets"] == 6 and stream["b"]["packets"] == 5
    assert stream["a"]["drops"] == {"auth": 1, "source": 1}
    assert stream["a"]["auth_failure_sources"] == {"127.0.0.1": 1}
    assert stream["a"]["lost"] == 0


def test_a_reinvite_refused_by_the_pbx_leaves_the_media_as_it_was(media_sbc) -> None:
    """The phone re-INVITEs with a new media address and a new key; the relay sends to the new
    address at once, but the PBX answers 488: the relay (in the SBC or in a worker) is back on
    the phone's old address and key, the new key and the new address are refused."""
    sbc, pbx = media_sbc
    phone, ok, phone_media, pbx_media, phone_key = _call(sbc, pbx, "reoffer1")
    phone_media.send(rtp_packet(1, 0x33333333, b"\x01" * 160))
    assert pbx_media.receive() == rtp_packet(1, 0x33333333, b"\x01" * 160)  # latched

    moved, new_key = new_media(), key()
    body = sdp_offer("127.0.0.1", moved.port, [(1, SUITE, new_key)])
    host, port = phone.address
    target = ("127.0.0.1", sbc.sip_port)
    head = in_dialog("INVITE", phone, target, ok, 2, "reoffer1re").replace(
        b"Content-Length: 0\r\n\r\n", b"")
    phone.send(head + (f"Contact: <sip:phone@{host}:{port}>\r\nContent-Type: application/sdp\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body, target)
    reinvite = pbx.wait(lambda m: is_request("INVITE")(m) and m.body)
    # The new address is in force before the PBX answers.  (With workers the offer reaches the
    # worker as a command that may trail the re-INVITE: a packet sent at once can still go to the
    # old address, so a few are tried, bounded.)
    got = None
    for seq in range(600, 620):
        pbx_media.send(rtp_packet(seq, 0x44444444, b"\x02" * 160))
        got = moved.receive(0.25)
        if got is not None:
            break
    assert len(got or b"") == 12 + 160 + 10  # the new address, SRTP
    phone_media.drain(0.2)  # what went to the old address before the switch
    answer(pbx, reinvite, 488, to_tag="treoffer1")
    phone.wait(is_response(488))
    phone.send(in_dialog("ACK", phone, target, ok, 2, "reoffer1re"), target)

    # Back on the old address (with workers once the worker has the rollback: tried, bounded).
    back = None
    for seq in range(621, 641):
        pbx_media.send(rtp_packet(seq, 0x44444444, b"\x03" * 160))
        back = phone_media.receive(0.25)
        if back is not None:
            break
    assert back is not None and back[8:] == rtp_packet(seq, 0x44444444, b"\x03" * 160)[8:]
    moved.drain(0.2)  # what went to the new address before the rollback
    pbx_media.send(rtp_packet(641, 0x44444444, b"\x03" * 160))
    assert phone_media.receive() == rtp_packet(641, 0x44444444, b"\x03" * 160)
    assert moved.drain(0.3) == []
    moved.remote, moved.tx = phone_media.remote, srtp_session(SUITE, phone_key, True)
    moved.send(rtp_packet(2, 0x33333333, b"\x04" * 160))  # old key, new address: latched out
    phone_media.tx = srtp_session(SUITE, new_key, outbound=True)
    phone_media.send(rtp_packet(3, 0x33333333, b"\x05" * 160))  # new key: refused
    phone_media.tx = srtp_session(SUITE, phone_key, outbound=True)
    phone_media.send(rtp_packet(4, 0x33333333, b"\x06" * 160))  # old key: through
    assert pbx_media.receive() == rtp_packet(4, 0x33333333, b"\x06" * 160)
    assert pbx_media.drain(0.3) == []
    phone.send(in_dialog("BYE", phone, target, ok, 3, "byereoffer1"), target)
    answer(pbx, pbx.wait(is_request("BYE")), 200, to_tag="treoffer1")
    phone.wait(is_response(200, "BYE"))
    assert wait_until(lambda: any(r.get("call_id") == "reoffer1" for r in _records(sbc.log)))
    (record,) = [r for r in _records(sbc.log) if r.get("call_id") == "reoffer1"]
    (stream,) = record["media"]["streams"]
    assert stream["a"]["drops"] == {"auth": 1, "source": 1}
    assert stream["a"]["packets"] == 2 and stream["a"]["remote"] == f"127.0.0.1:{phone_media.port}"


@pytest.fixture(params=WORKERS)
def fresh_sbc(request: pytest.FixtureRequest, tmp_path: Path):
    pbx = new_sip()
    ports = dict(sip=free_port(socket.SOCK_DGRAM), tls=0,
                 internal=free_port(socket.SOCK_DGRAM), pbx=pbx.address[1])
    text = CONFIG.format(start=PORTS[0], end=PORTS[1], inactivity=INACTIVITY,
                         workers=request.param, **ports)
    with launched_sbc(tmp_path, text, tmp_path, ports) as sbc:
        yield sbc, pbx


def test_an_unencrypted_offer_gets_488_under_require(fresh_sbc) -> None:
    """An RTP/AVP offer from outside where SRTP is required is refused with 488 and a Warning,
    never reaches the PBX, and is logged as a security event."""
    sbc, pbx = fresh_sbc
    phone, phone_media = new_sip(), new_media()
    target = ("127.0.0.1", sbc.sip_port)
    phone.send(invite(phone, target, sdp_offer("127.0.0.1", phone_media.port, None),
                      "plain1"), target)
    refused = phone.wait(is_response(488))
    assert "SRTP is required" in (refused.headers.get("warning") or "")
    with pytest.raises(AssertionError):
        pbx.wait(is_request("INVITE"), timeout=0.5)
    sbc.proc.terminate()
    sbc.proc.wait(timeout=10)
    events = [json.loads(line) for line in sbc.log.read_text().splitlines()
              if '"sbc.security"' in line]
    assert any(e.get("type") == "media.refused" and e.get("source") == "127.0.0.1"
               for e in events)


def test_an_idle_call_is_ended_on_both_legs(fresh_sbc) -> None:
    """With no media for the inactivity timeout, the SBC sends BYE to the phone and the PBX."""
    sbc, pbx = fresh_sbc
    phone, ok, _phone_media, _pbx_media, _ = _call(sbc, pbx, "idle1")
    bye_pbx = pbx.wait(is_request("BYE"), timeout=INACTIVITY + 5)
    bye_phone = phone.wait(is_request("BYE"), timeout=3)
    assert "Media timeout" in (bye_pbx.headers.get("reason") or "")
    assert "Media timeout" in (bye_phone.headers.get("reason") or "")
