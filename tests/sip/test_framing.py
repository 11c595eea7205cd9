"""Stream framing (RFC 3261 18.3) and CRLF keepalives (RFC 5626 3.5.1), whole and bytewise."""

import pytest

from sbc.errors import SipParseError
from sbc.sip.framing import CRLF_PONG, NEED_DATA, PING, PONG, StreamFramer
from sbc.sip.message import DEFAULT_LIMITS, Limits, Request, Response

OPTIONS = (
    b"OPTIONS sip:sbc.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:50000;branch=z9hG4bKo1\r\n"
    b"From: <sip:mon@example.com>;tag=1\r\nTo: <sip:sbc.example.net>\r\n"
    b"Call-ID: o1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 5\r\n\r\nhello"
)
RESPONSE = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 192.0.2.1:50000;branch=z9hG4bKo1\r\n"
    b"From: <sip:mon@example.com>;tag=1\r\nTo: <sip:sbc.example.net>;tag=2\r\n"
    b"Call-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def drain(framer: StreamFramer) -> list:
    out = []
    while True:
        ev = framer.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)


def feed_bytewise(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list:
    framer = StreamFramer(limits)
    events = []
    for i in range(len(data)):
        framer.feed(data[i : i + 1])
        events.extend(drain(framer))
    assert framer.buffered == 0
    return events


def describe(events: list) -> list:
    return [e if e in (PING, PONG) else e.to_bytes() for e in events]


def test_messages_and_keepalives_in_one_piece():
    """Several messages and keepalives in one chunk come out in order."""
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n" + OPTIONS + RESPONSE + b"\r\n\r\n" + OPTIONS)
    events = drain(framer)
    assert describe(events) == [PING, OPTIONS, RESPONSE, PING, OPTIONS]
    assert isinstance(events[1], Request) and events[1].body == b"hello"
    assert isinstance(events[2], Response)
    assert CRLF_PONG == b"\r\n"


def test_byte_at_a_time_gives_the_same_events():
    """Feeding one byte at a time yields exactly the events of feeding everything at once."""
    data = b"\r\n\r\n" + OPTIONS + RESPONSE + b"\r\n\r\n" + OPTIONS
    assert describe(feed_bytewise(data)) == [PING, OPTIONS, RESPONSE, PING, OPTIONS]


def test_lone_crlf_is_a_pong():
    """A lone CRLF followed by a message is the peer's pong, then the message."""
    framer = StreamFramer()
    framer.feed(b"\r\n")
    assert framer.next_event() is NEED_DATA  # could still become a ping
    framer.feed(OPTIONS)
    assert describe(drain(framer)) == [PONG, OPTIONS]


def test_partial_body_waits():
    """A message whose body has not fully arrived stays buffered (NEED_DATA)."""
    framer = StreamFramer()
    framer.feed(OPTIONS[:-2])
    assert framer.next_event() is NEED_DATA
    assert framer.buffered == len(OPTIONS) - 2
    framer.feed(OPTIONS[-2:])
    assert describe(drain(framer)) == [OPTIONS]


def test_missing_content_length_is_fatal_400():
    """Content-Length is mandatory on streams: without it the connection is answered and closed."""
    framer = StreamFramer()
    framer.feed(OPTIONS.replace(b"Content-Length: 5\r\n", b""))
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert (info.value.status, info.value.fatal) == (400, True)
    assert info.value.salvage is not None and info.value.salvage.call_id == "o1"
    with pytest.raises(SipParseError):
        framer.next_event()  # the framer refuses further use
    with pytest.raises(SipParseError):
        framer.feed(OPTIONS)


@pytest.mark.parametrize("value", [b"-5", b"five", b"5, 5", b"99999999999"])
def test_unusable_content_length_is_fatal(value):
    """Negative, non-numeric, duplicated or absurd Content-Length loses framing (RFC 4475)."""
    framer = StreamFramer()
    framer.feed(OPTIONS.replace(b"Content-Length: 5", b"Content-Length: " + value))
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert info.value.fatal


def test_malformed_message_with_good_framing_is_not_fatal():
    """A malformed message with usable framing is reported and the stream carries on."""
    framer = StreamFramer()
    bad = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    framer.feed(bad + OPTIONS)
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert (info.value.status, info.value.fatal) == (400, False)
    assert describe(drain(framer)) == [OPTIONS]


def test_oversized_header_section_is_fatal_513():
    """A header section that never ends within the cap is cut off: 513 when a Via can be read
    from the lines so far, a silent close when not."""
    framer = StreamFramer(Limits(max_message_bytes=1000))
    framer.feed(OPTIONS.split(b"Content-Length")[0] + b"X-Pad: aaaaaaaaaa\r\n" * 100)
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert (info.value.status, info.value.fatal) == (513, True)
    assert info.value.salvage is not None and info.value.salvage.call_id == "o1"
    framer = StreamFramer(Limits(max_message_bytes=1000))
    framer.feed(b"OPTIONS sip:x SIP/2.0\r\n" + b"X-Pad: aaaaaaaaaa\r\n" * 100)
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert (info.value.status, info.value.fatal) == (None, True)


def test_oversized_body_is_fatal_413():
    """A Content-Length beyond the body cap is refused before the body is buffered."""
    framer = StreamFramer(Limits(max_body_bytes=100))
    framer.feed(OPTIONS.replace(b"Content-Length: 5", b"Content-Length: 5000"))
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert (info.value.status, info.value.fatal) == (413, True)
    assert framer.buffered == 0


def test_bytewise_header_search_is_not_quadratic_in_events():
    """Byte-by-byte feeding of a large message produces exactly one event at the very end."""
    big = OPTIONS.replace(b"Content-Length: 5\r\n\r\nhello",
                          b"Content-Length: 3000\r\n\r\n" + b"z" * 3000)
    framer = StreamFramer()
    seen = []
    for i in range(len(big)):
        framer.feed(big[i : i + 1])
        seen.extend((i, e) for e in drain(framer))
    assert [i for i, _ in seen] == [len(big) - 1]
