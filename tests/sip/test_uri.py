"""URIs: sip, sips, tel and opaque schemes (RFC 3261 19.1, 25.1; RFC 3966; RFC 5118)."""

import pytest

from sbc.errors import SipParseError
from sbc.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri


@pytest.mark.parametrize(
    "text, scheme, user, password, host, port, params, headers",
    [
        ("sip:alice@example.com", "sip", "alice", None, "example.com", None, [], []),
        ("sips:alice@example.com:5061", "sips", "alice", None, "example.com", 5061, [], []),
        ("sip:example.com", "sip", None, None, "example.com", None, [], []),
        ("sip:192.0.2.1:5060;transport=udp;lr", "sip", None, None, "192.0.2.1", 5060,
         [("transport", "udp"), ("lr", None)], []),
        ("sip:+441234567890@gw.example.net;user=phone", "sip", "+441234567890", None,
         "gw.example.net", None, [("user", "phone")], []),
        ("sip:alice:secret@example.com", "sip", "alice", "secret", "example.com", None, [], []),
        ("sip:[2001:db8::10]:5070", "sip", None, None, "[2001:db8::10]", 5070, [], []),
        ("sip:[2001:db8::10:5070]", "sip", None, None, "[2001:db8::10:5070]", None, [], []),
        ("sip:bob@[::ffff:192.0.2.2]", "sip", "bob", None, "[::ffff:192.0.2.2]", None, [], []),
        ("sip:user@example.com?Route=%3Csip:example.com%3E", "sip", "user", None, "example.com",
         None, [], [("Route", "%3Csip:example.com%3E")]),
        ("sip:null-%00-null@example.com", "sip", "null-%00-null", None, "example.com", None,
         [], []),
        ("sip:a;b=c@example.com;d", "sip", "a;b=c", None, "example.com", None, [("d", None)],
         []),
    ],
)
def test_sip_uri_components(text, scheme, user, password, host, port, params, headers):
    """A SIP URI splits into its RFC 3261 19.1.1 components and serializes back unchanged."""
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        scheme, user, password, host, port)
    assert list(uri.params) == params
    assert uri.headers == headers
    assert str(uri) == text


def test_escaped_user_is_unescaped_once():
    """%HH escapes resolve exactly once: %2541 means %41, not A (RFC 4475 3.1.1.3)."""
    uri = parse_uri("sip:sips%3Auser%40example.com%2541@example.net")
    assert isinstance(uri, SipUri)
    assert uri.user == "sips%3Auser%40example.com%2541"
    assert uri.user_unescaped == "sips:user@example.com%41"


def test_tel_uri():
    """A tel URI keeps its number and parameters (RFC 3966)."""
    uri = parse_uri("tel:+44-20-7946-0000;phone-context=example.com")
    assert isinstance(uri, TelUri)
    assert uri.number == "+44-20-7946-0000"
    assert uri.is_global
    assert uri.params.get("phone-context") == "example.com"
    assert str(uri) == "tel:+44-20-7946-0000;phone-context=example.com"


@pytest.mark.parametrize("text", ["isbn:2983792873", "http://www.example.com",
                                  "soap.beep://192.0.2.103:3002", "name:John_Smith"])
def test_unknown_schemes_are_opaque(text):
    """URIs of schemes sbc does not route on parse as opaque absolute URIs (RFC 4475 3.3.2-4)."""
    uri = parse_uri(text)
    assert isinstance(uri, AbsoluteUri)
    assert str(uri) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice@example.com",  # no scheme
        "sip:",  # nothing after the scheme
        "<sip:alice@example.com>",  # brackets belong to name-addr, not the URI
        "sip:alice@example.com@evil.example",  # two @
        "sip:2001:db8::10",  # IPv6 without brackets (RFC 5118 4.2)
        "sip:[2001:db8:::192.0.2.1]",  # RFC 5118 4.10: three colons, rejected (RFC 4291)
        "sip:[2001:db8::1",  # unterminated reference
        "sip:alice@example.com:99999",  # port out of range
        "sip:alice@example.com:50x",  # port not numeric
        "sip:alice@256.1.1.1",  # not an IPv4 address
        "sip:alice@exa mple.com",  # space
        "sip:al ice@example.com",
        "sip:alice@-example.com",  # label starting with '-'
        "sip:alice@example.com;;lr",  # empty parameter
        "sip:alice@example.com;a=b c",
        "sip:alice@example.com?Route",  # header without '='
        "sip:al%ZZice@example.com",  # bad escape
        "tel:+44 20",  # space in number
        "1abc:opaque",  # scheme must start with a letter
    ],
)
def test_malformed_uris_are_400(text):
    """Malformed URIs raise SipParseError with status 400."""
    with pytest.raises(SipParseError) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_uri_equality_follows_rfc3261_19_1_4():
    """URI comparison: escapes resolved, host case-insensitive, transport must match."""
    a = parse_uri("sip:%61lice@EXAMPLE.com;transport=TCP")
    b = parse_uri("sip:alice@example.com;transport=tcp")
    c = parse_uri("sip:alice@example.com")
    assert a == b
    assert a != c
    assert parse_uri("sip:alice@example.com:5060") != c  # explicit port differs from none


def test_copy_is_independent():
    """Changing a copied URI leaves the original untouched."""
    uri = parse_uri("sip:alice@example.com;transport=tls")
    assert isinstance(uri, SipUri)
    other = uri.copy()
    other.host = "192.0.2.9"
    other.params.set("transport", "udp")
    assert str(uri) == "sip:alice@example.com;transport=tls"
    assert str(other) == "sip:alice@192.0.2.9;transport=udp"
