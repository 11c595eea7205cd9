"""The B2BUA with its media relay: SDP rewritten to the relay's ports and keys on both legs,
offers refused by the SRTP policy, late offers, re-INVITEs, and calls ended by the relay's
timeouts -- pumped in memory, the relay's ports from a fake allocator."""

from __future__ import annotations

import base64
import struct
from dataclasses import replace

import pytest

from sbc.gateway.b2bua import B2BUA, EXTERNAL, INTERNAL, Origin
from sbc.ids import CountingIdSource
from sbc.media import srtp
from sbc.media.relay import Endpoint, MediaInterface, MediaManager, MediaSettings
from sbc.media.sdp import parse_sdp
from sbc.policy.model import SrtpFailed
from sbc.sip.message import Request, Response, parse_message

from .pump import PHONE, Pump, respond
from .test_b2bua import (
    EXTERNAL_MARKERS,
    INTERNAL_MARKERS,
    PBX_SDP,
    PHONE_SDP,
    SERVER,
    SETTINGS,
    T0,
    established,
    invite,
    one_request,
    one_response,
    pbx_says,
    phone_request,
    start,
)
from .test_b2bua_flows import HOLD_SDP, pbx_in_dialog, phone_in_dialog

MEDIA = MediaSettings(
    interfaces={
        EXTERNAL: MediaInterface("198.51.100.10", "203.0.113.10"),
        INTERNAL: MediaInterface("10.0.0.1"),
    },
    inactivity_timeout=30.0,
    max_call_duration=3600.0,
)
PLAIN = replace(SETTINGS, srtp_external="none")
PHONE_KEY = bytes(range(30))
SRTP_SDP = PHONE_SDP.replace(b"RTP/AVP 0", b"RTP/SAVP 0") + (
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(PHONE_KEY) + b"\r\n"
)
PHONE_TLS = Origin(EXTERNAL, "tls", "192.0.2.101", 40443)
# Media addresses of each side (c= and m= ports): with a relay they never cross either.
MEDIA_INTERNAL = ["10.0.1.50", "14562"]
MEDIA_EXTERNAL = ["192.0.2.150", "40000"]


class Ports:
    """Even ports from 20000 (external) and 30000 (internal); what was released."""

    def __init__(self) -> None:
        self.next = {EXTERNAL: 20000, INTERNAL: 30000}
        self.released: list[int] = []

    def allocate(self, interface: str, endpoint: Endpoint) -> int | None:
        port = self.next[interface]
        self.next[interface] += 2
        return port

    def release(self, endpoint: Endpoint) -> None:
        self.released.append(endpoint.port)


def counter_random():
    state = {"n": 0}

    def random(n: int) -> bytes:
        state["n"] += 1
        return bytes((state["n"] + i) % 256 for i in range(n))

    return random


def setup(settings=PLAIN, media: MediaSettings = MEDIA) -> tuple[Pump, Ports]:  # type: ignore[no-untyped-def]
    ports = Ports()
    manager = MediaManager(media, ports, random=counter_random())
    return Pump(B2BUA(settings, CountingIdSource("x"), media=manager)), ports


def hidden(p: Pump) -> None:
    b_leg = [parse_message(data) for data in p.sent(INTERNAL)]
    ids = {m.call_id for m in b_leg} | {m.from_.tag or "" for m in b_leg if isinstance(m, Request)}
    p.assert_hidden([*INTERNAL_MARKERS, *MEDIA_INTERNAL, *ids - {""}],
                    [*EXTERNAL_MARKERS, *MEDIA_EXTERNAL])


def test_sdp_points_at_the_relay_on_both_legs() -> None:
    """The PBX is offered the relay's internal port, the phone is answered with the relay's
    external port and advertised address; no media address of either side crosses."""
    p, _ = setup()
    b_invite = start(p)
    assert b_invite.body == (
        b"v=0\r\n"
        b"o=- 133615103555672 1 IN IP4 10.0.0.1\r\n"
        b"s=-\r\n"
        b"c=IN IP4 10.0.0.1\r\n"
        b"t=0 0\r\n"
        b"m=audio 30000 RTP/AVP 0\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtcp:30001\r\n"
    )
    pbx_says(p, b_invite, 200, T0 + 1, PBX_SDP)
    a_200 = one_response(p.to_phone(), 200)
    assert a_200.body == (
        b"v=0\r\n"
        b"o=- 5635568439058 1 IN IP4 203.0.113.10\r\n"
        b"s=-\r\n"
        b"c=IN IP4 203.0.113.10\r\n"
        b"t=0 0\r\n"
        b"m=audio 20000 RTP/AVP 0\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtcp:20001\r\n"
    )
    session = p.b2bua.calls[(EXTERNAL, "phone-call-1@192.0.2.101", "x1")].media
    assert session is not None
    (stream,) = session.streams
    assert stream.a.remote_rtp == ("192.0.2.150", 40000)  # the phone's, until it latches
    assert stream.b.remote_rtp == ("10.0.1.50", 14562)
    hidden(p)


