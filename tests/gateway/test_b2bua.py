"""The B2BUA call core: a scripted phone and a scripted PBX pumped through it in memory."""

from __future__ import annotations

from sbc.gateway.b2bua import B2BUA, INTERNAL, B2buaSettings, SipAddress
from sbc.ids import CountingIdSource
from sbc.sip.message import Request, Response, parse_message
from sbc.sip.transaction import TimerSettings

from .pump import Pump, respond

T0 = 1000.0
SETTINGS = B2buaSettings(
    external=SipAddress("203.0.113.10", 5060, "udp"),
    internal=SipAddress("10.0.0.1", 5060, "udp"),
    pbx=SipAddress("10.0.0.5", 5060, "udp"),
    domain="pbx.internal.example",
    timers=TimerSettings(),
    unknown_source="allow",  # admission has tests of its own (test_b2bua_admission.py)
)
PBX_TAG = "as-pbx-tag-77"
SERVER = ("Server", "Asterisk PBX 20.5.2")

# The phone's and the PBX's media addresses (c= lines) differ from their signalling addresses on
# purpose: c= is not rewritten until media anchoring exists, so it still crosses; every other
# trace of the far side must not.
INTERNAL_MARKERS = [
    "10.0.0.5", "10.0.0.1", "pbx.internal.example", "Asterisk", PBX_TAG, "1954329212",
]
EXTERNAL_MARKERS = [
    "192.0.2.101", "phone-call-1", "phonetag1", "z9hG4bKphone", "Linphone", "203.0.113.10",
    "sbc.example.com", "o=alice", "s=Talk",
]

