"""SDP (RFC 8866): parse, inspect and rewrite session descriptions, without I/O.

Theory of operation
-------------------
A description is kept the way it travels: an ordered list of :class:`Line` (type letter and the
exact text after ``=``) for the session section, and one such list per media section (its first
line is the ``m=`` line).  Typed views -- :attr:`SessionDescription.origin`,
:attr:`MediaDescription.rtpmaps`, :attr:`MediaDescription.crypto`, ... -- are parsed from those
lines when first read and cached per section until it changes, so lookups in a loop stay cheap
on a hostile 1000-line body.  :func:`parse_sdp` validates once every line that a typed view can
read, so on a parsed description the views never raise.  ``lines`` is a read-only tuple: changes
go through mutators, which replace or insert whole lines written in canonical form and validated
by the same code, plus the section-wide checks (one direction, unique crypto tags).  A bad
argument is a ``ValueError`` (our fault, not an :class:`SdpError`) and leaves the description
unchanged; every line a mutator does not touch is kept as received.  Hence an untouched
description serializes back byte for byte when the input used CRLF.

Liberal where harmless, strict where it matters (RFC 8866 section 5 and 9):

* Bare LF line ends are accepted; output always uses CRLF.  A missing final line end is accepted.
  Blank (empty or SP/HTAB-only) lines are dropped at the end of the body and rejected elsewhere.
  A CR not followed by LF, a NUL byte, or bytes that are not UTF-8 are rejected.
* ``v=0`` must be the first line; exactly one ``o=`` and one ``s=`` must come before the first
  ``m=``, in any order among the other session lines; at most one session-level ``c=``.  The
  order of the other session and media lines is not enforced (devices misorder ``c=``/``b=``/
  ``t=``/``a=``), but session-only types (v o s u e p t r z) inside a media section are rejected:
  a stray ``o=`` or ``c=`` kept verbatim would defeat topology hiding.
* ``t=`` may be missing and ``s=`` may be empty; ``m=`` may have no format (seen in rejected
  streams); fields may be separated by several spaces and trailing SP/HTAB are ignored when a
  line is interpreted (but kept on output).
* Type letters RFC 8866 does not define (e.g. the ``y=``/``f=`` of GB/T 28181 cameras) are kept
  as opaque lines.  Note that RFC 8866 section 5 lets a parser "ignore or reject" such a
  description; :attr:`SessionDescription.unknown_lines` and
  :meth:`SessionDescription.remove_unknown_lines` let the gateway apply its own policy.
* Validated eagerly (an error here is a 488): the numeric fields of o=/c=/b=/t=/m=, ports
  0..65535, RTP payload types 0..127, ``a=rtpmap``, ``a=fmtp``, ``a=ptime``, ``a=maxptime``,
  ``a=rtcp``, ``a=crypto`` (RFC 4568, see :mod:`sbc.media.sdes`; duplicate tags in one section
  rejected), flag attributes (direction, ``rtcp-mux``) given a value, and conflicting direction
  attributes in one section.  Other attributes are kept unparsed.
* Size caps: :data:`MAX_SDP_SIZE` bytes, :data:`MAX_LINES` lines, :data:`MAX_LINE_LENGTH`
  characters per line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from sbc.errors import SdpError
from sbc.media.sdes import CryptoAttribute, KeyParam, parse_crypto, redact_crypto_value

__all__ = [
    "DIRECTIONS",
    "MAX_LINES",
    "MAX_LINE_LENGTH",
    "MAX_SDP_SIZE",
    "Attribute",
    "Bandwidth",
    "Connection",
    "CryptoAttribute",
    "Fmtp",
    "KeyParam",
    "Line",
    "MediaDescription",
    "MediaLine",
    "Origin",
    "RtcpAttribute",
    "RtpMap",
    "SessionDescription",
    "Timing",
    "parse_crypto",
    "parse_sdp",
]

MAX_SDP_SIZE = 65536  # bytes; larger than any SDP a UDP datagram can carry
MAX_LINES = 1000
MAX_LINE_LENGTH = 4096  # characters after the line end is removed

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")  # RFC 8866 6.7
_FLAG_ATTRIBUTES = frozenset(DIRECTIONS) | {"rtcp-mux"}

_KNOWN_TYPES = frozenset("vosiuepcbtrzkam")
_SESSION_ONLY_TYPES = frozenset("vosueptrz")

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+")  # RFC 8866 9 token
_PROTO = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+(?:/[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+)*")
_NON_WS = re.compile(r"[^\x00-\x20\x7f]+")  # RFC 8866 9 non-ws-string
_TYPED_TIME = re.compile(r"[0-9]{1,20}[dhms]?")
_ZONE_OFFSET = re.compile(r"-?[0-9]{1,20}[dhms]?")
_REAL = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")
_INLINE_KEY = re.compile(r"(?i)(inline:)[^|; ]*")

_T = TypeVar("_T")
_MISSING: Any = object()


def _fields(value: str) -> list[str]:
    """Split on SP, tolerating runs of spaces and trailing spaces."""
    fields = value.split(" ")
    return [f for f in fields if f] if "" in fields else fields


def _number(text: str, what: str, *, high: int | None = None, digits: int = 20) -> int:
    # 1 to ``digits`` ASCII digits: isdigit() alone would accept other scripts' digits.
    if not (0 < len(text) <= digits and text.isascii() and text.isdigit()):
        raise SdpError(f"{what} must be a decimal number")
    value = int(text)
    if high is not None and value > high:
        raise SdpError(f"{what} must be at most {high}")
    return value


def _token(text: str, what: str) -> str:
    if not _TOKEN.fullmatch(text):
        raise SdpError(f"{what} is not a valid token")
    return text


def _non_ws(text: str, what: str) -> str:
    if not _NON_WS.fullmatch(text):
        raise SdpError(f"{what} is missing or contains control characters")
    return text


def _addrtype_of(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


# --------------------------------------------------------------------------------------------
# Lines and typed field values


def _redact(type_: str, value: str) -> str:
    """The value of a line with key material hidden, for ``repr()``."""
    if type_ == "k" and value:
        return "<redacted>"
    if type_ == "a":
        name, sep, rest = value.partition(":")
        if name == "crypto":
            return f"crypto:{redact_crypto_value(rest)}"
        if name in ("ice-pwd", "key-mgmt") and sep:
            return f"{name}:<redacted>"
        return _INLINE_KEY.sub(r"\1<redacted>", value)
    return value


@dataclass(frozen=True, slots=True, repr=False)
class Line:
    """One SDP line: its type letter and the exact text after ``=`` (no line end)."""

    type: str
    value: str

    def to_str(self) -> str:
        return f"{self.type}={self.value}"

    def __repr__(self) -> str:
        return f"Line({self.type!r}, {_redact(self.type, self.value)!r})"


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>``.

    ``sess_id`` stays a string (an identifier: leading zeros are kept); ``sess_version`` is an
    int so that it can be bumped (RFC 3264 8).
    """

    username: str
    sess_id: str
    sess_version: int
    nettype: str
    addrtype: str
    unicast_address: str

    @classmethod
    def parse(cls, value: str) -> Origin:
        fields = _fields(value)
        if len(fields) != 6:
            raise SdpError("o= needs 6 fields")
        username, sess_id, version, nettype, addrtype, address = fields
        # No digit cap beyond the line length: bump_version() must work on any accepted value.
        _number(sess_id, "sess-id", digits=MAX_LINE_LENGTH)
        return cls(
            _non_ws(username, "username"),
            sess_id,
            _number(version, "sess-version", digits=MAX_LINE_LENGTH),
            _token(nettype, "nettype"),
            _token(addrtype, "addrtype"),
            _non_ws(address, "unicast-address"),
        )

    def to_str(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} "
            f"{self.nettype} {self.addrtype} {self.unicast_address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=<nettype> <addrtype> <connection-address>`` (RFC 8866 5.7).

    For IP4 multicast, ``address/ttl[/count]``; for IP6, ``address[/count]``.  ``address`` holds
    the base address only.
    """

    nettype: str
    addrtype: str
    address: str
    ttl: int | None = None
    count: int | None = None

    @classmethod
    def parse(cls, value: str) -> Connection:
        fields = _fields(value)
        if len(fields) != 3:
            raise SdpError("c= needs 3 fields")
        nettype, addrtype, address = fields
        _token(nettype, "nettype")
        _token(addrtype, "addrtype")
        _non_ws(address, "connection-address")
        ttl = count = None
        if addrtype in ("IP4", "IP6") and "/" in address:
            address, *extra = address.split("/")
            if not address:
                raise SdpError("connection-address is empty")
            if addrtype == "IP4":
                if len(extra) > 2:
                    raise SdpError("IP4 multicast is <address>/<ttl>[/<count>]")
                ttl = _number(extra[0], "multicast TTL", high=255, digits=3)
                if len(extra) == 2:
                    count = _number(extra[1], "multicast address count", digits=5)
            else:
                if len(extra) > 1:
                    raise SdpError("IP6 multicast is <address>[/<count>]")
                count = _number(extra[0], "multicast address count", digits=5)
            if count == 0:
                raise SdpError("multicast address count must be at least 1")
        return cls(nettype, addrtype, address, ttl, count)

    @property
    def is_unspecified(self) -> bool:
        """``0.0.0.0`` (or ``::``): the RFC 2543 way to put a stream on hold (RFC 3264 8.4)."""
        return self.address in ("0.0.0.0", "::")

    def to_str(self) -> str:
        address = self.address
        if self.ttl is not None:
            address += f"/{self.ttl}"
        if self.count is not None:
            address += f"/{self.count}"
        return f"{self.nettype} {self.addrtype} {address}"


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """``b=<bwtype>:<bandwidth>`` (RFC 8866 5.8), e.g. ``AS`` in kbit/s, ``TIAS`` in bit/s."""

    bwtype: str
    bandwidth: int

    @classmethod
    def parse(cls, value: str) -> Bandwidth:
        bwtype, sep, bandwidth = value.rstrip(" \t").partition(":")
        if not sep:
            raise SdpError("b= is <bwtype>:<bandwidth>")
        return cls(_token(bwtype, "bwtype"), _number(bandwidth, "bandwidth"))

    def to_str(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclass(frozen=True, slots=True)
class Timing:
    """``t=<start-time> <stop-time>`` in NTP seconds; ``0 0`` is an unbounded session."""

    start: int
    stop: int

    @classmethod
    def parse(cls, value: str) -> Timing:
        fields = _fields(value)
        if len(fields) != 2:
            raise SdpError("t= needs 2 fields")
        return cls(_number(fields[0], "start-time"), _number(fields[1], "stop-time"))

    def to_str(self) -> str:
        return f"{self.start} {self.stop}"


@dataclass(frozen=True, slots=True)
class MediaLine:
    """``m=<media> <port>[/<number of ports>] <proto> <fmt> ...`` (RFC 8866 5.14)."""

    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]

    @classmethod
    def parse(cls, value: str) -> MediaLine:
        fields = _fields(value)
        if len(fields) < 3:
            raise SdpError("m= needs media, port and proto")
        media, port_text, proto, *formats = fields
        _token(media, "media")
        port_text, sep, count_text = port_text.partition("/")
        port = _number(port_text, "port", high=65535, digits=5)
        count = None
        if sep:
            count = _number(count_text, "number of ports", digits=5)
            if count == 0:
                raise SdpError("number of ports must be at least 1")
        if not _PROTO.fullmatch(proto):
            raise SdpError("proto is not a valid token")
        rtp = "RTP" in proto.upper().split("/")
        for fmt in formats:
            if rtp:
                _number(fmt, "RTP payload type", high=127, digits=3)
            else:
                _token(fmt, "fmt")
        return cls(media, port, count, proto, tuple(formats))

    def to_str(self) -> str:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        return " ".join([self.media, port, self.proto, *self.formats])


@dataclass(frozen=True, slots=True, repr=False)
class Attribute:
    """``a=<name>`` (a flag) or ``a=<name>:<value>``; ``value`` is ``None`` for a flag."""

    name: str
    value: str | None = None

    @classmethod
    def parse(cls, value: str) -> Attribute:
        name, sep, rest = value.partition(":")
        if not sep:
            return cls(_token(name.rstrip(" \t"), "attribute name"))
        return cls(_token(name, "attribute name"), rest)

    def to_str(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"

    def __repr__(self) -> str:
        if self.value is None:
            return f"Attribute({self.name!r})"
        shown = _redact("a", self.to_str()).partition(":")[2]
        return f"Attribute({self.name!r}, {shown!r})"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`` (RFC 8866 6.6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    @classmethod
    def parse(cls, value: str) -> RtpMap:
        fields = _fields(value)
        if len(fields) != 2:
            raise SdpError("rtpmap is <payload type> <encoding>/<clock rate>[/<channels>]")
        payload_type = _number(fields[0], "rtpmap payload type", high=127, digits=3)
        parts = fields[1].split("/")
        if len(parts) not in (2, 3):
            raise SdpError("rtpmap is <payload type> <encoding>/<clock rate>[/<channels>]")
        encoding = _token(parts[0], "rtpmap encoding name")
        clock_rate = _number(parts[1], "rtpmap clock rate", digits=10)
        channels = _number(parts[2], "rtpmap channels", digits=3) if len(parts) == 3 else None
        if clock_rate == 0 or channels == 0:
            raise SdpError("rtpmap clock rate and channels must be positive")
        return cls(payload_type, encoding, clock_rate, channels)

    def to_str(self) -> str:
        text = f"{self.payload_type} {self.encoding}/{self.clock_rate}"
        return text if self.channels is None else f"{text}/{self.channels}"


@dataclass(frozen=True, slots=True)
class Fmtp:
    """``a=fmtp:<format> <format specific parameters>`` (RFC 8866 6.15), params kept as text."""

    format: str
    params: str

    @classmethod
    def parse(cls, value: str) -> Fmtp:
        fmt, _, params = value.partition(" ")
        return cls(_token(fmt, "fmtp format"), params.strip(" \t"))

    @property
    def payload_type(self) -> int | None:
        return int(self.format) if re.fullmatch(r"[0-9]{1,3}", self.format) else None

    def to_str(self) -> str:
        return f"{self.format} {self.params}" if self.params else self.format


@dataclass(frozen=True, slots=True)
class RtcpAttribute:
    """``a=rtcp:<port> [<nettype> <addrtype> <connection-address>]`` (RFC 3605 2.1)."""

    port: int
    nettype: str | None = None
    addrtype: str | None = None
    address: str | None = None

    @classmethod
    def parse(cls, value: str) -> RtcpAttribute:
        fields = _fields(value)
        if len(fields) not in (1, 4):
            raise SdpError("rtcp is <port> [<nettype> <addrtype> <address>]")
        port = _number(fields[0], "rtcp port", high=65535, digits=5)
        if len(fields) == 1:
            return cls(port)
        return cls(
            port,
            _token(fields[1], "rtcp nettype"),
            _token(fields[2], "rtcp addrtype"),
            _non_ws(fields[3], "rtcp address"),
        )

    def to_str(self) -> str:
        if self.address is None:
            return str(self.port)
        return f"{self.port} {self.nettype} {self.addrtype} {self.address}"


def _parse_real(value: str, what: str) -> float:
    text = value.strip(" \t")
    if not _REAL.fullmatch(text) or float(text) == 0:
        raise SdpError(f"{what} must be a positive number of milliseconds")
    return float(text)


# --------------------------------------------------------------------------------------------
# Validation of single lines


def _check_attribute(attribute: Attribute) -> None:
    name, value = attribute.name, attribute.value
    if name in _FLAG_ATTRIBUTES:
        if value is not None:
            raise SdpError(f"a={name} takes no value")
    elif value is None:
        if name in ("rtpmap", "fmtp", "ptime", "maxptime", "rtcp", "crypto"):
            raise SdpError(f"a={name} needs a value")
    elif name == "rtpmap":
        RtpMap.parse(value)
    elif name == "fmtp":
        Fmtp.parse(value)
    elif name in ("ptime", "maxptime"):
        _parse_real(value, f"a={name}")
    elif name == "rtcp":
        RtcpAttribute.parse(value)
    elif name == "crypto":
        parse_crypto(value)


def _check_line(line: Line) -> None:
    """Validate the value of one line in isolation; raise SdpError."""
    kind, value = line.type, line.value
    if kind == "v":
        if value.rstrip(" \t") != "0":
            raise SdpError("only SDP version 0 is supported")
    elif kind == "o":
        Origin.parse(value)
    elif kind == "c":
        Connection.parse(value)
    elif kind == "b":
        Bandwidth.parse(value)
    elif kind == "t":
        Timing.parse(value)
    elif kind == "r":
        fields = _fields(value)
        if len(fields) < 3 or not all(_TYPED_TIME.fullmatch(f) for f in fields):
            raise SdpError("r= is <interval> <duration> <offset>...")
    elif kind == "z":
        fields = _fields(value)
        if not fields or len(fields) % 2:
            raise SdpError("z= is <adjustment time> <offset>...")
        for time, offset in zip(fields[::2], fields[1::2], strict=True):
            _number(time, "z= adjustment time")
            if not _ZONE_OFFSET.fullmatch(offset):
                raise SdpError("z= offset must be [-]<number>[d|h|m|s]")
    elif kind == "m":
        MediaLine.parse(value)
    elif kind == "a":
        _check_attribute(Attribute.parse(value))
    # s i u e p k and unknown types are free text.


# The line types whose check in _check_line is exactly their typed parse.
_LINE_PARSERS: dict[str, Callable[[str], Any]] = {
    "o": Origin.parse,
    "c": Connection.parse,
    "b": Bandwidth.parse,
    "t": Timing.parse,
    "m": MediaLine.parse,
}


def _check_text(kind: str, value: str) -> None:
    """Refuse a value no line may hold: a line break, NUL, or text that is not Unicode."""
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"invalid {kind}= value")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"invalid {kind}= value") from None


def _checked_line(kind: str, value: str) -> Line:
    """Build a line for a mutator; a value that would not parse is the caller's bug.

    The size caps protect us from peers and are not applied to what we write.
    """
    _check_text(kind, value)
    line = Line(kind, value)
    try:
        _check_line(line)
    except SdpError as exc:
        raise ValueError(f"invalid {kind}= value: {exc.message}") from None
    return line


def _typed_line(kind: str, value: Any, parse: Callable[[str], Any]) -> Line:
    """A line for a typed value, refused if it would not read back as the same value.

    For o= c= b= t= m= the check of :func:`_check_line` *is* ``parse``, so it runs once."""
    text = value.to_str()
    if _LINE_PARSERS.get(kind) == parse:
        _check_text(kind, text)
        try:
            parsed = parse(text)
        except SdpError as exc:
            raise ValueError(f"invalid {kind}= value: {exc.message}") from None
        line = Line(kind, text)
    else:
        line = _checked_line(kind, text)
        parsed = parse(text)
    if parsed != value:
        raise ValueError(f"invalid {kind}= value: {value!r} does not survive serialization")
    return line


def _section_problem(lines: Iterable[Line]) -> str | None:
    """What makes a section's attributes inconsistent as a whole (RFC 8866 6.7, RFC 4568 9.1)."""
    directions: set[str] = set()
    tags: set[int] = set()
    for line in lines:
        if line.type != "a":
            continue
        attribute = Attribute.parse(line.value)
        if attribute.name in DIRECTIONS:
            directions.add(attribute.name)
            if len(directions) > 1:
                return "conflicting direction attributes"
        elif attribute.name == "crypto":
            tag = int(_fields(attribute.value or "")[0])  # the line was validated on its own
            if tag in tags:
                return "duplicate a=crypto tag"
            tags.add(tag)
    return None