def test_plain_offer_where_srtp_is_required_is_488() -> None:
    """Under ``require`` an RTP/AVP offer is answered 488 with a Warning, nothing reaches the
    PBX, no port stays allocated, and a security event is recorded."""
    p, ports = setup(replace(SETTINGS, srtp_external="require"))
    p.phone(invite(), T0)
    refused = one_response(p.to_phone(), 488)
    assert refused.headers.get("warning") == (
        '399 203.0.113.10 "SRTP is required: the offer has no a=crypto"'
    )
    assert p.to_pbx() == []
    assert ports.next == {EXTERNAL: 20000, INTERNAL: 30000}
    (event,) = p.b2bua.events
    assert event["type"] == "media.refused" and event["source"] == "192.0.2.101"
    assert p.b2bua.counters["refused.media.488"] == 1
    assert p.b2bua.media is not None and not p.b2bua.media.sessions


def test_sdes_keys_only_over_tls() -> None:
    """An SRTP offer over UDP is refused (keys in the clear); over TLS it is answered with the
    SBC's own key and bridged to plain RTP towards the PBX."""
    p, _ = setup(replace(SETTINGS, srtp_external="require"))
    p.phone(invite(body=SRTP_SDP), T0)
    refused = one_response(p.to_phone(), 488)
    assert "unencrypted signalling" in (refused.headers.get("warning") or "")

    p, _ = setup(replace(SETTINGS, srtp_external="require"))
    p._feed(invite(body=SRTP_SDP), PHONE_TLS, T0)
    one_response(p.to_phone(), 100)
    b_invite = one_request(p.to_pbx(), "INVITE")
    inside = parse_sdp(b_invite.body).media[0]
    assert inside.proto == "RTP/AVP" and inside.crypto == []
    pbx_says(p, b_invite, 200, T0 + 1, PBX_SDP)
    outside = parse_sdp(one_response(p.to_phone(), 200).body).media[0]
    assert outside.proto == "RTP/SAVP"
    (crypto,) = outside.crypto
    assert crypto.tag == 1 and crypto.suite == "AES_CM_128_HMAC_SHA1_80"
    assert crypto.key_salt not in (PHONE_KEY, b"")


def test_late_offer_in_the_2xx_and_answer_in_the_ack() -> None:
    """An INVITE without SDP: the PBX's 2xx offer reaches the phone rewritten, and the phone's
    answer in the ACK reaches the PBX rewritten (RFC 3264 with RFC 3261 13.2.1)."""
    p, _ = setup()
    b_invite = start(p, invite(body=b""))
    assert b_invite.body == b""
    p.pbx(respond(b_invite, 100), T0 + 0.01)
    pbx_says(p, b_invite, 200, T0 + 0.2, PBX_SDP)
    a_200 = one_response(p.to_phone(), 200)
    offer = parse_sdp(a_200.body)
    assert offer.media[0].port == 20000 and offer.connection.address == "203.0.113.10"
    ack = phone_request("ACK", a_200.headers.get("to") or "", 20, "z9hG4bKack1")
    ack = ack.replace(b"Content-Length: 0\r\n\r\n", b"Content-Type: application/sdp\r\n"
                      + f"Content-Length: {len(PHONE_SDP)}\r\n\r\n".encode() + PHONE_SDP)
    p.phone(ack, T0 + 1.1)
    b_ack = one_request(p.to_pbx(), "ACK")
    answer = parse_sdp(b_ack.body)
    assert answer.media[0].port == 30000 and answer.connection.address == "10.0.0.1"
    hidden(p)


