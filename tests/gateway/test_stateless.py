"""The stateless core: what sbc answers before any transaction exists, with exact bytes."""

import pytest

from sbc.gateway.stateless import StatelessCore, stamp_received
from sbc.ids import CountingIdSource

SOURCE = ("198.51.100.7", 40123)


def core() -> StatelessCore:
    return StatelessCore(new_tag=CountingIdSource("t").tag, supported=frozenset({"100rel"}))


def request(method: str, extra: str = "", cseq_method: str = "") -> bytes:
    return (
        f"{method} sip:2001@sbc.example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKabc;rport\r\n"
        f"From: <sip:1001@sbc.example.net>;tag=f1\r\n"
        f"To: <sip:2001@sbc.example.net>\r\n"
        f"Call-ID: c1@10.0.0.5\r\n"
        f"CSeq: 7 {cseq_method or method}\r\n"
        f"Max-Forwards: 70\r\n{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def head(status_line: str, via: str = "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKabc;rport=40123;"
         "received=198.51.100.7") -> bytes:
    return (
        f"{status_line}\r\nVia: {via}\r\nFrom: <sip:1001@sbc.example.net>;tag=f1\r\n"
        f"To: <sip:2001@sbc.example.net>;tag=t1\r\nCall-ID: c1@10.0.0.5\r\n"
    ).encode()


def test_options_is_answered_200_with_capabilities():
    """OPTIONS gets 200 with Allow/Accept, a To tag, and received/rport on the Via (RFC 3581)."""
    out = core().receive_datagram(request("OPTIONS"), SOURCE)
    assert out == head("SIP/2.0 200 OK") + (
        b"CSeq: 7 OPTIONS\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
        b"Accept: application/sdp\r\nAccept-Language: en\r\nContent-Length: 0\r\n\r\n")


def test_invite_without_routing_gets_503_retry_after():
    """Until the B2BUA exists, an INVITE is answered 503 with Retry-After."""
    c = core()
    out = c.receive_datagram(request("INVITE"), SOURCE)
    assert out == head("SIP/2.0 503 Service Unavailable") + (
        b"CSeq: 7 INVITE\r\nRetry-After: 60\r\nContent-Length: 0\r\n\r\n")
    assert c.counters["request.INVITE"] == 1 and c.counters["answered.503"] == 1


def test_cancel_gets_481_and_ack_is_absorbed():
    """CANCEL matches no transaction (481); ACK is never answered."""
    c = core()
    assert c.receive_datagram(request("CANCEL"), SOURCE).startswith(
        b"SIP/2.0 481 Call/Transaction Does Not Exist\r\n")
    assert c.receive_datagram(request("ACK"), SOURCE) is None
    assert c.counters["request.ACK"] == 1


def test_unsupported_require_gets_420_with_unsupported():
    """Require with an unknown option tag gets 420 listing it (RFC 3261 8.2.2.3)."""
    out = core().receive_datagram(request("INVITE", "Require: 100rel, foo\r\n"), SOURCE)
    assert out.startswith(b"SIP/2.0 420 Bad Extension\r\n")
    assert b"\r\nUnsupported: foo\r\n" in out


def test_malformed_request_answered_from_salvage():
    """A malformed request gets 400 built from what could be read, and is counted."""
    c = core()
    out = c.receive_datagram(request("INVITE", cseq_method="BYE"), SOURCE)
    assert out == head("SIP/2.0 400 Bad Request") + b"CSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n"
    assert c.counters["malformed.answered"] == 1


def test_malformed_ack_is_not_answered():
    """A malformed ACK is dropped: ACKs never get responses (RFC 3261 17.2.1)."""
    c = core()
    assert c.receive_datagram(request("ACK", cseq_method="INVITE"), SOURCE) is None
    assert c.counters["malformed.dropped"] == 1


@pytest.mark.parametrize("data", [b"", b"\x00\x01\x02", b"hello world\r\n\r\n",
                                  head("SIP/2.0 200 OK") + b"CSeq: 1 INVITE\r\n\r\n"])
def test_garbage_and_responses_are_dropped_and_counted(data):
    """Garbage and stray responses get no answer; each is counted."""
    c = core()
    assert c.receive_datagram(data, SOURCE) is None
    assert sum(c.counters.values()) == 1


@pytest.mark.parametrize(
    "via, expected",
    [
        ("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;rport",
         "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;rport=40123;received=198.51.100.7"),
        ("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1",
         "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;received=198.51.100.7"),
        ("SIP/2.0/UDP 10.0.0.5;rport=1;received=192.0.2.1;branch=z9hG4bK1",
         "SIP/2.0/UDP 10.0.0.5;rport=1;received=192.0.2.1;branch=z9hG4bK1"),
    ],
)
def test_stamp_received(via, expected):
    """received is added and an empty rport filled; values already present are kept."""
    assert stamp_received(via, *SOURCE) == expected