# --------------------------------------------------------------------------------------------
# Sections


class _Section:
    """What the session section and a media section have in common (i c b k a lines).

    The lines are private so that every change goes through a method that drops the cache of
    parsed views (``_views``): reading a view is then O(1) after the first time, whatever the
    caller loops over (a hostile body has up to MAX_LINES lines).
    """

    __slots__ = ("_lines", "_views")

    def __init__(self, lines: Iterable[Line]) -> None:
        self._lines: list[Line] = list(lines)
        self._views: dict[str, Any] = {}

    @property
    def lines(self) -> tuple[Line, ...]:
        """This section's lines, in order (read-only: change them with the methods)."""
        return tuple(self._lines)

    def _set_lines(self, lines: list[Line]) -> None:
        problem = _section_problem(lines)
        if problem is not None:
            raise ValueError(f"invalid change: {problem}")
        self._lines = lines
        self._views.clear()

    def _set_lines_same_attributes(self, lines: list[Line]) -> None:
        """:meth:`_set_lines` for a change that leaves every ``a=`` line as it was, so the
        section-wide checks (which read only attributes) cannot change their verdict."""
        self._lines = lines
        self._views.clear()

    def _view(self, name: str, build: Callable[[], _T]) -> _T:
        value = self._views.get(name, _MISSING)
        if value is _MISSING:
            value = self._views[name] = build()
        return cast(_T, value)

    def values(self, kind: str) -> list[str]:
        """The values of this section's lines of one type, in order."""
        return [line.value for line in self._lines if line.type == kind]

    def _first(self, kind: str) -> str | None:
        for line in self._lines:
            if line.type == kind:
                return line.value
        return None

    @property
    def information(self) -> str | None:
        return self._first("i")

    @property
    def key(self) -> str | None:
        """The obsolete ``k=`` line (RFC 8866 5.12), verbatim."""
        return self._first("k")

    @property
    def connections(self) -> list[Connection]:
        """This section's own ``c=`` lines."""
        return [Connection.parse(v) for v in self.values("c")]

    @property
    def bandwidths(self) -> list[Bandwidth]:
        return [Bandwidth.parse(v) for v in self.values("b")]

    def _attributes(self) -> tuple[Attribute, ...]:
        return self._view(
            "attributes",
            lambda: tuple(Attribute.parse(line.value) for line in self._lines if line.type == "a"),
        )

    def _first_attributes(self) -> dict[str, Attribute]:
        def build() -> dict[str, Attribute]:
            first: dict[str, Attribute] = {}
            for attribute in self._attributes():
                first.setdefault(attribute.name, attribute)
            return first

        return self._view("first_attributes", build)

    @property
    def attributes(self) -> list[Attribute]:
        return list(self._attributes())

    def attributes_named(self, name: str) -> list[Attribute]:
        return [a for a in self._attributes() if a.name == name]

    def attribute(self, name: str) -> Attribute | None:
        """The first attribute called ``name`` in this section."""
        return self._first_attributes().get(name)

    def has_attribute(self, name: str) -> bool:
        return name in self._first_attributes()

    @property
    def own_direction(self) -> str | None:
        """The direction attribute of this section itself, if any (RFC 8866 6.7)."""
        first = self._first_attributes()
        for name in DIRECTIONS:
            if name in first:
                return name
        return None

    @property
    def unknown_lines(self) -> list[Line]:
        """Lines of a type RFC 8866 does not define, kept verbatim."""
        return [line for line in self._lines if line.type not in _KNOWN_TYPES]

    def add_attribute(self, name: str, value: str | None = None) -> None:
        """Append ``a=name[:value]`` at the end of this section."""
        line = _typed_line("a", Attribute(name, value), Attribute.parse)
        self._set_lines([*self._lines, line])

    def remove_attributes(self, name: str) -> int:
        """Remove every attribute called ``name``; return how many were removed."""
        return self._replace_attributes(lambda a: a.name == name, [])

    def remove_attributes_named(self, names: Collection[str]) -> int:
        """Remove every attribute whose name is in ``names``, in one pass; return how many."""
        kept = [line for line in self._lines
                if line.type != "a" or line.value.partition(":")[0] not in names]
        removed = len(self._lines) - len(kept)
        if removed:
            self._set_lines(kept)
        return removed

    def extend_attributes(self, attributes: Iterable[Attribute]) -> None:
        """Append ``attributes`` at the end of this section (one validation for all)."""
        new = [_typed_line("a", a, Attribute.parse) for a in attributes]
        if new:
            self._set_lines([*self._lines, *new])

    def replace_attributes(self, name: str, attributes: Iterable[Attribute]) -> None:
        """Replace every ``a=name`` line by ``attributes``, placed where the first one was.

        Without an existing ``a=name`` line, the new ones are appended to the section.
        """
        self._replace_attributes(lambda a: a.name == name, list(attributes))

    def _replace_attributes(
        self, match: Callable[[Attribute], bool], attributes: list[Attribute]
    ) -> int:
        new = [_typed_line("a", a, Attribute.parse) for a in attributes]
        kept: list[Line] = []
        position: int | None = None
        removed = 0
        for line in self._lines:
            if line.type == "a" and match(Attribute.parse(line.value)):
                if position is None:
                    position = len(kept)
                removed += 1
            else:
                kept.append(line)
        if position is None:
            position = len(kept)
        kept[position:position] = new
        self._set_lines(kept)
        return removed

    def set_direction(self, direction: str) -> None:
        """Make ``direction`` this section's only direction attribute (in place of the old one)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        self._replace_attributes(lambda a: a.name in DIRECTIONS, [Attribute(direction)])

    def _insert_after_prefix(self, line: Line, prefix_types: str) -> None:
        """Insert ``line`` after the leading run of lines whose type is in ``prefix_types``."""
        index = 0
        while index < len(self._lines) and self._lines[index].type in prefix_types:
            index += 1
        self._set_lines([*self._lines[:index], line, *self._lines[index:]])

    def _set_connections(self, address: str, addrtype: str | None) -> bool:
        """Rewrite this section's c= lines to one unicast address; False if it had none."""
        addrtype = addrtype or _addrtype_of(address)
        indexes = [i for i, line in enumerate(self._lines) if line.type == "c"]
        if not indexes:
            return False
        old = Connection.parse(self._lines[indexes[0]].value)
        line = _typed_line("c", Connection(old.nettype, addrtype, address), Connection.parse)
        lines = [old_line for i, old_line in enumerate(self._lines) if i not in indexes[1:]]
        lines[indexes[0]] = line
        self._set_lines(lines)
        return True