def test_hold_reinvite_keeps_the_relay_ports() -> None:
    """A re-INVITE putting the call on hold reaches the PBX with the same relay port and the
    direction unchanged (a=sendonly)."""
    p, ports = setup()
    _b_invite, a_200, _ = established(p)
    p.phone(phone_in_dialog("INVITE", a_200, 21, "z9hG4bKhold", body=HOLD_SDP), T0 + 10)
    one_response(p.to_phone(), 100)
    b_re = one_request(p.to_pbx(), "INVITE")
    held = parse_sdp(b_re.body).media[0]
    assert held.port == 30000 and held.direction == "sendonly"
    assert ports.next == {EXTERNAL: 20002, INTERNAL: 30002}  # nothing new allocated
    hidden(p)


def test_silent_call_is_ended_with_bye_on_both_legs() -> None:
    """No media for the inactivity timeout: BYE with a Reason to the phone and the PBX, and
    the call record keeps the reason and the (empty) media statistics."""
    p, ports = setup()
    established(p)
    p.run_until(T0 + 2 + 29.9)
    assert p.to_phone() == [] and p.to_pbx() == []
    p.run_until(T0 + 2 + 30.2)  # the sweep after 30 s of silence, before any retransmission
    bye_a = one_request(p.to_phone(), "BYE")
    bye_b = one_request(p.to_pbx(), "BYE")
    for bye in (bye_a, bye_b):
        assert bye.headers.get("reason") == 'SIP;cause=408;text="Media timeout"'
    p.pbx(respond(bye_b, 200), T0 + 34)
    (record,) = p.b2bua.records
    assert record["end_reason"] == "media inactivity" and record["answered"] == T0 + 2
    assert record["media"]["streams"][0]["a"]["packets"] == 0
    assert sorted(ports.released) == [20000, 30000]
    assert p.b2bua.counters["media.timeout.inactive"] == 1


def test_media_sessions_are_limited() -> None:
    """Beyond ``max_sessions`` a new call gets 503 before anything is sent to the PBX."""
    p, _ = setup(media=replace(MEDIA, max_sessions=1))
    start(p)
    second = invite().replace(b"phone-call-1", b"phone-call-2").replace(b"phonetag1", b"tag2")
    p.phone(second.replace(b"z9hG4bKphone1", b"z9hG4bKphone9"), T0 + 1)
    one_response(p.to_phone(), 503)
    assert p.to_pbx() == []


def test_phone_source_for_latching_is_the_sip_peer() -> None:
    """The A-leg endpoint trusts the phone's SIP address for plain RTP latching."""
    p, _ = setup()
    start(p)
    session = p.b2bua.calls[(EXTERNAL, "phone-call-1@192.0.2.101", "x1")].media
    assert session is not None
    assert session.streams[0].a.trusted_host == PHONE.host
    assert session.streams[0].b.trusted_host == "10.0.0.5"


def test_an_srtp_failure_storm_reaches_the_rule_engine() -> None:
    """When the relay counts an SRTP authentication storm in a call, a security event is
    recorded and the rule engine hears of each source with its count."""
    p, _ = setup()
    established(p)
    session = p.b2bua.calls[(EXTERNAL, "phone-call-1@192.0.2.101", "x1")].media
    assert session is not None
    endpoint = session.streams[0].a
    endpoint.auth_sources = {"198.51.100.66": 25}
    endpoint.drop_auth = session.auth_failures = 25
    p.run_until(T0 + 4)
    (event,) = [e for e in p.b2bua.events if e["type"] == "srtp.auth_failures"]
    assert event["sources"] == {"198.51.100.66": 25}
    (fact,) = [f for f in p.b2bua.policy_events if isinstance(f, SrtpFailed)]
    assert (fact.source_ip, fact.count, fact.call_id) == (
        "198.51.100.66", 25, "phone-call-1@192.0.2.101")


# -- a re-INVITE that fails: the media stays where it was (RFC 3261 14.1, RFC 3264 8) -----------

MOVED_SDP = (PHONE_SDP.replace(b"o=alice 111 222", b"o=alice 111 223")
             .replace(b"c=IN IP4 192.0.2.150", b"c=IN IP4 192.0.2.160")
             .replace(b"m=audio 40000", b"m=audio 40100"))
PHONE_NAT = ("192.0.2.101", 41000)  # the phone's RTP source: its SIP address, another port


def rtp_in(endpoint: Endpoint, source: tuple[str, int], now: float) -> int:
    """A plain RTP packet from ``source`` into ``endpoint`` as the edge feeds it: the length to
    send on to the other leg's ``remote_rtp``, or -1 when dropped."""
    packet = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + bytes(160)
    srtp.PACKET_VIEW[: len(packet)] = packet
    return endpoint.rtp_in(len(packet), source, now)


