"""The RFC 4475 and RFC 5118 torture messages: what sbc does with each one, pinned.

The messages are in ``tests/fixtures/sip-torture`` (byte-exact; see its MANIFEST.md).  Every file
has a row in :data:`EXPECTED`: ``"parse"``, the status sbc answers with, or ``None`` for a silent
drop.  On top of that: rejected requests still get a usable response, accepted messages
serialize to a fixed point, the facts each RFC section is about survive parsing, and stream
transports frame them as MANIFEST.md's "Transport notes" say.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sbc.errors import SipParseError
from sbc.sip.framing import NEED_DATA, PONG, StreamFramer
from sbc.sip.headers import canonical_name
from sbc.sip.message import Request, Response, build_response, parse_message
from sbc.sip.uri import AbsoluteUri, SipUri

TORTURE = Path(__file__).resolve().parent.parent / "fixtures" / "sip-torture"

PARSE = "parse"

# file -> (outcome, fatal).  Outcome: "parse", the status of the answer, or None (drop).
# ``fatal``: stream framing is lost (RFC 3261 18.3); only Content-Length faults are.
EXPECTED: dict[str, tuple[str | int | None, bool]] = {
    # RFC 4475 3.1.1: valid messages
    "wsinv.dat": (PARSE, False),
    "intmeth.dat": (PARSE, False),
    "esc01.dat": (PARSE, False),
    "escnull.dat": (PARSE, False),
    "esc02.dat": (PARSE, False),
    "lwsdisp.dat": (PARSE, False),
    "longreq.dat": (PARSE, False),
    "dblreq.dat": (PARSE, False),
    "semiuri.dat": (PARSE, False),
    "transports.dat": (PARSE, False),
    "mpart01.dat": (PARSE, False),
    "unreason.dat": (PARSE, False),
    "noreason.dat": (PARSE, False),
    # RFC 4475 3.1.2: invalid messages
    "badinv01.dat": (400, False),
    "clerr.dat": (400, False),
    "ncl.dat": (400, True),
    "scalar02.dat": (400, False),
    "scalarlg.dat": (None, False),  # a response: dropped
    "quotbal.dat": (400, False),
    "ltgtruri.dat": (400, False),
    "lwsruri.dat": (400, False),
    "lwsstart.dat": (400, False),
    "trws.dat": (400, False),
    "escruri.dat": (400, False),
    "baddate.dat": (PARSE, False),  # sbc does not interpret Date (3.1.2.12 allows ignoring it)
    "regbadct.dat": (400, False),
    "badaspec.dat": (400, False),
    "baddn.dat": (400, False),
    "badvers.dat": (505, False),
    "mismatch01.dat": (400, False),
    "mismatch02.dat": (400, False),  # 501 preferred, 400 allowed by 3.1.2.18
    "bigcode.dat": (None, False),  # a response: dropped
    # RFC 4475 3.2 and 3.3: valid syntax, semantic trouble
    "badbranch.dat": (PARSE, False),
    "insuf.dat": (400, False),
    "unkscm.dat": (PARSE, False),
    "novelsc.dat": (PARSE, False),
    "unksm2.dat": (PARSE, False),
    "bext01.dat": (PARSE, False),
    "invut.dat": (PARSE, False),
    "regaut01.dat": (PARSE, False),
    "multi01.dat": (400, False),
    "mcl01.dat": (400, True),
    "bcast.dat": (PARSE, False),
    "zeromf.dat": (PARSE, False),
    "cparam01.dat": (PARSE, False),
    "cparam02.dat": (PARSE, False),
    "regescrt.dat": (PARSE, False),
    "sdp01.dat": (PARSE, False),
    # RFC 4475 3.4
    "inv2543.dat": (PARSE, False),
    # The stray file of the RFC 4475 archive: no Via to answer to.
    "test.dat": (None, False),
    # RFC 5118 (wire form)
    "rfc5118/ipv6-good.dat": (PARSE, False),
    "rfc5118/ipv6-bad.dat": (400, False),
    "rfc5118/port-ambiguous.dat": (PARSE, False),
    "rfc5118/port-unambiguous.dat": (PARSE, False),
    "rfc5118/via-received-param-with-delim.dat": (PARSE, False),
    "rfc5118/via-received-param-no-delim.dat": (PARSE, False),
    "rfc5118/ipv6-in-sdp.dat": (PARSE, False),
    "rfc5118/mult-ip-in-header.dat": (PARSE, False),
    "rfc5118/mult-ip-in-sdp.dat": (PARSE, False),
    "rfc5118/ipv4-mapped-ipv6.dat": (PARSE, False),
    "rfc5118/ipv6-bug-abnf-3-colons.dat": (400, False),  # strict RFC 4291 reading (4.10)
    "rfc5118/ipv6-correct-abnf-2-colons.dat": (PARSE, False),
    # Not from the RFC: baddn.dat with its missing empty line added (MANIFEST.md).
    "variants/baddn-terminated.dat": (400, False),
}

PARSED = sorted(name for name, (outcome, _) in EXPECTED.items() if outcome == PARSE)
ANSWERED = sorted(name for name, (outcome, _) in EXPECTED.items() if isinstance(outcome, int))

# Rejected requests whose answer carries a header copied verbatim (RFC 3261 8.2.6.2) that is
# itself malformed or missing, so that the answer cannot parse either.
ANSWER_CANNOT_PARSE = {
    "insuf.dat": "no From, To or Call-ID to copy",
    "multi01.dat": "From, To, Call-ID and CSeq each appear twice, so none is copied",
    "badaspec.dat": "the To copied is the malformed one",
    "quotbal.dat": "the To copied is the malformed one",
    "baddn.dat": "the From copied is the malformed one",
    "variants/baddn-terminated.dat": "the From copied is the malformed one",
    "scalar02.dat": "the CSeq copied is out of range",
    "rfc5118/ipv6-bug-abnf-3-colons.dat": "the To copied has the same 3-colon IPv6 reference",
}

# Accepted messages that sbc serializes back byte for byte (no folding, spacing or framing
# to normalise).
BYTE_EXACT = {
    "badbranch.dat",
    "baddate.dat",
    "bcast.dat",
    "bext01.dat",
    "cparam01.dat",
    "cparam02.dat",
    "esc02.dat",
    "invut.dat",
    "lwsdisp.dat",
    "mpart01.dat",
    "noreason.dat",
    "novelsc.dat",
    "sdp01.dat",
    "unkscm.dat",
    "unksm2.dat",
    "unreason.dat",
    "zeromf.dat",
    "rfc5118/ipv4-mapped-ipv6.dat",
    "rfc5118/ipv6-correct-abnf-2-colons.dat",
    "rfc5118/ipv6-good.dat",
    "rfc5118/ipv6-in-sdp.dat",
    "rfc5118/mult-ip-in-header.dat",
    "rfc5118/mult-ip-in-sdp.dat",
    "rfc5118/port-ambiguous.dat",
    "rfc5118/port-unambiguous.dat",
    "rfc5118/via-received-param-no-delim.dat",
    "rfc5118/via-received-param-with-delim.dat",
}


def load(name: str) -> bytes:
    return (TORTURE / name).read_bytes()


def parse(name: str) -> Request | Response:
    return parse_message(load(name))


def parse_request(name: str) -> Request:
    msg = parse(name)
    assert isinstance(msg, Request)
    return msg


def summary(msg: Request | Response) -> tuple[object, ...]:
    """Start line, header lines (Content-Length aside: it is rewritten) and body."""
    if isinstance(msg, Request):
        start: tuple[object, ...] = (msg.method, str(msg.uri))
    else:
        start = (msg.status, msg.reason)
    headers = [(n, v) for n, v in msg.headers if canonical_name(n) != "content-length"]
    return start, headers, msg.body


def raw_headers(data: bytes, name: str) -> list[str]:
    """The values of header ``name`` (long or compact form) read straight from the bytes."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
    head = re.sub(r"\r\n[ \t]+", " ", head)  # unfold
    out = []
    for line in head.split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and canonical_name(key.strip()) == name:
            out.append(value.strip())
    return out


