"""The B2BUA beyond the basic call: registration relay, calls from the PBX to registered users
over their flow, admission of callers, and requests relayed inside a call (re-INVITE, INFO,
OPTIONS), each pumped in memory with a scripted phone and PBX."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from sbc.gateway.b2bua import (
    B2BUA,
    EXTERNAL,
    INTERNAL,
    Origin,
    Trunk,
)
from sbc.ids import CountingIdSource
from sbc.sip.message import Request, Response, parse_message

from .pump import PHONE, Pump, respond
from .test_b2bua import (
    EXTERNAL_MARKERS,
    INTERNAL_MARKERS,
    PBX_SDP,
    PBX_TAG,
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

STRICT = replace(SETTINGS, unknown_source="reject")
CHALLENGE = 'Digest realm="asterisk",nonce="1700000000/abc",algorithm=MD5,qop="auth"'
CREDENTIALS = ('Digest username="1001",realm="asterisk",nonce="1700000000/abc",'
               'uri="sip:sbc.example.com",response="0123456789abcdef0123456789abcdef",'
               'algorithm=MD5,cseq=1,qop=auth,nc=00000001,cnonce="c1"')
PHONE_TCP = Origin(EXTERNAL, "tcp", "192.0.2.101", 40001)


def setup(settings=STRICT) -> Pump:  # type: ignore[no-untyped-def]
    return Pump(B2BUA(settings, CountingIdSource("x")))


def feed(p: Pump, message: bytes | Request | Response, origin: Origin, now: float) -> None:
    p._feed(message, origin, now)


def register(cseq: int, *, expires: int = 3600, auth: bool = False, port: int = 5060,
             transport: str = "UDP", branch: str = "") -> bytes:
    authorization = f"Authorization: {CREDENTIALS}\r\n" if auth else ""
    return (
        "REGISTER sip:sbc.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 192.0.2.101:{port};branch=z9hG4bKreg{branch or cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@sbc.example.com>;tag=regtag1\r\n"
        "To: <sip:1001@sbc.example.com>\r\n"
        "Call-ID: reg-call-1@192.0.2.101\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:1001@192.0.2.101:{port};transport={transport.lower()}>"
        f";expires={expires}\r\n"
        "User-Agent: Linphone/5.2.0\r\n"
        "Supported: path, outbound\r\n"
        f"{authorization}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def registered(p: Pump, origin: Origin = PHONE, now: float = T0) -> str:
    """Register the phone through a 401 challenge; returns the token the PBX holds."""
    transport = origin.transport.upper()
    feed(p, register(1, port=origin.port, transport=transport), origin, now)
    b_reg = one_request(p.to_pbx(), "REGISTER")
    p.pbx(respond(b_reg, 401, tag="pbxreg1",
                  extra=[("WWW-Authenticate", CHALLENGE), SERVER]), now + 0.01)
    one_response(p.to_phone(), 401)
    feed(p, register(2, auth=True, port=origin.port, transport=transport), origin, now + 0.1)
    b_reg2 = one_request(p.to_pbx(), "REGISTER")
    contact = b_reg2.headers.get("contact") or ""
    p.pbx(respond(b_reg2, 200, tag="pbxreg2", extra=[("Contact", contact), SERVER]), now + 0.11)
    one_response(p.to_phone(), 200)
    return contact.split("sip:", 1)[1].split("@", 1)[0]


def pbx_invite(token: str, *, call_id: str = "pbx-call-1@10.0.0.5", branch: str = "z9hG4bKpbxI1",
               body: bytes = PBX_SDP, host: str = "10.0.0.1") -> bytes:
    return (
        f"INVITE sip:{token}@{host}:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.5:5060;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Reception" <sip:200@pbx.internal.example>;tag=pbxfrom1\r\n'
        "To: <sip:1001@pbx.internal.example>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 102 INVITE\r\n"
        "Contact: <sip:asterisk@10.0.0.5:5060>\r\n"
        "User-Agent: Asterisk PBX 20.5.2\r\n"
        "Supported: 100rel, timer, replaces, norefersub\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# A REGISTER carries the client's AOR (its domain) to the PBX: that is the registration itself.
EXTERNAL_IDENTITY = [m for m in EXTERNAL_MARKERS if m != "sbc.example.com"]


def hidden(p: Pump, *more_internal: str) -> None:
    b_leg = [parse_message(data) for data in p.sent(INTERNAL)]
    ids = {m.call_id for m in b_leg}
    p.assert_hidden([*INTERNAL_MARKERS, *ids, *more_internal], EXTERNAL_IDENTITY)


# -- registration relay -----------------------------------------------------------------------


def test_register_relayed_through_the_challenge_with_token_contact() -> None:
    """The PBX sees the SBC's token Contact, a Call-ID of the SBC's, the client's credentials
    unchanged; the client sees the PBX's challenge unchanged and its own Contact back."""
    p = setup()
    p.phone(register(1), T0)
    b_reg = one_request(p.to_pbx(), "REGISTER")
    assert b_reg.to_bytes() == (
        b"REGISTER sip:sbc.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx4\r\n"
        b"Max-Forwards: 69\r\n"
        b"From: <sip:1001@sbc.example.com>;tag=regtag1\r\n"
        b"To: <sip:1001@sbc.example.com>\r\n"
        + f"Call-ID: {b_reg.call_id}\r\n".encode() +
        b"CSeq: 1 REGISTER\r\n"
        b"Contact: <sip:x1@10.0.0.1:5060;transport=udp>;expires=3600\r\n"
        b"Expires: 3600\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert len(b_reg.call_id) == 32 and "reg-call-1" not in b_reg.call_id
    p.pbx(respond(b_reg, 401, tag="pbxreg1", extra=[("WWW-Authenticate", CHALLENGE), SERVER]),
          T0 + 0.01)
    challenge = one_response(p.to_phone(), 401)
    assert challenge.headers.get("www-authenticate") == CHALLENGE
    assert challenge.to.tag is not None and challenge.cseq.seq == 1

    p.phone(register(2, auth=True), T0 + 0.1)
    b_reg2 = one_request(p.to_pbx(), "REGISTER")
    assert b_reg2.headers.get("authorization") == CREDENTIALS
    assert b_reg2.call_id == b_reg.call_id and b_reg2.cseq.seq == 2  # one registration
    assert b_reg2.headers.get("contact") == b_reg.headers.get("contact")  # the same token
    p.pbx(respond(b_reg2, 200, tag="pbxreg2",
                  extra=[("Contact", "<sip:x1@10.0.0.1:5060;transport=udp>;expires=3600"),
                         ("Expires", "3600"), SERVER]), T0 + 0.11)
    ok = one_response(p.to_phone(), 200)
    assert ok.headers.values("contact") == ["<sip:1001@192.0.2.101:5060;transport=udp>;expires=120"]
    assert ok.headers.get("expires") == "120"  # the client is told the NAT-friendly bound
    binding = p.b2bua.registrar.binding("x1")
    assert binding is not None and binding.flow == PHONE
    hidden(p, "pbxreg", "x1")


def test_register_refresh_is_answered_locally_and_failures_are_counted() -> None:
    p = setup()
    registered(p)
    # A refresh 60 s later with nothing changed: the PBX registration (600 s) is fresh.
    p.phone(register(3, auth=True, branch="r3"), T0 + 60)
    ok = one_response(p.to_phone(), 200)
    assert ok.headers.get("expires") == "120"
    assert p.to_pbx() == []
    assert p.b2bua.counters["register.local"] == 1

    # Wrong password: the PBX challenges a request that carried credentials -> a failure.
    p.phone(register(4, auth=True, expires=1800, branch="r4"), T0 + 61)
    b_reg = one_request(p.to_pbx(), "REGISTER")
    p.pbx(respond(b_reg, 401, tag="pbxreg3", extra=[("WWW-Authenticate", CHALLENGE)]), T0 + 61.1)
    one_response(p.to_phone(), 401)
    assert p.b2bua.registrar.auth_failures.by_ip("192.0.2.101", 60, T0 + 62) == 1
    assert p.b2bua.registrar.auth_failures.by_user("1001", 60, T0 + 62) == 1
    assert p.b2bua.counters["register.auth_failure"] == 1


def test_register_too_brief_and_pbx_silence() -> None:
    p = setup()
    p.phone(register(1, expires=20), T0)
    too_brief = one_response(p.to_phone(), 423)
    assert too_brief.headers.get("min-expires") == "60"
    assert p.to_pbx() == []
    p.phone(register(2, branch="q2"), T0 + 1)
    one_request(p.to_pbx(), "REGISTER")
    p.run_until(T0 + 1 + 40)  # Timer F: the PBX never answered
    assert one_response(p.to_phone(), 408).cseq.seq == 2


# -- calls from the PBX to registered users ---------------------------------------------------


def test_pbx_calls_a_registered_user_over_its_flow() -> None:
    p = setup()
    token = registered(p, PHONE_TCP)
    p.pbx(pbx_invite(token), T0 + 10)
    one_response(p.to_pbx(), 100)
    b_invite = one_request(p.to_phone(), "INVITE")
    dest = [d for iface, d, _ in p.wire if iface == EXTERNAL][-1]
    assert dest == PHONE_TCP.address  # the flow the REGISTER came on
    assert str(b_invite.uri) == "sip:1001@192.0.2.101:40001;transport=tcp"  # its Contact
    assert b_invite.headers.get("to") == "<sip:1001@sbc.example.com>"  # its AOR
    assert b_invite.from_.uri.user == "200" and b_invite.from_.display_name == '"Reception"'
    assert b_invite.headers.get("contact") == "<sip:203.0.113.10:5060;transport=tcp>"
    assert b_invite.top_via is not None and b_invite.top_via.transport == "TCP"
    assert b_invite.headers.get("supported") == "timer, norefersub"  # 100rel/replaces stay
    assert b_invite.headers.get("user-agent") is None

    # The phone answers; the PBX gets the SBC's internal Contact; ACK and BYE flow through.
    phone_200 = respond(b_invite, 200, tag="phonetag9",
                        extra=[("Contact", "<sip:1001@192.0.2.101:40001;transport=tcp>"),
                               ("Content-Type", "application/sdp")], body=PHONE_SDP)
    feed(p, phone_200, PHONE_TCP, T0 + 11)
    a_200 = one_response(p.to_pbx(), 200)
    assert a_200.headers.get("contact") == "<sip:10.0.0.1:5060>"
    assert b"o=- " in a_200.body and b"192.0.2.101" not in a_200.body.split(b"\r\nc=")[0]
    a_to = a_200.headers.get("to") or ""
    p.pbx((
        "ACK sip:10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKpbxA1;rport\r\n"
        'Max-Forwards: 70\r\nFrom: "Reception" <sip:200@pbx.internal.example>;tag=pbxfrom1\r\n'
        f"To: {a_to}\r\nCall-ID: pbx-call-1@10.0.0.5\r\nCSeq: 102 ACK\r\n"
        "Content-Length: 0\r\n\r\n").encode(), T0 + 11.1)
    ack = one_request(p.to_phone(), "ACK")
    assert str(ack.uri) == "sip:1001@192.0.2.101:40001;transport=tcp"
    bye = phone_request("BYE", b_invite.headers.get("from") or "", 1, "z9hG4bKphB")
    bye = bye.replace(b"tag=phonetag1", b"tag=phonetag9").replace(
        b"Call-ID: phone-call-1@192.0.2.101", f"Call-ID: {b_invite.call_id}".encode()).replace(
        b"SIP/2.0/UDP 192.0.2.101:5060", b"SIP/2.0/TCP 192.0.2.101:40001")
    feed(p, bye, PHONE_TCP, T0 + 30)
    one_response(p.to_phone(), 200)
    pbx_bye = one_request(p.to_pbx(), "BYE")
    assert pbx_bye.call_id == "pbx-call-1@10.0.0.5"
    p.pbx(respond(pbx_bye, 200), T0 + 30.1)
    assert len(p.b2bua) == 0
    # "asterisk" is the PBX's Contact user: it must not reach the phone either.
    hidden(p, "pbx-call-1", "pbxfrom1", "asterisk@")


def test_pbx_call_to_unknown_token_or_closed_flow() -> None:
    p = setup()
    p.pbx(pbx_invite("notatoken"), T0)
    assert one_response(p.to_pbx(), 404).to.tag is not None
    token = registered(p, PHONE_TCP, T0 + 1)
    p.b2bua.flow_closed(PHONE_TCP, T0 + 2)
    p.pbx(pbx_invite(token, call_id="pbx-call-2", branch="z9hG4bKpbxI2"), T0 + 3)
    one_response(p.to_pbx(), 480)  # RFC 5626 5.3: never sent anywhere else
    assert p.to_phone() == []
    assert p.b2bua.counters["undeliverable.480"] == 1


def test_pbx_call_to_expired_registration_is_480() -> None:
    p = setup()
    token = registered(p)
    p.run_until(T0 + 200)  # the client was granted 120 s and did not refresh
    p.pbx(pbx_invite(token), T0 + 201)
    one_response(p.to_pbx(), 480)
    assert p.to_phone() == []


def test_pbx_options_to_a_user_is_relayed_and_to_the_sbc_answered() -> None:
    p = setup()
    token = registered(p)
    options = pbx_invite(token, body=b"").replace(b"INVITE", b"OPTIONS").replace(
        b"Content-Type: application/sdp\r\n", b"")
    p.pbx(options, T0 + 5)
    out = one_request(p.to_phone(), "OPTIONS")
    assert str(out.uri) == "sip:1001@192.0.2.101:5060;transport=udp"
    p.phone(respond(out, 200, tag="phoneopt", extra=[("Allow", "INVITE, ACK, BYE")]), T0 + 5.1)
    answer = one_response(p.to_pbx(), 200)
    assert answer.headers.get("allow") == "INVITE, ACK, BYE"
    assert answer.call_id == "pbx-call-1@10.0.0.5"
    # OPTIONS to the SBC itself (no user): answered locally, from either side.
    p.pbx(options.replace(f"sip:{token}@".encode(), b"sip:").replace(b"pbxI1", b"pbxO2")
          .replace(b"pbx-call-1", b"pbx-call-2"), T0 + 6)
    assert one_response(p.to_pbx(), 200).headers.get("allow") is not None
    hidden(p, "pbx-call-1", "pbxfrom1")


# -- admission --------------------------------------------------------------------------------


def test_unknown_source_is_refused_registered_and_trunk_sources_call() -> None:
    p = setup()
    p.phone(invite(), T0)
    one_response(p.to_phone(), 403)
    assert p.to_pbx() == [] and p.b2bua.counters["refused.external"] == 1

    dropping = setup(replace(STRICT, unknown_source="drop"))
    dropping.phone(invite(), T0)
    assert dropping.to_phone() == [] and dropping.to_pbx() == []

    registered(p, now=T0 + 1)  # the same flow is registered now: its calls are admitted
    p.phone(invite().replace(b"phone-call-1", b"phone-call-7").replace(b"phone1", b"phone7"),
            T0 + 2)
    one_response(p.to_phone(), 100)
    one_request(p.to_pbx(), "INVITE")

    trunk = Trunk("carrier", (ipaddress.ip_network("192.0.2.0/24"),), "tls",
                  "sip.carrier.example")
    t = setup(replace(STRICT, trunks=(trunk,)))
    tls_phone = Origin(EXTERNAL, "tls", "192.0.2.101", 5061, ("other.example",))
    feed(t, invite(), tls_phone, T0)
    one_response(t.to_phone(), 403)  # right network, wrong certificate
    carrier = Origin(EXTERNAL, "tls", "192.0.2.101", 5062, ("sip.carrier.example",))
    feed(t, invite().replace(b"phone1", b"phone8").replace(b"phone-call-1", b"phone-call-8"),
         carrier, T0 + 1)
    one_response(t.to_phone(), 100)
    one_request(t.to_pbx(), "INVITE")


def test_policy_answers_outside_tell_the_rule_engine_what_they_answered() -> None:
    """A 403 the SBC gives an unregistered caller and a 404 the PBX gives are each reported
    to the rule engine with the request's Request-URI user and User-Agent, for rules that
    look at who was probed and with what tool."""
    from sbc.policy.model import ResponseSent

    p = setup()
    probe = invite().replace(b"To: <sip:1002@", b"To: <sip:9999@")
    p.phone(probe, T0)
    one_response(p.to_phone(), 403)
    registered(p, now=T0 + 1)
    p.phone(invite().replace(b"phone-call-1", b"phone-call-2").replace(b"phone1", b"phone2"),
            T0 + 2)
    one_response(p.to_phone(), 100)
    b_invite = one_request(p.to_pbx(), "INVITE")
    p.pbx(respond(b_invite, 404, tag="pbx404", extra=[SERVER]), T0 + 2.1)
    one_response(p.to_phone(), 404)
    facts = [(f.method, f.status, f.ruri_user, f.to_user, f.user_agent)
             for f in p.b2bua.policy_events if isinstance(f, ResponseSent)]
    assert facts == [("INVITE", 403, "1002", "9999", "Linphone/5.2.0"),
                     ("REGISTER", 401, None, "1001", "Linphone/5.2.0"),  # the PBX's challenge
                     ("INVITE", 404, "1002", "1002", "Linphone/5.2.0")]


def parsed(raw: bytes) -> Request:
    message = parse_message(raw)
    assert isinstance(message, Request)
    return message


def test_a_source_registered_elsewhere_is_admitted_only_with_the_edge_flag() -> None:
    """An INVITE from an unregistered flow is refused, and admitted (counted) when the edge
    says its address is registered in the shared store; the flag opens nothing on the internal
    interface, and a flow registered here needs no flag."""
    for policy, refused in (("reject", [403]), ("drop", [])):
        p = setup(replace(STRICT, unknown_source=policy))
        p.b2bua.receive(parsed(invite()), PHONE, T0)
        p._collect()
        assert [m.status for m in p.to_phone() if isinstance(m, Response)] == refused
        assert p.to_pbx() == []
        other = invite().replace(b"phone-call-1", b"phone-call-2").replace(b"phone1", b"phone2")
        p.b2bua.receive(parsed(other), PHONE, T0 + 1, registered_elsewhere=True)
        p._collect()
        one_response(p.to_phone(), 100)
        one_request(p.to_pbx(), "INVITE")
        assert p.b2bua.counters["admitted.registered_elsewhere"] == 1

    p = setup()
    token = registered(p)
    stranger = Origin(INTERNAL, "udp", "10.0.0.99", 5060)
    p.b2bua.receive(parsed(pbx_invite(token)), stranger, T0 + 5, registered_elsewhere=True)
    p._collect()
    one_response(p.to_pbx(), 403)
    p.b2bua.receive(parsed(invite()), PHONE, T0 + 6, registered_elsewhere=True)
    p._collect()
    one_response(p.to_phone(), 100)
    assert "admitted.registered_elsewhere" not in p.b2bua.counters  # admitted as registered


def test_registration_matters_only_where_admission_depends_on_it() -> None:
    """The edge looks up other nodes' registrations only for an INVITE outside a dialog from
    an outside source that is neither a trunk nor admitted anyway by unknown_source."""
    trunk = Trunk("carrier", (ipaddress.ip_network("198.51.100.0/24"),))
    b2bua = B2BUA(replace(STRICT, trunks=(trunk,)), CountingIdSource("x"))
    new_call = parsed(invite())
    in_call = parsed(invite().replace(b"To: <sip:1002@sbc.example.com>",
                                      b"To: <sip:1002@sbc.example.com>;tag=b2b1"))
    assert b2bua.registration_matters(new_call, PHONE)
    assert not b2bua.registration_matters(in_call, PHONE)
    assert not b2bua.registration_matters(parsed(register(1)), PHONE)
    options = phone_request("OPTIONS", "<sip:sbc.example.com>", 1, "z9hG4bKo")
    assert not b2bua.registration_matters(parsed(options), PHONE)
    assert not b2bua.registration_matters(new_call, Origin(EXTERNAL, "udp", "198.51.100.7", 5060))
    assert not b2bua.registration_matters(new_call, Origin(INTERNAL, "udp", "10.0.0.5", 5060))
    allowing = B2BUA(replace(STRICT, unknown_source="allow"), CountingIdSource("x"))
    assert not allowing.registration_matters(new_call, PHONE)


def test_binding_changes_are_reported_for_the_edge() -> None:
    """A registration through the challenge is one live change on the phone's flow, with the
    client-side deadline; the flow closing is one change that says it is gone."""
    p = setup()
    token = registered(p, PHONE_TCP)
    (change,) = p.b2bua.binding_changes
    assert (change.reason, change.token, change.aor, change.flow, change.source,
            change.expires_at) == ("registered", token, "sip:1001@sbc.example.com", PHONE_TCP,
                                   PHONE_TCP.address, T0 + 0.11 + 120)
    p.b2bua.binding_changes.clear()
    p.b2bua.flow_closed(PHONE_TCP, T0 + 10)
    assert [(c.reason, c.token, c.expires_at) for c in p.b2bua.binding_changes] == [
        ("flow_closed", token, None)]


def test_internal_requests_only_from_the_pbx() -> None:
    p = setup()
    token = registered(p)
    stranger = Origin(INTERNAL, "udp", "10.0.0.99", 5060)
    feed(p, pbx_invite(token), stranger, T0 + 5)
    one_response(p.to_pbx(), 403)
    assert p.to_phone() == []


def test_methods_outside_a_call() -> None:
    p = setup()
    for method, status in (("SUBSCRIBE", 405), ("FOO", 501)):
        raw = phone_request(method, "<sip:1002@sbc.example.com>", 1, f"z9hG4bK{method}")
        p.phone(raw, T0)
        answer = one_response(p.to_phone(), status)
        if status == 405:
            assert "REGISTER" in (answer.headers.get("allow") or "")
    p.phone(phone_request("OPTIONS", "<sip:sbc.example.com>", 1, "z9hG4bKopt"), T0)
    assert one_response(p.to_phone(), 200).headers.get("accept") == "application/sdp"
    assert p.to_pbx() == []


# -- inside a call ----------------------------------------------------------------------------

HOLD_SDP = PHONE_SDP.replace(b"o=alice 111 222", b"o=alice 111 223") + b"a=sendonly\r\n"


def phone_in_dialog(method: str, a_200: Response, cseq: int, branch: str, *,
                    body: bytes = b"", ctype: str = "application/sdp") -> bytes:
    raw = phone_request(method, a_200.headers.get("to") or "", cseq, branch)
    contact = "Contact: <sip:1001@192.0.2.101:5060>\r\n" if method == "INVITE" else ""
    head = raw[: -len(b"Content-Length: 0\r\n\r\n")].decode()
    ct = f"Content-Type: {ctype}\r\n" if body else ""
    return f"{head}{contact}{ct}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_reinvite_from_the_phone_hold_and_resume() -> None:
    p = setup(SETTINGS)
    b_invite, a_200, _ = established(p)
    p.phone(phone_in_dialog("INVITE", a_200, 21, "z9hG4bKhold", body=HOLD_SDP), T0 + 10)
    one_response(p.to_phone(), 100)
    b_re = one_request(p.to_pbx(), "INVITE")
    assert b_re.call_id == b_invite.call_id and b_re.cseq.seq == 2
    assert b_re.to.tag == PBX_TAG and str(b_re.uri) == "sip:10.0.0.5:5060"
    assert b_re.headers.get("contact") == "<sip:10.0.0.1:5060>"
    assert b"o=- 133615103555672 2 IN IP4 10.0.0.1\r\n" in b_re.body  # same id, version + 1
    assert b"a=sendonly" in b_re.body

    held = PBX_SDP.replace(b"1954329214", b"1954329215") + b"a=recvonly\r\n"
    p.pbx(respond(b_re, 200, extra=[("Contact", "<sip:10.0.0.5:5060>"),
                                    ("Content-Type", "application/sdp"), SERVER], body=held),
          T0 + 10.1)
    a_re_200 = one_response(p.to_phone(), 200)
    assert a_re_200.cseq.seq == 21 and a_re_200.headers.get("contact") == "<sip:203.0.113.10:5060>"
    assert b"o=- 5635568439058 2 IN IP4 203.0.113.10" in a_re_200.body
    assert b"a=recvonly" in a_re_200.body
    assert p.to_pbx() == []  # the PBX's 2xx is ACKed when the phone ACKs
    p.phone(phone_request("ACK", a_200.headers.get("to") or "", 21, "z9hG4bKholdack"), T0 + 10.2)
    b_ack = one_request(p.to_pbx(), "ACK")
    assert b_ack.cseq.seq == 2 and b_ack.to.tag == PBX_TAG
    # A retransmitted PBX 2xx is ACKed again with the same ACK.
    p.pbx(respond(b_re, 200, extra=[("Contact", "<sip:10.0.0.5:5060>"),
                                    ("Content-Type", "application/sdp")], body=held), T0 + 10.7)
    assert one_request(p.to_pbx(), "ACK").to_bytes() == b_ack.to_bytes()
    assert p.b2bua.calls[(EXTERNAL, "phone-call-1@192.0.2.101", "x1")].reinvite is None

    # Resume, then a re-INVITE from the PBX side while the phone's is pending: 491.
    p.phone(phone_in_dialog("INVITE", a_200, 22, "z9hG4bKresume", body=PHONE_SDP), T0 + 20)
    one_response(p.to_phone(), 100)
    b_resume = one_request(p.to_pbx(), "INVITE")
    assert b"o=- 133615103555672 3 IN IP4" in b_resume.body  # changed again: version 3
    pbx_re = (
        f"INVITE sip:10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKpbxre1\r\nMax-Forwards: 70\r\n"
        f"From: <sip:1002@10.0.0.5>;tag={PBX_TAG}\r\nTo: {b_invite.headers.get('from')}\r\n"
        f"Call-ID: {b_invite.call_id}\r\nCSeq: 7 INVITE\r\n"
        "Contact: <sip:10.0.0.5:5060>\r\nContent-Length: 0\r\n\r\n").encode()
    p.pbx(pbx_re, T0 + 20.01)
    one_response(p.to_pbx(), 491)
    hidden(p, b_invite.call_id)


def test_a_reinvite_2xx_to_a_udp_sender_is_sent_again_until_its_ack() -> None:
    """RFC 3261 13.3.1.4: the SBC, the UAS of the phone's re-INVITE over UDP, sends its 2xx
    again at T1, 2*T1, ... (at most T2 apart) until the phone's ACK; a 2xx the phone never ACKs
    is sent until the server transaction's Timer L (64*T1), and then the call is ended."""

    def reinvited() -> tuple[Pump, Response, bytes]:
        p = setup(SETTINGS)
        _b_invite, a_200, _ = established(p)
        p.phone(phone_in_dialog("INVITE", a_200, 21, "z9hG4bKhold", body=HOLD_SDP), T0 + 10)
        one_response(p.to_phone(), 100)
        b_re = one_request(p.to_pbx(), "INVITE")
        p.pbx(respond(b_re, 200, extra=[("Contact", "<sip:10.0.0.5:5060>"),
                                        ("Content-Type", "application/sdp")], body=PBX_SDP),
              T0 + 10)
        return p, a_200, one_response(p.to_phone(), 200).to_bytes()

    def resent(p: Pump, first: bytes, start: float, end: float) -> list[float]:
        """When (seconds after the 2xx) the 2xx was sent again, checked every 0.25 s."""
        times = []
        for step in range(int(start * 4) + 1, int(end * 4) + 1):
            p.run_until(T0 + 10 + step / 4)
            for m in p.to_phone():
                assert m.to_bytes() == first
                times.append(step / 4)
        return times

    p, a_200, first = reinvited()
    assert resent(p, first, 0, 2) == [0.5, 1.5]
    p.phone(phone_request("ACK", a_200.headers.get("to") or "", 21, "z9hG4bKholdack"), T0 + 12)
    one_request(p.to_pbx(), "ACK")
    assert resent(p, first, 2, 40) == []
    assert not p.b2bua._relay_2xx

    p, _a_200, first = reinvited()
    assert resent(p, first, 0, 31.75) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    p.run_until(T0 + 10 + 32)  # Timer L: the PBX's 2xx is ACKed, the call hung up on both legs
    assert [m.method for m in p.to_pbx() if isinstance(m, Request)] == ["ACK", "BYE"]
    bye = one_request(p.to_phone(), "BYE")
    assert bye.headers.get("reason") == 'SIP;cause=408;text="No ACK for the 2xx"'
    assert not p.b2bua._relay_2xx and p.b2bua.counters["reinvite.no_ack"] == 1

    # A BYE instead of the ACK: the call ends, and Timer L later finds nothing left to end.
    p, a_200, first = reinvited()
    p.phone(phone_in_dialog("BYE", a_200, 22, "z9hG4bKbyenoack"), T0 + 11)
    assert one_request(p.to_pbx(), "BYE").cseq.method == "BYE"
    p.run_until(T0 + 10 + 40)
    assert "reinvite.no_ack" not in p.b2bua.counters and not p.b2bua._relay_2xx


def pbx_in_dialog(method: str, b_invite: Request, cseq: int, branch: str,
                  extra: str = "", body: bytes = b"") -> bytes:
    """A request from the PBX in the B-leg dialog (its To tag is PBX_TAG); a ``body`` is
    SDP."""
    ct = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:10.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.5:5060;branch={branch}\r\nMax-Forwards: 70\r\n"
        f"From: {b_invite.headers.get('to')};tag={PBX_TAG}\r\n"
        f"To: {b_invite.headers.get('from')}\r\n"
        f"Call-ID: {b_invite.call_id}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:10.0.0.5:5060>\r\n{extra}{ct}"
        f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_update_and_info_cross_while_the_call_rings() -> None:
    """RFC 3311 / RFC 6086 in early dialogs: after the PBX's 180, its UPDATE without SDP (a
    connected-line update) reaches the phone in the A-leg's early dialog and the phone's 200
    comes back; the phone's INFO crosses the other way; a BYE of the early dialog is not
    relayed (481).  After the answer both legs' CSeq numbers go on from there."""
    p = setup(SETTINGS)
    b_invite = start(p)
    pbx_says(p, b_invite, 180, T0 + 0.1)
    a_180 = one_response(p.to_phone(), 180)
    a_tag = a_180.to.tag
    pai = "P-Asserted-Identity: <sip:2001@pbx.internal.example>\r\n"
    p.pbx(pbx_in_dialog("UPDATE", b_invite, 103, "z9hG4bKpbxupd1", pai), T0 + 0.2)
    a_update = one_request(p.to_phone(), "UPDATE")
    assert a_update.call_id == "phone-call-1@192.0.2.101" and a_update.from_.tag == a_tag
    assert a_update.to.tag == "phonetag1" and a_update.cseq.seq == 1
    assert str(a_update.uri) == "sip:1001@192.0.2.101:5060"  # the phone's Contact
    assert a_update.headers.get("contact") == "<sip:203.0.113.10:5060>"
    p.phone(respond(a_update, 200, extra=[("Contact", "<sip:1001@192.0.2.101:5060>")]),
            T0 + 0.3)
    ok = one_response(p.to_pbx(), 200)
    assert ok.cseq.seq == 103 and ok.cseq.method == "UPDATE"

    info = phone_request("INFO", a_180.headers.get("to") or "", 21, "z9hG4bKinfo1")
    p.phone(info, T0 + 0.4)
    b_info = one_request(p.to_pbx(), "INFO")
    assert b_info.to.tag == PBX_TAG and b_info.cseq.seq == 2  # after the INVITE's 1
    p.pbx(respond(b_info, 200), T0 + 0.5)
    one_response(p.to_phone(), 200)
    p.phone(phone_request("BYE", a_180.headers.get("to") or "", 22, "z9hG4bKearlybye"), T0 + 0.6)
    one_response(p.to_phone(), 481)
    assert p.to_pbx() == []

    pbx_says(p, b_invite, 200, T0 + 2, PBX_SDP)
    a_200 = one_response(p.to_phone(), 200)
    assert a_200.to.tag == a_tag
    p.phone(phone_request("ACK", a_200.headers.get("to") or "", 20, "z9hG4bKphone2"), T0 + 2.1)
    one_request(p.to_pbx(), "ACK")
    p.phone(phone_in_dialog("INFO", a_200, 23, "z9hG4bKinfo2", body=b"Signal=5\r\n",
                            ctype="application/dtmf-relay"), T0 + 3)
    b_info2 = one_request(p.to_pbx(), "INFO")
    assert b_info2.cseq.seq == 3  # the early INFO's 2, then 3
    p.pbx(respond(b_info2, 200), T0 + 3.1)
    one_response(p.to_phone(), 200)
    p.pbx(pbx_in_dialog("BYE", b_invite, 104, "z9hG4bKpbxbye9"), T0 + 4)
    assert one_request(p.to_phone(), "BYE").cseq.seq == 2  # the early UPDATE's 1, then 2
    hidden(p, b_invite.call_id)


def test_reinvite_from_the_pbx_and_bye_while_pending() -> None:
    p = setup(SETTINGS)
    b_invite, a_200, _ = established(p)
    pbx_re = (
        f"INVITE sip:10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKpbxre1\r\nMax-Forwards: 70\r\n"
        f"From: <sip:1002@10.0.0.5>;tag={PBX_TAG}\r\nTo: {b_invite.headers.get('from')}\r\n"
        f"Call-ID: {b_invite.call_id}\r\nCSeq: 7 INVITE\r\n"
        "Contact: <sip:10.0.0.5:5062>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(PBX_SDP)}\r\n\r\n").encode() + PBX_SDP
    p.pbx(pbx_re, T0 + 10)
    one_response(p.to_pbx(), 100)
    a_re = one_request(p.to_phone(), "INVITE")
    assert a_re.call_id == "phone-call-1@192.0.2.101" and a_re.from_.tag == "x1"
    assert a_re.to.tag == "phonetag1" and a_re.cseq.seq == 1  # the SBC's first on the A-leg
    assert str(a_re.uri) == "sip:1001@192.0.2.101:5060"
    assert a_re.headers.get("contact") == "<sip:203.0.113.10:5060>"
    # The phone hangs up instead of answering: the pending re-INVITE gets 487 at the PBX.
    p.phone(phone_request("BYE", a_200.headers.get("to") or "", 21, "z9hG4bKbye2"), T0 + 11)
    one_response(p.to_phone(), 200)
    to_pbx = p.to_pbx()
    assert [m.status for m in to_pbx if isinstance(m, Response)] == [487]
    assert [m.method for m in to_pbx if isinstance(m, Request)] == ["BYE"]
    hidden(p, b_invite.call_id)


def test_info_and_options_inside_a_call_are_relayed() -> None:
    p = setup(SETTINGS)
    b_invite, a_200, _ = established(p)
    dtmf = b"Signal=5\r\nDuration=160\r\n"
    p.phone(phone_in_dialog("INFO", a_200, 21, "z9hG4bKinfo", body=dtmf,
                            ctype="application/dtmf-relay"), T0 + 5)
    assert p.to_phone() == []  # no 100 for a non-INVITE
    info = one_request(p.to_pbx(), "INFO")
    assert info.body == dtmf and info.content_type == "application/dtmf-relay"
    assert info.cseq.seq == 2 and info.call_id == b_invite.call_id
    p.pbx(respond(info, 200, extra=[SERVER]), T0 + 5.1)
    ok = one_response(p.to_phone(), 200)
    assert ok.cseq.seq == 21 and ok.cseq.method == "INFO"

    # A body of another type does not cross (it could carry anything).
    p.phone(phone_in_dialog("INFO", a_200, 22, "z9hG4bKinfo2", body=b"<x>10.9.9.9</x>",
                            ctype="application/xml"), T0 + 6)
    info2 = one_request(p.to_pbx(), "INFO")
    assert info2.body == b"" and info2.headers.get("content-type") is None
    p.pbx(respond(info2, 200), T0 + 6.1)
    one_response(p.to_phone(), 200)

    # OPTIONS from the PBX inside the call reaches the phone; the phone's 200 comes back.
    pbx_opt = (
        f"OPTIONS sip:10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKpbxopt\r\nMax-Forwards: 70\r\n"
        f"From: <sip:1002@10.0.0.5>;tag={PBX_TAG}\r\nTo: {b_invite.headers.get('from')}\r\n"
        f"Call-ID: {b_invite.call_id}\r\nCSeq: 8 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    p.pbx(pbx_opt, T0 + 7)
    a_opt = one_request(p.to_phone(), "OPTIONS")
    p.phone(respond(a_opt, 200), T0 + 7.1)
    assert one_response(p.to_pbx(), 200).cseq.seq == 8

    # Out of order CSeq: 500, nothing relayed.
    p.phone(phone_in_dialog("INFO", a_200, 21, "z9hG4bKinfo3", body=dtmf,
                            ctype="application/dtmf-relay"), T0 + 8)
    one_response(p.to_phone(), 500)
    assert p.to_pbx() == []
    hidden(p, b_invite.call_id)


def test_in_dialog_request_from_another_address_is_481() -> None:
    """A request with the call's tags but from another source is not the phone: 481."""
    p = setup(SETTINGS)
    _, a_200, _ = established(p)
    spoofer = Origin(EXTERNAL, "udp", "198.51.100.66", 5060)
    feed(p, phone_request("BYE", a_200.headers.get("to") or "", 21, "z9hG4bKspoof"), spoofer,
         T0 + 5)
    one_response(p.to_phone(), 481)
    assert p.to_pbx() == [] and len(p.b2bua) == 1


def test_reinvite_timeout_gives_408() -> None:
    p = setup(SETTINGS)
    b_invite, a_200, _ = established(p)
    p.phone(phone_in_dialog("INVITE", a_200, 21, "z9hG4bKhold2", body=HOLD_SDP), T0 + 10)
    one_response(p.to_phone(), 100)
    one_request(p.to_pbx(), "INVITE")
    p.run_until(T0 + 10 + 33)
    assert 408 in [m.status for m in p.to_phone() if isinstance(m, Response)]
    del b_invite



def test_a_leg_2xx_retransmitted_when_the_b_leg_is_reliable() -> None:
    """The PBX over TCP never retransmits its 200, so the SBC retransmits the phone's (UDP)
    200 itself: after T1, 2*T1, 4*T1, ... until the ACK (RFC 3261 13.3.1.4)."""
    tcp_pbx = replace(SETTINGS, pbx=replace(SETTINGS.pbx, transport="tcp"))
    p = setup(tcp_pbx)
    p.phone(invite(), T0)
    one_response(p.to_phone(), 100)
    b_invite = one_request(p.to_pbx(), "INVITE")
    pbx_tcp = Origin(INTERNAL, "tcp", "10.0.0.5", 5060)
    feed(p, respond(b_invite, 200, tag=PBX_TAG,
                    extra=[("Contact", "<sip:10.0.0.5:5060;transport=tcp>"),
                           ("Content-Type", "application/sdp")], body=PBX_SDP), pbx_tcp, T0 + 1)
    a_200 = one_response(p.to_phone(), 200)
    p.run_until(T0 + 1 + 0.5 + 1.0 + 2.0)  # three retransmissions: at +0.5, +1.5, +3.5
    again = p.to_phone()
    assert [m.to_bytes() for m in again] == [a_200.to_bytes()] * 3
    p.phone(phone_request("ACK", a_200.headers.get("to") or "", 20, "z9hG4bKackr"), T0 + 4.6)
    one_request(p.to_pbx(), "ACK")
    p.run_until(T0 + 30)
    assert p.to_phone() == []  # no more after the ACK


def test_pbx_call_to_a_number_goes_to_the_trunk_of_the_longest_prefix() -> None:
    from sbc.gateway.b2bua import TrunkRoute

    carrier = Origin(EXTERNAL, "udp", "198.51.100.20", 5060)
    premium = Origin(EXTERNAL, "udp", "198.51.100.30", 5070)
    routed = setup(replace(STRICT, routes=(
        TrunkRoute("", carrier, "carrier"), TrunkRoute("+4420", premium, "london"),
    )))
    routed.pbx(pbx_invite("+442071234567"), T0)
    one_response(routed.to_pbx(), 100)
    out = one_request(routed.to_phone(), "INVITE")
    assert str(out.uri) == "sip:+442071234567@198.51.100.30:5070"
    assert out.headers.get("to") == "<sip:+442071234567@198.51.100.30>"
    assert out.from_.uri.host == "203.0.113.10"  # the SBC's external address, not the PBX's
    assert [d for i, d, _ in routed.wire if i == EXTERNAL] == [premium.address]
    routed.pbx(pbx_invite("0033123", call_id="pbx-call-2", branch="z9hG4bKpbxI2"), T0 + 1)
    one_response(routed.to_pbx(), 100)
    assert str(one_request(routed.to_phone(), "INVITE").uri) == "sip:0033123@198.51.100.20:5060"
    assert routed.b2bua.counters["routed.london"] == 1
    assert routed.b2bua.counters["routed.carrier"] == 1
    hidden(routed, "pbx-call", "pbxfrom1", "asterisk@")

    unrouted = setup()  # no route: a number that is no token is 404
    unrouted.pbx(pbx_invite("+442071234567"), T0)
    one_response(unrouted.to_pbx(), 404)


def test_calls_carry_their_trunk_and_end_by_trunk() -> None:
    """A call in from a trunk's network and a PBX call routed out to a trunk each carry that
    trunk's name in their ticks, their end and their record; ``end_calls`` by trunk hangs up
    the calls of that trunk only."""
    from sbc.gateway.b2bua import TrunkRoute
    from sbc.policy.model import CallEnded

    london = Origin(EXTERNAL, "udp", "198.51.100.30", 5070)
    carrier = Trunk("carrier", (ipaddress.ip_network("192.0.2.0/24"),))
    p = setup(replace(STRICT, trunks=(carrier,), routes=(TrunkRoute("+4420", london, "london"),)))
    established(p)  # from PHONE, inside the carrier's network
    p.pbx(pbx_invite("+442071234567"), T0 + 3)
    one_response(p.to_pbx(), 100)
    out = one_request(p.to_phone(), "INVITE")
    p.b2bua.receive(respond(out, 200, tag="lon1", body=PBX_SDP, extra=[
        ("Contact", "<sip:gw@198.51.100.30:5070>"), ("Content-Type", "application/sdp")]),
        london, T0 + 3.1)
    p._collect()
    one_response(p.to_pbx(), 200)

    ticks = p.b2bua.call_ticks(T0 + 60, 60.0)
    assert sorted((t.call_id, t.trunk) for t in ticks) == [
        ("pbx-call-1@10.0.0.5", "london"), ("phone-call-1@192.0.2.101", "carrier")]
    assert p.b2bua.end_calls("trunk", "nobody", T0 + 61) == 0
    assert p.to_phone() == [] and p.to_pbx() == []
    assert p.b2bua.end_calls("trunk", "carrier", T0 + 61) == 1
    p._collect()
    bye_out = one_request(p.to_phone(), "BYE")
    assert str(bye_out.uri) == "sip:1001@192.0.2.101:5060"
    bye_in = one_request(p.to_pbx(), "BYE")
    p.phone(respond(bye_out, 200), T0 + 61.1)
    p.pbx(respond(bye_in, 200), T0 + 61.1)
    ended = [e for e in p.b2bua.policy_events if isinstance(e, CallEnded)]
    assert [(e.call_id, e.trunk, e.status) for e in ended] == [
        ("phone-call-1@192.0.2.101", "carrier", 200)]
    (record,) = p.b2bua.records
    assert (record["call_id"], record["trunk"], record["status"], record["end_reason"]) == (
        "phone-call-1@192.0.2.101", "carrier", 200, "ended by policy")
    assert [t.trunk for t in p.b2bua.call_ticks(T0 + 62, 60.0)] == ["london"]


def test_a_closed_flow_fails_what_waits_on_it() -> None:
    """The phone's TCP connection closes while it rings: the PBX gets 480 at once, not after
    Timer B; a trunk that cannot be reached gives 503."""
    p = setup()
    token = registered(p, PHONE_TCP)
    p.pbx(pbx_invite(token), T0 + 10)
    one_response(p.to_pbx(), 100)
    b_invite = one_request(p.to_phone(), "INVITE")
    feed(p, respond(b_invite, 180, tag="ring1"), PHONE_TCP, T0 + 10.1)
    one_response(p.to_pbx(), 180)
    p.b2bua.flow_closed(PHONE_TCP, T0 + 11)
    p._collect()
    assert one_response(p.to_pbx(), 480).cseq.method == "INVITE"
    assert len(p.b2bua) == 0

    from sbc.gateway.b2bua import Send, TrunkRoute

    trunk = Origin(EXTERNAL, "tcp", "198.51.100.20", 5060)
    t = setup(replace(STRICT, routes=(TrunkRoute("", trunk, "carrier"),)))
    t.pbx(pbx_invite("0800123"), T0)
    one_response(t.to_pbx(), 100)
    out = one_request(t.to_phone(), "INVITE")
    t.b2bua.send_failed(Send(EXTERNAL, "tcp", trunk.address, out), T0 + 0.01)
    t._collect()
    one_response(t.to_pbx(), 503)


def test_refer_inside_a_call_is_405() -> None:
    """REFER carries a Refer-To of one leg: not relayed until the B2BUA translates it."""
    p = setup(SETTINGS)
    _, a_200, _ = established(p)
    p.phone(phone_in_dialog("REFER", a_200, 21, "z9hG4bKrefer"), T0 + 5)
    answer = one_response(p.to_phone(), 405)
    assert "INVITE" in (answer.headers.get("allow") or "")
    assert p.to_pbx() == []


def test_timer_c_cancels_a_call_that_rings_too_long() -> None:
    p = setup(replace(SETTINGS, ring_timeout=60.0))
    p.phone(invite(), T0)
    one_response(p.to_phone(), 100)
    b_invite = one_request(p.to_pbx(), "INVITE")
    p.pbx(respond(b_invite, 180, tag=PBX_TAG), T0 + 0.1)
    one_response(p.to_phone(), 180)
    p.run_until(T0 + 59.9)
    assert p.to_phone() == [] and p.to_pbx() == []
    p.run_until(T0 + 60)
    assert one_response(p.to_phone(), 408).to.tag == "x1"
    cancel = one_request(p.to_pbx(), "CANCEL")
    assert cancel.cseq.seq == b_invite.cseq.seq
    p.pbx(respond(cancel, 200), T0 + 60.1)
    p.pbx(respond(b_invite, 487, tag=PBX_TAG), T0 + 60.2)
    assert p.to_phone() == []  # the 487 is not relayed: the caller has its 408
    assert len(p.b2bua) == 0
    assert p.b2bua.counters["timeout.ringing"] == 1


def test_cancel_of_a_reinvite_waits_for_a_provisional() -> None:
    """The phone CANCELs its re-INVITE before the PBX said anything: 200 at once, and the
    CANCEL towards the PBX only once its re-INVITE has a provisional (RFC 3261 9.1)."""
    p = setup(SETTINGS)
    _, a_200, _ = established(p)
    reinvite = phone_in_dialog("INVITE", a_200, 21, "z9hG4bKhold3", body=HOLD_SDP)
    p.phone(reinvite, T0 + 10)
    one_response(p.to_phone(), 100)
    b_re = one_request(p.to_pbx(), "INVITE")
    cancel = (reinvite.split(b"\r\n\r\n")[0].replace(b"INVITE sip:", b"CANCEL sip:", 1)
              .replace(b"CSeq: 21 INVITE", b"CSeq: 21 CANCEL")
              .replace(b"Content-Type: application/sdp\r\n", b"")
              .replace(f"Content-Length: {len(HOLD_SDP)}".encode(), b"Content-Length: 0")
              + b"\r\n\r\n")
    p.phone(cancel, T0 + 10.1)
    assert one_response(p.to_phone(), 200).cseq.method == "CANCEL"
    assert p.to_pbx() == []
    p.pbx(respond(b_re, 100), T0 + 10.2)
    b_cancel = one_request(p.to_pbx(), "CANCEL")
    assert b_cancel.cseq.seq == b_re.cseq.seq and b_cancel.top_via == b_re.top_via
    p.pbx(respond(b_cancel, 200), T0 + 10.3)
    p.pbx(respond(b_re, 487), T0 + 10.4)
    assert one_response(p.to_phone(), 487).cseq.seq == 21