def _pbx_488(p: Pump, b_re: Request, reinvite: bytes) -> int:
    p.pbx(respond(b_re, 488, extra=[SERVER]), T0 + 10.1)
    one_request(p.to_pbx(), "ACK")  # the ACK of a non-2xx, hop by hop
    return 488


def _timeout(p: Pump, b_re: Request, reinvite: bytes) -> int:
    p.run_until(T0 + 10 + 33)  # Timer B: the PBX never answered
    return 408


def _cancel(p: Pump, b_re: Request, reinvite: bytes) -> int:
    p.pbx(respond(b_re, 100), T0 + 10.1)
    cancel = (reinvite.split(b"\r\n\r\n")[0].replace(b"INVITE sip:", b"CANCEL sip:", 1)
              .replace(b"CSeq: 21 INVITE", b"CSeq: 21 CANCEL")
              .replace(b"Content-Type: application/sdp\r\n", b"")
              .replace(f"Content-Length: {len(MOVED_SDP)}".encode(), b"Content-Length: 0")
              + b"\r\n\r\n")
    p.phone(cancel, T0 + 10.2)
    assert one_response(p.to_phone(), 200).cseq.method == "CANCEL"
    b_cancel = one_request(p.to_pbx(), "CANCEL")
    p.pbx(respond(b_cancel, 200), T0 + 10.3)
    p.pbx(respond(b_re, 487), T0 + 10.4)
    one_request(p.to_pbx(), "ACK")
    return 487


def _answer_refused(p: Pump, b_re: Request, reinvite: bytes) -> int:
    two_lines = PBX_SDP + b"m=video 0 RTP/AVP 96\r\n"  # one stream was offered
    p.pbx(respond(b_re, 200, extra=[("Contact", "<sip:10.0.0.5:5060>"), SERVER,
                                    ("Content-Type", "application/sdp")], body=two_lines),
          T0 + 10.1)
    return 502


@pytest.mark.parametrize("ending", [_pbx_488, _timeout, _cancel, _answer_refused],
                         ids=["488", "timeout", "cancel", "answer-refused"])
def test_a_failed_reinvite_leaves_the_media_where_it_was(ending) -> None:  # type: ignore[no-untyped-def]
    """The phone re-INVITEs from a new media address; the relay sends there at once, but when
    the re-INVITE fails (488 from the PBX, no answer, CANCEL, an answer that does not fit) the
    relay sends to the phone's latched address of before again, and takes its packets."""
    p, ports = setup(media=replace(MEDIA, inactivity_timeout=0.0))
    _b_invite, a_200, _ = established(p)
    call = p.b2bua.calls[(EXTERNAL, "phone-call-1@192.0.2.101", "x1")]
    assert call.media is not None
    (stream,) = call.media.streams
    assert rtp_in(stream.a, PHONE_NAT, T0 + 5) == 172  # latched: the phone's NAT address
    reinvite = phone_in_dialog("INVITE", a_200, 21, "z9hG4bKmove", body=MOVED_SDP)
    p.phone(reinvite, T0 + 10)
    one_response(p.to_phone(), 100)
    b_re = one_request(p.to_pbx(), "INVITE")
    assert parse_sdp(b_re.body).media[0].port == 30000
    assert (stream.a.remote_rtp, stream.a.rtp_latched) == (("192.0.2.160", 40100), False)

    status = ending(p, b_re, reinvite)
    assert status in [m.status for m in p.to_phone() if isinstance(m, Response)]
    assert (stream.a.signalled_rtp, stream.a.remote_rtp, stream.a.rtp_latched) == (
        ("192.0.2.150", 40000), PHONE_NAT, True)
    assert rtp_in(stream.b, ("10.0.1.50", 14562), T0 + 50) == 172  # on to PHONE_NAT
    assert rtp_in(stream.a, PHONE_NAT, T0 + 50) == 172
    assert rtp_in(stream.a, ("192.0.2.160", 40100), T0 + 50) == -1
    assert stream.a.drop_source == 1
    assert call.media.offer_from is None and call.media.pending is None
    assert p.b2bua.media is not None and p.b2bua.media.counters["media.offer_failed"] == 1
    assert ports.released == [] and ports.next == {EXTERNAL: 20002, INTERNAL: 30002}


