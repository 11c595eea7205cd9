"""Fuzzing the SIP parser with hypothesis: the h11 invariant and round trips.

Invariants checked on every generated input:

1. ``parse_message``, a :class:`StreamFramer` fed in any chunking, and ``parse_uri`` either
   succeed or raise :class:`SipParseError`; nothing else escapes, nothing loops forever.  An
   error that asks for an answer carries a salvage with Vias that parse, so the answer can be
   built and routed (RFC 3261 8.2.6, 18.2.2); a malformed response is never answered.
2. A parsed message keeps its contract: every typed accessor works, no header value holds a CR
   or LF, and it serializes to bytes that parse again to the same start line, headers and body;
   after the first serialization the bytes are a fixed point.
3. A stream gives the same events whatever the chunking, and a non-fatal error always consumes
   the bytes of the message it reports (otherwise a transport would spin on it).

Inputs: random bytes; mutations of real messages (the RFC 4475/5118 torture messages, the
pjproject seeds, ``tests/fixtures/sip-corpus/*.sip`` when present); and a grammar-ish generator
of plausible SIP messages and URIs.  The ``fast`` profile (default) keeps this file under about
30 s; ``HYPOTHESIS_PROFILE=deep`` runs 100k examples per test.  ``bench/fuzz_sip.py`` reuses the
oracle below for long unattended runs.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from itertools import zip_longest
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sbc.errors import SipParseError
from sbc.sip.framing import NEED_DATA, StreamFramer
from sbc.sip.grammar import TOKEN_RE
from sbc.sip.headers import canonical_name, parse_via_value
from sbc.sip.message import DEFAULT_LIMITS, Limits, Request, Response, build_response, parse_message
from sbc.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri

T = TypeVar("T")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# A hang shows up as a deadline failure instead of a stuck CI job.  Generous: it is there to
# catch runaway (quadratic or worse) behaviour, not to measure speed.
FUZZ = settings(deadline=timedelta(seconds=5))

# Statuses the parser may ask a server to answer with (sbc.errors.SipParseError).
ANSWER_STATUSES = frozenset({400, 413, 414, 416, 420, 483, 505, 513})

# Typed accessors the parser promises not to raise for a message it returned
# (sbc.sip.message.Message: "The parser has validated all of these for a parsed message").
ACCESSORS = (
    "vias",
    "top_via",
    "from_",
    "to",
    "call_id",
    "cseq",
    "max_forwards",
    "contacts",
    "routes",
    "record_routes",
    "content_type",
    "expires",
)


def load_corpus() -> list[bytes]:
    """Real messages to mutate: torture messages, seeds, and the project corpus if present."""
    paths = sorted((FIXTURES / "sip-torture").rglob("*.dat"))
    paths += sorted((FIXTURES / "sip-corpus").glob("*.sip"))
    for sub in ("fuzz-sip", "fuzz-sip-dialog"):
        paths += sorted(p for p in (FIXTURES / "sip-seeds" / sub).glob("*") if p.is_file())
    corpus = [p.read_bytes() for p in paths]
    # The pjproject seeds use bare LF; their CRLF form reaches deeper into the parser.
    corpus += [
        c.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for c in corpus if b"\r\n" not in c
    ]
    return sorted(set(corpus), key=lambda c: (len(c), c))


CORPUS = load_corpus()


# ---------------------------------------------------------------------------------------------
# The oracle (also used by bench/fuzz_sip.py)


class OracleFailure(AssertionError):
    """An input broke an invariant.  ``key`` names the broken promise without the varying
    details, so that a long fuzz run can group failures by it."""

    def __init__(self, key: str, detail: str, data: object) -> None:
        super().__init__(f"{key}: {detail}; input={data!r}")
        self.key = key


def _start_line(data: bytes) -> bytes:
    """The start line as the parser sees it: after leading CRLFs (RFC 3261 7.5)."""
    while data.startswith(b"\r\n"):
        data = data[2:]
    return data.split(b"\r\n", 1)[0]


def check_error(err: SipParseError, data: bytes, datagram: bool = True) -> None:
    """An error is usable: a known status, and an answer can be built and routed from it.

    ``datagram``: ``data`` is the one message the error is about (not a whole stream).
    """
    if err.status is not None and err.status not in ANSWER_STATUSES:
        raise OracleFailure("unexpected status", f"{err!r}", data)
    if datagram and _start_line(data)[:4].upper() == b"SIP/" and err.status is not None:
        raise OracleFailure(
            "malformed response answered (RFC 3261 18.1.2: drop it)", f"{err!r}", data
        )
    if err.status is None:
        return
    salvage = err.salvage
    if salvage is None or not salvage.vias:
        raise OracleFailure(
            f"status {err.status} without a salvaged Via to answer to", f"{err!r}", data
        )
    for via in salvage.vias:
        try:
            parse_via_value(via)
        except SipParseError as e:
            raise OracleFailure(
                f"salvaged Via does not parse ({e.message})", f"{via!r} from {err!r}", data
            ) from None
    build_response(salvage, err.status, to_tag="fuzz").to_bytes()


def summary(msg: Request | Response) -> tuple[object, ...]:
    """Start line, header lines (Content-Length aside) and body: what a round trip keeps."""
    if isinstance(msg, Request):
        start: tuple[object, ...] = ("request", msg.method, str(msg.uri))
    else:
        start = ("response", msg.status, msg.reason)
    headers = [(n, v) for n, v in msg.headers if canonical_name(n) != "content-length"]
    return start, headers, msg.body


def check_parsed(msg: Request | Response, data: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """A parsed message keeps the parser's promises and round-trips to a fixed point."""
    for name in ACCESSORS:
        try:
            getattr(msg, name)
        except Exception as e:
            raise OracleFailure(
                f"accessor {name} raised {type(e).__name__} on a parsed message", f"{e!r}", data
            ) from None
    for name, value in msg.headers:
        if not TOKEN_RE.match(name) or "\r" in value or "\n" in value:
            raise OracleFailure("header line could be injected", f"{name!r}: {value!r}", data)
    if isinstance(msg, Request) and msg.cseq.method != msg.method:
        raise OracleFailure("CSeq method differs from the request method", "", data)
    first = msg.to_bytes()
    try:
        again = parse_message(first, limits)
    except SipParseError as e:
        raise OracleFailure(
            f"serialization does not parse ({e.message})", f"{first!r}", data
        ) from None
    if summary(again) != summary(msg):
        raise OracleFailure(
            "serialization parses to a different message",
            f"{summary(msg)!r} -> {summary(again)!r}",
            data,
        )
    if again.headers.get("content-length") != str(len(msg.body)):
        raise OracleFailure(
            "serialized Content-Length differs from the body length", f"{first!r}", data
        )
    if again.to_bytes() != first:
        raise OracleFailure("serialization is not a fixed point", f"{first!r}", data)