def test_table_covers_every_torture_file():
    """Every message file in the fixture directory has a row in the expectation table."""
    on_disk = {str(p.relative_to(TORTURE)) for p in TORTURE.rglob("*.dat")}
    assert on_disk == set(EXPECTED)
    assert len(EXPECTED) == 50 + 12 + 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_outcome(name):
    """Each torture message parses, or is rejected with the pinned status and framing verdict."""
    outcome, fatal = EXPECTED[name]
    if outcome == PARSE:
        assert isinstance(parse(name), Request | Response)
        return
    with pytest.raises(SipParseError) as info:
        parse(name)
    assert info.value.status == outcome
    assert info.value.fatal is fatal


@pytest.mark.parametrize("name", ANSWERED)
def test_rejected_request_gets_a_usable_answer(name):
    """A rejected request's salvage builds an answer with the status, the original top Via
    branch and Call-ID, and (where the copied headers are sound) one that parses again."""
    data = load(name)
    status = EXPECTED[name][0]
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    salvage = info.value.salvage
    assert salvage is not None and salvage.vias
    response = build_response(salvage, info.value.status, to_tag="sbc1")
    assert response.status == status
    wire = response.to_bytes()

    top_via = raw_headers(data, "via")[0]
    branch = re.search(r";\s*branch\s*=\s*([^;,\s]+)", top_via)
    vias = raw_headers(wire, "via")
    if branch is not None:
        assert re.search(rf";branch={re.escape(branch.group(1))}(;|$)", vias[0])
    else:
        assert "branch" not in vias[0]
    call_ids = raw_headers(data, "call-id")
    if len(call_ids) == 1:
        assert raw_headers(wire, "call-id") == call_ids

    if name in ANSWER_CANNOT_PARSE:
        return
    again = parse_message(wire)
    assert isinstance(again, Response)
    assert again.status == status
    assert again.call_id == call_ids[0]
    assert again.top_via is not None and again.top_via.branch == (branch and branch.group(1))
    assert again.to.tag is not None


