"""PROTOS c07-sip: 4527 malformed INVITEs (and their teardowns) against the parser.

The suite's pass criterion is that the target neither crashes nor hangs: every case either
parses or is rejected with :class:`SipParseError`, as a datagram (``parse_message``) and on a
stream (``StreamFramer``).  Cases that inject CR/LF must never parse into a message carrying an
injected header line.

The cases are read straight from ``tests/fixtures/protos/c07-sip-cases.tar.xz`` and filled in as
``protos_case.py`` does, with fixed values instead of random ones.  Run this file as a script
(``python -m tests.sip.test_protos``) to print the outcome counts per PROTOS group.
"""

from __future__ import annotations

import functools
import json
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from sbc.errors import SipParseError
from sbc.sip.framing import NEED_DATA, StreamFramer
from sbc.sip.headers import canonical_name
from sbc.sip.message import Request, Response, parse_message
from tests.sip.test_sip_fuzz import ACCESSORS

PROTOS = Path(__file__).resolve().parent.parent / "fixtures" / "protos"
CASE_COUNT = 4527
MAX_DATAGRAM = 65_000  # README: larger cases do not fit one UDP datagram


@dataclass(frozen=True)
class Case:
    number: int
    group: str
    invite: bytes
    teardown: bytes


def split_case(raw: bytes) -> tuple[bytes, bytes]:
    """``b"<n1> " + INVITE template + b"<n2> " + teardown template`` (protos_case.py)."""
    m = re.match(rb"(\d+) ", raw)
    assert m is not None
    invite = raw[m.end() : m.end() + int(m.group(1))]
    rest = raw[m.end() + int(m.group(1)) :]
    m2 = re.match(rb"(\d+) ", rest)
    assert m2 is not None
    return invite, rest[m2.end() : m2.end() + int(m2.group(1))]


def instantiate(raw: bytes, number: int) -> tuple[bytes, bytes]:
    """Fill the placeholders as protos_case.load_case does, deterministically: Content-Length
    is the real body length (except where the group fuzzes that header itself)."""
    values = {
        "To": "test@127.0.0.1",
        "From": "protos@127.0.0.1",
        "From-Address": "127.0.0.1",
        "From-IP": "127.0.0.1",
        "Local-Port": "5070",
        "Branch-ID": f"{number:016x}",
        "Call-ID": f"{number:032x}",
        "CSeq": "1",
        "Teardown-Method": "CANCEL",
    }
    invite, teardown = split_case(raw)
    for key, value in values.items():
        invite = invite.replace(f"<{key}>".encode(), value.encode())
        teardown = teardown.replace(f"<{key}>".encode(), value.encode())
    sep = invite.find(b"\r\n\r\n")
    body_length = len(invite) - (sep + 4) if sep >= 0 else 0
    invite = invite.replace(b"<Content-Length>", str(body_length).encode())
    teardown = teardown.replace(b"<Content-Length>", b"0")
    return invite, teardown


@functools.cache
def groups() -> list[dict[str, object]]:
    return json.loads((PROTOS / "groups.json").read_text())