def check_datagram(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response | None:
    """``parse_message`` either returns a sound message or raises a usable SipParseError."""
    try:
        msg = parse_message(data, limits)
    except SipParseError as e:
        check_error(e, data)
        return None
    check_parsed(msg, data, limits)
    return msg


def event_summary(event: object) -> object:
    if isinstance(event, Request | Response):
        return summary(event)
    return repr(event)


def stream_events(
    data: bytes,
    cuts: list[int],
    limits: Limits = DEFAULT_LIMITS,
    framer: StreamFramer | None = None,
) -> list[object]:
    """Feed ``data`` cut at ``cuts`` into a StreamFramer, draining events after each piece.

    Fails if the framer reports a non-fatal error or an event without consuming bytes: a
    transport that answers and carries on would then loop forever on the same bytes.
    """
    framer = StreamFramer(limits) if framer is None else framer
    bounds = sorted({c for c in cuts if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    events: list[object] = []
    for piece in pieces:
        framer.feed(piece)
        while True:
            before = framer.buffered
            try:
                event = framer.next_event()
            except SipParseError as e:
                check_error(e, data, datagram=False)
                events.append(("error", e.status, e.fatal, e.message))
                if e.fatal:
                    return events
                if framer.buffered >= before:
                    raise OracleFailure(
                        "non-fatal stream error consumed nothing (stream stuck)", f"{e!r}", data
                    ) from None
                continue
            if event is NEED_DATA:
                break
            if framer.buffered >= before:
                raise OracleFailure("stream event consumed nothing", f"{event!r}", data)
            if isinstance(event, Request | Response):
                check_parsed(event, data, limits)
            events.append(event_summary(event))
    events.append(("waiting", framer.buffered))
    return events


def check_stream(data: bytes, cuts: list[int], limits: Limits = DEFAULT_LIMITS) -> None:
    """Chunked feeding gives exactly the events of feeding in one piece."""
    whole = stream_events(data, [], limits)
    chunked = stream_events(data, cuts, limits)
    if chunked != whole:
        i = next(i for i, (a, b) in enumerate(zip_longest(whole, chunked)) if a != b)
        raise OracleFailure(
            "chunking changes the stream events",
            f"event {i}: whole {whole[i : i + 1]!r} chunked {chunked[i : i + 1]!r}"
            f" (cuts {sorted(set(cuts))[:20]})",
            data,
        )


def check_uri(text: str) -> None:
    """``parse_uri`` parses or raises SipParseError(400); what parses is a serialization
    fixed point of the same kind."""
    try:
        uri = parse_uri(text)
    except SipParseError as e:
        if e.status != 400:
            raise OracleFailure("URI error with a status other than 400", f"{e!r}", text) from None
        return
    first = str(uri)
    try:
        again = parse_uri(first)
    except SipParseError as e:
        raise OracleFailure(f"serialized URI does not parse ({e.message})", first, text) from None
    if type(again) is not type(uri) or str(again) != first:
        raise OracleFailure("serialized URI is not a fixed point", f"{first!r} -> {again}", text)


# ---------------------------------------------------------------------------------------------
# Input generation.  Mutations and the grammar are written against a tiny "choices" interface so
# that hypothesis (which shrinks) and bench/fuzz_sip.py (plain random, for long runs) share them.


class HypothesisChoices:
    """Choices drawn through hypothesis, so failures shrink (toward the first item of each
    choice, the low end of each range, and short texts)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw
        self.odds = 10

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(_integers(lo, hi))

    def choice(self, items: Sequence[T]) -> T:
        return items[self._draw(_integers(0, len(items) - 1))]

    def text(self, alphabet: str | None, max_size: int, min_size: int = 0) -> str:
        return self._draw(_texts(alphabet, min_size, max_size))

    def binary(self, max_size: int) -> bytes:
        return self._draw(_binaries(max_size))


# Strategies are built once: the grammar draws thousands of small values per example.
@functools.cache
def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


@functools.cache
def _texts(alphabet: str | None, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    # Any character but a lone surrogate, or a raw byte as its surrogateescape stand-in
    # (U+DC80..U+DCFF, as RandomChoices draws): the message is encoded with surrogateescape.
    chars = (st.one_of(st.characters(exclude_categories=["Cs"]),
                       st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF))
             if alphabet is None else st.sampled_from(sorted(set(alphabet))))
    return st.text(chars, min_size=min_size, max_size=max_size)


@functools.cache
def _binaries(max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


class RandomChoices:
    """Choices from a seeded ``random.Random`` (bench/fuzz_sip.py)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.odds = 10

    def integer(self, lo: int, hi: int) -> int:
        return self._rng.randint(lo, hi)

    def choice(self, items: Sequence[T]) -> T:
        return self._rng.choice(items)

    def text(self, alphabet: str | None, max_size: int, min_size: int = 0) -> str:
        n = self._rng.randint(min_size, max_size)
        if alphabet is not None:
            return "".join(self._rng.choice(alphabet) for _ in range(n))
        ranges = (
            (0x20, 0x7E),
            (0x00, 0x1F),
            (0x80, 0x2FF),
            (0x400, 0x4FF),
            (0x4E00, 0x4FFF),
            (0xDC80, 0xDCFF),
        )
        out = []
        for _ in range(n):
            lo, hi = self._rng.choice(ranges)
            out.append(chr(self._rng.randint(lo, hi)))
        return "".join(out)

    def binary(self, max_size: int) -> bytes:
        return self._rng.randbytes(self._rng.randint(0, max_size))


Choices = HypothesisChoices | RandomChoices

INTERESTING = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\r\n ",
    b"\x00",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"%",
    b"%00",
    b"%zz",
    b"[",
    b"]",
    b"[::1]",
    b" ",
    b"\t",
    b"@",
    b"=",
    b"?",
    b"&",
    b"/",
    b"0",
    b"9",
    b"-1",
    b"65536",
    b"4294967296",
    b"99999999999999999999",
    b"\xff",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
    b"SIP/2.0",
    b"sip:",
    b"z9hG4bK",
    b";branch=",
    b";tag=",
    b"Content-Length: 5\r\n",
    b"l: 99999\r\n",
    b"Via: SIP/2.0/UDP x\r\n",
    b"A" * 70_000,
    b" " * 9000,
    b";x" * 5000,
    b"," * 3000,
    b"\r\n " * 500,
    b"%41" * 3000,
    b"<" * 2000,
    b'"' * 2000,
    b"\\" * 2001,
    b"[" * 2000,
    b"a." * 3000,
    b"a-" * 3000,
]
SHORT_INTERESTING = [b for b in INTERESTING if len(b) < 30]
NUMBERS = [
    b"0",
    b"00000",
    b"-1",
    b"255",
    b"256",
    b"65535",
    b"65536",
    b"2147483647",
    b"2147483648",
    b"4294967296",
    b"1" * 40,
    b"1e3",
    b"",
]
_LINE_END = re.compile(rb"\r\n")
_DIGITS = re.compile(rb"[0-9]+")
_SEPARATORS = re.compile(rb"[:;,<>\"@ /=\[\]?&\\]")


def _flip(c: Choices, data: bytes) -> bytes:
    if not data:
        return data
    i = c.integer(0, len(data) - 1)
    return data[:i] + bytes([data[i] ^ c.integer(1, 255)]) + data[i + 1 :]


def _insert(c: Choices, data: bytes) -> bytes:
    i = c.integer(0, len(data))
    return data[:i] + c.choice(INTERESTING) + data[i:]


def _insert_at_separator(c: Choices, data: bytes) -> bytes:
    spots = [m.start() for m in _SEPARATORS.finditer(data)]
    if not spots:
        return _insert(c, data)
    i = c.choice(spots) + c.integer(0, 1)
    return data[:i] + c.choice(INTERESTING) + data[i:]


def _replace_separator(c: Choices, data: bytes) -> bytes:
    spots = [m.start() for m in _SEPARATORS.finditer(data)]
    if not spots:
        return _flip(c, data)
    i = c.choice(spots)
    return data[:i] + c.choice(SHORT_INTERESTING) + data[i + 1 :]


def _delete(c: Choices, data: bytes) -> bytes:
    i = c.integer(0, len(data))
    j = c.integer(i, min(len(data), i + 64))
    return data[:i] + data[j:]


def _truncate(c: Choices, data: bytes) -> bytes:
    return data[: c.integer(0, len(data))]


def _duplicate_line(c: Choices, data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    line = lines[c.integer(0, len(lines) - 1)]
    lines.insert(c.integer(0, len(lines)), line)
    return b"\r\n".join(lines)


def _splice_header(c: Choices, data: bytes) -> bytes:
    donor = c.choice(CORPUS).split(b"\r\n")
    lines = data.split(b"\r\n")
    lines.insert(c.integer(1, max(1, len(lines))), donor[c.integer(0, len(donor) - 1)])
    return b"\r\n".join(lines)


def _swap_lines(c: Choices, data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    i, j = c.integer(0, len(lines) - 1), c.integer(0, len(lines) - 1)
    lines[i], lines[j] = lines[j], lines[i]
    return b"\r\n".join(lines)


def _replace_number(c: Choices, data: bytes) -> bytes:
    spots = [(m.start(), m.end()) for m in _DIGITS.finditer(data)]
    if not spots:
        return _insert(c, data)
    a, b = c.choice(spots)
    return data[:a] + c.choice(NUMBERS) + data[b:]


def _repeat(c: Choices, data: bytes) -> bytes:
    i = c.integer(0, len(data))
    j = c.integer(i, min(len(data), i + 16))
    return data[:i] + data[i:j] * c.integer(2, 2000) + data[j:]


def _damage_line_end(c: Choices, data: bytes) -> bytes:
    ends = [m.start() for m in _LINE_END.finditer(data)]
    if not ends:
        return _insert(c, data)
    i = c.choice(ends)
    repl = c.choice([b"\r", b"\n", b"", b"\n\r", b"\r\r\n", b"\r\n\r\n", b"\r\n\t"])
    return data[:i] + repl + data[i + 2 :]


MUTATIONS = [
    _flip,
    _insert,
    _insert_at_separator,
    _replace_separator,
    _delete,
    _truncate,
    _duplicate_line,
    _splice_header,
    _swap_lines,
    _replace_number,
    _repeat,
    _damage_line_end,
]


def mutate(c: Choices, data: bytes) -> bytes:
    """``data`` with one to four mutations applied."""
    for _ in range(c.integer(1, 4)):
        data = c.choice(MUTATIONS)(c, data)
    return data


# The grammar (RFC 3261 25.1, loosely).  Each part is right unless ``wrong(c)`` says to take a
# wrong turn there; how often is set per message (``c.odds``), from never to one time in eight,
# so that both the accept and the reject paths are exercised.  With ``odds == 0`` every
# message is well formed (see test_generated_valid_messages_parse).

TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
PARAM_ALPHABET = "abcdefXYZ0123456789-_.!~*'()"  # uri-param names (RFC 3261 25.1 paramchar)
USER_ALPHABET = "abcXYZ0123456789-_.!~*'()&=+$"
ODD_USER_ALPHABET = USER_ALPHABET + ",;?/"
TEXT_ALPHABET = "abc XYZ 0123 ,;:<>@'/=?()[]{}\t\u00e9\u4e2d"
LWS = ["", " ", "  ", "\t", "\r\n ", "\r\n\t"]
ODD = [
    " ",
    ";",
    ",",
    "<",
    ">",
    '"',
    "\\",
    ":",
    "@",
    "%",
    "[",
    "\x00",
    "\r",
    "\n",
    "\xe9",
    "\u4e2d",
    "\udcff",
]
ODD_HOSTS = [
    "[2001:db8::10:5070]",
    "[2001:db8:::192.0.2.1]",
    "[::ffff:192.0.2.10]",
    "[fe80::1%25eth0]",
    "[::",
    "2001:db8::1",
    "[]",
    "[1:2:3:4:5:6:7:8:9]",
    "[::1]",
    "256.1.1.1",
    "01.2.3.4",
    "-a.b",
    "a..b",
    "0",
    "example.com.",
    "a_b",
    "1.2.3",
]
ESCAPES = ["%00", "%41", "%2541", "%3A", "%40", "%zz", "%", "%4"]
NUMBER_TEXT = [
    "0",
    "70",
    "00070",
    "255",
    "256",
    "-1",
    "2147483647",
    "2147483648",
    "4294967296",
    "1" * 30,
    "",
    "x",
    "\u0663",
    "\u00b2",
]


def pick(c: Choices, *options: Callable[[], T]) -> T:
    """Build one of ``options`` (thunks), so that only the chosen one draws anything."""
    return c.choice(options)()


def wrong(c: Choices) -> bool:
    """Take a wrong turn here?  One time in ``c.odds`` (never when it is 0)."""
    return c.odds > 0 and c.integer(0, c.odds - 1) == 0


def token(c: Choices, alphabet: str = TOKEN_ALPHABET) -> str:
    return c.text(alphabet, 10, min_size=1)


def number(c: Choices, lo: int, hi: int) -> str:
    return c.choice(NUMBER_TEXT) if wrong(c) else str(c.integer(lo, hi))


def host(c: Choices) -> str:
    if wrong(c):
        return c.choice(ODD_HOSTS)
    kind = c.integer(0, 2)
    if kind == 0:  # labels start with a letter, so no label set looks like an IPv4 address
        return ".".join(
            c.text("abcdefghij", 1, min_size=1) + c.text("abcdefghij0123456789-", 6).rstrip("-")
            for _ in range(c.integer(1, 3))
        )
    if kind == 1:
        return ".".join(str(c.integer(0, 255)) for _ in range(4))
    groups = [f"{c.integer(0, 0xFFFF):x}" for _ in range(c.integer(1, 8))]
    text = ":".join(groups) if len(groups) == 8 else ":".join(groups[:-1]) + "::" + groups[-1]
    return f"[{text}]"


def hostport(c: Choices) -> str:
    h = host(c)
    if c.integer(0, 2) == 0:
        port = c.choice(["05060", "", "x", "70000"]) if wrong(c) else str(c.integer(1, 65535))
        return f"{h}:{port}"
    return h


def params(c: Choices, known: Sequence[str], alphabet: str = TOKEN_ALPHABET) -> str:
    """``;name[=value]`` parameters; ``known`` holds plausible ``name`` or ``name=value``."""
    out = []
    for _ in range(c.integer(0, 3)):
        if wrong(c):
            value = pick(
                c,
                lambda: c.choice(["", '"quoted"', '"a\\"b"', "a b", ";"]),
                lambda: host(c),
                lambda: token(c) + "=",
            )
            out.append(f";{token(c)}={value}")
        elif c.integer(0, 3) == 0:
            out.append(
                f";{token(c, alphabet)}" + pick(c, lambda: "", lambda: "=" + token(c, alphabet))
            )
        else:
            out.append(";" + c.choice(known))
    return "".join(out)


def free_text(c: Choices, max_size: int) -> str:
    """Header-ish text: printable, or anything at all on a wrong turn."""
    return c.text(None, max_size) if wrong(c) else c.text(TEXT_ALPHABET, max_size)


def sip_uri(c: Choices, in_angle: bool = True, uri_headers: bool = False) -> str:
    scheme = c.choice(["sip", "sips", "SIP"]) if wrong(c) else c.choice(["sip", "sips"])
    userinfo = ""
    if c.integer(0, 1):
        userinfo = c.text(ODD_USER_ALPHABET if in_angle else USER_ALPHABET, 8, min_size=1)
        if wrong(c):
            userinfo = c.choice(ESCAPES) + userinfo
        elif c.integer(0, 3) == 0:
            userinfo += c.choice(["%41", "%00", "%2541", "%3A"])
        if c.integer(0, 5) == 0:
            userinfo += ":" + c.text(USER_ALPHABET, 6)
        userinfo += "@"
    headers = ""
    if wrong(c) or (in_angle and uri_headers and c.integer(0, 9) == 0):
        # RFC 3261 19.1.1: headers only where the URI may carry them (Contact, Route...).
        headers = "?" + "&".join(
            f"{token(c, PARAM_ALPHABET)}={c.text(PARAM_ALPHABET, 8)}"
            for _ in range(c.integer(1, 2))
        )
    known = ["transport=tcp", "lr", "user=phone", "maddr=192.0.2.1", "ttl=1", "ob"]
    # In an addr-spec, ";..." after the URI belongs to the header (RFC 3261 20.10).
    uri_params = params(c, known, PARAM_ALPHABET) if in_angle or wrong(c) else ""
    tail = c.choice(ODD) if wrong(c) else ""
    return f"{scheme}:{userinfo}{hostport(c)}{uri_params}{headers}{tail}"


def uri(c: Choices, in_angle: bool = True, uri_headers: bool = False) -> str:
    kind = c.integer(0, 9)
    if wrong(c):
        return pick(
            c,
            lambda: c.text(None, 30),
            lambda: c.choice(["sip:", "<sip:a@b>", "sip:a@b@c", "sip:a b"]),
        )
    if kind <= 6:
        return sip_uri(c, in_angle, uri_headers)
    if kind <= 8:
        return f"tel:+{c.text('0123456789', 12, min_size=1)}" + c.choice(["", ";ext=1"])
    scheme = c.choice(["isbn", "http", "urn", "x-y+z.w", "name"])
    return f"{scheme}:{c.text('abc012/:@.-_~=&', 20, min_size=1)}"


def name_addr(c: Choices, angle_only: bool = False, uri_headers: bool = False) -> str:
    if wrong(c):
        display: str | None = pick(
            c,
            lambda: c.choice(['"unterminated', "Bell, Alexander", '"a\\"', '"%Z%45"', '""']),
            lambda: '"' + c.text(None, 12).replace("\\", "\\\\").replace('"', '\\"') + '"',
        )
    else:
        display = pick(
            c,
            lambda: None,
            lambda: " ".join(token(c) for _ in range(c.integer(1, 2))),
            lambda: f'"{c.text(TEXT_ALPHABET, 12)}"',
            lambda: c.choice(['"a \\" b"', "caller"]),
        )
    hparams = params(c, ["tag=1", "tag=a.b-c", "expires=60", "q=0.5", "lr", "+sip.instance"])
    if display is None and not angle_only and c.integer(0, 2) == 0:
        return f"{uri(c, in_angle=False)}{hparams}"  # addr-spec (RFC 3261 20.10)
    head = f"{display}{c.choice(LWS)}" if display is not None else ""
    return f"{head}<{uri(c, uri_headers=uri_headers)}>{hparams}"


def via(c: Choices) -> str:
    if wrong(c):
        proto = c.choice(["SIP / 2.0 ", "sip/2.0", "SIP/3.0", "HTTP/1.1", "SIP/2.0/"])
    else:
        proto = "SIP/2.0"
    transport = c.choice(["udp", "X-Y", ""]) if wrong(c) else c.choice(["UDP", "TCP", "TLS"])
    extra = [";branch=z9hG4bK" + token(c)]
    for _ in range(c.integer(0, 3)):
        extra.append(
            pick(
                c,
                lambda: ";rport",
                lambda: f";rport={number(c, 1, 65535)}",
                lambda: f";received={host(c)}",
                lambda: f";ttl={number(c, 0, 255)}",
                lambda: f";maddr={host(c)}",
                lambda: params(c, ["x", "comp=sigcomp"]),
            )
        )
    if wrong(c):
        extra.insert(
            c.integer(0, len(extra)),
            c.choice([";;", ";", ";branch=", ";received", ";branch=z9hG4bK", ";rport="]),
        )
    sep = c.choice(["  ", "\t", ""]) if wrong(c) else " "
    return f"{proto}/{transport}{sep}{hostport(c)}{''.join(extra)}"


COMPACT = {
    "Via": "v",
    "From": "f",
    "To": "t",
    "Call-ID": "i",
    "Contact": "m",
    "Content-Type": "c",
    "Content-Length": "l",
}
REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")


def sip_message(c: Choices, odds: int | None = None) -> bytes:
    """A plausible request or response, well formed unless ``wrong(c)`` says otherwise.
    ``odds`` fixes how often a wrong turn is taken (0: never); by default it is drawn."""
    c.odds = c.choice([0, 0, 40, 8]) if odds is None else odds
    method = c.choice(
        ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE", "RE%47IST%45R"]
    )
    if wrong(c):
        method = pick(c, lambda: token(c), lambda: c.choice(["INV ITE", ""]))
    if c.integer(0, 3) == 0:
        code = c.choice([0, 99, 700, 4294967301]) if wrong(c) else c.integer(100, 699)
        version = c.choice(["SIP/7.0", "sip/2.0", "SIP/2.0 "]) if wrong(c) else "SIP/2.0"
        reason = (
            c.choice(["", " ", " a\x00", "\t"])
            if wrong(c)
            else c.choice([" OK", " ", " Ringing", " \u043e\u043a \u2603", " = 2**3"])
        )
        start = f"{version} {code}{reason}"
    else:
        version = c.choice(["SIP/3.0", "SIP/2", "sip/2.0", "SIP/2.0 "]) if wrong(c) else "SIP/2.0"
        sep = c.choice(["  ", "\t", ""]) if wrong(c) else " "
        start = f"{method}{sep}{uri(c)}{sep}{version}"
    cseq_method = token(c) if wrong(c) else method
    builders = [
        ("Via", lambda: ", ".join(via(c) for _ in range(c.integer(1, 3)))),
        ("From", lambda: name_addr(c)),
        ("To", lambda: name_addr(c)),
        (
            "Call-ID",
            lambda: (
                pick(c, lambda: c.text(None, 10), lambda: c.choice(["a@b@c", "", "a b"]))
                if wrong(c)
                else token(c) + pick(c, lambda: "", lambda: "@" + host(c))
            ),
        ),
        ("CSeq", lambda: f"{number(c, 0, 2**31 - 1)} {cseq_method}"),
        ("Max-Forwards", lambda: number(c, 0, 255)),
        (
            "Contact",
            lambda: (
                "*"
                if wrong(c)
                else ", ".join(name_addr(c, uri_headers=True) for _ in range(c.integer(1, 2)))
            ),
        ),
        ("Route", lambda: name_addr(c, angle_only=not wrong(c), uri_headers=True)),
        ("Record-Route", lambda: name_addr(c, angle_only=not wrong(c), uri_headers=True)),
        ("Expires", lambda: number(c, 0, 2**32)),
        ("Content-Type", lambda: c.choice(["application/sdp", "text/plain;charset=utf-8"])),
        ("Subject", lambda: free_text(c, 20)),
        ("X-" + token(c), lambda: free_text(c, 20)),
    ]
    headers = []
    for name, build in builders:
        # Optional headers come and go; on a wrong turn a header is missing or doubled
        # (RFC 4475 3.3.1, 3.3.8).
        copies = c.choice([0, 2]) if wrong(c) else (1 if name in REQUIRED else c.integer(0, 1))
        for _ in range(copies):
            headers.append((name, build()))
    if headers and c.integer(0, 1):
        i, j = c.integer(0, len(headers) - 1), c.integer(0, len(headers) - 1)
        headers[i], headers[j] = headers[j], headers[i]
    lines = [start]
    for name, value in headers:
        if c.integer(0, 5) == 0:
            name = COMPACT.get(name, name.upper())
        colon = ": " if c.integer(0, 3) else f"{c.choice(['', ' ', chr(9)])}:{c.choice(LWS)}"
        if wrong(c):
            colon = c.choice(["", " ", ":\r\n", "\r\n:"])
        lines.append(f"{name}{colon}{value}")
    body = c.binary(64) if c.integer(0, 1) else b""
    if wrong(c):
        length = c.choice([None, str(len(body) + 1), str(max(0, len(body) - 1)), "-1", "x"])
    else:
        length = str(len(body))
    if length is not None:
        lines.append(f"{c.choice(['Content-Length', 'l'])}: {length}")
    text = "\r\n".join(lines) + "\r\n\r\n"
    return text.encode("utf-8", "surrogateescape") + body


def _corpus_uris() -> list[str]:
    found: set[str] = set()
    for message in CORPUS:
        text = message.decode("utf-8", "surrogateescape")
        found.update(re.findall(r"<([^<>\r\n]{1,200})>", text))
        found.update(m.group(1) for m in re.finditer(r"^[^ \r\n]+ ([^ \r\n]+) SIP/", text, re.M))
    return sorted(found)


CORPUS_URIS = _corpus_uris()
URI_INSERTS = [
    ":",
    ";",
    "@",
    "?",
    "&",
    "=",
    "%",
    "%0",
    "%00",
    "[",
    "]",
    ":5060",
    ":99999",
    "<",
    ">",
    " ",
    "\x00",
    "\xe9",
    "\udcff",
    "sip:",
    "a" * 300,
    ";lr",
    "?h=v",
]


def mutate_uri(c: Choices, text: str) -> str:
    """A URI with one to three characters inserted or deleted."""
    for _ in range(c.integer(1, 3)):
        i = c.integer(0, len(text))
        if c.integer(0, 1):
            text = text[:i] + c.choice(URI_INSERTS) + text[i:]
        else:
            text = text[:i] + text[i + 1 :]
    return text


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    c = HypothesisChoices(draw)
    return mutate(c, c.choice(CORPUS))


@st.composite
def sip_messages(draw: st.DrawFn, odds: int | None = None) -> bytes:
    return sip_message(HypothesisChoices(draw), odds)


@st.composite
def uris(draw: st.DrawFn) -> str:
    return uri(HypothesisChoices(draw))


@st.composite
def mutated_uris(draw: st.DrawFn) -> str:
    c = HypothesisChoices(draw)
    return mutate_uri(c, c.choice(CORPUS_URIS))


# ---------------------------------------------------------------------------------------------
# The fuzz tests


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\r\n\r\n")
@example(b"SIP/2.0 200 OK\r\n\r\n")
def test_random_bytes_parse_or_raise(data):
    """Random bytes either parse into a sound message or raise a usable SipParseError."""
    check_datagram(data)


@FUZZ
@given(mutated_messages())
def test_mutated_messages_parse_or_raise(data):
    """Mutated real messages either parse into a sound, round-tripping message or raise a
    usable SipParseError."""
    check_datagram(data)


@FUZZ
@given(sip_messages())
def test_generated_messages_parse_or_raise(data):
    """Generated SIP messages either parse into a sound, round-tripping message or raise a
    usable SipParseError."""
    check_datagram(data)


@FUZZ
@given(sip_messages(odds=0))
def test_generated_valid_messages_parse(data):
    """A generated message that takes no wrong turn is well formed, and sbc accepts it."""
    assert check_datagram(data) is not None


stream_inputs = st.lists(
    st.one_of(
        mutated_messages(),
        sip_messages(),
        st.sampled_from(CORPUS),
        st.sampled_from([b"\r\n\r\n", b"\r\n", b"\r"]),
    ),
    min_size=1,
    max_size=3,
).map(b"".join)


@FUZZ
@given(st.data())
def test_stream_chunking_does_not_change_events(data):
    """A StreamFramer gives the same events however the bytes are chunked, and never spins."""
    payload = data.draw(stream_inputs, label="payload")
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=12), label="cuts")
    check_stream(payload, cuts)


@FUZZ
@given(st.one_of(sip_messages(), mutated_messages()))
def test_stream_byte_at_a_time(payload):
    """Feeding a stream one byte at a time gives the same events as feeding it whole."""
    check_stream(payload, list(range(1, len(payload))))


@FUZZ
@given(
    st.one_of(
        uris(),
        st.text(max_size=64),
        st.binary(max_size=64).map(lambda b: b.decode("utf-8", "surrogateescape")),
    )
)
def test_uris_parse_or_raise(text):
    """Any text given to parse_uri parses to a stable URI or raises SipParseError."""
    check_uri(text)


@FUZZ
@given(mutated_uris())
def test_mutated_uris_parse_or_raise(text):
    """Mutated real URIs parse to a stable URI or raise SipParseError."""
    check_uri(text)


# ---------------------------------------------------------------------------------------------
# The fuzzers' own footing: the corpus is there and the oracle can fail.

REQUEST = (
    b"OPTIONS sip:a@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
    b"From: <sip:b@example.com>;tag=1\r\n"
    b"To: <sip:a@example.com>\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_corpus_is_loaded():
    """The mutation corpus holds the torture messages and the seeds, so the fuzzers start
    from real SIP."""
    assert len(CORPUS) >= 63 + 15
    assert len(CORPUS_URIS) >= 50


def test_oracle_catches_an_injected_header_line():
    """The oracle fails a parsed message whose header value holds CRLF."""
    msg = check_datagram(REQUEST)
    assert isinstance(msg, Request)
    msg.headers.add("Bad", "x\r\nInjected: yes")
    with pytest.raises(OracleFailure, match="header line could be injected"):
        check_parsed(msg, REQUEST)


def test_oracle_catches_a_changed_round_trip():
    """The oracle fails a message that serializes to something parsing differently."""
    msg = check_datagram(REQUEST)
    assert isinstance(msg, Request)
    msg.headers.add("X", "a,\tb ")  # the trailing space is lost on re-parse
    with pytest.raises(OracleFailure, match="parses to a different message"):
        check_parsed(msg, REQUEST)


def test_oracle_catches_a_stuck_stream():
    """stream_events fails when a non-fatal error leaves its bytes in the framer."""

    class StuckFramer(StreamFramer):
        def next_event(self):  # type: ignore[override]
            raise SipParseError("stuck", None)

    with pytest.raises(OracleFailure, match="consumed nothing"):
        stream_events(b"x", [], framer=StuckFramer())


def test_uri_oracle_accepts_every_kind():
    """sip, tel and opaque URIs all pass the URI oracle."""
    for text, kind in (
        ("sip:a@[2001:db8::1]:5060;lr", SipUri),
        ("tel:+1-555", TelUri),
        ("isbn:2983792873", AbsoluteUri),
    ):
        assert isinstance(parse_uri(text), kind)
        check_uri(text)


# ---------------------------------------------------------------------------------------------
# Regressions: minimal reproducers of what the fuzzers found (see the oracle for the why).


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"OPTIONS  sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n",
        b"garbage\r\nContent-Length: 70000\r\n\r\n",
    ],
    ids=["no-via", "with-via", "too-large"],
)
def test_stream_head_that_cannot_be_framed_is_fatal(data):
    """A malformed head that also gives no usable Content-Length (none, or too large) cannot
    be skipped, so the error must be fatal; a non-fatal one leaves the bytes in the framer and
    every later next_event() reports them again (RFC 3261 18.3)."""
    framer = StreamFramer()
    framer.feed(data)
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert info.value.fatal, f"{info.value!r} with {framer.buffered} bytes left in the framer"


@pytest.mark.parametrize("param", ["rport", "ttl"])
def test_huge_via_number_is_a_parse_error(param):
    """A Via rport/ttl of 4301 digits is a SipParseError, not Python's ValueError for int()
    of more than 4300 digits."""
    data = REQUEST.replace(b";branch=z9hG4bK1", f";branch=z9hG4bK1;{param}=".encode() + b"9" * 4301)
    with pytest.raises(SipParseError):
        parse_message(data)


@pytest.mark.parametrize(
    "via",
    [
        b"SIP/2.0/UDP 999.1.1.1;branch=z9hG4bK1",
        b"SIP/2.0/UDP 192,.0.2.1;branch=z9hG4bK1",
        b"SIP/2.0/UDP [::::::];branch=z9hG4bK1",
        b"SIP/2.0/UDP h.example.com;branch",
        b"SIP/2.0/UDP h.example.com;branch=z9hG4bK1;received",
        b"SIP/2.0/UDP h.example.com;branch=z9hG4bK1;rport=99999",
    ],
)
def test_answer_is_only_built_on_vias_that_parse(via):
    """A request rejected for its Via is answered only with Vias that parse (else dropped):
    the answer is routed by its top Via (RFC 3261 18.2.2) and must itself parse."""
    data = REQUEST.replace(b"SIP/2.0/UDP h.example.com;branch=z9hG4bK1", via)
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    check_error(info.value, data)


def test_stream_head_too_large_is_answered_only_with_a_salvage():
    """A head over the size cap on a stream: either no status (just close), or a salvage with
    a Via to answer to; never a status without anything to build the answer from."""
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:a@example.com SIP/2.0\r\nX: " + b"a" * 70_000)
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    assert info.value.fatal
    check_error(info.value, b"", datagram=False)


@pytest.mark.parametrize(
    "value",
    [b"x", b"-1", b"\xc2\xb2", b"9" * 4301],
    ids=["letter", "negative", "superscript-two", "4301-digits"],
)
def test_malformed_expires_is_rejected_or_readable(value):
    """A malformed Expires is either rejected by the parser or read without raising: the
    typed accessors of a parsed message never raise (sbc.sip.message.Message)."""
    data = REQUEST.replace(b"Content-Length: 0", b"Expires: " + value + b"\r\nContent-Length: 0")
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    assert msg.expires is None or isinstance(msg.expires, int)


def test_header_line_at_the_length_cap_round_trips():
    """A header line exactly at max_line_bytes, written without a space after the colon, is
    accepted; its serialization (one space added) must be accepted too."""
    limits = Limits(max_line_bytes=60)
    data = REQUEST.replace(b"Content-Length: 0", b"X:" + b"a" * 58 + b"\r\nContent-Length: 0")
    check_datagram(data, limits)


def test_datagram_at_the_size_cap_gains_content_length():
    """A datagram exactly max_message_bytes long without Content-Length (legal on UDP) is
    accepted; by design its serialization always carries Content-Length (RFC 3261 18.3 needs it
    on streams), so it grows by exactly that header and nothing else."""
    data = REQUEST.replace(b"Content-Length: 0\r\n", b"")
    msg = parse_message(data, Limits(max_message_bytes=len(data)))
    out = msg.to_bytes()
    assert len(out) == len(data) + len(b"Content-Length: 0\r\n")
    assert parse_message(out).to_bytes() == out