@pytest.mark.parametrize("name", PARSED)
def test_serialization_is_a_fixed_point(name):
    """An accepted message serializes to bytes that parse to the same message, and
    serialize(parse(serialize(parse(x)))) == serialize(parse(x))."""
    msg = parse(name)
    first = msg.to_bytes()
    again = parse_message(first)
    assert summary(again) == summary(msg)
    assert again.to_bytes() == first
    if name in BYTE_EXACT:
        assert first == load(name)


# ---------------------------------------------------------------------------------------------
# What each RFC section is about survives parsing


def test_wsinv_keeps_the_unusual_unknown_header_value():
    """RFC 4475 3.1.1.1: the unknown header's value ;;,,;;,; is kept opaque, and folding,
    odd spacing and compact forms are understood."""
    msg = parse_request("wsinv.dat")
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n" in msg.to_bytes()
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert [v.branch for v in msg.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.max_forwards == 68
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.headers.get("subject") == ""
    assert len(msg.body) == 150


def test_intmeth_keeps_the_unusual_method_and_escaped_display_name():
    """RFC 4475 3.1.1.2: token characters in the method, a quoted-pair BEL/NUL/DEL display
    name and a word-character Call-ID are all accepted as written."""
    msg = parse_request("intmeth.dat")
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq.method == msg.method
    assert msg.to.display_text == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.top_via is not None and msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"


def test_esc01_keeps_contact_parameters_escaped():
    """RFC 4475 3.1.1.3: escapes are kept as written, never unescaped twice."""
    msg = parse_request("esc01.dat")
    contacts = msg.contacts
    assert isinstance(contacts, list) and len(contacts) == 1
    uri = contacts[0].uri
    assert isinstance(uri, SipUri)
    assert list(uri.params) == [("%6C%72", None), ("n%61me", "v%61lue%25%34%31")]
    assert uri.user == "cal%6Cer" and uri.user_unescaped == "caller"
    assert isinstance(msg.uri, SipUri)
    assert msg.uri.user_unescaped == "sips:user@example.com"


def test_escnull_gives_two_distinct_contacts():
    """RFC 4475 3.1.1.4: %00 and %00%00 are two different users, not truncated at NUL."""
    msg = parse_request("escnull.dat")
    contacts = msg.contacts
    assert isinstance(contacts, list)
    users = [c.uri.user for c in contacts if isinstance(c.uri, SipUri)]
    assert users == ["%00", "%00%00"]
    assert [c.uri.user_unescaped for c in contacts if isinstance(c.uri, SipUri)] == [
        "\x00",
        "\x00\x00",
    ]
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.user == "null-%00-null"


def test_esc02_percent_is_not_an_escape_outside_uris():
    """RFC 4475 3.1.1.5: RE%47IST%45R is an unknown method, and C%6Fntact an unknown header,
    so there are only two Contacts."""
    msg = parse_request("esc02.dat")
    assert msg.method == "RE%47IST%45R"
    contacts = msg.contacts
    assert isinstance(contacts, list) and len(contacts) == 2
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert msg.to.display_name == '"%Z%45"'


def test_lwsdisp_display_name_without_space():
    """RFC 4475 3.1.1.6: a display name directly followed by < is read."""
    msg = parse_request("lwsdisp.dat")
    assert msg.from_.display_name == "caller"
    assert msg.from_.tag == "323"


def test_longreq_long_values_and_34_vias():
    """RFC 4475 3.1.1.7: long values and 34 Via values under all spellings are kept."""
    msg = parse_request("longreq.dat")
    assert len(msg.vias) == 34
    assert len(msg.call_id) == 141
    assert msg.to.display_name is not None and len(msg.to.display_name) > 100


def test_dblreq_ignores_the_trailing_request():
    """RFC 4475 3.1.1.8 / RFC 3261 18.3: the body is Content-Length bytes; the second request
    in the datagram is ignored and not forwarded."""
    data = load("dblreq.dat")
    msg = parse_request("dblreq.dat")
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert b"INVITE" in data and b"INVITE" not in msg.to_bytes()


def test_semiuri_user_part_with_semicolon():
    """RFC 4475 3.1.1.9: the R-URI user is user;par=u%40example.net, with no URI params."""
    msg = parse_request("semiuri.dat")
    assert isinstance(msg.uri, SipUri)
    assert (msg.uri.user, msg.uri.host, len(msg.uri.params)) == (
        "user;par=u%40example.net",
        "example.com",
        0,
    )
    assert len(msg.headers.values("accept")) == 6


def test_transports_keeps_every_via_transport():
    """RFC 4475 3.1.1.10: unknown Via transports are accepted."""
    assert [v.transport for v in parse_request("transports.dat").vias] == [
        "UDP",
        "SCTP",
        "TLS",
        "UNKNOWN",
        "TCP",
    ]


def test_mpart01_body_is_exactly_content_length_bytes():
    """RFC 4475 3.1.1.11: a binary multipart body with NUL and bare LF is framed by
    Content-Length."""
    data = load("mpart01.dat")
    msg = parse_request("mpart01.dat")
    assert len(msg.body) == int(msg.headers.get("content-length") or -1) == 553
    assert b"\x00" in msg.body and b"\n" in msg.body.replace(b"\r\n", b"")
    assert data.endswith(msg.body)


def test_unreason_and_noreason_reason_phrases():
    """RFC 4475 3.1.1.12-13: a UTF-8 reason phrase and an empty one are accepted as written."""
    unreason = parse("unreason.dat")
    noreason = parse("noreason.dat")
    assert isinstance(unreason, Response) and isinstance(noreason, Response)
    assert unreason.status == 200 and unreason.reason.startswith("= 2**3 * 5**2 ")
    assert "\u043f\u0440\u043e\u0441\u0442\u043e\u0435" in unreason.reason
    assert (noreason.status, noreason.reason) == (100, "")


def test_badbranch_keeps_the_bare_magic_cookie():
    """RFC 4475 3.2.1: branch=z9hG4bK parses; it is not an RFC 3261 branch."""
    via = parse_request("badbranch.dat").top_via
    assert via is not None and via.branch == "z9hG4bK" and not via.rfc3261_branch


@pytest.mark.parametrize("name", ["unkscm.dat", "novelsc.dat"])
def test_unknown_request_uri_scheme_is_opaque(name):
    """RFC 4475 3.3.2-3: a Request-URI with a non-SIP scheme parses to an opaque URI (the
    gateway answers 416), and serializes back unchanged."""
    msg = parse_request(name)
    assert isinstance(msg.uri, AbsoluteUri)
    assert f"{msg.method} {msg.uri} SIP/2.0".encode() == load(name).split(b"\r\n", 1)[0]


def test_unksm2_unknown_schemes_in_headers():
    """RFC 4475 3.3.4: To, From and Contact may carry non-SIP URIs."""
    msg = parse_request("unksm2.dat")
    assert isinstance(msg.uri, SipUri)
    assert isinstance(msg.to.uri, AbsoluteUri) and str(msg.to.uri) == "isbn:2983792873"
    assert isinstance(msg.from_.uri, AbsoluteUri)
    assert str(msg.from_.uri) == "http://www.example.com"
    contacts = msg.contacts
    assert isinstance(contacts, list) and isinstance(contacts[0].uri, AbsoluteUri)


def test_bext01_option_tags():
    """RFC 4475 3.3.5: Require and Proxy-Require are read as option tags."""
    msg = parse_request("bext01.dat")
    assert msg.option_tags("require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert msg.option_tags("proxy-require") == [
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]


def test_invut_and_regaut01_are_passed_through():
    """RFC 4475 3.3.6-7: an unknown Content-Type and an unknown Authorization scheme are
    accepted and kept as written."""
    invut = parse_request("invut.dat")
    assert invut.content_type == "application/unknownformat"
    assert len(invut.body) == 40
    regaut = parse_request("regaut01.dat")
    assert regaut.headers.get("authorization") == "NoOneKnowsThisScheme opaque-data=here"


def test_bcast_response_keeps_the_broadcast_via():
    """RFC 4475 3.3.10: the response parses; its second Via names 255.255.255.255 (the
    gateway must never send there)."""
    msg = parse("bcast.dat")
    assert isinstance(msg, Response)
    assert [v.host for v in msg.vias] == ["192.0.2.198", "255.255.255.255"]


def test_zeromf_max_forwards_zero():
    """RFC 4475 3.3.11: Max-Forwards 0 is read as 0 (the gateway answers 483)."""
    assert parse_request("zeromf.dat").max_forwards == 0


def test_cparam01_unknownparam_is_a_contact_param():
    """RFC 4475 3.3.12: after an addr-spec, ;unknownparam belongs to the Contact header."""
    contacts = parse_request("cparam01.dat").contacts
    assert isinstance(contacts, list) and len(contacts) == 1
    uri = contacts[0].uri
    assert isinstance(uri, SipUri)
    assert "unknownparam" in contacts[0].params
    assert "unknownparam" not in uri.params
    assert str(uri) == "sip:+19725552222@gw1.example.net"


def test_cparam02_unknownparam_is_a_uri_param():
    """RFC 4475 3.3.13: inside <>, ;unknownparam belongs to the URI."""
    contacts = parse_request("cparam02.dat").contacts
    assert isinstance(contacts, list) and len(contacts) == 1
    uri = contacts[0].uri
    assert isinstance(uri, SipUri)
    assert "unknownparam" in uri.params
    assert "unknownparam" not in contacts[0].params


def test_regescrt_keeps_the_escaped_route_header_in_the_contact():
    """RFC 4475 3.3.14: the binding keeps ?Route=%3Csip:sip.example.com%3E."""
    contacts = parse_request("regescrt.dat").contacts
    assert isinstance(contacts, list)
    uri = contacts[0].uri
    assert isinstance(uri, SipUri)
    assert uri.headers == [("Route", "%3Csip:sip.example.com%3E")]
    assert str(uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_sdp01_accept_is_kept():
    """RFC 4475 3.3.15: an unacceptable Accept is kept for the application layer."""
    msg = parse_request("sdp01.dat")
    assert msg.headers.get("accept") == "text/nobodyKnowsThis"
    assert msg.content_type == "application/sdp"


def test_inv2543_body_is_the_rest_of_the_datagram():
    """RFC 4475 3.4.1: without Content-Length, a UDP body is the rest of the datagram; a
    branch-less Via and a tag-less From are accepted."""
    data = load("inv2543.dat")
    msg = parse_request("inv2543.dat")
    assert msg.headers.get("content-length") is None
    assert msg.body == data.split(b"\r\n\r\n", 1)[1]
    assert len(msg.body) == 105
    assert msg.top_via is not None and msg.top_via.branch is None
    assert msg.from_.tag is None
    assert msg.max_forwards is None


def test_baddate_date_is_kept_uninterpreted():
    """RFC 4475 3.1.2.12: sbc does not read Date, so the EST zone is kept as written."""
    assert parse_request("baddate.dat").headers.get("date") == "Fri, 01 Jan 2010 16:00:00 EST"


def test_ipv6_good_references():
    """RFC 5118 4.1: IPv6 references in the R-URI, Via and Contact."""
    msg = parse_request("rfc5118/ipv6-good.dat")
    assert isinstance(msg.uri, SipUri) and msg.uri.host == "[2001:db8::10]"
    assert msg.top_via is not None and msg.top_via.host == "[2001:db8::9:1]"


def test_port_ambiguous_has_no_port():
    """RFC 5118 4.3: [2001:db8::10:5070] is an address; there is no port."""
    uri = parse_request("rfc5118/port-ambiguous.dat").uri
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.port) == ("[2001:db8::10:5070]", None)


def test_port_unambiguous_has_port_5070():
    """RFC 5118 4.4: [2001:db8::10]:5070 is host 2001:db8::10, port 5070."""
    uri = parse_request("rfc5118/port-unambiguous.dat").uri
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.host_address, uri.port) == ("[2001:db8::10]", "2001:db8::10", 5070)


