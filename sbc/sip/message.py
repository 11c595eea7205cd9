"""SIP messages (RFC 3261 7, 20, 25): parse bytes into requests/responses and serialize back.

Theory of operation
-------------------
:func:`parse_message` takes one whole message (a UDP datagram, or a frame cut by
:mod:`sbc.sip.framing`) and returns a :class:`Request` or :class:`Response`, or raises
:class:`~sbc.errors.SipParseError` carrying the status to answer with.  Parsing is strict where a
gateway on the internet must be (start line, the headers that route and match messages, sizes)
and opaque elsewhere: unknown headers are kept as text, in order, spelling preserved.

The headers every later layer relies on are validated here, once, so the transaction layer and
the gateway never meet a malformed Via, From, To, Call-ID, CSeq, Max-Forwards, Content-Length,
Contact, Route or Record-Route.  When a request is rejected, the Via, From, To, Call-ID and CSeq
that could be read are kept in a :class:`Salvage` so a response can still be built
(:func:`build_response`); when even the top Via cannot be read, or the message is a response,
the error has ``status=None``: drop it and count it.

Bytes are decoded as UTF-8 with ``surrogateescape``: every byte survives a round trip, and
UTF-8 display names and reason phrases read as text.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from sbc.errors import SipParseError
from sbc.sip.grammar import CALL_ID_RE, CTL_RE, QUOTED_STRING_RE, TOKEN_RE, WSP, split_commas
from sbc.sip.headers import (
    STAR,
    CSeq,
    Headers,
    NameAddr,
    Via,
    _Star,
    canonical_name,
    display_name,
    parse_cseq,
    parse_name_addr,
    parse_token_list,
    parse_uint,
    parse_via_value,
)
from sbc.sip.uri import SipUri, Uri, parse_uri

SIP_VERSION = "SIP/2.0"
_DELTA_SECONDS_RE = re.compile(r"[ \t]*[0-9]+[ \t]*\Z")
_ENC = "utf-8"
_ERRORS = "surrogateescape"


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard caps on what a peer may make us parse (all configurable from ``limits:``)."""

    max_message_bytes: int = 65535  # larger: 513 Message Too Large
    max_body_bytes: int = 65535  # larger: 413 Request Entity Too Large
    max_headers: int = 200  # more header lines: 400
    max_line_bytes: int = 8192  # a longer header line (unfolded): 400
    max_uri_bytes: int = 4096  # a longer Request-URI: 414 Request-URI Too Long
    max_values_per_header: int = 64  # more Via/Contact/Route elements in one message: 400


DEFAULT_LIMITS = Limits()

# Headers that may appear only once (RFC 3261 7.3.1 and 20); a second copy is a 400 (RFC 4475
# 3.3.8).
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-length", "content-type")
_REQUIRED = ("via", "from", "to", "call-id", "cseq")  # RFC 3261 8.1.1 (Max-Forwards: 3.4.1)

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    429: "Too Many Requests",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
}


@dataclass(slots=True)
class Salvage:
    """What could be read from a rejected request: enough to address a response to it."""

    method: str | None = None
    vias: list[str] = field(default_factory=list)
    from_: str | None = None
    to: str | None = None
    call_id: str | None = None
    cseq: str | None = None


