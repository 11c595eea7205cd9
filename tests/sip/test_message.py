"""SIP message parsing and serialization with exact bytes (RFC 3261 7, 8.2.6, 18.3, 20)."""

import pytest

from sbc.errors import SipParseError
from sbc.sip.headers import STAR, Headers, canonical_name, display_name
from sbc.sip.message import (
    DEFAULT_LIMITS,
    Limits,
    Request,
    Response,
    Salvage,
    build_response,
    check_request,
    parse_message,
)
from sbc.sip.uri import SipUri, parse_uri

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS client.atlanta.example.com:5061;branch=z9hG4bK74bf9;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice Liddell" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Contact: <sip:alice@client.atlanta.example.com;transport=tls>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_request_fields():
    """A request's start line, headers and body are all available after parsing."""
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert str(msg.uri) == "sip:bob@biloxi.example.com"
    assert msg.body == b"v=0\n"
    via = msg.top_via
    assert via is not None
    assert (via.transport, via.host, via.port, via.branch) == (
        "TLS", "client.atlanta.example.com", 5061, "z9hG4bK74bf9")
    assert via.wants_rport and via.rport is None
    assert msg.from_.tag == "9fxced76sl"
    assert msg.from_.display_text == "Alice Liddell"
    assert msg.to.tag is None
    assert msg.call_id == "3848276298220188511@atlanta.example.com"
    assert (msg.cseq.seq, msg.cseq.method) == (2, "INVITE")
    assert msg.max_forwards == 70
    contacts = msg.contacts
    assert isinstance(contacts, list) and len(contacts) == 1
    assert isinstance(contacts[0].uri, SipUri) and contacts[0].uri.transport == "tls"
    assert msg.content_type == "application/sdp"


def test_untouched_message_serializes_byte_identical():
    """Parsing then serializing an untouched well-formed message gives the same bytes."""
    assert parse_message(INVITE).to_bytes() == INVITE