@pytest.mark.parametrize(
    "name, received",
    [
        ("rfc5118/via-received-param-with-delim.dat", "[2001:db8::9:255]"),
        ("rfc5118/via-received-param-no-delim.dat", "2001:db8::9:255"),
    ],
)
def test_via_received_ipv6_with_and_without_brackets(name, received):
    """RFC 5118 4.5: received= carries an IPv6 address with or without brackets."""
    via = parse_request(name).top_via
    assert via is not None and via.received == received


def test_mult_ip_in_header():
    """RFC 5118 4.7: a Via list mixing IPv6 with port, IPv4, and IPv6 with received=IPv4."""
    vias = parse_request("rfc5118/mult-ip-in-header.dat").vias
    assert [(v.host, v.port, v.received) for v in vias] == [
        ("[2001:db8::9:1]", 6050, None),
        ("192.0.2.1", None, None),
        ("[2001:db8::9:255]", None, "192.0.2.200"),
    ]


def test_ipv4_mapped_ipv6():
    """RFC 5118 4.9: IPv4-mapped IPv6 addresses in Via and Contact."""
    msg = parse_request("rfc5118/ipv4-mapped-ipv6.dat")
    assert msg.top_via is not None
    assert (msg.top_via.host, msg.top_via.port) == ("[::ffff:192.0.2.10]", 19823)
    contacts = msg.contacts
    assert isinstance(contacts, list) and isinstance(contacts[0].uri, SipUri)
    assert contacts[0].uri.host == "[::ffff:192.0.2.2]"