PHONE_SDP = (
    b"v=0\r\n"
    b"o=alice 111 222 IN IP4 192.0.2.101\r\n"
    b"s=Talk\r\n"
    b"c=IN IP4 192.0.2.150\r\n"
    b"t=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)
PBX_SDP = (
    b"v=0\r\n"
    b"o=- 1954329212 1954329214 IN IP4 10.0.0.5\r\n"
    b"s=Asterisk\r\n"
    b"c=IN IP4 10.0.1.50\r\n"
    b"t=0 0\r\n"
    b"m=audio 14562 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)


def setup() -> Pump:
    return Pump(B2BUA(SETTINGS, CountingIdSource("x")))


def invite(*, max_forwards: int = 70, extra: str = "", body: bytes = PHONE_SDP) -> bytes:
    content_type = "Content-Type: application/sdp\r\n" if body else ""
    return (
        "INVITE sip:1002@sbc.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bKphone1;rport\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        'From: "Alice" <sip:1001@sbc.example.com>;tag=phonetag1\r\n'
        "To: <sip:1002@sbc.example.com>\r\n"
        "Call-ID: phone-call-1@192.0.2.101\r\n"
        "CSeq: 20 INVITE\r\n"
        "Contact: <sip:1001@192.0.2.101:5060>\r\n"
        "User-Agent: Linphone/5.2.0\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE\r\n"
        f"{extra}{content_type}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def phone_request(method: str, to: str, cseq: int, branch: str) -> bytes:
    """An ACK or BYE from the phone inside the call whose A-leg To (with tag) is ``to``."""
    return (
        f"{method} sip:203.0.113.10:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.101:5060;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:1001@sbc.example.com>;tag=phonetag1\r\n'
        f"To: {to}\r\n"
        "Call-ID: phone-call-1@192.0.2.101\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "User-Agent: Linphone/5.2.0\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def one(messages: list[Request | Response]) -> Request | Response:
    assert len(messages) == 1, messages
    return messages[0]


def one_request(messages: list[Request | Response], method: str) -> Request:
    msg = one(messages)
    assert isinstance(msg, Request) and msg.method == method, msg
    return msg


def one_response(messages: list[Request | Response], status: int) -> Response:
    msg = one(messages)
    assert isinstance(msg, Response) and msg.status == status, msg
    return msg


def start(p: Pump, raw: bytes | None = None) -> Request:
    """The phone's INVITE: a 100 Trying back, and the B-leg INVITE returned."""
    p.phone(raw or invite(), T0)
    one_response(p.to_phone(), 100)
    return one_request(p.to_pbx(), "INVITE")


def pbx_says(p: Pump, b_invite: Request, status: int, now: float, body: bytes = b"") -> None:
    extra = [SERVER, ("Contact", "<sip:10.0.0.5:5060>")] if status < 300 else [SERVER]
    if body:
        extra.append(("Content-Type", "application/sdp"))
    p.pbx(respond(b_invite, status, tag=PBX_TAG, extra=extra, body=body), now)


def answered(p: Pump) -> tuple[Request, Response]:
    """A call up to the A-leg 200 (INVITE, 100, 180, 200): the B-leg INVITE and the A-leg 200."""
    b_invite = start(p)
    p.pbx(respond(b_invite, 100), T0 + 0.01)
    assert p.to_phone() == []
    pbx_says(p, b_invite, 180, T0 + 0.1)
    one_response(p.to_phone(), 180)
    pbx_says(p, b_invite, 200, T0 + 2, PBX_SDP)
    a_200 = one_response(p.to_phone(), 200)
    assert p.to_pbx() == []  # the B-leg 2xx is ACKed when the phone's ACK arrives
    return b_invite, a_200


def established(p: Pump) -> tuple[Request, Response, Request]:
    """A confirmed call: also the phone's ACK and the SBC's B-leg ACK, which is returned."""
    b_invite, a_200 = answered(p)
    p.phone(phone_request("ACK", a_200.headers.get("to") or "", 20, "z9hG4bKphone2"), T0 + 2.1)
    b_ack = one_request(p.to_pbx(), "ACK")
    return b_invite, a_200, b_ack


def hidden(p: Pump, *more_internal: str) -> None:
    """The topology-hiding assertion, with the B-leg Call-IDs (the SBC's own, but internal) and
    the PBX's tags added to the internal markers."""
    b_leg = [parse_message(data) for data in p.sent(INTERNAL)]
    ids = {m.call_id for m in b_leg} | {m.from_.tag or "" for m in b_leg if isinstance(m, Request)}
    p.assert_hidden([*INTERNAL_MARKERS, *ids - {""}, *more_internal], EXTERNAL_MARKERS)


# ---------------------------------------------------------------------------------------------


def test_basic_call_bytes() -> None:
    """A phone's INVITE becomes a fresh B-leg INVITE; the PBX's 200 comes back as the SBC's own."""
    p = setup()
    b_invite, a_200 = answered(p)
    assert b_invite.to_bytes() == (
        b"INVITE sip:1002@10.0.0.5:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx5\r\n"
        b"Max-Forwards: 69\r\n"
        b'From: "Alice" <sip:1001@pbx.internal.example>;tag=x2\r\n'
        b"To: <sip:1002@10.0.0.5>\r\n"
        b"Call-ID: x3\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:10.0.0.1:5060>\r\n"
        b"Allow: INVITE, ACK, CANCEL, BYE\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 125\r\n"
        b"\r\n"
        b"v=0\r\n"
        b"o=- 133615103555672 1 IN IP4 10.0.0.1\r\n"
        b"s=-\r\n"
        b"c=IN IP4 192.0.2.150\r\n"
        b"t=0 0\r\n"
        b"m=audio 40000 RTP/AVP 0\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
    )
    assert a_200.to_bytes() == (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bKphone1;rport=5060;"
        b"received=192.0.2.101\r\n"
        b'From: "Alice" <sip:1001@sbc.example.com>;tag=phonetag1\r\n'
        b"To: <sip:1002@sbc.example.com>;tag=x1\r\n"
        b"Call-ID: phone-call-1@192.0.2.101\r\n"
        b"CSeq: 20 INVITE\r\n"
        b"Contact: <sip:203.0.113.10:5060>\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 125\r\n"
        b"\r\n"
        b"v=0\r\n"
        b"o=- 5635568439058 1 IN IP4 203.0.113.10\r\n"
        b"s=-\r\n"
        b"c=IN IP4 10.0.1.50\r\n"
        b"t=0 0\r\n"
        b"m=audio 14562 RTP/AVP 0\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
    )
    hidden(p, b_invite.call_id)


def test_basic_call_caller_hangs_up() -> None:
    """INVITE, 100, 180, 200, ACK, BYE from the caller, 200: the call is set up and torn down
    on both legs, and then forgotten."""
    p = setup()
    b_invite, a_200, b_ack = established(p)
    assert str(b_ack.uri) == "sip:10.0.0.5:5060"  # the PBX's Contact (RFC 3261 12.1.2)
    assert b_ack.call_id == b_invite.call_id and b_ack.cseq.seq == 1
    assert b_ack.to.tag == PBX_TAG and b_ack.top_via is not None
    assert b_ack.top_via.branch != b_invite.top_via.branch  # type: ignore[union-attr]
    assert len(p.b2bua) == 1

    a_to = a_200.headers.get("to") or ""
    p.phone(phone_request("BYE", a_to, 21, "z9hG4bKphone3"), T0 + 60)
    bye_ok = one_response(p.to_phone(), 200)
    assert bye_ok.call_id == "phone-call-1@192.0.2.101" and bye_ok.cseq.method == "BYE"
    b_bye = one_request(p.to_pbx(), "BYE")
    assert b_bye.call_id == b_invite.call_id and b_bye.cseq.seq == 2
    assert b_bye.from_.tag == b_invite.from_.tag and b_bye.to.tag == PBX_TAG
    assert len(p.b2bua) == 1  # until the PBX answers the BYE
    p.pbx(respond(b_bye, 200, extra=[SERVER]), T0 + 60.05)
    assert p.to_phone() == [] and p.to_pbx() == []
    assert len(p.b2bua) == 0
    p.run_until(T0 + 200)  # every transaction ends quietly
    assert p.b2bua.get_timer() is None
    # Nothing is left behind that per-event work would have to walk (no call or route leaks).
    assert not p.b2bua.calls and not p.b2bua._live and not p.b2bua._cancelling
    assert not p.b2bua._routes
    assert p.to_phone() == [] and p.to_pbx() == []
    hidden(p, b_invite.call_id, b_invite.from_.tag or "")


def test_destinations() -> None:
    """Everything for the PBX goes to the PBX address; everything for the phone to its source."""
    p = setup()
    established(p)
    for interface, destination, _ in p.wire:
        assert destination == (("10.0.0.5", 5060) if interface == INTERNAL
                               else ("192.0.2.101", 5060))
    hidden(p)


def test_bye_from_pbx() -> None:
    """A BYE from the PBX is answered 200 and becomes the SBC's own BYE towards the phone."""
    p = setup()
    b_invite, a_200, _ = established(p)
    pbx_bye = (
        "BYE sip:10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKpbxbye1\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {b_invite.headers.get('to')};tag={PBX_TAG}\r\n"
        f"To: {b_invite.headers.get('from')}\r\n"
        f"Call-ID: {b_invite.call_id}\r\n"
        "CSeq: 102 BYE\r\n"
        "User-Agent: Asterisk PBX 20.5.2\r\n"
        "Reason: Q.850;cause=16\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    p.pbx(pbx_bye, T0 + 30)
    ok = one_response(p.to_pbx(), 200)
    assert ok.cseq.method == "BYE" and ok.to.tag == b_invite.from_.tag
    a_bye = one_request(p.to_phone(), "BYE")
    assert a_bye.to_bytes() == (
        b"BYE sip:1001@192.0.2.101:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKx8\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:1002@sbc.example.com>;tag=x1\r\n"
        b'To: "Alice" <sip:1001@sbc.example.com>;tag=phonetag1\r\n'
        b"Call-ID: phone-call-1@192.0.2.101\r\n"
        b"CSeq: 1 BYE\r\n"
        b"Reason: Q.850;cause=16\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    p.phone(respond(a_bye, 200), T0 + 30.1)
    assert len(p.b2bua) == 0
    hidden(p, b_invite.call_id)


def test_busy_relayed_and_acked_on_both_legs() -> None:
    """A 486 from the PBX is ACKed by the SBC on the B-leg and relayed to the phone, whose ACK
    the SBC absorbs."""
    p = setup()
    b_invite = start(p)
    pbx_says(p, b_invite, 486, T0 + 0.4)  # before Timer A (T1) retransmits the INVITE
    b_ack = one_request(p.to_pbx(), "ACK")
    assert b_ack.top_via is not None and b_invite.top_via is not None
    assert b_ack.top_via.branch == b_invite.top_via.branch  # hop by hop (RFC 3261 17.1.1.3)
    busy = one_response(p.to_phone(), 486)
    assert busy.reason == "Busy Here" and busy.to.tag == "x1"
    assert busy.headers.get("server") is None and busy.headers.get("contact") is None
    p.phone(phone_request("ACK", busy.headers.get("to") or "", 20, "z9hG4bKphone1"), T0 + 0.45)
    assert p.to_phone() == [] and p.to_pbx() == []
    assert len(p.b2bua) == 0
    pbx_says(p, b_invite, 486, T0 + 1.5)  # a retransmission: ACKed again, not relayed
    one_request(p.to_pbx(), "ACK")
    assert p.to_phone() == []
    p.run_until(T0 + 100)
    assert p.b2bua.get_timer() is None and p.to_phone() == []
    hidden(p, b_invite.call_id)


def test_cancel_before_answer() -> None:
    """A CANCEL is answered 200, sent on the B-leg, and the PBX's 487 ends up on the A-leg."""
    p = setup()
    b_invite = start(p)
    pbx_says(p, b_invite, 180, T0 + 0.1)
    one_response(p.to_phone(), 180)
    cancel = invite().replace(b"INVITE sip:1002@", b"CANCEL sip:1002@").replace(
        b"CSeq: 20 INVITE", b"CSeq: 20 CANCEL")
    p.phone(cancel, T0 + 3)
    ok = one_response(p.to_phone(), 200)
    assert ok.cseq.method == "CANCEL" and ok.to.tag == "x1"  # RFC 3261 9.2: the INVITE's tag
    b_cancel = one_request(p.to_pbx(), "CANCEL")
    assert b_cancel.uri == b_invite.uri and b_cancel.call_id == b_invite.call_id
    assert b_cancel.headers.get("from") == b_invite.headers.get("from")
    assert b_cancel.headers.get("to") == b_invite.headers.get("to")
    assert b_cancel.cseq.seq == b_invite.cseq.seq
    assert b_cancel.headers.values("via") == b_invite.headers.values("via")[:1]
    p.pbx(respond(b_cancel, 200, tag=PBX_TAG), T0 + 3.01)
    assert p.to_phone() == []
    pbx_says(p, b_invite, 487, T0 + 3.02)
    one_request(p.to_pbx(), "ACK")
    terminated = one_response(p.to_phone(), 487)
    assert terminated.cseq.method == "INVITE"
    assert len(p.b2bua) == 0
    hidden(p, b_invite.call_id)


def test_cancel_waits_for_a_provisional() -> None:
    """A CANCEL before the PBX sent any provisional is held until one arrives (RFC 3261 9.1)."""
    p = setup()
    b_invite = start(p)
    cancel = invite().replace(b"INVITE sip:1002@", b"CANCEL sip:1002@").replace(
        b"CSeq: 20 INVITE", b"CSeq: 20 CANCEL")
    p.phone(cancel, T0 + 0.1)
    one_response(p.to_phone(), 200)
    assert p.to_pbx() == []
    p.pbx(respond(b_invite, 100), T0 + 0.2)
    one_request(p.to_pbx(), "CANCEL")
    hidden(p)


def test_cancel_without_487_gives_up() -> None:
    """When the PBX never finalizes a cancelled INVITE, the phone gets 487 after 64*T1."""
    p = setup()
    b_invite = start(p)
    p.pbx(respond(b_invite, 100), T0 + 0.01)
    cancel = invite().replace(b"INVITE sip:1002@", b"CANCEL sip:1002@").replace(
        b"CSeq: 20 INVITE", b"CSeq: 20 CANCEL")
    p.phone(cancel, T0 + 1)
    one_response(p.to_phone(), 200)
    b_cancel = one_request(p.to_pbx(), "CANCEL")
    p.pbx(respond(b_cancel, 200, tag=PBX_TAG), T0 + 1.01)
    assert p.b2bua.get_timer() is not None
    p.run_until(T0 + 1 + 32 - 0.001)
    assert p.to_phone() == []
    p.run_until(T0 + 1 + 32)
    one_response(p.to_phone(), 487)
    hidden(p)


def test_max_forwards_zero_is_483() -> None:
    """An INVITE with Max-Forwards 0 is answered 483 and nothing reaches the PBX."""
    p = setup()
    p.phone(invite(max_forwards=0), T0)
    too_many = one_response(p.to_phone(), 483)
    assert too_many.reason == "Too Many Hops"
    assert p.to_pbx() == [] and len(p.b2bua) == 0
    hidden(p)


def test_max_forwards_one_is_forwarded_with_zero() -> None:
    """Max-Forwards 1 is decremented to 0 on the B-leg (RFC 3261 16.6 step 3): only a request
    that arrives with 0 is refused (16.3 step 3)."""
    p = setup()
    b_invite = start(p, invite(max_forwards=1))
    assert b_invite.max_forwards == 0
    hidden(p)


def test_unknown_require_is_420() -> None:
    """An INVITE requiring an extension the SBC does not support is answered 420 with
    Unsupported."""
    p = setup()
    p.phone(invite(extra="Require: 100rel, foo\r\n"), T0)
    bad = one_response(p.to_phone(), 420)
    assert bad.headers.get("unsupported") == "100rel, foo"
    assert p.to_pbx() == []
    p.phone(invite(extra="Require: 100rel, foo\r\n"), T0 + 0.3)  # retransmission: same answer
    assert one_response(p.to_phone(), 420).to.tag == bad.to.tag
    hidden(p)


def test_timer_b_gives_408() -> None:
    """When the PBX never answers, Timer B (64*T1) fires and the phone gets 408."""
    p = setup()
    b_invite = start(p)
    p.run_until(T0 + 31.9)
    retransmissions = p.to_pbx()
    assert [m.to_bytes() for m in retransmissions] == [b_invite.to_bytes()] * 6  # A: 0.5..16 s
    assert p.to_phone() == []
    p.run_until(T0 + 32)
    timeout = one_response(p.to_phone(), 408)
    assert timeout.to.tag == "x1"
    assert len(p.b2bua) == 0
    hidden(p, b_invite.call_id)


def test_unknown_dialog_bye_is_481() -> None:
    """A BYE whose tags match no call is answered 481, from either side."""
    p = setup()
    p.phone(phone_request("BYE", "<sip:1002@sbc.example.com>;tag=nope", 5, "z9hG4bKphone9"), T0)
    assert one_response(p.to_phone(), 481).to.tag == "nope"
    b_invite, a_200, _ = established(p)
    p.phone(phone_request("BYE", "<sip:1002@sbc.example.com>;tag=x1", 21, "z9hG4bKphoneA")
            .replace(b"tag=phonetag1", b"tag=other"), T0 + 5)
    one_response(p.to_phone(), 481)
    assert p.to_pbx() == [] and len(p.b2bua) == 1
    hidden(p, b_invite.call_id)


def test_phone_ack_retransmission_resends_b_ack() -> None:
    """A retransmitted 2xx from the PBX after the ACK gets the same B-leg ACK again."""
    p = setup()
    b_invite, _, b_ack = established(p)
    pbx_says(p, b_invite, 200, T0 + 2.5, PBX_SDP)
    assert one_request(p.to_pbx(), "ACK").to_bytes() == b_ack.to_bytes()
    assert p.to_phone() == []
    hidden(p)


def test_pbx_2xx_retransmission_before_ack_is_relayed() -> None:
    """Before the phone's ACK, a retransmitted PBX 2xx is relayed again, byte for byte."""
    p = setup()
    b_invite, a_200 = answered(p)
    pbx_says(p, b_invite, 200, T0 + 2.5, PBX_SDP)
    assert one_response(p.to_phone(), 200).to_bytes() == a_200.to_bytes()
    assert p.to_pbx() == []
    hidden(p)


def test_invite_from_pbx_to_no_registered_user_is_404() -> None:
    """A call from the PBX whose Request-URI names no registration token is not routed: 404
    (the calls to registered users are in test_b2bua_flows.py)."""
    p = setup()
    raw = invite(body=b"")
    for outside, inside in ((b"192.0.2.101", b"10.0.0.5"), (b"Linphone", b"Asterisk"),
                            (b"phone", b"pbx"), (b"sbc.example.com", b"10.0.0.1")):
        raw = raw.replace(outside, inside)
    p.pbx(raw, T0)
    one_response(p.to_pbx(), 404)
    assert p.to_phone() == []
    hidden(p)


def test_unreadable_offer_is_488() -> None:
    """An INVITE whose SDP cannot be parsed is answered 488 and nothing reaches the PBX."""
    p = setup()
    p.phone(invite(body=b"v=0\r\nthis is not sdp\r\n"), T0)
    one_response(p.to_phone(), 488)
    assert p.to_pbx() == [] and len(p.b2bua) == 0
    hidden(p)


def test_missing_ack_tears_the_call_down() -> None:
    """When the phone never ACKs the 200, after 64*T1 the B-leg is ACKed and both legs get a
    BYE (RFC 3261 13.3.1.4)."""
    p = setup()
    b_invite, a_200 = answered(p)
    p.run_until(T0 + 2 + 32)
    to_pbx = p.to_pbx()
    assert [m.method for m in to_pbx if isinstance(m, Request)] == ["ACK", "BYE"]
    a_bye = one_request(p.to_phone(), "BYE")
    assert a_bye.to.tag == "phonetag1" and a_bye.from_.tag == "x1"
    p.phone(respond(a_bye, 200), T0 + 34.1)
    bye = to_pbx[1]
    assert isinstance(bye, Request)
    p.pbx(respond(bye, 200), T0 + 34.2)
    assert len(p.b2bua) == 0
    hidden(p, b_invite.call_id)


def test_bye_before_ack_acks_the_pbx_first() -> None:
    """A BYE from the phone before its ACK: the PBX's 2xx is ACKed before the B-leg BYE."""
    p = setup()
    _, a_200 = answered(p)
    p.phone(phone_request("BYE", a_200.headers.get("to") or "", 21, "z9hG4bKphone3"), T0 + 3)
    one_response(p.to_phone(), 200)
    assert [m.method for m in p.to_pbx() if isinstance(m, Request)] == ["ACK", "BYE"]
    hidden(p)


def test_invite_retransmission_is_absorbed() -> None:
    """A retransmitted INVITE gets the last provisional again and makes no second B-leg."""
    p = setup()
    b_invite = start(p)
    pbx_says(p, b_invite, 180, T0 + 0.1)
    one_response(p.to_phone(), 180)
    p.phone(invite(), T0 + 0.4)
    one_response(p.to_phone(), 180)
    assert p.to_pbx() == [] and len(p.b2bua) == 1
    hidden(p)
