"""SIP header fields: the ordered multimap and the typed values the gateway works with.

:class:`Headers` keeps every header line in arrival order with its name as written, so an
untouched message serializes back as it came (apart from unfolding).  Lookups are by canonical
name: case-insensitive, and the compact forms of RFC 3261 7.3.3 (plus RFC 3515/3892/4028/3903/
6665 ones) map to their long names.

Typed values (:class:`Via`, :class:`NameAddr`, :class:`CSeq`) parse from and serialize to the
header text; they never hold anything the text did not say.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sbc.errors import SipParseError
from sbc.sip.grammar import (
    QUOTED_STRING_RE,
    TOKEN_CHARS,
    WSP,
    Params,
    parse_params,
    quote,
    split_commas,
    unquote,
)
from sbc.sip.uri import FAST_SIP_URI, SipUri, Uri, parse_host, parse_uri, sip_uri_from_match

# RFC 3261 7.3.3 compact forms, plus Refer-To (r, RFC 3515), Referred-By (b, RFC 3892),
# Session-Expires (x, RFC 4028), Request-Disposition (d, RFC 3841), Allow-Events (u, RFC 6665),
# Event (o, RFC 6665), Accept-Contact (a), Reject-Contact (j), Identity (y, RFC 8224).
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "d": "request-disposition",
    "a": "accept-contact",
    "j": "reject-contact",
    "y": "identity",
}

# How sbc spells a header it writes itself (RFC 3261 20 spelling).
DISPLAY_NAMES: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
}

T = TypeVar("T")
_MISSING = object()


class _CanonicalNames(dict[str, str]):
    """Header name as written -> canonical key, computed on a miss (``__missing__``) and
    remembered while the table is small (a peer choosing names cannot grow it without bound).

    A lookup is a C-level ``dict`` subscript: canonical keys are needed for every header line
    parsed, built or looked up, so this avoids a Python call each time."""

    def __missing__(self, name: str) -> str:
        low = name.lower()
        key = COMPACT_FORMS.get(low, low)
        if len(self) < 4096:
            self[name] = key
        return key


_CANONICAL = _CanonicalNames()

# canonical_name(name): the lower-case long form of a header name (``"v"`` and ``"VIA"`` both
# give ``"via"``).  The table's bound ``__getitem__``, so that a call costs no Python frame.
canonical_name = _CANONICAL.__getitem__


def display_name(name: str) -> str:
    """How sbc writes a header name: ``"call-id"`` -> ``"Call-ID"``, ``"max-forwards"`` ->
    ``"Max-Forwards"``."""
    key = _CANONICAL[name]
    return DISPLAY_NAMES.get(key) or "-".join(p[:1].upper() + p[1:] for p in key.split("-"))


class Headers:
    """An ordered multimap of header fields.

    Each entry is ``(key, name, value)``: the canonical key, the name as written, and the value
    (unfolded, surrounding whitespace removed).  ``get_all`` returns the values of every line with
    that name in order; ``values`` also splits comma-separated lists (RFC 3261 7.3.1).
    """

    __slots__ = ("_entries", "_typed")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        canonical = _CANONICAL
        self._entries: list[tuple[str, str, str]] = [(canonical[n], n, v) for n, v in items]
        self._typed: dict[str, Any] = {}

    @classmethod
    def _from_entries(cls, entries: list[tuple[str, str, str]]) -> Headers:
        h = cls.__new__(cls)
        h._entries = entries
        h._typed = {}
        return h

    def typed(self, key: str, parse: Callable[[Headers], T]) -> T:
        """``parse(self)`` for canonical ``key``, cached until a line of ``key`` changes.

        Typed values are read-only views: to change a header, build the new value and ``set``
        its text, which drops the cached view.  (Views may be shared between messages that
        carry the same text, see :mod:`sbc.sip.message`.)
        """
        value = self._typed.get(key, _MISSING)
        if value is _MISSING:
            value = self._typed[key] = parse(self)
        return value  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((n, v) for _, n, v in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _CANONICAL[name]
        return any(entry[0] == key for entry in self._entries)

    def __repr__(self) -> str:
        return f"Headers({[(n, v) for _, n, v in self._entries]!r})"

    def copy(self) -> Headers:
        return Headers._from_entries(list(self._entries))

    def get(self, name: str, default: str | None = None) -> str | None:
        key = _CANONICAL[name]
        for k, _, v in self._entries:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = _CANONICAL[name]
        return [v for k, _, v in self._entries if k == key]

    def values(self, name: str) -> list[str]:
        """Every comma-separated element of every line of ``name``, in order."""
        out: list[str] = []
        for v in self.get_all(name):
            if "," in v:
                out.extend(p.strip(WSP) for p in split_commas(v, name))
            else:
                out.append(v.strip(WSP))
        return out

    def count(self, name: str) -> int:
        key = _CANONICAL[name]
        return sum(1 for k, _, _ in self._entries if k == key)

    def add(self, name: str, value: str) -> None:
        """Append a header line at the end."""
        key = _CANONICAL[name]
        self._entries.append((key, name, value))
        self._typed.pop(key, None)

    def prepend(self, name: str, value: str) -> None:
        """Insert a header line before the first line of the same name (or at the top).

        This is where a proxy puts its Via and a B2BUA its Record-Route (RFC 3261 16.6).
        """
        key = _CANONICAL[name]
        self._typed.pop(key, None)
        entries = self._entries
        for i, entry in enumerate(entries):
            if entry[0] == key:
                entries.insert(i, (key, name, value))
                return
        entries.insert(0, (key, name, value))

    def set(self, name: str, value: str) -> None:
        """Replace all lines of ``name`` by one line holding ``value``, where the first stood."""
        key = _CANONICAL[name]
        entries = self._entries
        positions = [i for i, entry in enumerate(entries) if entry[0] == key]
        if len(positions) == 1:  # the usual case: rewrite the one line in place
            self._typed.pop(key, None)
            i = positions[0]
            entries[i] = (key, entries[i][1], value)
            return
        self.replace_all(name, [value])

    def replace_all(self, name: str, values: list[str]) -> None:
        """Replace all lines of ``name`` by one line per value, where the first one stood
        (appended when there was none).  The original spelling of the name is kept."""
        key = _CANONICAL[name]
        self._typed.pop(key, None)
        out: list[tuple[str, str, str]] = []
        inserted = False
        for entry in self._entries:
            if entry[0] == key:
                if not inserted:
                    out.extend((key, entry[1], v) for v in values)
                    inserted = True
            else:
                out.append(entry)
        if not inserted:
            out.extend((key, name, v) for v in values)
        self._entries = out

    def remove(self, name: str) -> int:
        """Remove every line of ``name``; returns how many were removed."""
        key = _CANONICAL[name]
        self._typed.pop(key, None)
        before = len(self._entries)
        self._entries = [e for e in self._entries if e[0] != key]
        return before - len(self._entries)

    def pop_first_value(self, name: str) -> str | None:
        """Remove the first comma-separated element of ``name`` (e.g. the top Via)."""
        key = _CANONICAL[name]
        self._typed.pop(key, None)
        for i, (k, n, v) in enumerate(self._entries):
            if k == key:
                parts = split_commas(v, name)
                first = parts[0].strip(WSP)
                if len(parts) == 1:
                    del self._entries[i]
                else:
                    rest = ",".join(parts[1:]).strip(WSP)
                    self._entries[i] = (k, n, rest)
                return first
        return None

    def to_lines(self) -> list[str]:
        return [f"{n}: {v}" for _, n, v in self._entries]


# ---------------------------------------------------------------------------------------------
# Via (RFC 3261 20.42, RFC 3581 rport)

_VIA_RE = re.compile(
    rf"\s*([{TOKEN_CHARS}]+)\s*/\s*([{TOKEN_CHARS}]+)\s*/\s*([{TOKEN_CHARS}]+)"
    r"\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?:\s*:\s*([0-9]{1,5}))?"
)
BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 8.1.1.7
# ASCII digits, bounded before int() (str.isdigit accepts "²", and int() refuses 4300+ digits).
_PORT_DIGITS_RE = re.compile(r"[0-9]{1,5}\Z")
_TTL_DIGITS_RE = re.compile(r"[0-9]{1,3}\Z")


@dataclass(slots=True)
class Via:
    """One Via value: ``SIP/2.0/<transport> host[:port];params``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = field(default_factory=Params)
    protocol: str = "SIP/2.0"

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {hp}{self.params.to_str()}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value (RFC 3581); ``None`` when absent or present without a value."""
        v = self.params.get("rport")
        return int(v) if v else None

    @property
    def wants_rport(self) -> bool:
        return "rport" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        v = self.params.get("ttl")
        return int(v) if v else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    @property
    def rfc3261_branch(self) -> bool:
        b = self.branch
        return b is not None and b.startswith(BRANCH_MAGIC) and len(b) > len(BRANCH_MAGIC)


_FAST_VIA_RE = re.compile(
    r"SIP/2\.0/(?P<transport>[A-Za-z]++) (?P<host>[A-Za-z0-9.\-]++)(?::(?P<port>[0-9]{1,5}+))?"
    rf"(?P<params>(?:;[{TOKEN_CHARS}]++(?:=[{TOKEN_CHARS}:\[\]]++)?)*+)\Z"
)


def parse_via_value(text: str) -> Via:
    """Parse one Via value (one element of a comma-separated Via header)."""
    fm = _FAST_VIA_RE.match(text)
    if fm is not None:
        # No LWS, no quoted values: split directly, then the same checks as the general path.
        host = parse_host(fm.group("host"), "Via sent-by")
        port_text = fm.group("port")
        port = int(port_text) if port_text else None
        if port is not None and port > 65535:
            raise SipParseError("invalid port in Via")
        pt = fm.group("params")
        params = Params([(k, v if e else None) for k, e, v in
                         (p.partition("=") for p in pt[1:].split(";"))]) if pt else Params()
        _check_via_params(params)
        return Via(fm.group("transport").upper(), host, port, params)
    return parse_via_value_general(text)


def parse_via_value_general(text: str) -> Via:
    """The general Via parser (the fast path's reference; tests compare the two)."""
    m = _VIA_RE.match(text)
    if m is None:
        raise SipParseError("malformed Via")
    name, version, transport, host, port_text = m.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise SipParseError("unsupported protocol in Via", 505)
    parse_host(host, "Via sent-by")
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise SipParseError("invalid port in Via")
    params, pos = parse_params(text, m.end(), "Via")
    if pos != len(text):
        raise SipParseError("malformed Via")
    _check_via_params(params)
    return Via(transport.upper(), host, port, params, f"{name}/{version}")


def _check_via_params(params: Params) -> None:
    """Typed checks on the parameters the stack acts on (RFC 3261 20.42, RFC 3581)."""
    for pname, pvalue in params:
        lname = pname.lower()
        if lname == "branch" and not pvalue:
            raise SipParseError("Via branch without a value")
        elif lname in ("received", "maddr"):
            if not pvalue:
                raise SipParseError(f"Via {lname} without a value")
            # RFC 5118 4.5: received may carry an IPv6 address with or without brackets.
            addr = pvalue if pvalue.startswith("[") or ":" not in pvalue else f"[{pvalue}]"
            parse_host(addr, f"Via {lname}")
        elif lname == "rport" and pvalue is not None:
            if not _PORT_DIGITS_RE.match(pvalue) or int(pvalue) > 65535:
                raise SipParseError("invalid Via rport")
        elif lname == "ttl" and (
            pvalue is None or not _TTL_DIGITS_RE.match(pvalue) or int(pvalue) > 255
        ):
            raise SipParseError("invalid Via ttl")


def parse_via(value: str) -> list[Via]:
    """Every Via value of one header line."""
    return [parse_via_value(p.strip(WSP)) for p in split_commas(value, "Via")]


# ---------------------------------------------------------------------------------------------
# name-addr / addr-spec (From, To, Contact, Route, Record-Route, Refer-To, P-Asserted-Identity)

_DISPLAY_TOKENS_RE = re.compile(rf"[{TOKEN_CHARS}]+(?:[ \t]+[{TOKEN_CHARS}]+)*")


class _Star:
    """The ``Contact: *`` wildcard of a REGISTER that removes all bindings (RFC 3261 10.2.2)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STAR"

    def __str__(self) -> str:
        return "*"


STAR = _Star()


@dataclass(slots=True)
class NameAddr:
    """``[display-name] <URI> *(;param)`` or ``addr-spec *(;param)``.

    ``display_name`` is kept as written (quoted or as tokens); ``display_text`` gives the
    unquoted text.  ``angle`` records whether the URI was in angle brackets; sbc always writes
    brackets when it serializes a value it built or changed (RFC 3261 20.10 recommends it).
    """

    uri: Uri
    display_name: str | None = None
    params: Params = field(default_factory=Params)
    angle: bool = True

    def __str__(self) -> str:
        if self.angle or self.display_name is not None or isinstance(self.uri, SipUri) and (
            self.uri.headers or len(self.uri.params)
        ):
            dn = f"{self.display_name} " if self.display_name is not None else ""
            head = f"{dn}<{self.uri}>"
        else:
            head = str(self.uri)
        return head + self.params.to_str()

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def display_text(self) -> str | None:
        dn = self.display_name
        if dn is None:
            return None
        return unquote(dn) if dn.startswith('"') else dn

    @staticmethod
    def quote_display(text: str) -> str:
        return quote(text)


# Fast path for the everyday name-addr: optional display name, <sip URI>, parameters (quoted
# values included).  Like FAST_SIP_URI it accepts a strict subset of the general parser's
# language, and its possessive quantifiers keep matching linear.
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]++|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*+"'
_FAST_NAME_ADDR_RE = re.compile(
    rf"[ \t]*+(?P<display>{_QUOTED}|[{TOKEN_CHARS}]++(?:[ \t]++[{TOKEN_CHARS}]++)*+)?[ \t]*+"
    rf"<{FAST_SIP_URI}>"
    rf"(?P<hparams>(?:;[{TOKEN_CHARS}]++(?:=(?:[{TOKEN_CHARS}:\[\]]++|{_QUOTED}))?)*+)[ \t]*+\Z"
)
_HPARAM_RE = re.compile(rf";([{TOKEN_CHARS}]+)(?:=([{TOKEN_CHARS}:\[\]]+|{_QUOTED}))?")


def parse_name_addr(text: str, what: str = "name-addr") -> NameAddr:
    """Parse one name-addr or addr-spec with its header parameters."""
    m = _FAST_NAME_ADDR_RE.match(text)
    if m is not None:
        hp = m.group("hparams")
        if not hp:
            params = Params()
        elif '"' in hp:
            params = Params([(k, v or None) for k, v in _HPARAM_RE.findall(hp)])
        else:
            params = Params([(k, v if e else None) for k, e, v in
                             (p.partition("=") for p in hp[1:].split(";"))])
        return NameAddr(sip_uri_from_match(m, what), m.group("display"), params, True)
    return parse_name_addr_general(text, what)


def parse_name_addr_general(text: str, what: str = "name-addr") -> NameAddr:
    """The general name-addr parser (the fast path's reference; tests compare the two)."""
    n = len(text)
    pos = 0
    while pos < n and text[pos] in WSP:
        pos += 1
    display: str | None = None
    if pos < n and text[pos] == '"':
        m = QUOTED_STRING_RE.match(text, pos)
        if m is None:
            raise SipParseError(f"unterminated quoted string in {what}")
        display = m.group(0)
        pos = m.end()
        while pos < n and text[pos] in WSP:
            pos += 1
        if pos >= n or text[pos] != "<":
            raise SipParseError(f"display name without <URI> in {what}")
    elif "<" in text:
        lt = text.index("<")
        before = text[pos:lt].strip(WSP)
        if before:
            if _DISPLAY_TOKENS_RE.fullmatch(before) is None:
                raise SipParseError(f"invalid display name in {what}")
            display = before
        pos = lt
    if pos < n and text[pos] == "<":
        gt = text.find(">", pos)
        if gt < 0:
            raise SipParseError(f"unterminated <URI> in {what}")
        inner = text[pos + 1 : gt]
        if not inner or inner[0] in WSP or inner[-1] in WSP:
            # RFC 4475 3.1.2.14: LWS inside the brackets is not allowed.
            raise SipParseError(f"whitespace inside <URI> in {what}")
        uri = parse_uri(inner, what)
        params, end = parse_params(text, gt + 1, what)
        angle = True
    else:
        # addr-spec: the URI ends at whitespace or ';' and may not contain ',' '?' ';'
        # (RFC 3261 20.10); what follows are header parameters.
        start = pos
        while pos < n and text[pos] not in " \t;":
            pos += 1
        uri_text = text[start:pos]
        if not uri_text:
            raise SipParseError(f"missing URI in {what}")
        uri = parse_uri(uri_text, what)
        if isinstance(uri, SipUri) and uri.headers:
            raise SipParseError(f"URI with headers must be in <> in {what}")
        params, end = parse_params(text, pos, what)
        angle = False
    if end != n:
        raise SipParseError(f"unexpected text after {what}")
    return NameAddr(uri, display, params, angle)


def parse_name_addr_list(value: str, what: str) -> list[NameAddr]:
    return [parse_name_addr(p, what) for p in split_commas(value, what)]


# ---------------------------------------------------------------------------------------------
# CSeq (RFC 3261 20.16)

_CSEQ_RE = re.compile(rf"[ \t]*([0-9]+)[ \t]+([{TOKEN_CHARS}]+)[ \t]*\Z")
CSEQ_MAX = 2**31 - 1  # RFC 3261 8.1.1.5: the sequence number MUST be less than 2**31


@dataclass(slots=True, frozen=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ_RE.match(value)
    if m is None:
        raise SipParseError("malformed CSeq")
    digits = m.group(1)
    if len(digits) > 10 or int(digits) > CSEQ_MAX:
        raise SipParseError("CSeq number out of range")
    return CSeq(int(digits), m.group(2))


_DIGITS_RE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*\Z")


def parse_uint(value: str, what: str, maximum: int) -> int:
    """A decimal scalar (Max-Forwards, Content-Length, Expires...) bounded by ``maximum``."""
    if value.isascii() and value.isdigit() and len(value) <= 10:  # the usual "70", "0", "129"
        v = int(value)
        if v > maximum:
            raise SipParseError(f"{what} out of range")
        return v
    m = _DIGITS_RE.match(value)
    if m is None:
        raise SipParseError(f"malformed {what}")
    v = int(m.group(1))
    if v > maximum:
        raise SipParseError(f"{what} out of range")
    return v


_TOKEN_LIST_ITEM_RE = re.compile(rf"[{TOKEN_CHARS}]+\Z")


def parse_token_list(values: list[str], what: str) -> list[str]:
    """Allow/Supported/Require/Proxy-Require/Unsupported: option tags or methods."""
    out = []
    for v in values:
        if not _TOKEN_LIST_ITEM_RE.match(v):
            raise SipParseError(f"malformed {what}")
        out.append(v)
    return out