@pytest.mark.parametrize("name", ["rfc5118/ipv6-in-sdp.dat", "rfc5118/mult-ip-in-sdp.dat"])
def test_ipv6_in_sdp_body_is_kept(name):
    """RFC 5118 4.6, 4.8: the SDP body with IPv6 c= lines is the whole Content-Length."""
    msg = parse_request(name)
    assert b"IN IP6 2001:db8::" in msg.body
    assert len(msg.body) == int(msg.headers.get("content-length") or -1)


def test_ipv6_correct_abnf_two_colons():
    """RFC 5118 4.10: [2001:db8::192.0.2.1] is a valid reference."""
    uri = parse_request("rfc5118/ipv6-correct-abnf-2-colons.dat").uri
    assert isinstance(uri, SipUri) and uri.host == "[2001:db8::192.0.2.1]"


@pytest.mark.parametrize("name", sorted(p.name for p in (TORTURE / "rfc5118" / "raw").iterdir()))
def test_rfc5118_archive_bytes_with_bare_lf_are_dropped(name):
    """The RFC 5118 archive as published uses bare LF line ends: not SIP framing (RFC 3261
    7), so each message is dropped silently rather than answered or crashing."""
    with pytest.raises(SipParseError) as info:
        parse_message((TORTURE / "rfc5118" / "raw" / name).read_bytes())
    assert info.value.status is None