def test_rewritten_headers_serialize_exactly():
    """Header edits keep every other line in place and spelled as received."""
    msg = parse_message(INVITE)
    msg.headers.prepend("Via", "SIP/2.0/UDP sbc.example.net;branch=z9hG4bKsbc1")
    msg.headers.set("Max-Forwards", "69")
    msg.headers.replace_all("Contact", ["<sip:sbc.example.net;transport=udp>"])
    msg.headers.remove("Content-Type")
    msg.body = b""
    assert msg.to_bytes() == (
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP sbc.example.net;branch=z9hG4bKsbc1\r\n"
        b"Via: SIP/2.0/TLS client.atlanta.example.com:5061;branch=z9hG4bK74bf9;rport\r\n"
        b"Max-Forwards: 69\r\n"
        b'From: "Alice Liddell" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
        b"To: Bob <sip:bob@biloxi.example.com>\r\n"
        b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
        b"CSeq: 2 INVITE\r\n"
        b"Contact: <sip:sbc.example.net;transport=udp>\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


def test_compact_forms_and_case_map_to_long_names():
    """Compact and odd-case header names are found under their long names (RFC 3261 7.3.3)."""
    data = (
        b"OPTIONS sip:example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n"
        b"f: <sip:a@example.com>;tag=1\r\n"
        b"t: <sip:example.com>\r\n"
        b"i: abc\r\n"
        b"cseq: 1 OPTIONS\r\n"
        b"MAX-FORWARDS: 70\r\n"
        b"k: path, outbound\r\n"
        b"l: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.headers.get("Via") == "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa"
    assert msg.headers.get("CALL-ID") == "abc"
    assert msg.option_tags("Supported") == ["path", "outbound"]
    assert msg.max_forwards == 70
    assert msg.to_bytes() == data
    for short, long in [("i", "call-id"), ("m", "contact"), ("f", "from"), ("t", "to"),
                        ("v", "via"), ("l", "content-length"), ("c", "content-type"),
                        ("k", "supported"), ("s", "subject"), ("e", "content-encoding"),
                        ("o", "event"), ("u", "allow-events"), ("r", "refer-to"),
                        ("b", "referred-by"), ("x", "session-expires"), ("y", "identity")]:
        assert canonical_name(short) == long
    assert display_name("call-id") == "Call-ID"
    assert display_name("www-authenticate") == "WWW-Authenticate"
    assert display_name("max-forwards") == "Max-Forwards"


def test_folded_lines_are_unfolded_to_one_space():
    """Folded header lines become one line joined by a single SP (RFC 3261 7.3.1)."""
    data = (
        b"OPTIONS sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1\r\n ;branch=z9hG4bKa\r\n"
        b"From: <sip:a@example.com>\r\n\t;tag=1\r\n"
        b"To: <sip:example.com>\r\n"
        b"Subject: one\r\n  two\r\n"
        b"Call-ID: abc\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.headers.get("subject") == "one two"
    assert msg.top_via is not None and msg.top_via.branch == "z9hG4bKa"
    assert msg.from_.tag == "1"
    assert b"Subject: one two\r\n" in msg.to_bytes()


def test_multi_value_headers_across_lines_and_commas():
    """Via and Contact lists combine every line and every comma-separated value in order."""
    data = (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP p1.example.net;branch=z9hG4bK1, SIP/2.0/TCP [2001:db8::1]:5070"
        b";branch=z9hG4bK2;received=192.0.2.7\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK3;rport=5062\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n"
        b"Call-ID: abc\r\nCSeq: 5 REGISTER\r\nMax-Forwards: 70\r\n"
        b'Contact: "A, B" <sip:a@192.0.2.9>;expires=60, <sip:a@[2001:db8::9]>;q=0.5\r\n'
        b"Contact: sip:a@192.0.2.10;expires=30\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    vias = msg.vias
    assert [(v.transport, v.host, v.port, v.branch) for v in vias] == [
        ("UDP", "p1.example.net", None, "z9hG4bK1"),
        ("TCP", "[2001:db8::1]", 5070, "z9hG4bK2"),
        ("UDP", "192.0.2.9", None, "z9hG4bK3"),
    ]
    assert vias[1].received == "192.0.2.7"
    assert vias[2].rport == 5062
    contacts = msg.contacts
    assert isinstance(contacts, list)
    assert [c.display_text for c in contacts] == ["A, B", None, None]
    assert [c.params.get("expires") for c in contacts] == ["60", None, "30"]
    assert [str(c.uri) for c in contacts] == [
        "sip:a@192.0.2.9", "sip:a@[2001:db8::9]", "sip:a@192.0.2.10"]
    assert contacts[2].angle is False
    assert msg.headers.pop_first_value("via") == "SIP/2.0/UDP p1.example.net;branch=z9hG4bK1"
    assert msg.headers.get_all("via")[0].startswith("SIP/2.0/TCP [2001:db8::1]:5070")


def test_contact_star_only_in_register():
    """``Contact: *`` is accepted in REGISTER (RFC 3261 10.2.2) and rejected elsewhere."""
    reg = (
        b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: x\r\n"
        b"CSeq: 2 REGISTER\r\nContact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(reg)
    assert msg.contacts is STAR
    assert msg.expires == 0
    with pytest.raises(SipParseError) as info:
        parse_message(reg.replace(b"REGISTER", b"OPTIONS"))
    assert info.value.status == 400


def test_response_fields_and_empty_reason():
    """A response exposes status and reason; an empty reason phrase is allowed."""
    data = (
        b"SIP/2.0 100 \r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: x\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (100, "")
    assert msg.to_bytes() == data
    assert parse_message(data.replace(b"100 \r\n", b"100\r\n")).reason == ""


def test_datagram_without_content_length_takes_the_rest():
    """On a datagram without Content-Length the body is the rest of it (RFC 3261 18.3)."""
    data = INVITE.replace(b"Content-Length: 4\r\n", b"")
    msg = parse_message(data)
    assert msg.body == b"v=0\n"
    assert msg.to_bytes().endswith(b"Content-Length: 4\r\n\r\nv=0\n")


def test_datagram_extra_bytes_after_body_are_ignored():
    """Octets beyond Content-Length on a datagram are discarded (RFC 3261 18.3)."""
    assert parse_message(INVITE + b"garbage").body == b"v=0\n"


def test_leading_crlfs_are_ignored():
    """CRLFs before the start line are skipped (RFC 3261 7.5)."""
    assert parse_message(b"\r\n\r\n" + INVITE).to_bytes() == INVITE


def test_serialization_fixes_content_length():
    """Serialization always writes one Content-Length equal to the body length."""
    msg = parse_message(INVITE)
    msg.body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    out = msg.to_bytes()
    assert out.count(b"Content-Length:") == 1
    assert b"Content-Length: 31\r\n" in out
    assert parse_message(out).body == msg.body


def _err(data: bytes, limits: Limits = DEFAULT_LIMITS) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data, limits)
    return info.value


@pytest.mark.parametrize(
    "old, new, status",
    [
        (b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia", 505),  # unknown version
        (b"INVITE sip:bob", b"INVITE  sip:bob", 400),  # two spaces
        (b"CSeq: 2 INVITE", b"CSeq: 2 BYE", 400),  # CSeq method mismatch
        (b"CSeq: 2 INVITE", b"CSeq: 2147483648 INVITE", 400),  # >= 2**31
        (b"CSeq: 2 INVITE", b"CSeq: two INVITE", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: 256", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: -1", 400),
        (b"Call-ID: 3848276298220188511@atlanta.example.com", b"Call-ID: a b", 400),
        (b"Call-ID: 3848276298220188511@atlanta.example.com\r\n", b"", 400),  # missing
        (b"To: Bob <sip:bob@biloxi.example.com>", b"To: Bob <sip:bob@biloxi.example.com>\r\n"
         b"To: Eve <sip:eve@example.com>", 400),  # duplicated single header
        (b"Contact: <sip:alice@client.atlanta.example.com;transport=tls>",
         b"Contact: <sip:alice@client.atlanta.example.com;;>", 400),
        (b"From: \"Alice", b"From: \"Alice\x00", 400),  # unterminated quoted string
        (b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n", 400),  # no colon
        (b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\rX: y\r\n", 400),  # bare CR
        (b"Max-Forwards: 70\r\n", b"Route: sip:p1.example.com;lr\r\n", 400),  # Route w/o <>
        (b"INVITE sip:bob@biloxi.example.com SIP", b"INVITE sip:bob@biloxi.example.com?X=y SIP",
         400),  # headers in the Request-URI
    ],
)
def test_malformed_requests_carry_their_status(old, new, status):
    """Each malformed request raises SipParseError with the status to answer with."""
    assert old in INVITE
    err = _err(INVITE.replace(old, new))
    assert err.status == status
    assert err.salvage is not None
    assert err.salvage.vias == [
        "SIP/2.0/TLS client.atlanta.example.com:5061;branch=z9hG4bK74bf9;rport"]


def test_size_caps():
    """Message, body, URI, header-count and line-length caps give 513, 413, 414 and 400."""
    big_body = INVITE.replace(b"Content-Length: 4", b"Content-Length: 2000") + b"x" * 1996
    assert _err(big_body, Limits(max_body_bytes=1000)).status == 413
    assert _err(big_body, Limits(max_message_bytes=1000)).status == 513
    long_uri = INVITE.replace(b"sip:bob@biloxi", b"sip:" + b"b" * 5000 + b"@biloxi", 1)
    assert _err(long_uri).status == 414
    many = INVITE.replace(b"CSeq: 2 INVITE\r\n", b"CSeq: 2 INVITE\r\n" + b"X-A: 1\r\n" * 300)
    assert _err(many).status == 400
    long_line = INVITE.replace(b"CSeq: 2 INVITE\r\n", b"CSeq: 2 INVITE\r\nX-A: " + b"a" * 9000
                               + b"\r\n")
    assert _err(long_line).status == 400


def test_content_length_shortfall_is_400_and_bad_length_fatal():
    """A body shorter than Content-Length is a 400; an unreadable Content-Length is fatal."""
    assert _err(INVITE.replace(b"Content-Length: 4", b"Content-Length: 40")).status == 400
    for bad in (b"-4", b"four", b"4, 4"):
        err = _err(INVITE.replace(b"Content-Length: 4", b"Content-Length: " + bad))
        assert (err.status, err.fatal) == (400, True)


def test_malformed_response_is_dropped():
    """A malformed response gets no answer: status None (RFC 3261 18.1.2)."""
    data = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: x\r\n"
        b"CSeq: 99999999999 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert _err(data).status is None
    assert _err(b"SIP/2.0 2000 OK\r\n\r\n").status is None


def test_request_without_readable_via_is_dropped():
    """A broken request whose Via cannot be read is dropped: there is nowhere to answer."""
    data = INVITE.replace(
        b"Via: SIP/2.0/TLS client.atlanta.example.com:5061;branch=z9hG4bK74bf9;rport", b"Via: ?")
    err = _err(data.replace(b"CSeq: 2 INVITE", b"CSeq: x"))
    assert err.status is None


def test_garbage_is_dropped():
    """Bytes that are not SIP at all raise SipParseError with status None."""
    for data in (b"", b"\r\n", b"hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                 b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
        assert _err(data).status is None


def test_response_to_salvaged_request_exact_bytes():
    """A 400 for a broken request copies Via/From/To/Call-ID/CSeq and adds a To tag."""
    err = _err(INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 1000"))
    assert err.salvage is not None
    resp = build_response(err.salvage, err.status or 0, to_tag="sbc1")
    assert resp.to_bytes() == (
        b"SIP/2.0 400 Bad Request\r\n"
        b"Via: SIP/2.0/TLS client.atlanta.example.com:5061;branch=z9hG4bK74bf9;rport\r\n"
        b'From: "Alice Liddell" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
        b"To: Bob <sip:bob@biloxi.example.com>;tag=sbc1\r\n"
        b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
        b"CSeq: 2 INVITE\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


def test_salvaged_via_is_cleaned():
    """A damaged Via is rebuilt from its sent-by and routing parameters for the answer."""
    data = INVITE.replace(
        b"Via: SIP/2.0/TLS client.atlanta.example.com:5061;branch=z9hG4bK74bf9;rport",
        b"Via: SIP/2.0/UDP 192.0.2.15;;branch=z9hG4bKx;;rport,;,,",
    )
    err = _err(data)
    assert err.status == 400
    assert err.salvage is not None
    assert err.salvage.vias == ["SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKx;rport"]


def test_response_building_to_request_keeps_existing_tag_and_adds_headers():
    """build_response keeps an existing To tag, omits a tag on 100, and appends extras."""
    msg = parse_message(INVITE)
    trying = build_response(msg, 100, to_tag="x")
    assert trying.headers.get("to") == "Bob <sip:bob@biloxi.example.com>"
    assert trying.reason == "Trying"
    msg.headers.set("To", "Bob <sip:bob@biloxi.example.com>;tag=abc")
    resp = build_response(msg, 420, to_tag="x", extra=[("Unsupported", "foo")])
    assert resp.headers.get("to") == "Bob <sip:bob@biloxi.example.com>;tag=abc"
    assert resp.headers.get("unsupported") == "foo"
    assert resp.to_bytes().startswith(b"SIP/2.0 420 Bad Extension\r\n")


@pytest.mark.parametrize(
    "change, status, unsupported",
    [
        ((b"INVITE sip:bob@biloxi.example.com SIP", b"INVITE im:bob@biloxi.example.com SIP"),
         416, None),
        ((b"Max-Forwards: 70", b"Max-Forwards: 0"), 483, None),
        ((b"CSeq: 2 INVITE\r\n", b"CSeq: 2 INVITE\r\nRequire: 100rel, foo\r\n"), 420, "foo"),
        ((b"CSeq: 2 INVITE\r\n", b"CSeq: 2 INVITE\r\nProxy-Require: bar\r\n"), 420, "bar"),
        ((b"CSeq: 2 INVITE\r\n", b"CSeq: 2 INVITE\r\nRequire: 100rel\r\n"), None, None),
    ],
)
def test_check_request(change, status, unsupported):
    """check_request answers 416, 483 and 420 (with Unsupported) where RFC 3261 says so."""
    msg = parse_message(INVITE.replace(*change))
    assert isinstance(msg, Request)
    if status is None:
        check_request(msg, frozenset({"100rel"}))
        return
    with pytest.raises(SipParseError) as info:
        check_request(msg, frozenset({"100rel"}))
    assert info.value.status == status
    if unsupported:
        assert info.value.headers == (("Unsupported", unsupported),)


def test_build_request_from_scratch():
    """A request built in code serializes to exactly the bytes a strict peer expects."""
    headers = Headers([
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnew;rport"),
        ("Max-Forwards", "70"),
        ("From", "<sip:sbc@example.net>;tag=f1"),
        ("To", "<sip:pbx@192.0.2.20>"),
        ("Call-ID", "b2b-1"),
        ("CSeq", "1 OPTIONS"),
    ])
    req = Request("OPTIONS", parse_uri("sip:192.0.2.20:5060"), headers)
    assert req.to_bytes() == (
        b"OPTIONS sip:192.0.2.20:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnew;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:sbc@example.net>;tag=f1\r\n"
        b"To: <sip:pbx@192.0.2.20>\r\n"
        b"Call-ID: b2b-1\r\n"
        b"CSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    assert parse_message(req.to_bytes()).to_bytes() == req.to_bytes()


def test_salvage_defaults():
    """An empty Salvage builds a response with no routing headers at all."""
    assert build_response(Salvage(), 400).to_bytes() == (
        b"SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def test_utf8_and_odd_bytes_survive_round_trip():
    """UTF-8 display names and raw bytes in quoted strings survive a round trip."""
    data = INVITE.replace(b'"Alice Liddell"', '"Zoë Ñandú \\\x07"'.encode())
    msg = parse_message(data)
    assert msg.from_.display_text == "Zoë Ñandú \x07"
    assert msg.to_bytes() == data
