"""Round trips over a corpus of realistic messages (desk phones, softphones, PBXs, carrier trunks).

The corpus in tests/fixtures/sip-corpus/ was written for this project in the style each product
uses on the wire (see its README.md).
"""

from pathlib import Path

import pytest

from sbc.sip.framing import NEED_DATA, StreamFramer
from sbc.sip.headers import STAR
from sbc.sip.message import Request, Response, parse_message

CORPUS = Path(__file__).parent.parent / "fixtures" / "sip-corpus"
FILES = sorted(CORPUS.glob("*.sip"))


def test_corpus_is_present():
    """The corpus holds the realistic messages the round-trip tests run over."""
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_datagram_round_trip_is_byte_exact(path):
    """Each realistic message parses and serializes back to exactly the same bytes."""
    data = path.read_bytes()
    msg = parse_message(data)
    assert msg.to_bytes() == data


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_stream_byte_at_a_time(path):
    """Each realistic message fed one byte at a time over a stream comes out once, intact."""
    data = path.read_bytes() * 2
    framer = StreamFramer()
    out = []
    for i in range(len(data)):
        framer.feed(data[i : i + 1])
        while (ev := framer.next_event()) is not NEED_DATA:
            out.append(ev.to_bytes())
    assert out == [path.read_bytes()] * 2


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_typed_views_agree_with_text(path):
    """Typed Via/From/To/CSeq/Contact/Route views re-serialize to what the text says."""
    msg = parse_message(path.read_bytes())
    assert [str(v) for v in msg.vias] == msg.headers.values("via")
    assert all(v.rfc3261_branch for v in msg.vias)
    # Typed values always write "display <uri>" with one space; otherwise they match the text.
    assert str(msg.from_).replace(" ", "") == msg.headers.get("from", "").replace(" ", "")
    assert str(msg.to).replace(" ", "") == msg.headers.get("to", "").replace(" ", "")
    assert msg.from_.tag is not None
    if isinstance(msg, Response) and msg.status > 100:
        assert msg.to.tag is not None
    if isinstance(msg, Request):
        assert msg.cseq.method == msg.method
        assert msg.max_forwards is not None
    contacts = msg.contacts
    if contacts is not STAR:
        for c in contacts:
            assert str(c.uri).split(":", 1)[0] in ("sip", "sips", "tel")
    for route in msg.routes + msg.record_routes:
        assert route.uri.params.get("lr", "x") is None  # loose routing everywhere
