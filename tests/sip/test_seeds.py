"""pjproject's fuzz seeds (SIP messages and URIs): parse or raise SipParseError, nothing else.

The seeds (``tests/fixtures/sip-seeds``, see its README.md) are near-well-formed inputs from
another SIP stack's fuzzing corpus.  Several use bare LF line ends; each message seed is also
tried with its line ends normalised to CRLF, which reaches deeper into the parser.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sbc.errors import SipParseError
from sbc.sip.framing import NEED_DATA, StreamFramer
from sbc.sip.message import Request, Response, parse_message
from sbc.sip.uri import parse_uri

SEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "sip-seeds"
MESSAGE_SEEDS = sorted(
    str(p.relative_to(SEEDS))
    for sub in ("fuzz-sip", "fuzz-sip-dialog")
    for p in (SEEDS / sub).iterdir()
    if p.is_file()
)
URI_SEEDS = sorted(str(p.relative_to(SEEDS)) for p in (SEEDS / "fuzz-uri").iterdir())

# With CRLF line ends, these seeds are well formed and must parse.
PARSE_WITH_CRLF = {
    "fuzz-sip/auth_challenge.sip",
    "fuzz-sip/auth_digest.sip",
    "fuzz-sip/input.2.sip",
    "fuzz-sip/input.3.sip",
    "fuzz-sip/input.5.sip",
    "fuzz-sip/input.6.sip",
    "fuzz-sip/input.7.sip",
    "fuzz-sip/replaces_refer.sip",
    "fuzz-sip/routing_complex.sip",
    "fuzz-sip/session_timers.sip",
    "fuzz-sip/tel_uri_basic.sip",
}


def with_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def parse_or_error(data: bytes) -> Request | Response | SipParseError:
    """The message, or the SipParseError; any other exception propagates and fails the test."""
    try:
        return parse_message(data)
    except SipParseError as e:
        return e


def stream_or_error(data: bytes) -> object:
    """The first stream event, or the SipParseError; any other exception propagates."""
    framer = StreamFramer()
    framer.feed(data)
    try:
        return framer.next_event()
    except SipParseError as e:
        return e


def test_seed_sets_are_present():
    """All 19 SIP message seeds and both URI seeds were copied."""
    assert len(MESSAGE_SEEDS) == 19
    assert len(URI_SEEDS) == 2


@pytest.mark.parametrize("name", MESSAGE_SEEDS)
def test_message_seed_parses_or_raises(name):
    """A message seed, as shipped and with CRLF line ends, parses or raises SipParseError, as a
    datagram and on a stream; with CRLF, the well-formed ones parse and re-serialize stably."""
    raw = (SEEDS / name).read_bytes()
    for data in (raw, with_crlf(raw)):
        parse_or_error(data)
        streamed = stream_or_error(data)
        assert streamed is NEED_DATA or isinstance(streamed, Request | Response | SipParseError)
    result = parse_or_error(with_crlf(raw))
    if name in PARSE_WITH_CRLF:
        assert isinstance(result, Request | Response), result
        first = result.to_bytes()
        assert parse_message(first).to_bytes() == first
    else:
        assert isinstance(result, SipParseError)


def test_bare_lf_seeds_are_dropped():
    """A seed with bare LF line ends is not SIP framing (RFC 3261 7): it is dropped, not
    answered."""
    for name in MESSAGE_SEEDS:
        raw = (SEEDS / name).read_bytes()
        if b"\r" not in raw:
            result = parse_or_error(raw)
            assert isinstance(result, SipParseError) and result.status is None, name


@pytest.mark.parametrize("name", URI_SEEDS)
def test_uri_seed_parses_or_raises(name):
    """A URI seed, as shipped, stripped, and without its angle brackets, parses or raises
    SipParseError; none of them is a valid URI as written."""
    text = (SEEDS / name).read_bytes().decode("utf-8", "surrogateescape")
    for candidate in (text, text.strip(), text.strip().strip("<>")):
        try:
            uri = parse_uri(candidate)
        except SipParseError:
            continue
        assert str(parse_uri(str(uri))) == str(uri)
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_run_together_uris_seed():
    """simple_uris.txt holds three SIP URIs run together: as one URI it is rejected (two
    '@'), and split at each 'sip:' every piece parses."""
    text = (SEEDS / "fuzz-sip-dialog" / "simple_uris.txt").read_text()
    with pytest.raises(SipParseError):
        parse_uri(text.strip())
    pieces = ["sip:" + p for p in text.strip().split("sip:") if p]
    assert [str(parse_uri(p)) for p in pieces] == [
        "sip:alice@atlanta.com",
        "sip:bob@biloxi.com",
        "sip:bob@biloxi.com",
    ]
