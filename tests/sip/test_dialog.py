"""SIP dialogs (RFC 3261 12): creation, in-dialog requests with exact bytes, CSeq rules, table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sbc.errors import SipParseError
from sbc.ids import CountingIdSource
from sbc.sip.dialog import (
    Dialog,
    DialogError,
    DialogId,
    DialogState,
    DialogTable,
    NewDialog,
    Role,
    initial_request,
    route_request,
)
from sbc.sip.message import Request, Response, build_response, parse_message
from sbc.sip.uri import SipUri, parse_uri

# --- the B leg: the INVITE we send as UAC, and what comes back ---------------------------------

UAC_INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKb1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@atlanta.example.com>;tag=a1\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: c1@192.0.2.10\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:sbc@192.0.2.10:5060;transport=udp>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def uac_invite() -> Request:
    msg = parse_message(UAC_INVITE)
    assert isinstance(msg, Request)
    return msg


def uac_response(
    status: int,
    to_tag: str | None = "b1",
    *,
    record_route: str | None = "<sip:p2.biloxi.example.com;lr>, <sip:p1.atlanta.example.com;lr>",
    contact: str | None = "<sip:bob@192.0.2.20:5062>",
    cseq: str = "1 INVITE",
) -> Response:
    """A response to UAC_INVITE (or another request of its dialog) as the callee sends it."""
    reason = {180: "Ringing", 183: "Session Progress", 200: "OK"}.get(status, "Whatever")
    lines = [
        f"SIP/2.0 {status} {reason}",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKb1",
    ]
    if record_route is not None:
        lines.append(f"Record-Route: {record_route}")
    lines += [
        "From: <sip:alice@atlanta.example.com>;tag=a1",
        "To: Bob <sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: c1@192.0.2.10",
        f"CSeq: {cseq}",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += ["Content-Length: 0", "", ""]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Response)
    return msg


def uac_dialog(status: int = 200, **kwargs) -> Dialog:
    return Dialog.uac(uac_invite(), uac_response(status, **kwargs))


def from_callee(
    method: str,
    seq: int,
    *,
    contact: str | None = None,
    to_tag: str = "a1",
    from_tag: str = "b1",
    call_id: str = "c1@192.0.2.10",
) -> Request:
    """An in-dialog request sent by the callee of UAC_INVITE."""
    lines = [
        f"{method} sip:sbc@192.0.2.10:5060;transport=udp SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKbob" + str(seq),
        "Max-Forwards: 70",
        f"From: Bob <sip:bob@biloxi.example.com>;tag={from_tag}",
        f"To: <sip:alice@atlanta.example.com>;tag={to_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {seq} {method}",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += ["Content-Length: 0", "", ""]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


# --- the A leg: the INVITE we receive as UAS -----------------------------------------------------

UAS_INVITE = (
    b"INVITE sip:+15551234@sbc.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP edge1.example.org;branch=z9hG4bKe1\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKc1\r\n"
    b"Record-Route: <sip:edge1.example.org;lr>\r\n"
    b"Record-Route: <sip:edge2.example.org;lr;ftag=c7>\r\n"
    b"Max-Forwards: 69\r\n"
    b'From: "Carol" <sip:carol@example.org>;tag=c7\r\n'
    b"To: <sip:+15551234@sbc.example.net>\r\n"
    b"Call-ID: x9@198.51.100.7\r\n"
    b"CSeq: 10 INVITE\r\n"
    b"Contact: <sip:carol@198.51.100.7:5060>\r\n"
    b"User-Agent: Carol's phone 1.0\r\n"
    b"P-Asserted-Identity: <sip:carol@example.org>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
SBC_CONTACT = "<sip:sbc@203.0.113.1:5060>"


def uas_invite(data: bytes = UAS_INVITE) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def uas_dialog(status: int = 200, data: bytes = UAS_INVITE) -> tuple[Dialog, Request]:
    invite = uas_invite(data)
    response = build_response(invite, status, to_tag="s1", extra=[("Contact", SBC_CONTACT)])
    return Dialog.uas(invite, response), invite


def from_caller(
    method: str, seq: int, *, contact: str | None = None, to_tag: str = "s1"
) -> Request:
    """An in-dialog request sent by the caller of UAS_INVITE."""
    lines = [
        f"{method} sip:sbc@203.0.113.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKc{seq}{method}",
        "Max-Forwards: 70",
        'From: "Carol" <sip:carol@example.org>;tag=c7',
        f"To: <sip:+15551234@sbc.example.net>;tag={to_tag}",
        "Call-ID: x9@198.51.100.7",
        f"CSeq: {seq} {method}",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += ["Content-Length: 0", "", ""]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


# --- creation (RFC 3261 12.1) --------------------------------------------------------------------


def test_uac_dialog_from_180_is_early():
    """A 180 with a To tag makes an early UAC dialog with RFC 3261 12.1.2 state."""
    d = uac_dialog(180)
    assert d.role is Role.UAC
    assert d.state is DialogState.EARLY
    assert d.id == DialogId("c1@192.0.2.10", "a1", "b1")
    assert d.local_uri == "<sip:alice@atlanta.example.com>"
    assert d.remote_uri == "Bob <sip:bob@biloxi.example.com>"
    assert (d.local_seq, d.remote_seq) == (1, None)
    assert str(d.remote_target) == "sip:bob@192.0.2.20:5062"
    assert [str(u) for u in d.route_set] == [
        "sip:p1.atlanta.example.com;lr",
        "sip:p2.biloxi.example.com;lr",
    ]
    assert d.local_contact == "<sip:sbc@192.0.2.10:5060;transport=udp>"
    assert d.secure is False


def test_uac_dialog_from_200_is_confirmed():
    """A 2xx creates a confirmed dialog directly (RFC 3261 12.1.2)."""
    assert uac_dialog(200).state is DialogState.CONFIRMED


def test_uas_dialog_from_invite_and_response():
    """The UAS dialog takes tags, URIs, CSeq and route set from the INVITE (RFC 3261 12.1.1)."""
    d, _ = uas_dialog(200)
    assert d.role is Role.UAS
    assert d.state is DialogState.CONFIRMED
    assert d.id == DialogId("x9@198.51.100.7", "s1", "c7")
    assert d.local_uri == "<sip:+15551234@sbc.example.net>"
    assert d.remote_uri == '"Carol" <sip:carol@example.org>'
    assert (d.local_seq, d.remote_seq) == (None, 10)
    assert str(d.remote_target) == "sip:carol@198.51.100.7:5060"
    assert [str(u) for u in d.route_set] == [
        "sip:edge1.example.org;lr",
        "sip:edge2.example.org;lr;ftag=c7",
    ]
    assert d.local_contact == SBC_CONTACT
    assert uas_dialog(180)[0].state is DialogState.EARLY


@pytest.mark.parametrize("status,to_tag", [(100, "b1"), (180, None), (486, "b1")])
def test_only_non_failure_responses_with_to_tag_create_dialogs(status, to_tag):
    """A 100, a tagless 1xx or a failure response creates no dialog (RFC 3261 12.1)."""
    with pytest.raises(DialogError):
        Dialog.uac(uac_invite(), uac_response(status, to_tag))


def test_uac_180_without_contact_targets_the_request_uri():
    """A 1xx without Contact makes an early dialog aimed at the Request-URI until the 2xx."""
    d = uac_dialog(180, contact=None)
    assert str(d.remote_target) == "sip:bob@biloxi.example.com"
    d.receive_response(uac_response(200))
    assert str(d.remote_target) == "sip:bob@192.0.2.20:5062"


def test_uac_2xx_without_contact_is_dropped():
    """A dialog-creating 2xx without Contact is malformed: dropped, no answer (RFC 3261 12.1.1)."""
    with pytest.raises(SipParseError) as e:
        uac_dialog(200, contact=None)
    assert e.value.status is None


@pytest.mark.parametrize(
    "contact", [None, "<tel:+15551234>", "<sip:a@198.51.100.7>, <sip:b@198.51.100.7>"]
)
def test_uas_invite_without_one_sip_contact_is_400(contact):
    """An INVITE without exactly one SIP/SIPS Contact gets a 400 (RFC 3261 8.1.1.8)."""
    data = UAS_INVITE.replace(
        b"Contact: <sip:carol@198.51.100.7:5060>\r\n",
        b"" if contact is None else f"Contact: {contact}\r\n".encode(),
    )
    with pytest.raises(SipParseError) as e:
        uas_dialog(200, data)
    assert e.value.status == 400


@pytest.mark.parametrize(
    "scheme,tls,secure", [("sips", True, True), ("sips", False, False), ("sip", True, False)]
)
def test_secure_flag_needs_tls_and_sips(scheme, tls, secure):
    """The secure flag is set only for a SIPS Request-URI over TLS (RFC 3261 12.1.1, 12.1.2)."""
    data = UAS_INVITE.replace(b"INVITE sip:", f"INVITE {scheme}:".encode(), 1)
    invite = uas_invite(data)
    response = build_response(invite, 200, to_tag="s1", extra=[("Contact", SBC_CONTACT)])
    assert Dialog.uas(invite, response, tls=tls).secure is secure
    uac = parse_message(UAC_INVITE.replace(b"INVITE sip:", f"INVITE {scheme}:".encode(), 1))
    assert isinstance(uac, Request)
    assert Dialog.uac(uac, uac_response(200), tls=tls).secure is secure


# --- requests we send (RFC 3261 12.2.1.1), exact bytes -------------------------------------------


def test_uac_bye_loose_routing_bytes():
    """The UAC's BYE goes to the remote target through the reversed Record-Route."""
    d = uac_dialog(200)
    assert d.create_request("BYE").to_bytes() == (
        b"BYE sip:bob@192.0.2.20:5062 SIP/2.0\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:p1.atlanta.example.com;lr>\r\n"
        b"Route: <sip:p2.biloxi.example.com;lr>\r\n"
        b"From: <sip:alice@atlanta.example.com>;tag=a1\r\n"
        b"To: Bob <sip:bob@biloxi.example.com>;tag=b1\r\n"
        b"Call-ID: c1@192.0.2.10\r\n"
        b"CSeq: 2 BYE\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    assert d.local_seq == 2
    assert d.state is DialogState.TERMINATED


def test_uas_bye_bytes_keep_record_route_order_and_copy_nothing_foreign():
    """The UAS's BYE uses Record-Route in order, CSeq 1, and no header of the INVITE."""
    d, _ = uas_dialog(200)
    assert d.create_request("BYE").to_bytes() == (
        b"BYE sip:carol@198.51.100.7:5060 SIP/2.0\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:edge1.example.org;lr>\r\n"
        b"Route: <sip:edge2.example.org;lr;ftag=c7>\r\n"
        b"From: <sip:+15551234@sbc.example.net>;tag=s1\r\n"
        b'To: "Carol" <sip:carol@example.org>;tag=c7\r\n'
        b"Call-ID: x9@198.51.100.7\r\n"
        b"CSeq: 1 BYE\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize("side", ["uac", "uas"])
def test_without_record_route_requests_go_straight_to_the_target(side):
    """With an empty route set the Request-URI is the remote target and there is no Route."""
    if side == "uac":
        d = uac_dialog(200, record_route=None)
    else:
        d, _ = uas_dialog(
            200,
            UAS_INVITE.replace(
                b"Record-Route: <sip:edge1.example.org;lr>\r\n"
                b"Record-Route: <sip:edge2.example.org;lr;"
                b"ftag=c7>\r\n",
                b"",
            ),
        )
    assert d.route_set == []
    request = d.create_request("INFO")
    assert str(request.uri) == str(d.remote_target)
    assert "route" not in request.headers


def test_reinvite_bytes_carry_contact_body_and_next_cseq():
    """A re-INVITE carries the local Contact, the caller's headers and body, CSeq + 1."""
    d = uac_dialog(200)
    request = d.create_request(
        "INVITE", body=b"v=0\r\n", headers=[("Content-Type", "application/sdp")]
    )
    assert request.to_bytes() == (
        b"INVITE sip:bob@192.0.2.20:5062 SIP/2.0\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:p1.atlanta.example.com;lr>\r\n"
        b"Route: <sip:p2.biloxi.example.com;lr>\r\n"
        b"From: <sip:alice@atlanta.example.com>;tag=a1\r\n"
        b"To: Bob <sip:bob@biloxi.example.com>;tag=b1\r\n"
        b"Call-ID: c1@192.0.2.10\r\n"
        b"CSeq: 2 INVITE\r\n"
        b"Contact: <sip:sbc@192.0.2.10:5060;transport=udp>\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
        b"v=0\r\n"
    )
    assert [str(d.create_request(m).cseq) for m in ("UPDATE", "INFO")] == ["3 UPDATE", "4 INFO"]
    assert d.local_seq == 4


def test_ack_for_2xx_reuses_the_invite_cseq():
    """The ACK for a 2xx has the INVITE's CSeq number and leaves local_seq alone (13.2.2.4)."""
    d = uac_dialog(200)
    assert d.create_ack(1).to_bytes() == (
        b"ACK sip:bob@192.0.2.20:5062 SIP/2.0\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:p1.atlanta.example.com;lr>\r\n"
        b"Route: <sip:p2.biloxi.example.com;lr>\r\n"
        b"From: <sip:alice@atlanta.example.com>;tag=a1\r\n"
        b"To: Bob <sip:bob@biloxi.example.com>;tag=b1\r\n"
        b"Call-ID: c1@192.0.2.10\r\n"
        b"CSeq: 1 ACK\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    assert d.local_seq == 1
    reinvite = d.create_request("INVITE")
    assert str(d.create_ack(reinvite.cseq.seq).cseq) == "2 ACK"


# RFC 3261 12.2.1.1: remote target sip:user@remoteua, route set
# <sip:proxy1>,<sip:proxy2>,<sip:proxy3;lr>,<sip:proxy4>.
STRICT_BYE = (
    b"BYE sip:proxy1 SIP/2.0\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:proxy2>\r\n"
    b"Route: <sip:proxy3;lr>\r\n"
    b"Route: <sip:proxy4>\r\n"
    b"Route: <sip:user@remoteua>\r\n"
)


def test_strict_routing_uac_follows_the_rfc_3261_12_2_1_1_example():
    """First route without lr: it becomes the Request-URI and the target the last Route."""
    d = uac_dialog(
        200,
        record_route="<sip:proxy4>, <sip:proxy3;lr>, <sip:proxy2>, <sip:proxy1>",
        contact="<sip:user@remoteua>",
    )
    assert d.create_request("BYE").to_bytes().startswith(STRICT_BYE)


def test_strict_routing_uas_follows_the_rfc_3261_12_2_1_1_example():
    """The UAS, whose route set is the Record-Route in order, builds the same request."""
    data = (
        UAS_INVITE.replace(
            b"Record-Route: <sip:edge1.example.org;lr>\r\n",
            b"Record-Route: <sip:proxy1>,<sip:proxy2>\r\n",
        )
        .replace(
            b"Record-Route: <sip:edge2.example.org;lr;ftag=c7>\r\n",
            b"Record-Route: <sip:proxy3;lr>,<sip:proxy4>\r\n",
        )
        .replace(b"<sip:carol@198.51.100.7:5060>", b"<sip:user@remoteua>")
    )
    d, _ = uas_dialog(200, data)
    assert d.create_request("BYE").to_bytes().startswith(STRICT_BYE)


# RFC 3261 16.12.1.2: P3 (p3.middle.com) strict-routes; the others loose-route.
RR_16_12_1_2 = (
    "<sip:p4.domain.com;lr>, <sip:p3.middle.com>, <sip:p2.domain.com;lr>, <sip:p1.example.com;lr>"
)


def test_rfc_3261_16_12_1_2_example_both_sides():
    """Through a strict-routing proxy mid-path, each side's first route is loose: both send to
    the remote target with the whole route set, each in its own order (16.12.1.2)."""
    caller = uac_dialog(200, record_route=RR_16_12_1_2, contact="<sip:callee@u2.domain.com>")
    assert (
        caller.create_request("BYE")
        .to_bytes()
        .startswith(
            b"BYE sip:callee@u2.domain.com SIP/2.0\r\n"
            b"Max-Forwards: 70\r\n"
            b"Route: <sip:p1.example.com;lr>\r\n"
            b"Route: <sip:p2.domain.com;lr>\r\n"
            b"Route: <sip:p3.middle.com>\r\n"
            b"Route: <sip:p4.domain.com;lr>\r\n"
            b"From:"
        )
    )
    data = (
        UAS_INVITE.replace(
            b"Record-Route: <sip:edge1.example.org;lr>\r\n",
            f"Record-Route: {RR_16_12_1_2}\r\n".encode(),
        )
        .replace(b"Record-Route: <sip:edge2.example.org;lr;ftag=c7>\r\n", b"")
        .replace(b"<sip:carol@198.51.100.7:5060>", b"sip:caller@u1.example.com")
    )
    callee, _ = uas_dialog(200, data)
    assert (
        callee.create_request("BYE")
        .to_bytes()
        .startswith(
            b"BYE sip:caller@u1.example.com SIP/2.0\r\n"
            b"Max-Forwards: 70\r\n"
            b"Route: <sip:p4.domain.com;lr>\r\n"
            b"Route: <sip:p3.middle.com>\r\n"
            b"Route: <sip:p2.domain.com;lr>\r\n"
            b"Route: <sip:p1.example.com;lr>\r\n"
            b"From:"
        )
    )


def test_request_uri_loses_method_param_and_headers():
    """A Request-URI loses the method parameter and headers, a Route its headers (19.1.1)."""
    target = parse_uri("sip:bob@192.0.2.20;method=INVITE;transport=tcp?Subject=hi")
    assert route_request(target, []) == (parse_uri("sip:bob@192.0.2.20;transport=tcp"), [])
    strict = [parse_uri("sip:p1;method=BYE?X=1"), parse_uri("sip:p2;lr;method=BYE?X=2")]
    uri, routes = route_request(target, strict)
    assert str(uri) == "sip:p1"
    assert routes == ["<sip:p2;lr;method=BYE>", "<sip:bob@192.0.2.20;transport=tcp>"]
    uri, routes = route_request(target, strict[1:])
    assert str(uri) == "sip:bob@192.0.2.20;transport=tcp"
    assert routes == ["<sip:p2;lr;method=BYE>"]


def test_initial_request_bytes_with_counting_ids_and_outbound_proxy():
    """An out-of-dialog INVITE gets Call-ID and From tag from the IdSource and a preloaded
    Route (RFC 3261 8.1.1, 8.1.2)."""
    ids = CountingIdSource("x")
    target = parse_uri("sip:bob@biloxi.example.com")
    assert isinstance(target, SipUri)
    request = initial_request(
        ids,
        "INVITE",
        target,
        local_uri="<sip:alice@atlanta.example.com>",
        remote_uri="<sip:bob@biloxi.example.com>",
        local_contact="<sip:sbc@192.0.2.10:5060>",
        route_set=[parse_uri("sip:proxy.example;lr")],
    )
    assert request.to_bytes() == (
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:proxy.example;lr>\r\n"
        b"From: <sip:alice@atlanta.example.com>;tag=x1\r\n"
        b"To: <sip:bob@biloxi.example.com>\r\n"
        b"Call-ID: x2\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:sbc@192.0.2.10:5060>\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize("method", ["ACK", "CANCEL"])
def test_create_request_refuses_ack_and_cancel(method):
    """ACK and CANCEL reuse the INVITE's CSeq, so create_request does not build them."""
    with pytest.raises(DialogError):
        uac_dialog(200).create_request(method)


def test_early_dialog_refuses_reinvite_and_callee_bye():
    """No re-INVITE in an early dialog (14.1); the callee may not BYE one (15), the caller may."""
    with pytest.raises(DialogError):
        uac_dialog(180).create_request("INVITE")
    early_uas, _ = uas_dialog(180)
    with pytest.raises(DialogError):
        early_uas.create_request("BYE")
    assert uac_dialog(180).create_request("BYE").method == "BYE"
    assert uac_dialog(180).create_request("UPDATE").headers.get("contact") is not None


def test_terminated_dialog_builds_only_a_bye_retry():
    """After our BYE nothing but another BYE (a retry with credentials) can be built."""
    d = uac_dialog(200)
    d.create_request("BYE")
    assert str(d.create_request("BYE").cseq) == "3 BYE"
    with pytest.raises(DialogError):
        d.create_request("INFO")
    with pytest.raises(DialogError):
        d.create_ack(1)


# --- requests we receive (RFC 3261 12.2.2) -------------------------------------------------------


def test_in_order_requests_update_remote_seq():
    """Increasing CSeq numbers are accepted and recorded, gaps included."""
    d = uac_dialog(200)
    for seq in (1, 2, 7):
        d.receive_request(from_callee("INFO", seq))
        assert d.remote_seq == seq


@pytest.mark.parametrize("seq", [9, 10])
def test_lower_or_equal_cseq_is_500(seq):
    """A CSeq not above the remote sequence is out of order: 500, dialog unchanged."""
    d, _ = uas_dialog(200)
    with pytest.raises(SipParseError) as e:
        d.receive_request(from_caller("INFO", seq))
    assert e.value.status == 500
    assert d.remote_seq == 10


def test_ack_with_the_invite_cseq_is_accepted_again_and_again():
    """The ACK (and its retransmissions) carries the INVITE's number and is accepted."""
    d, _ = uas_dialog(200)
    for _ in range(2):
        d.receive_request(from_caller("ACK", 10))
    assert d.remote_seq == 10
    d.receive_request(from_caller("INFO", 11))
    d.receive_request(from_caller("ACK", 10))  # a late one, after a newer request
    assert d.remote_seq == 11


def test_target_refresh_request_replaces_remote_target():
    """A re-INVITE or UPDATE with a Contact replaces the remote target; INFO does not."""
    d, _ = uas_dialog(200)
    d.receive_request(from_caller("INFO", 11, contact="<sip:carol@192.0.2.99>"))
    assert str(d.remote_target) == "sip:carol@198.51.100.7:5060"
    d.receive_request(from_caller("INVITE", 12, contact="<sip:carol@192.0.2.99>"))
    assert str(d.remote_target) == "sip:carol@192.0.2.99"
    d.receive_request(from_caller("UPDATE", 13, contact="<sip:carol@192.0.2.98;transport=tcp>"))
    assert str(d.create_request("BYE").uri) == "sip:carol@192.0.2.98;transport=tcp"
    d2, _ = uas_dialog(200)
    d2.receive_request(from_caller("UPDATE", 11))  # no Contact: target unchanged
    assert str(d2.remote_target) == "sip:carol@198.51.100.7:5060"


def test_target_refresh_with_bad_contact_is_400_and_changes_nothing():
    """A re-INVITE whose Contact is not one SIP URI gets 400; CSeq and target stay put."""
    d, _ = uas_dialog(200)
    with pytest.raises(SipParseError) as e:
        d.receive_request(from_caller("INVITE", 11, contact="<tel:+15551234>"))
    assert e.value.status == 400
    assert (d.remote_seq, str(d.remote_target)) == (10, "sip:carol@198.51.100.7:5060")


def test_2xx_to_target_refresh_replaces_remote_target():
    """A 2xx to our re-INVITE with a Contact replaces the remote target (12.2.1.2)."""
    d = uac_dialog(200)
    d.create_request("INVITE")
    d.receive_response(
        uac_response(
            200,
            contact="<sip:bob@192.0.2.77>",
            cseq="2 INVITE",
            record_route="<sip:elsewhere.example;lr>",
        )
    )
    assert str(d.remote_target) == "sip:bob@192.0.2.77"
    assert [str(u) for u in d.route_set] == [  # the route set never changes once confirmed
        "sip:p1.atlanta.example.com;lr",
        "sip:p2.biloxi.example.com;lr",
    ]


def test_bye_received_terminates_and_later_requests_get_481():
    """A received BYE terminates the dialog; a later request is answered 481, an ACK dropped."""
    d, _ = uas_dialog(200)
    d.receive_request(from_caller("BYE", 11))
    assert d.state is DialogState.TERMINATED
    with pytest.raises(SipParseError) as e:
        d.receive_request(from_caller("INFO", 12))
    assert e.value.status == 481
    with pytest.raises(SipParseError) as e:
        d.receive_request(from_caller("ACK", 10))
    assert e.value.status is None


@pytest.mark.parametrize("status", [408, 481])
def test_408_or_481_to_an_in_dialog_request_terminates(status):
    """A 481 or 408 to a request within the dialog ends it (RFC 3261 12.2.1.2)."""
    d = uac_dialog(200)
    d.create_request("INFO")
    d.receive_response(uac_response(status, cseq="2 INFO"))
    assert d.state is DialogState.TERMINATED


def test_2xx_confirms_early_dialog_and_recomputes_route_set():
    """The 2xx confirms the early dialog; route set and target come from it (13.2.2.4)."""
    d = uac_dialog(183)
    d.receive_response(
        uac_response(180, contact="<sip:bob@192.0.2.50>", record_route="<sip:other.example;lr>")
    )
    assert d.state is DialogState.EARLY
    assert str(d.remote_target) == "sip:bob@192.0.2.20:5062"  # a later 1xx changes nothing
    d.receive_response(
        uac_response(
            200,
            record_route="<sip:p3.example;lr>, <sip:p1.example;lr>",
            contact="<sip:bob@192.0.2.21>",
        )
    )
    assert d.state is DialogState.CONFIRMED
    assert [str(u) for u in d.route_set] == ["sip:p1.example;lr", "sip:p3.example;lr"]
    assert str(d.remote_target) == "sip:bob@192.0.2.21"


def test_failure_to_initial_invite_terminates_early_dialog():
    """A 300-699 to the initial INVITE ends the early dialog (RFC 3261 12.3)."""
    d = uac_dialog(180)
    d.receive_response(uac_response(486))
    assert d.state is DialogState.TERMINATED


@pytest.mark.parametrize(
    "status,state",
    [(200, DialogState.CONFIRMED), (487, DialogState.TERMINATED), (183, DialogState.EARLY)],
)
def test_uas_final_response_confirms_or_terminates(status, state):
    """The UAS's 2xx confirms its early dialog, a failure ends it, a 1xx changes nothing."""
    d, invite = uas_dialog(180)
    d.send_response(build_response(invite, status, to_tag="s1"))
    assert d.state is state


# --- the dialog table ----------------------------------------------------------------------------


def test_table_matches_requests_in_both_directions():
    """A request matches by Call-ID, To tag = local tag, From tag = remote tag (12.2.2)."""
    table = DialogTable()
    uas, _ = uas_dialog(200)
    uac = uac_dialog(200)
    table.add(uas)
    table.add(uac)
    assert table.match_request(from_caller("BYE", 11)) is uas
    assert table.match_request(from_callee("BYE", 1)) is uac
    assert table.match_request(uas_invite()) is None  # no To tag: outside any dialog
    assert len(table) == 2 and uac.id in table and set(table) == {uac, uas}


def test_table_matches_responses_in_both_directions():
    """A response matches by Call-ID, From tag = local tag, To tag = remote tag."""
    table = DialogTable()
    uas, invite = uas_dialog(200)
    uac = uac_dialog(200)
    table.add(uas)
    table.add(uac)
    assert table.match_response(uac_response(200, cseq="2 INFO")) is uac
    bye = uas.create_request("BYE")
    carol_ok = build_response(bye, 200)
    assert table.match_response(carol_ok) is uas
    assert table.match_response(uac_response(180, to_tag=None)) is None
    assert table.match_response(uac_response(481, to_tag="zz", cseq="2 INFO")) is None


@pytest.mark.parametrize("method,status", [("INFO", 481), ("BYE", 481), ("ACK", None)])
def test_unknown_dialog_is_481(method, status):
    """A request with a To tag no dialog has gets 481; an ACK is dropped (RFC 3261 12.2.2)."""
    table = DialogTable()
    table.add(uac_dialog(200))
    with pytest.raises(SipParseError) as e:
        table.match_request(from_callee(method, 5, to_tag="nope"))
    assert e.value.status == status
    with pytest.raises(SipParseError):
        table.match_request(from_callee(method, 5, call_id="other@192.0.2.10"))


def test_forking_makes_two_early_dialogs_and_200_confirms_one():
    """Two 180s with different To tags make two early dialogs; a 200 from one confirms it."""
    table = DialogTable()
    invite = uac_invite()
    first = uac_response(180, "b1")
    match = table.match_response(first)
    assert match == NewDialog(DialogId("c1@192.0.2.10", "a1", "b1"), ())
    d1 = Dialog.uac(invite, first)
    table.add(d1)
    assert table.match_response(uac_response(183, "b1")) is d1

    second = uac_response(180, "b2", contact="<sip:bob@192.0.2.30>")
    match = table.match_response(second)
    assert isinstance(match, NewDialog)
    assert match.id == DialogId("c1@192.0.2.10", "a1", "b2")
    assert match.siblings == (d1,)
    d2 = Dialog.uac(invite, second)
    table.add(d2)
    assert table.siblings("c1@192.0.2.10", "a1") == [d1, d2]

    ok = uac_response(200, "b2", contact="<sip:bob@192.0.2.30>")
    matched = table.match_response(ok)
    assert matched is d2
    d2.receive_response(ok)
    assert (d1.state, d2.state) == (DialogState.EARLY, DialogState.CONFIRMED)
    assert str(d2.create_ack(1).uri) == "sip:bob@192.0.2.30"


def test_table_add_twice_and_remove():
    """A dialog id is added once; removing forgets it and its sibling entry."""
    table = DialogTable()
    d = uac_dialog(200)
    table.add(d)
    with pytest.raises(DialogError):
        table.add(uac_dialog(200))
    table.remove(d)
    table.remove(d)
    assert len(table) == 0 and table.get(d.id) is None
    assert table.siblings(d.call_id, d.local_tag) == []
    with pytest.raises(SipParseError):
        table.match_request(from_callee("BYE", 1))


# --- property: the CSeq order of RFC 3261 12.2.2 ----------------------------------------------

_METHODS = ["INFO", "OPTIONS", "UPDATE", "MESSAGE", "NOTIFY", "ACK", "CANCEL"]


@given(
    st.lists(st.tuples(st.sampled_from(_METHODS), st.integers(0, 40)), max_size=30), st.booleans()
)
def test_dialog_accepts_exactly_the_increasing_cseqs(requests, as_uas):
    """Any request but ACK/CANCEL is accepted iff its CSeq is above every one accepted before;
    remote_seq is then the highest accepted (RFC 3261 12.2.2)."""
    if as_uas:
        d, _ = uas_dialog(200)
        make = from_caller
    else:
        d = uac_dialog(200)
        make = from_callee
    expected = d.remote_seq
    for method, seq in requests:
        request = make(method, seq)
        accept = method in ("ACK", "CANCEL") or expected is None or seq > expected
        if accept:
            d.receive_request(request)
            if method not in ("ACK", "CANCEL"):
                expected = seq
        else:
            with pytest.raises(SipParseError) as e:
                d.receive_request(request)
            assert e.value.status == 500
        assert d.remote_seq == expected
    assert d.state is DialogState.CONFIRMED