# ---------------------------------------------------------------------------------------------
# Stream transports (MANIFEST.md "Transport notes"; RFC 3261 18.3)


def stream_events(data: bytes, one_byte_at_a_time: bool = False) -> list[object]:
    """Events from a StreamFramer fed ``data``; stops at the first error (kept as the last
    item) or when the framer needs more data."""
    framer = StreamFramer()
    events: list[object] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if one_byte_at_a_time else [data]
    for piece in pieces:
        framer.feed(piece)
        while True:
            try:
                event = framer.next_event()
            except SipParseError as e:
                events.append(e)
                return events
            if event is NEED_DATA:
                break
            events.append(event)
    return events


WITH_CONTENT_LENGTH = [n for n in PARSED if raw_headers(load(n), "content-length")]


def test_only_inv2543_lacks_content_length():
    """Among the accepted messages only inv2543 has no Content-Length (legal on UDP only)."""
    assert sorted(set(PARSED) - set(WITH_CONTENT_LENGTH)) == ["inv2543.dat"]


@pytest.mark.parametrize("one_byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", WITH_CONTENT_LENGTH)
def test_stream_gives_the_same_message_as_the_datagram(name, one_byte_at_a_time):
    """Over a stream, each accepted message with Content-Length comes out as the same message
    as from a datagram, whether fed whole or one byte at a time."""
    events = stream_events(load(name), one_byte_at_a_time)
    assert events and isinstance(events[0], Request | Response)
    assert summary(events[0]) == summary(parse(name))