def test_an_offer_in_a_2xx_the_ack_does_not_answer_is_undone() -> None:
    """A re-INVITE without SDP: the PBX's 2xx offers a new media address, which the relay uses
    at once; the phone's ACK carries no answer, so the PBX's offer failed and the relay sends
    to its address of before again (RFC 3264: the ACK must answer an offer in the 2xx)."""
    p, _ = setup()
    _b_invite, a_200, _ = established(p)
    call = p.b2bua.calls[(EXTERNAL, "phone-call-1@192.0.2.101", "x1")]
    assert call.media is not None
    (stream,) = call.media.streams
    p.phone(phone_in_dialog("INVITE", a_200, 21, "z9hG4bKlate"), T0 + 10)
    one_response(p.to_phone(), 100)
    b_re = one_request(p.to_pbx(), "INVITE")
    assert b_re.body == b""
    moved = PBX_SDP.replace(b"c=IN IP4 10.0.1.50", b"c=IN IP4 10.0.1.60")
    p.pbx(respond(b_re, 200, extra=[("Contact", "<sip:10.0.0.5:5060>"), SERVER,
                                    ("Content-Type", "application/sdp")], body=moved), T0 + 10.1)
    offer = parse_sdp(one_response(p.to_phone(), 200).body)
    assert offer.media[0].port == 20000
    assert stream.b.remote_rtp == ("10.0.1.60", 14562)
    p.phone(phone_request("ACK", a_200.headers.get("to") or "", 21, "z9hG4bKlateack"), T0 + 10.2)
    assert one_request(p.to_pbx(), "ACK").body == b""
    assert (stream.b.signalled_rtp, stream.b.remote_rtp) == (("10.0.1.50", 14562),) * 2
    assert p.b2bua.media is not None and p.b2bua.media.counters["media.offer_failed"] == 1


def test_an_offer_while_one_is_unanswered_is_refused_and_changes_nothing() -> None:
    """RFC 3311 5.2: while the phone's re-INVITE offer awaits the PBX's answer, a second offer
    from the phone (an UPDATE) gets 500 with a Retry-After of 0-10 s, and an offer from the PBX
    (glare) gets 491; neither is relayed nor touches the media.  Once the answer settles the
    re-INVITE, the next offer is relayed."""
    p, ports = setup()
    b_invite, a_200, _ = established(p)
    call = p.b2bua.calls[(EXTERNAL, "phone-call-1@192.0.2.101", "x1")]
    assert call.media is not None
    (stream,) = call.media.streams
    p.phone(phone_in_dialog("INVITE", a_200, 21, "z9hG4bKmove", body=MOVED_SDP), T0 + 10)
    one_response(p.to_phone(), 100)
    b_re = one_request(p.to_pbx(), "INVITE")
    assert call.media.unsettled_from == "a"

    p.phone(phone_in_dialog("UPDATE", a_200, 22, "z9hG4bKupd1", body=HOLD_SDP), T0 + 10.1)
    busy = one_response(p.to_phone(), 500)
    assert busy.cseq.method == "UPDATE" and 0 <= int(busy.headers.get("retry-after") or "") <= 10
    moved_pbx = PBX_SDP.replace(b"c=IN IP4 10.0.1.50", b"c=IN IP4 10.0.1.60")
    p.pbx(pbx_in_dialog("UPDATE", b_invite, 103, "z9hG4bKpbxupd1", body=moved_pbx), T0 + 10.2)
    glare = one_response(p.to_pbx(), 491)
    assert glare.cseq.method == "UPDATE"
    assert p.to_pbx() == [] and p.to_phone() == []  # neither offer crossed
    assert stream.a.remote_rtp == ("192.0.2.160", 40100)  # the pending offer's, untouched
    assert stream.b.remote_rtp == ("10.0.1.50", 14562)
    assert p.b2bua.counters["refused.offer_pending"] == 2

    pbx_says(p, b_re, 200, T0 + 10.3, PBX_SDP)
    one_response(p.to_phone(), 200)
    assert call.media.unsettled_from is None
    p.phone(phone_request("ACK", a_200.headers.get("to") or "", 21, "z9hG4bKmoveack"), T0 + 10.4)
    one_request(p.to_pbx(), "ACK")
    p.pbx(pbx_in_dialog("UPDATE", b_invite, 104, "z9hG4bKpbxupd2", body=moved_pbx), T0 + 11)
    update = one_request(p.to_phone(), "UPDATE")
    assert parse_sdp(update.body).media[0].port == 20000  # the relay's, as before
    assert stream.b.remote_rtp == ("10.0.1.60", 14562) and call.media.unsettled_from == "b"
    assert ports.next == {EXTERNAL: 20002, INTERNAL: 30002}
