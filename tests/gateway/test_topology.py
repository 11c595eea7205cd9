"""Topology hiding: only end-to-end headers cross legs; SDP origins are the SBC's own."""

from pathlib import Path

from sbc.gateway.topology import crossing_headers, hide_sdp_origin, hide_sdp_session
from sbc.media.sdp import parse_sdp
from sbc.sip.message import parse_message

CORPUS = Path(__file__).parent.parent / "fixtures" / "sip-corpus"


def test_only_end_to_end_headers_cross():
    """From an Asterisk INVITE, only session headers cross; routing, ids and banners stay."""
    msg = parse_message((CORPUS / "asterisk-invite-pai.sip").read_bytes())
    names = [n.lower() for n, _ in crossing_headers(msg.headers)]
    for hidden in ("via", "contact", "call-id", "from", "to", "cseq", "max-forwards",
                   "user-agent", "server", "p-asserted-identity", "content-length",
                   "remote-party-id", "record-route", "route"):
        assert hidden not in names
    assert "content-type" in names and "allow" in names and "supported" in names


def test_operator_may_allow_more_but_never_hop_by_hop():
    """extra_allowed lets P-Asserted-Identity through but never Via or Contact."""
    msg = parse_message((CORPUS / "asterisk-invite-pai.sip").read_bytes())
    out = crossing_headers(msg.headers, extra_allowed=["P-Asserted-Identity", "Via", "m"])
    names = [n.lower() for n, _ in out]
    assert "p-asserted-identity" in names
    assert "via" not in names and "contact" not in names


def test_crossing_headers_keep_order_and_text():
    """Crossing headers keep their order, spelling and values exactly."""
    msg = parse_message(b"OPTIONS sip:a@example.com SIP/2.0\r\n"
                        b"Via: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bK1\r\n"
                        b"From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n"
                        b"Call-ID: c1@10.1.1.1\r\nCSeq: 1 OPTIONS\r\nsupported: timer\r\n"
                        b"X-Internal-Host: pbx1.corp.local\r\nAccept: application/sdp\r\n"
                        b"Warning: 399 pbx1.corp.local \"oops\"\r\nContent-Length: 0\r\n\r\n")
    assert crossing_headers(msg.headers) == [("supported", "timer"),
                                             ("Accept", "application/sdp")]


def test_sdp_origin_is_replaced():
    """The o= line carries only the SBC's username, ids and address afterwards."""
    sdp = parse_sdp(b"v=0\r\no=root 1234 5678 IN IP4 10.20.30.40\r\ns=Asterisk\r\n"
                    b"c=IN IP4 10.20.30.40\r\nt=0 0\r\nm=audio 10000 RTP/AVP 0\r\n")
    hide_sdp_origin(sdp, address="203.0.113.5", sess_id="777", sess_version=1)
    assert sdp.to_bytes().split(b"\r\n")[1] == b"o=- 777 1 IN IP4 203.0.113.5"
    hide_sdp_origin(sdp, address="2001:db8::5", sess_id="777", sess_version=2)
    assert sdp.to_bytes().split(b"\r\n")[1] == b"o=- 777 2 IN IP6 2001:db8::5"


def test_sdp_session_identity_is_replaced():
    """hide_sdp_session replaces o=, sets s=- and drops session i/u/e/p; media is untouched."""
    sdp = parse_sdp(b"v=0\r\no=root 1234 5678 IN IP4 10.20.30.40\r\ns=Asterisk PBX 20.5\r\n"
                    b"i=pbx1.corp.local\r\nu=http://pbx1.corp.local/\r\ne=ops@corp.local\r\n"
                    b"p=+44 20 7946 0000\r\nc=IN IP4 10.20.30.40\r\nt=0 0\r\n"
                    b"m=audio 10000 RTP/AVP 0\r\ni=voice\r\na=sendrecv\r\n")
    out = hide_sdp_session(sdp, address="203.0.113.5", sess_id="9", sess_version=3)
    assert out.to_bytes() == (
        b"v=0\r\no=- 9 3 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 10.20.30.40\r\nt=0 0\r\n"
        b"m=audio 10000 RTP/AVP 0\r\ni=voice\r\na=sendrecv\r\n")