class MediaDescription(_Section):
    """One media section: the ``m=`` line (``lines[0]``) and its i/c/b/k/a lines.

    ``session`` is the description it belongs to (set by :func:`parse_sdp` and
    :meth:`SessionDescription.add_media`); session-level defaults (connection, direction) are
    resolved through it.
    """

    __slots__ = ("session",)

    def __init__(self, lines: Iterable[Line], session: SessionDescription | None = None) -> None:
        super().__init__(lines)
        if not self._lines or self._lines[0].type != "m":
            raise ValueError("a media section starts with its m= line")
        self.session = session

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MediaDescription):
            return NotImplemented
        return self._lines == other._lines

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MediaDescription({self._lines!r})"

    # m= line

    @property
    def media_line(self) -> MediaLine:
        return self._view("media_line", lambda: MediaLine.parse(self._lines[0].value))

    @property
    def media(self) -> str:
        """The media type: audio, video, text, application, image, ..."""
        return self.media_line.media

    @property
    def port(self) -> int:
        return self.media_line.port

    @property
    def port_count(self) -> int | None:
        return self.media_line.port_count

    @property
    def proto(self) -> str:
        return self.media_line.proto

    @property
    def formats(self) -> tuple[str, ...]:
        return self.media_line.formats

    @property
    def is_rtp(self) -> bool:
        return "RTP" in self.proto.upper().split("/")

    @property
    def payload_types(self) -> tuple[int, ...]:
        """The formats as RTP payload types (empty for a non-RTP proto)."""
        return tuple(int(f) for f in self.formats) if self.is_rtp else ()

    @property
    def rejected(self) -> bool:
        """Port 0: the stream is rejected or disabled (RFC 3264 6)."""
        return self.port == 0

    def _set_media_line(self, media_line: MediaLine) -> None:
        line = _typed_line("m", media_line, MediaLine.parse)
        self._set_lines([line, *self._lines[1:]])

    def set_port(self, port: int, port_count: int | None = None) -> None:
        """Set the m= port (and ``/<number of ports>``, dropped unless given)."""
        self._set_media_line(replace(self.media_line, port=port, port_count=port_count))

    def set_formats(self, formats: Iterable[str | int]) -> None:
        """Set the m= format list (attributes of dropped formats are left to the caller)."""
        self._set_media_line(replace(self.media_line, formats=tuple(str(f) for f in formats)))

    # connection

    @property
    def connection(self) -> Connection | None:
        """This section's first own ``c=``."""
        value = self._first("c")
        return Connection.parse(value) if value is not None else None

    @property
    def resolved_connection(self) -> Connection | None:
        """The connection in force for this stream: its own ``c=``, else the session's."""
        own = self.connection
        if own is not None or self.session is None:
            return own
        return self.session.connection

    def set_connection_address(self, address: str, addrtype: str | None = None) -> None:
        """Give this stream one ``c=IN <addrtype> <address>`` of its own.

        ``addrtype`` defaults to IP6 when ``address`` contains a colon, else IP4.  An existing
        ``c=`` is rewritten in place (keeping its nettype); otherwise one is inserted after the
        ``m=`` and ``i=`` lines (RFC 8866 5 order).
        """
        if not self._set_connections(address, addrtype):
            connection = Connection("IN", addrtype or _addrtype_of(address), address)
            self._insert_after_prefix(_typed_line("c", connection, Connection.parse), "mi")

    # attributes

    @property
    def direction(self) -> str:
        """The direction in force: media-level attribute, else session-level, else sendrecv."""
        own = self.own_direction
        if own is not None:
            return own
        if self.session is not None:
            return self.session.direction
        return "sendrecv"

    def _rtpmaps(self) -> dict[int, RtpMap]:
        def build() -> dict[int, RtpMap]:
            table: dict[int, RtpMap] = {}
            for attribute in self.attributes_named("rtpmap"):
                rtpmap = RtpMap.parse(attribute.value or "")
                table.setdefault(rtpmap.payload_type, rtpmap)
            return table

        return self._view("rtpmaps", build)

    @property
    def rtpmaps(self) -> list[RtpMap]:
        """Every ``a=rtpmap``, in order (a repeated payload type appears twice)."""
        return [RtpMap.parse(a.value or "") for a in self.attributes_named("rtpmap")]

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The first ``a=rtpmap`` of ``payload_type``."""
        return self._rtpmaps().get(payload_type)

    @property
    def fmtps(self) -> list[Fmtp]:
        return [Fmtp.parse(a.value or "") for a in self.attributes_named("fmtp")]

    def fmtp(self, fmt: str | int) -> Fmtp | None:
        """The first ``a=fmtp`` of format ``fmt``."""

        def build() -> dict[str, Fmtp]:
            table: dict[str, Fmtp] = {}
            for fmtp in self.fmtps:
                table.setdefault(fmtp.format, fmtp)
            return table

        return self._view("fmtps", build).get(str(fmt))

    @property
    def ptime(self) -> float | None:
        """``a=ptime`` in milliseconds (RFC 8866 6.4)."""
        attribute = self.attribute("ptime")
        return _parse_real(attribute.value or "", "ptime") if attribute else None

    @property
    def maxptime(self) -> float | None:
        """``a=maxptime`` in milliseconds (RFC 8866 6.5)."""
        attribute = self.attribute("maxptime")
        return _parse_real(attribute.value or "", "maxptime") if attribute else None

    @property
    def rtcp(self) -> RtcpAttribute | None:
        attribute = self.attribute("rtcp")
        return RtcpAttribute.parse(attribute.value or "") if attribute else None

    @property
    def rtcp_mux(self) -> bool:
        return self.has_attribute("rtcp-mux")

    @property
    def crypto(self) -> list[CryptoAttribute]:
        """The ``a=crypto`` attributes of this stream, in order (RFC 4568)."""
        return list(
            self._view(
                "crypto",
                lambda: tuple(parse_crypto(a.value or "") for a in self.attributes_named("crypto")),
            )
        )

    def set_crypto(self, crypto: Iterable[CryptoAttribute]) -> None:
        """Replace every ``a=crypto`` line by ``crypto`` (an empty list removes them)."""
        self.replace_attributes("crypto", [Attribute("crypto", c.to_str()) for c in crypto])

    def set_rtcp(
        self, port: int | None, address: str | None = None, addrtype: str | None = None
    ) -> None:
        """Replace ``a=rtcp`` (RFC 3605) by ``port [IN addrtype address]``, or remove it."""
        if port is None:
            self.remove_attributes("rtcp")
            return
        if address is None:
            rtcp = RtcpAttribute(port)
        else:
            rtcp = RtcpAttribute(port, "IN", addrtype or _addrtype_of(address), address)
        self.replace_attributes("rtcp", [Attribute("rtcp", rtcp.to_str())])


class SessionDescription(_Section):
    """A parsed SDP body: the session-level ``lines`` and the ``media`` sections.

    Build one with :func:`parse_sdp`; write it with :meth:`to_bytes`.  Equality compares the
    lines, so a description equals its own re-parsed serialization.
    """

    __slots__ = ("_media",)

    def __init__(self, lines: Iterable[Line], media: Iterable[MediaDescription] = ()) -> None:
        super().__init__(lines)
        self._media: list[MediaDescription] = []
        for section in media:
            self.add_media(section)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionDescription):
            return NotImplemented
        return self._lines == other._lines and self._media == other._media

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SessionDescription({self._lines!r}, media={self._media!r})"

    @property
    def media(self) -> tuple[MediaDescription, ...]:
        return tuple(self._media)

    def add_media(self, section: MediaDescription) -> None:
        """Append a media section (m= lines are never removed in offer/answer: set port 0)."""
        section.session = self
        self._media.append(section)

    def copy(self) -> SessionDescription:
        """An independent copy (lines are immutable, so only the lists are copied)."""
        return SessionDescription(self._lines, [MediaDescription(m._lines) for m in self._media])

    def iter_lines(self) -> Iterator[Line]:
        """Every line of the description, session section first."""
        yield from self._lines
        for section in self._media:
            yield from section._lines

    def to_bytes(self) -> bytes:
        """Serialize with CRLF line ends."""
        parts = [f"{line.type}={line.value}\r\n" for line in self._lines]
        for section in self._media:
            parts.extend([f"{line.type}={line.value}\r\n" for line in section._lines])
        return "".join(parts).encode("utf-8")

    # session-level fields

    @property
    def version(self) -> int:
        return 0

    @property
    def origin(self) -> Origin:
        return self._view("origin", lambda: Origin.parse(self._first("o") or ""))

    @origin.setter
    def origin(self, origin: Origin) -> None:
        line = _typed_line("o", origin, Origin.parse)
        self._set_lines_same_attributes([line if old.type == "o" else old for old in self._lines])
        self._views["origin"] = origin  # what the new line reads back as (checked above)

    @property
    def session_name(self) -> str:
        return self._first("s") or ""

    @property
    def uri(self) -> str | None:
        return self._first("u")

    @property
    def emails(self) -> list[str]:
        return self.values("e")

    @property
    def phones(self) -> list[str]:
        return self.values("p")

    @property
    def connection(self) -> Connection | None:
        """The session-level ``c=`` (the default for media without their own)."""
        value = self._first("c")
        return Connection.parse(value) if value is not None else None

    @property
    def timing(self) -> list[Timing]:
        return [Timing.parse(v) for v in self.values("t")]

    @property
    def direction(self) -> str:
        """The session-level default direction: its attribute, else sendrecv (RFC 8866 6.7)."""
        return self.own_direction or "sendrecv"

    @property
    def unknown_lines(self) -> list[Line]:
        """Lines of undefined type anywhere in the description."""
        return [line for line in self.iter_lines() if line.type not in _KNOWN_TYPES]

    # mutators

    def set_origin(
        self,
        *,
        username: str | None = None,
        sess_id: str | None = None,
        sess_version: int | None = None,
        unicast_address: str | None = None,
        addrtype: str | None = None,
    ) -> None:
        """Replace the given ``o=`` fields, keeping the others (topology hiding).

        With ``unicast_address`` and no ``addrtype``, the addrtype follows the address.
        """
        origin = self.origin
        if unicast_address is not None:
            addrtype = addrtype or _addrtype_of(unicast_address)
        self.origin = Origin(
            origin.username if username is None else username,
            origin.sess_id if sess_id is None else sess_id,
            origin.sess_version if sess_version is None else sess_version,
            origin.nettype,
            origin.addrtype if addrtype is None else addrtype,
            origin.unicast_address if unicast_address is None else unicast_address,
        )

    def bump_version(self) -> int:
        """Increment ``o=`` sess-version (RFC 3264 8: a changed offer); return the new value."""
        version = self.origin.sess_version + 1
        self.set_origin(sess_version=version)
        return version

    def set_connection_address(self, address: str, addrtype: str | None = None) -> None:
        """Point every ``c=`` line (session and media) at one unicast ``address``.

        Multicast TTL/count are dropped and extra ``c=`` lines of a section are removed.  If a
        media section would be left without any connection, a session-level ``c=`` is added
        after the v/o/s/i/u/e/p lines.  Either every line is rewritten or, on a bad argument
        (``ValueError``), none is.
        """
        connection = Connection("IN", addrtype or _addrtype_of(address), address)
        line = _typed_line("c", connection, Connection.parse)  # validate before any change
        has_session_c = self._set_connections(address, addrtype)
        covered = [section._set_connections(address, addrtype) for section in self._media]
        if not has_session_c and not all(covered):
            self._insert_after_prefix(line, "vosiuep")

    def remove_unknown_lines(self) -> int:
        """Drop every line of an undefined type; return how many were dropped."""
        count = 0
        for section in [self, *self._media]:
            kept = [line for line in section._lines if line.type in _KNOWN_TYPES]
            count += len(section._lines) - len(kept)
            section._set_lines(kept)
        return count


# --------------------------------------------------------------------------------------------
# Parsing


def _split_lines(data: bytes | bytearray | memoryview | str) -> list[str]:
    if isinstance(data, str):
        if len(data) > MAX_SDP_SIZE:
            raise SdpError("SDP body too large")
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise SdpError("SDP text is not valid Unicode") from None
    elif isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError("parse_sdp() takes bytes or str")
    if len(data) > MAX_SDP_SIZE:
        raise SdpError("SDP body too large")
    if b"\x00" in data:
        raise SdpError("NUL byte in SDP")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    newlines = text.count("\n")
    if newlines > MAX_LINES + 1:
        raise SdpError("too many SDP lines")
    if newlines == text.count("\r\n") == text.count("\r"):
        # Every line end is CRLF and no CR stands alone: one split gives what the loop below
        # gives (lines split at LF, one trailing CR removed from each).
        lines = text.split("\r\n")
        if lines[-1] == "":
            lines.pop()  # the final line end, not a line
    else:
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()  # the final line end, not a line
        for i, line in enumerate(lines):
            if line.endswith("\r"):
                line = lines[i] = line[:-1]
            if "\r" in line:
                raise SdpError(f"line {i + 1}: CR without LF")
    while lines and not lines[-1].strip(" \t"):
        lines.pop()  # liberal: trailing blank lines
    if len(lines) > MAX_LINES:
        raise SdpError("too many SDP lines")
    return lines


def parse_sdp(data: bytes | bytearray | memoryview | str) -> SessionDescription:
    """Parse an SDP body (RFC 8866) into a :class:`SessionDescription`.

    Raises :class:`SdpError` (status 488) for anything it cannot accept; never anything else for
    bytes or str input.  See the module docstring for what is tolerated.
    """
    texts = _split_lines(data)
    if not texts or not texts[0].startswith("v="):
        raise SdpError("SDP must start with v=")
    session: list[Line] = []
    sections: list[list[Line]] = []
    section = session
    # What _section_problem would say of each section ([session, *media]), worked out while
    # the attributes are parsed for their own check (so each a= line is parsed once), and the
    # session-level o=/s=/c= counts; both are reported after every line was checked, as the
    # checks in that order would.
    problems: list[str | None] = [None]
    directions: set[str] = set()
    tags: set[int] = set()
    origins = names = connections = 0
    # The typed values parsed for the checks, kept as the sections' cached views (the same
    # values the views would parse again): the o= line, each m= line, each section's a= lines.
    origin: Origin | None = None
    media_lines: list[MediaLine] = []
    attributes: list[list[Attribute]] = [[]]
    for number, text in enumerate(texts, 1):
        if len(text) > MAX_LINE_LENGTH:
            raise SdpError(f"line {number}: longer than {MAX_LINE_LENGTH} characters")
        if len(text) < 2 or text[1] != "=" or not "a" <= text[0] <= "z":
            raise SdpError(f"line {number}: not of the form <type>=<value>")
        kind = text[0]
        line = Line(kind, text[2:])
        try:
            if kind == "a":
                attribute = Attribute.parse(line.value)
                _check_attribute(attribute)
            elif kind == "o":
                parsed_origin = Origin.parse(line.value)  # what _check_line checks
            elif kind == "m":
                media_line = MediaLine.parse(line.value)  # what _check_line checks
            else:
                _check_line(line)
        except SdpError as exc:
            raise SdpError(f"line {number} ({kind}=): {exc.message}") from None
        if kind == "m":
            section = [line]
            sections.append(section)
            media_lines.append(media_line)
            attributes.append([])
            problems.append(None)
            directions = set()
            tags = set()
            continue
        if kind == "a":
            attributes[-1].append(attribute)
        if kind == "a" and problems[-1] is None:
            name = attribute.name
            if name in DIRECTIONS:
                directions.add(name)
                if len(directions) > 1:
                    problems[-1] = "conflicting direction attributes"
            elif name == "crypto":
                tag = int(_fields(attribute.value or "")[0])  # validated by parse_crypto
                if tag in tags:
                    problems[-1] = "duplicate a=crypto tag"
                tags.add(tag)
        elif not sections:
            if kind == "o":
                origins += 1
                origin = parsed_origin
            elif kind == "s":
                names += 1
            elif kind == "c":
                connections += 1
        elif kind in _SESSION_ONLY_TYPES:
            raise SdpError(f"line {number}: {kind}= is not allowed in a media description")
        if kind == "v" and number != 1:
            raise SdpError(f"line {number}: v= must be the first line only")
        section.append(line)
    for count, kind, name in ((origins, "o", "origin"), (names, "s", "session name")):
        if count != 1:
            raise SdpError(f"SDP needs exactly one {kind}= ({name}) line, found {count}")
    if connections > 1:
        raise SdpError("more than one session-level c= line")
    for index, problem in enumerate(problems):
        if problem is not None:
            where = "session level" if index == 0 else f"media description {index}"
            raise SdpError(f"{where}: {problem}")
    description = SessionDescription(session, [MediaDescription(lines) for lines in sections])
    description._views["origin"] = origin
    description._views["attributes"] = tuple(attributes[0])
    for media, media_line, section_attributes in zip(
        description._media, media_lines, attributes[1:], strict=True
    ):
        media._views["media_line"] = media_line
        media._views["attributes"] = tuple(section_attributes)
    return description