def test_dblreq_over_a_stream_yields_both_requests():
    """On a stream the octets after dblreq's REGISTER are the next message: a CRLF pong, then
    the INVITE."""
    events = stream_events(load("dblreq.dat"))
    assert isinstance(events[0], Request) and events[0].method == "REGISTER"
    assert events[1] is PONG
    assert isinstance(events[2], Request) and events[2].method == "INVITE"


def test_dblreq_trailing_garbage_on_a_stream_closes_the_connection():
    """After dblreq's INVITE (whose body is 5 bytes longer than its Content-Length), the
    leftover 'C\\r\\n\\r\\n' cannot be framed: the framer must report a fatal error, not a
    non-fatal one that leaves the bytes in place for ever."""
    framer = StreamFramer()
    framer.feed(load("dblreq.dat"))
    events = []
    for _ in range(10):
        try:
            event = framer.next_event()
        except SipParseError as e:
            assert e.fatal, f"non-fatal {e!r} with {framer.buffered} bytes left unconsumed"
            return
        if event is NEED_DATA:
            break
        events.append(event)
    raise AssertionError(f"no fatal error; events {events}, {framer.buffered} bytes buffered")


def test_inv2543_over_a_stream_is_fatal():
    """RFC 3261 18.3: Content-Length is mandatory on streams, so inv2543 closes the connection
    (after a 400)."""
    (error,) = stream_events(load("inv2543.dat"))
    assert isinstance(error, SipParseError)
    assert (error.status, error.fatal) == (400, True)


def test_clerr_over_a_stream_waits_for_the_body():
    """RFC 4475 3.1.2.2: on a stream, a Content-Length larger than what arrived means waiting
    (the transport's idle timer closes the connection), not an error."""
    framer = StreamFramer()
    data = load("clerr.dat")
    framer.feed(data)
    assert framer.next_event() is NEED_DATA
    assert framer.buffered == len(data)


@pytest.mark.parametrize("name", ["ncl.dat", "mcl01.dat"])
def test_bad_content_length_over_a_stream_is_fatal(name):
    """RFC 4475 3.1.2.3 / 3.3.9: a negative or doubled Content-Length loses the framing: a
    fatal 400, after which the framer refuses more bytes."""
    framer = StreamFramer()
    framer.feed(load(name))
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert (info.value.status, info.value.fatal) == (400, True)
    with pytest.raises(SipParseError):
        framer.feed(load("zeromf.dat"))


STREAM_REJECTED = [
    n
    for n, (outcome, fatal) in EXPECTED.items()
    if outcome != PARSE
    and not fatal
    and raw_headers(load(n), "content-length")
    and n not in ("clerr.dat", "baddn.dat")
]


@pytest.mark.parametrize("name", sorted(STREAM_REJECTED))
def test_rejected_message_on_a_stream_is_skipped(name):
    """A malformed message with a sound Content-Length is cut out of the stream, rejected with
    the same status as a datagram, and the next message on the connection still parses."""
    framer = StreamFramer()
    framer.feed(load(name) + load("zeromf.dat"))
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert (info.value.status, info.value.fatal) == (EXPECTED[name][0], False)
    event = framer.next_event()
    assert isinstance(event, Request) and event.method == "OPTIONS"
    assert summary(event) == summary(parse("zeromf.dat"))


def test_unterminated_baddn_over_a_stream_waits():
    """baddn.dat has no empty line after its headers: on a stream that is an incomplete
    header section, so the framer waits for more."""
    framer = StreamFramer()
    framer.feed(load("baddn.dat"))
    assert framer.next_event() is NEED_DATA