@functools.cache
def all_cases() -> tuple[Case, ...]:
    group_of = {}
    for g in groups():
        first, count = int(g["first"]), int(g["count"])  # type: ignore[call-overload]
        for n in range(first, first + count):
            group_of[n] = str(g["group"])
    cases = []
    with tarfile.open(PROTOS / "c07-sip-cases.tar.xz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                number = int(member.name.rsplit("/", 1)[1])
                invite, teardown = instantiate(f.read(), number)
                cases.append(Case(number, group_of[number], invite, teardown))
    return tuple(sorted(cases, key=lambda c: c.number))


def cases_of(group: str) -> list[Case]:
    return [c for c in all_cases() if c.group == group]


def outcome(data: bytes) -> tuple[str, Request | Response | None]:
    """("parsed", msg), or the status as text ("400") or "drop" for a silent drop.  Any other
    exception propagates and fails the test."""
    try:
        return "parsed", parse_message(data)
    except SipParseError as e:
        return ("drop" if e.status is None else str(e.status)), None


def stream_messages(data: bytes) -> list[Request | Response]:
    """Feed ``data`` in one piece to a StreamFramer and drain it; SipParseError is an allowed
    answer (fatal ones end the stream), anything else propagates.  A non-fatal error must
    consume bytes, or a transport would spin on the same bytes."""
    framer = StreamFramer()
    framer.feed(data)
    messages = []
    while True:
        before = framer.buffered
        try:
            event = framer.next_event()
        except SipParseError as e:
            if e.fatal:
                return messages
            assert framer.buffered < before, f"non-fatal {e!r} consumed nothing: stuck"
            continue
        if event is NEED_DATA:
            return messages
        if isinstance(event, Request | Response):
            messages.append(event)


def injected_lines(msg: Request | Response, reference: set[str]) -> list[tuple[str, str]]:
    """Header lines that hold CR/LF or were not in the reference INVITE (case 0)."""
    return [
        (name, value)
        for name, value in msg.headers
        if "\r" in value or "\n" in value or canonical_name(name) not in reference
    ]


@functools.cache
def reference_headers() -> set[str]:
    _, msg = outcome(all_cases()[0].invite)
    assert msg is not None
    return {canonical_name(n) for n, _ in msg.headers}


GROUP_NAMES = [str(g["group"]) for g in json.loads((PROTOS / "groups.json").read_text())]
CRLF_GROUPS = [g for g in GROUP_NAMES if "crlf" in g]


def test_suite_is_complete():
    """All 4527 cases are there, each in exactly one of the 54 groups."""
    cases = all_cases()
    assert [c.number for c in cases] == list(range(CASE_COUNT))
    assert len(GROUP_NAMES) == len(set(GROUP_NAMES)) == 54
    assert sum(int(g["count"]) for g in groups()) == CASE_COUNT  # type: ignore[call-overload]
    assert CRLF_GROUPS == ["sip-request-crlf", "crlf-request", "sdp-attribute-crlf"]


def test_reference_case_parses():
    """Case 0, the valid reference INVITE, and its CANCEL parse, as datagrams and on a stream."""
    case = all_cases()[0]
    kind, invite = outcome(case.invite)
    assert kind == "parsed" and isinstance(invite, Request) and invite.method == "INVITE"
    assert invite.content_type == "application/sdp" and invite.body.startswith(b"v=0\r\n")
    kind, cancel = outcome(case.teardown)
    assert kind == "parsed" and isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert [m.method for m in stream_messages(case.invite + case.teardown)] == [  # type: ignore[union-attr]
        "INVITE",
        "CANCEL",
    ]


@pytest.mark.parametrize("group", GROUP_NAMES)
def test_group_parses_or_raises_sip_parse_error(group):
    """Every INVITE and teardown of the group either parses or raises SipParseError, as a
    datagram and through a StreamFramer in one piece; nothing parses with a header value
    holding CR or LF."""
    cases = cases_of(group)
    assert cases
    for case in cases:
        for data in (case.invite, case.teardown):
            kind, msg = outcome(data)
            if len(data) > MAX_DATAGRAM:
                assert kind in ("400", "413", "513", "drop"), (case.number, kind)
            if msg is not None:
                assert not [v for _, v in msg.headers if "\r" in v or "\n" in v], case.number
        for msg in stream_messages(case.invite + case.teardown):
            assert not [v for _, v in msg.headers if "\r" in v or "\n" in v], case.number


@pytest.mark.parametrize("group", CRLF_GROUPS)
def test_crlf_injection_never_yields_an_injected_header(group):
    """In the CRLF-injection groups, an INVITE that parses (datagram or stream) has only the
    header lines of the reference INVITE, none holding CR or LF."""
    reference = reference_headers()
    for case in cases_of(group):
        kind, msg = outcome(case.invite)
        if msg is not None:
            assert injected_lines(msg, reference) == [], case.number
        for streamed in stream_messages(case.invite):
            assert injected_lines(streamed, reference) == [], case.number


def test_oversized_cases_are_refused():
    """The 116 messages (81 INVITEs, 35 teardowns) too large for a UDP datagram are all
    refused, never parsed."""
    big = [d for c in all_cases() for d in (c.invite, c.teardown) if len(d) > MAX_DATAGRAM]
    assert len(big) == 116
    assert [outcome(d)[0] for d in big].count("parsed") == 0




def test_parsed_cases_have_working_typed_accessors():
    """For every case that parses, each typed accessor works: the parser promises that a
    message it returns needs no further validation (sbc.sip.message.Message)."""
    broken = []
    for case in all_cases():
        for data in (case.invite, case.teardown):
            _, msg = outcome(data)
            for name in ACCESSORS if msg is not None else ():
                try:
                    getattr(msg, name)
                except Exception as e:
                    broken.append((case.number, case.group, name, repr(e)))
    assert broken == []


def group_counts() -> dict[str, Counter[str]]:
    """Per group: outcomes of the INVITEs ("parsed", "400", "505", ..., "drop")."""
    counts: dict[str, Counter[str]] = {g: Counter() for g in GROUP_NAMES}
    for case in all_cases():
        counts[case.group][outcome(case.invite)[0]] += 1
    return counts


def main() -> None:
    counts = group_counts()
    print(f"{'group':34} {'cases':>5} {'parsed':>6} {'400':>5} {'other':>12} {'drop':>5}")
    for group, c in counts.items():
        other = {k: v for k, v in sorted(c.items()) if k not in ("parsed", "400", "drop")}
        other_text = " ".join(f"{k}:{v}" for k, v in other.items()) or "0"
        print(
            f"{group:34} {sum(c.values()):5} {c['parsed']:6} {c['400']:5} {other_text:>12} "
            f"{c['drop']:5}"
        )


if __name__ == "__main__":
    main()