class Message:
    """What requests and responses share: headers, body and typed accessors."""

    __slots__ = ("headers", "body", "version")

    headers: Headers
    body: bytes
    version: str

    def _start_line(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialize; Content-Length is always written and always equals ``len(body)``."""
        lines = [self._start_line()]
        body = self.body
        cl_written = False
        for key, name, value in self.headers._entries:
            if key == "content-length":
                if cl_written:
                    continue
                value = str(len(body))
                cl_written = True
            lines.append(f"{name}: {value}")
        if not cl_written:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode(_ENC, _ERRORS) + body

    # Typed accessors.  The parser has validated all of these for a parsed message, so they
    # do not raise for it; on a message built by hand they raise SipParseError if malformed.
    # The hot ones look in the headers' cache of typed views first (what Headers.typed does,
    # without its call), since the transaction layer and the B2BUA read them many times.

    @property
    def vias(self) -> list[Via]:
        value = self.headers._typed.get("via")
        return value if value is not None else self.headers.typed("via", _vias)

    @property
    def top_via(self) -> Via | None:
        vias = self.headers._typed.get("via")
        if vias is None:
            vias = self.headers.typed("via", _vias)
        return vias[0] if vias else None

    @property
    def from_(self) -> NameAddr:
        value = self.headers._typed.get("from")
        return value if value is not None else self.headers.typed("from", _from)

    @property
    def to(self) -> NameAddr:
        value = self.headers._typed.get("to")
        return value if value is not None else self.headers.typed("to", _to)

    @property
    def call_id(self) -> str:
        value = self.headers._typed.get("call-id")
        return value if value is not None else self.headers.typed("call-id", _call_id)

    @property
    def cseq(self) -> CSeq:
        value = self.headers._typed.get("cseq")
        return value if value is not None else self.headers.typed("cseq", _cseq)

    @property
    def max_forwards(self) -> int | None:
        return self.headers.typed("max-forwards", _max_forwards)

    @property
    def contacts(self) -> list[NameAddr] | _Star:
        return self.headers.typed("contact", _contacts)

    @property
    def routes(self) -> list[NameAddr]:
        return self.headers.typed("route", _routes)

    @property
    def record_routes(self) -> list[NameAddr]:
        return self.headers.typed("record-route", _record_routes)

    @property
    def content_type(self) -> str | None:
        """The media type, lower-cased, without parameters (``application/sdp``)."""
        v = self.headers.get("content-type")
        return None if v is None else v.split(";", 1)[0].strip().lower()

    @property
    def expires(self) -> int | None:
        """Expires in seconds, or None when absent or malformed.

        Values above 2**32-1 are clamped to it (RFC 3261 25.1 delta-seconds).  A malformed value
        is treated as absent, so the registrar or UAS applies its default (RFC 3261 10.3, 13.3.1).
        """
        v = self.headers.get("expires")
        if v is None or not _DELTA_SECONDS_RE.match(v):
            return None
        v = v.strip(" \t")
        return 2**32 - 1 if len(v) > 10 else min(int(v), 2**32 - 1)

    def option_tags(self, name: str) -> list[str]:
        """Allow / Supported / Require / Proxy-Require / Unsupported as a list of tokens."""
        return parse_token_list(self.headers.values(name), name)

    def _required(self, key: str) -> str:
        return _required(self.headers, key)


def _required(headers: Headers, key: str) -> str:
    v = headers.get(key)
    if v is None:
        raise SipParseError(f"missing {display_name(key)} header")
    return v


# Typed values shared between messages.  A call carries the same From, To, Contact and CSeq
# text in several messages (and the SBC parses the Via, From and Contact it wrote itself when
# the answers come back with them), so each distinct text is parsed once and its typed value
# reused: typed values are read-only views (see Headers.typed), so sharing one is safe, and
# fewer objects live in lingering transactions for the garbage collector to walk.  Only
# successful parses are kept (an error is raised afresh, with its own message, every time);
# long texts are not kept, and a table that fills up is emptied, so memory stays bounded
# whatever a peer sends.
_SHARED_MAX = 4096  # entries per table
_SHARED_TEXT_MAX = 512  # characters: longer values are parsed every time

_shared_vias: dict[str, Via] = {}
_shared_name_addrs: dict[str, NameAddr] = {}
_shared_cseqs: dict[str, CSeq] = {}
# The SIP URIs of shared name-addrs, by their exact components: a From or To differs from call
# to call by its tag far more often than by its URI.
_UriKey = tuple[str, str | None, str | None, str, int | None, tuple[tuple[str, str | None], ...],
                tuple[tuple[str, str], ...]]
_shared_uris: dict[_UriKey, SipUri] = {}


def _shared_via(text: str) -> Via:
    """``parse_via_value(text)``, shared between messages (``text`` is stripped)."""
    via = _shared_vias.get(text)
    if via is None:
        via = parse_via_value(text)
        if len(text) <= _SHARED_TEXT_MAX:
            if len(_shared_vias) >= _SHARED_MAX:
                _shared_vias.clear()
            _shared_vias[text] = via
    return via


def _shared_name_addr(text: str, what: str) -> NameAddr:
    """``parse_name_addr(text, what)``, shared between messages (``what`` only names the header
    in an error, and errors are never kept)."""
    na = _shared_name_addrs.get(text)
    if na is None:
        na = parse_name_addr(text, what)
        uri = na.uri
        if isinstance(uri, SipUri):
            key = (uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params._items,
                   tuple(uri.headers))
            shared = _shared_uris.get(key)
            if shared is not None:
                na.uri = shared  # the same components: a fresh NameAddr takes the shared one
            elif len(text) <= _SHARED_TEXT_MAX:
                if len(_shared_uris) >= _SHARED_MAX:
                    _shared_uris.clear()
                _shared_uris[key] = uri
        if len(text) <= _SHARED_TEXT_MAX:
            if len(_shared_name_addrs) >= _SHARED_MAX:
                _shared_name_addrs.clear()
            _shared_name_addrs[text] = na
    return na


def _shared_cseq(text: str) -> CSeq:
    """``parse_cseq(text)``, shared between messages (CSeq is immutable)."""
    cseq = _shared_cseqs.get(text)
    if cseq is None:
        cseq = parse_cseq(text)
        if len(text) <= _SHARED_TEXT_MAX:
            if len(_shared_cseqs) >= _SHARED_MAX:
                _shared_cseqs.clear()
            _shared_cseqs[text] = cseq
    return cseq


def _vias_of(values: list[str]) -> list[Via]:
    """Every Via value of every line (what ``parse_via`` gives for each line, in order)."""
    out: list[Via] = []
    for v in values:
        if "," in v:
            out.extend(_shared_via(p.strip(WSP)) for p in split_commas(v, "Via"))
        else:
            out.append(_shared_via(v.strip(WSP)))
    return out


def _vias(h: Headers) -> list[Via]:
    return _vias_of(h.get_all("via"))


def _from(h: Headers) -> NameAddr:
    return _shared_name_addr(_required(h, "from"), "From")


def _to(h: Headers) -> NameAddr:
    return _shared_name_addr(_required(h, "to"), "To")


def _call_id(h: Headers) -> str:
    return _required(h, "call-id")


def _cseq(h: Headers) -> CSeq:
    return _shared_cseq(_required(h, "cseq"))


def _max_forwards(h: Headers) -> int | None:
    v = h.get("max-forwards")
    return None if v is None else parse_uint(v, "Max-Forwards", 255)


def _contacts_of(values: list[str]) -> list[NameAddr] | _Star:
    if len(values) == 1 and values[0].strip() == "*":
        return STAR
    return _name_addrs_of(values, "Contact")


def _contacts(h: Headers) -> list[NameAddr] | _Star:
    return _contacts_of(h.get_all("contact"))


def _name_addrs_of(values: list[str], what: str) -> list[NameAddr]:
    """Every name-addr of every line (what ``parse_name_addr_list`` gives, in order)."""
    out: list[NameAddr] = []
    for v in values:
        if "," in v:
            out.extend(_shared_name_addr(p, what) for p in split_commas(v, what))
        else:
            out.append(_shared_name_addr(v, what))
    return out


def _routes(h: Headers) -> list[NameAddr]:
    return _name_addrs_of(h.get_all("route"), "Route")


def _record_routes(h: Headers) -> list[NameAddr]:
    return _name_addrs_of(h.get_all("record-route"), "Record-Route")


class Request(Message):
    """A SIP request.  ``uri`` is the parsed Request-URI."""

    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: Uri,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        self.status = status
        self.reason = REASON_PHRASES.get(status, "Unknown") if reason is None else reason
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# ---------------------------------------------------------------------------------------------
# Parsing

_METHOD_RE = TOKEN_RE
_VERSION_RE = re.compile(r"[Ss][Ii][Pp]/([0-9]+)\.([0-9]+)\Z")
_STATUS_RE = re.compile(r"([0-9]{3})(?: (.*))?\Z", re.DOTALL)
# Every byte but the control characters (HTAB is LWS, so it counts as text).  Deleting these
# from a head leaves its CR, LF and control bytes: the head is clean when that is just its CRLFs.
_NOT_CTL = bytes(b for b in range(256) if b == 0x09 or (b >= 0x20 and b != 0x7F))
_valid_names: dict[str, str] = {}  # header name as written -> canonical key, valid tokens only


def _header_key(name: str) -> str | None:
    """The canonical key of a header name as written, or None if it is not a token."""
    key = _valid_names.get(name)
    if key is None:
        if not TOKEN_RE.match(name):
            return None
        key = canonical_name(name)
        if len(_valid_names) < 4096:
            _valid_names[name] = key
    return key


@dataclass(slots=True)
class Head:
    """A parsed start line and header section, before the body is attached.

    The stream framer parses the head once, reads Content-Length from it, and attaches the
    body when it has arrived.  ``error`` holds a problem found in the head; it is raised only
    once the message's extent is known, so a stream can skip the body and carry on.
    """

    start: Request | Response
    start_line: str
    content_length: int | None
    error: SipParseError | None = None

    def fail(self, error: SipParseError, *, framing: bool = False) -> SipParseError:
        """Record ``error`` with its salvage and return the error to raise.

        The first content error found wins; a framing or size error (``framing=True``) wins over
        any, since it decides what happens to the connection.  A malformed response is never
        answered (RFC 3261 18.1.2); a request is answered only if a top Via could be read."""
        if self.error is not None and not framing:
            return self.error
        if self.start_line[:4].upper() == "SIP/":
            error.status = None
        else:
            if error.salvage is None:
                error.salvage = _salvage(self.start_line, self.start.headers)
            if not error.salvage.vias:
                error.status = None
        self.error = error
        return error


_INVALID_URI = SipUri("sip", "invalid")


def parse_head(head: bytes, limits: Limits = DEFAULT_LIMITS) -> Head:
    """Parse everything before the empty line (without the final CRLFCRLF).

    Framing problems (Content-Length) raise at once, as fatal; other problems are recorded in
    ``Head.error`` so the framer can still cut the body off the stream before reporting them.
    """
    text = head.decode(_ENC, _ERRORS)
    raw_lines = text.split("\r\n")
    start_line = raw_lines[0]
    error: SipParseError | None = None
    # One scan for control characters over the whole head; per-line checks only if it hits.
    crlf = head.count(b"\r\n")
    ctl = head.translate(None, _NOT_CTL)  # only the CR, LF and other control bytes remain
    suspicious = len(ctl) != 2 * crlf or ctl.count(b"\r") != crlf
    if "\r\n " in text or "\r\n\t" in text:
        # Unfold (RFC 3261 7.3.1): a line starting with SP/HTAB continues the previous one.
        lines: list[str] = []
        for line in raw_lines[1:]:
            if line[:1] in (" ", "\t"):
                if not lines:
                    error = error or SipParseError("header section starts with a continuation")
                    continue
                lines[-1] = lines[-1] + " " + line.strip(" \t")
            else:
                lines.append(line)
    else:
        lines = raw_lines[1:]

    entries: list[tuple[str, str, str]] = []
    # The values of each header, by canonical key, for the checks below (one C-level append
    # per line here instead of a second pass over the entries).
    groups: defaultdict[str, list[str]] = defaultdict(list)
    if len(lines) > limits.max_headers:
        error = error or SipParseError("too many header fields")
        lines = lines[: limits.max_headers]
    valid_names = _valid_names
    max_line = limits.max_line_bytes
    # A line as written ("name: value") is at most one character longer than it was in the
    # head (a missing space after the colon), unfolding only shortens: a short head needs no
    # check per line.
    check_length = len(text) + 1 > max_line
    for line in lines:
        raw_name, colon, value = line.partition(":")
        name = raw_name.rstrip(" \t")
        key = valid_names.get(name) if colon else None
        if key is None:
            key = _header_key(name) if colon else None
            if key is None:
                error = error or SipParseError("malformed header line")
                continue
        if suspicious and CTL_RE.search(line) and CTL_RE.search(QUOTED_STRING_RE.sub("", line)):
            # Control characters only inside quoted-pairs (RFC 3261 25.1 TEXT-UTF8); a NUL or
            # bare CR/LF elsewhere is an injection attempt against whoever reads it next.
            error = error or SipParseError("control character in header field")
            continue
        value = value.strip(" \t")
        if check_length and len(name) + 2 + len(value) > max_line:  # as it will be written
            error = error or SipParseError("header line too long")
            continue
        entries.append((key, name, value))
        groups[key].append(value)
    headers = Headers._from_entries(entries)

    start: Request | Response
    try:
        start = _parse_start_line(start_line, limits)
    except SipParseError as e:
        error = error or e
        start = Request("", _INVALID_URI)
    start.headers = headers
    result = Head(start, start_line, None)

    # Content-Length decides framing, so it is judged before anything else about the body
    # (RFC 4475 3.1.2.3 and 3.3.9): a bad one is fatal on a stream.
    cl_values = groups.get("content-length", ())
    if len(cl_values) > 1:
        raise result.fail(SipParseError("more than one Content-Length", 400, fatal=True),
                          framing=True)
    if cl_values:
        try:
            result.content_length = parse_uint(cl_values[0], "Content-Length", 2**31 - 1)
        except SipParseError as e:
            raise result.fail(SipParseError(e.message, 400, fatal=True), framing=True) from None

    if error is None:
        try:
            _validate(start, limits, groups)
        except SipParseError as e:
            error = e
    if error is not None:
        result.fail(error)
    return result


def _parse_start_line(line: str, limits: Limits) -> Request | Response:
    if line.startswith("SIP/") or line[:4].upper() == "SIP/":
        parts = line.split(" ", 1)
        if parts[0] != SIP_VERSION:
            _check_version(parts[0])
        m = _STATUS_RE.match(parts[1]) if len(parts) == 2 else None
        if m is None or not 100 <= int(m.group(1)) <= 699:
            raise SipParseError("malformed status line", None)
        reason = m.group(2) or ""
        if CTL_RE.search(reason.replace("\t", " ")):
            raise SipParseError("malformed reason phrase", None)
        return Response(int(m.group(1)), reason)
    parts = line.split(" ")
    if len(parts) != 3:
        # RFC 4475 3.1.2.8-10: extra, embedded or trailing SP in the Request-Line.
        raise SipParseError("malformed Request-Line")
    method, uri_text, version = parts
    if method not in _KNOWN_METHODS and not _METHOD_RE.match(method):
        raise SipParseError("invalid method")
    if version != SIP_VERSION:
        _check_version(version)
    if len(uri_text) > limits.max_uri_bytes:
        raise SipParseError("Request-URI too long", 414)
    uri = parse_uri(uri_text, "Request-URI")
    if isinstance(uri, SipUri) and uri.headers:
        # RFC 3261 19.1.1 table: headers are not allowed in a Request-URI (RFC 4475 3.1.2.11).
        raise SipParseError("headers in Request-URI")
    return Request(method, uri)


_KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
    "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
})


def _check_version(text: str) -> None:
    m = _VERSION_RE.match(text)
    if m is None:
        raise SipParseError("malformed SIP-Version")
    if (m.group(1), m.group(2)) != ("2", "0"):
        raise SipParseError("SIP version not supported", 505)


def _validate(msg: Request | Response, limits: Limits, groups: dict[str, list[str]]) -> None:
    """Check the headers every later layer relies on (RFC 3261 8.1.1 and 20).

    ``groups`` holds the values of each header line by canonical key, in order (only read
    with ``get``/``in``, or subscripted for a key known present).  The typed values parsed here
    fill the cache the accessors read, so nothing is parsed twice.
    """
    headers = msg.headers
    for key in _SINGLE:
        group = groups.get(key)
        if group is not None and len(group) > 1:
            raise SipParseError(f"more than one {display_name(key)} header")
    for key in _REQUIRED:
        if key not in groups:
            raise SipParseError(f"missing {display_name(key)} header")
    typed = headers._typed
    vias = typed["via"] = _vias_of(groups["via"])
    if len(vias) > limits.max_values_per_header:
        raise SipParseError("too many Via values")
    from_ = typed["from"] = _shared_name_addr(groups["from"][0], "From")
    to = typed["to"] = _shared_name_addr(groups["to"][0], "To")
    for na, what in ((from_, "From"), (to, "To")):
        if isinstance(na.uri, SipUri) and na.uri.headers:
            raise SipParseError(f"headers in {what} URI")
    if not CALL_ID_RE.match(groups["call-id"][0]):
        raise SipParseError("malformed Call-ID")
    cseq = typed["cseq"] = _shared_cseq(groups["cseq"][0])
    if isinstance(msg, Request) and cseq.method != msg.method:
        raise SipParseError("CSeq method does not match the request method")
    mf = groups.get("max-forwards")
    typed["max-forwards"] = parse_uint(mf[0], "Max-Forwards", 255) if mf else None
    contacts = typed["contact"] = _contacts_of(groups.get("contact", []))
    if isinstance(contacts, _Star):
        if not isinstance(msg, Request) or msg.method != "REGISTER":
            raise SipParseError("Contact: * outside REGISTER")
    elif len(contacts) > limits.max_values_per_header:
        raise SipParseError("too many Contact values")
    for key, what in (("route", "Route"), ("record-route", "Record-Route")):
        values = groups.get(key)
        if not values:
            continue  # nothing to check; the accessor makes the empty list if it is asked
        routes = typed[key] = _name_addrs_of(values, what)
        if len(routes) > limits.max_values_per_header:
            raise SipParseError(f"too many {what} values")
        for na in routes:
            if not na.angle:
                raise SipParseError(f"{what} URI must be in <>")


def _salvage(start_line: str, headers: Headers) -> Salvage:
    """Read what a response needs from a broken request, leniently and safely.

    Every Via kept is rebuilt and re-parsed, so the answer is routable (RFC 3261 18.2.2): when
    the top one cannot be rebuilt there is no answer at all; a damaged one below it is dropped.
    From, To, Call-ID and CSeq are copied as received (RFC 3261 8.2.6.2), the first of each
    when repeated (RFC 4475 3.3.8), so the client can match the answer to its transaction.
    """
    s = Salvage()
    parts = start_line.split(" ")
    if parts and _METHOD_RE.match(parts[0]) and not parts[0].upper().startswith("SIP/"):
        s.method = parts[0]
    top = True
    for raw in headers.get_all("via"):
        # Lenient on purpose: RFC 4475 3.1.2.1 wants a 400 even for "Via: ...;;,;,,".
        for el in raw.split(","):
            if not el.strip(" \t"):
                continue
            via = _lenient_via(el.strip(" \t"))
            if via is not None:
                s.vias.append(via)
            elif top:
                break
            top = False
        if top and not s.vias:
            break
    for key in ("from", "to", "call-id", "cseq"):
        values = headers.get_all(key)
        if values:
            setattr(s, "from_" if key == "from" else key.replace("-", "_"), values[0])
    return s


_LENIENT_VIA_RE = re.compile(
    r"\s*SIP\s*/\s*[0-9.]+\s*/\s*([A-Za-z]+)\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)"
    r"(?:\s*:\s*([0-9]{1,5}))?"
)
_LENIENT_PARAM_RE = re.compile(
    r"\s*;\s*(branch|rport|received)(?:\s*=\s*([A-Za-z0-9\-.!%*_+`'~:\[\]]+))?", re.IGNORECASE)


def _lenient_via(text: str) -> str | None:
    """A clean Via rebuilt from a damaged one: sent-protocol, sent-by, and those of the
    parameters a response is routed by (branch, rport, received) that are well formed;
    ``None`` when no valid sent-by can be read."""
    m = _LENIENT_VIA_RE.match(text)
    if m is None:
        return None
    transport, host, port = m.groups()
    out = f"SIP/2.0/{transport.upper()} {host}" + (f":{port}" if port else "")
    if not _parses_as_via(out):
        return None
    for pm in _LENIENT_PARAM_RE.finditer(text, m.end()):
        candidate = out + f";{pm.group(1)}" + (f"={pm.group(2)}" if pm.group(2) else "")
        if _parses_as_via(candidate):
            out = candidate
    return out


def _parses_as_via(text: str) -> bool:
    try:
        parse_via_value(text)
    except SipParseError:
        return False
    return True


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """Parse one whole message received as a datagram (RFC 3261 18.3 framing rules for UDP).

    Leading CRLFs are ignored (RFC 3261 7.5).  Without Content-Length the body is the rest of
    the datagram; with it, octets beyond it are discarded and a shortfall is a 400.
    """
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start, start + limits.max_message_bytes)
    if end < 0:
        head = parse_head(data[start : start + limits.max_message_bytes].rstrip(b"\r\n"), limits)
        if len(data) > limits.max_message_bytes:
            raise head.fail(SipParseError("message too large", 513), framing=True)
        raise head.fail(SipParseError("header section not terminated by an empty line"))
    head = parse_head(data[start:end], limits)
    if len(data) > limits.max_message_bytes:
        raise head.fail(SipParseError("message too large", 513), framing=True)
    body_start = end + 4
    available = len(data) - body_start
    length = available if head.content_length is None else head.content_length
    if length > available:
        raise head.fail(SipParseError("Content-Length larger than the message body"),
                        framing=True)
    if length > limits.max_body_bytes:
        raise head.fail(SipParseError("message body too large", 413), framing=True)
    if head.error is not None:
        raise head.error
    msg = head.start
    msg.body = data[body_start : body_start + length]
    return msg


# ---------------------------------------------------------------------------------------------
# Building responses


def build_response(
    source: Request | Salvage,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``source`` per RFC 3261 8.2.6: Via, From, To, Call-ID, CSeq copied.

    A To tag is added when ``to_tag`` is given and the To has none (required for every response
    but 100, RFC 3261 8.2.6.2).  ``source`` may be a :class:`Salvage` of a rejected request.
    """
    entries: list[tuple[str, str, str]] = []
    from_ = to = call_id = cseq = None
    if isinstance(source, Request):
        # One pass over the request: every Via line in order, the first of the others.
        for key, _, v in source.headers._entries:
            if key == "via":
                entries.append(("via", "Via", v))
            elif key == "from":
                from_ = v if from_ is None else from_
            elif key == "to":
                to = v if to is None else to
            elif key == "call-id":
                call_id = v if call_id is None else call_id
            elif key == "cseq":
                cseq = v if cseq is None else cseq
    else:
        entries.extend(("via", "Via", v) for v in source.vias)
        from_, to, call_id, cseq = source.from_, source.to, source.call_id, source.cseq
    if from_ is not None:
        entries.append(("from", "From", from_))
    if to is not None:
        if to_tag is not None and status > 100 and not _has_tag(to):
            to = f"{to};tag={to_tag}"
        entries.append(("to", "To", to))
    if call_id is not None:
        entries.append(("call-id", "Call-ID", call_id))
    if cseq is not None:
        entries.append(("cseq", "CSeq", cseq))
    if extra:
        entries.extend((canonical_name(name), name, value) for name, value in extra)
    return Response(status, reason, Headers._from_entries(entries), body)


def _has_tag(to: str) -> bool:
    try:
        return _shared_name_addr(to, "To").tag is not None
    except SipParseError:
        return ";tag=" in to.replace(" ", "").lower()


__all__ = [
    "DEFAULT_LIMITS",
    "REASON_PHRASES",
    "Head",
    "Limits",
    "Message",
    "Request",
    "Response",
    "Salvage",
    "build_response",
    "check_request",
    "parse_head",
    "parse_message",
    "canonical_name",
    "parse_uri",
]


# ---------------------------------------------------------------------------------------------
# Checks before a request is acted on (RFC 3261 8.2.2, 16.3)

ROUTABLE_SCHEMES = frozenset({"sip", "sips", "tel"})


def check_request(request: Request, supported: frozenset[str] = frozenset()) -> None:
    """The checks a B2BUA makes before it acts on a well-formed request.

    Raises :class:`SipParseError` with 416 for a Request-URI scheme it cannot route (RFC 3261
    8.2.2.1), 483 when Max-Forwards is 0 (RFC 3261 16.3 step 3), and 420 with an Unsupported
    header listing the option tags of Require/Proxy-Require that are not in ``supported``
    (RFC 3261 8.2.2.3; a B2BUA is the UAS for Require and the proxy for Proxy-Require).
    CANCEL and ACK are never rejected for extensions (RFC 3261 8.2.2.3).
    """
    if request.uri.scheme.lower() not in ROUTABLE_SCHEMES:
        raise SipParseError("unsupported URI scheme", 416)
    if request.max_forwards == 0:
        raise SipParseError("Max-Forwards exhausted", 483)
    if request.method in ("ACK", "CANCEL"):
        return
    wanted = request.option_tags("require") + request.option_tags("proxy-require")
    unknown = [tag for tag in wanted if tag.lower() not in supported]
    if unknown:
        raise SipParseError(
            "unsupported extension required", 420,
            headers=(("Unsupported", ", ".join(dict.fromkeys(unknown))),),
        )
