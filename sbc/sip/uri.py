"""SIP, SIPS and tel URIs (RFC 3261 19.1 and 25.1, RFC 3966), plus opaque absolute URIs.

Components are kept exactly as written (escaped, original case), so ``str(parse_uri(s)) == s``
for every valid ``s`` (but a port with leading zeros is written without them); helpers give
the unescaped user and compare per RFC 3261 19.1.4 where a caller needs it.  A URI with another
scheme (``isbn:``, ``http:``) parses to :class:`AbsoluteUri` so a message carrying it is still
understood; the gateway decides whether that deserves 416 (RFC 4475 3.3.2).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote as _pct_unquote

from sbc.errors import SipParseError
from sbc.sip.grammar import Params

_ESC = r"%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESC})+\Z")
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESC})*\Z")
_PARAM_PART_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESC})+\Z")
_HNAME_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})+\Z")
_HVALUE_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})*\Z")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?\Z")
_IPV4_LIKE_RE = re.compile(r"[0-9.]+\Z")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|0?[1-9]?[0-9]|00[0-9])"
IPV4_RE = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}\Z")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
# tel: global-number-digits / local-number-digits (RFC 3966 3), kept loose but without spaces.
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+\Z")
# absolute-URI opaque part: uric characters (RFC 3261 25.1 hier-part / opaque-part).
_OPAQUE_RE = re.compile(r"[A-Za-z0-9\-_.!~*'();/?:@&=+$,%\[\]]+\Z")


@dataclass(slots=True, eq=False)
class SipUri:
    """A ``sip:`` or ``sips:`` URI; every text component is kept escaped, as written."""

    scheme: str
    host: str  # hostname, IPv4 address, or bracketed IPv6 reference "[2001:db8::1]"
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = field(default_factory=Params)
    headers: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        user = self.user
        if user is None:
            text = f"{self.scheme}:{self.host}"
        elif self.password is None:
            text = f"{self.scheme}:{user}@{self.host}"
        else:
            text = f"{self.scheme}:{user}:{self.password}@{self.host}"
        if self.port is not None:
            text = f"{text}:{self.port}"
        if self.params._items:
            text += self.params.to_str()
        if self.headers:
            text += "?" + "&".join(f"{n}={v}" for n, v in self.headers)
        return text

    def __repr__(self) -> str:
        return f"SipUri({str(self)!r})"

    @property
    def secure(self) -> bool:
        return self.scheme.lower() == "sips"

    @property
    def user_unescaped(self) -> str | None:
        """The user part with %HH resolved once (never recursively, RFC 4475 3.1.1.3)."""
        return None if self.user is None else _pct_unquote(self.user, errors="surrogateescape")

    @property
    def host_address(self) -> str:
        """The host without IPv6 brackets, lower-cased (hostnames are case-insensitive)."""
        h = self.host[1:-1] if self.host.startswith("[") else self.host
        return h.lower()

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    def copy(self) -> SipUri:
        return SipUri(
            self.scheme,
            self.host,
            self.user,
            self.password,
            self.port,
            self.params.copy(),
            list(self.headers),
        )

    def __eq__(self, other: object) -> bool:
        """URI equality of RFC 3261 19.1.4 (escapes resolved, case rules, param rules)."""
        if not isinstance(other, SipUri):
            return NotImplemented
        if self.scheme.lower() != other.scheme.lower():
            return False
        if self.user_unescaped != other.user_unescaped:
            return False
        if (self.password or None) != (other.password or None):
            return False
        if self.host_address != other.host_address or self.port != other.port:
            return False
        mine = {n.lower(): (v or "").lower() for n, v in self.params}
        theirs = {n.lower(): (v or "").lower() for n, v in other.params}
        for special in ("user", "ttl", "method", "maddr", "transport"):
            if mine.get(special) != theirs.get(special):
                return False
        for name in mine.keys() & theirs.keys():
            if mine[name] != theirs[name]:
                return False
        return sorted(self.headers) == sorted(other.headers)

    __hash__ = None  # type: ignore[assignment]


@dataclass(slots=True)
class TelUri:
    """A ``tel:`` URI (RFC 3966): the number and its parameters, as written."""

    number: str
    params: Params = field(default_factory=Params)
    scheme: str = "tel"

    def __str__(self) -> str:
        return f"{self.scheme}:{self.number}{self.params.to_str()}"

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")


@dataclass(slots=True)
class AbsoluteUri:
    """A URI with a scheme sbc does not interpret (kept opaque, RFC 3261 25.1 absoluteURI)."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


Uri = SipUri | TelUri | AbsoluteUri


_good_hosts: set[str] = set()  # hosts already validated (bounded; cleared when full)


def parse_host(text: str, what: str = "host") -> str:
    """Validate a host (hostname, IPv4, or bracketed IPv6 reference) and return it unchanged.

    RFC 5118 4.10: the RFC 3261 ABNF admits ``[2001:db8:::192.0.2.1]``; sbc follows RFC 4291
    and rejects it, since a gateway must never forward an address it cannot interpret.
    """
    if text in _good_hosts:
        return text
    _check_host(text, what)
    if len(_good_hosts) >= 4096:
        _good_hosts.clear()
    _good_hosts.add(text)
    return text


def _check_host(text: str, what: str) -> None:
    if not text:
        raise SipParseError(f"empty {what}")
    if text[0] == "[":
        if text[-1] != "]":
            raise SipParseError(f"unterminated IPv6 reference in {what}")
        try:
            if "%" in text:  # zone identifiers (RFC 6874) are not part of RFC 3261 hosts
                raise ValueError
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise SipParseError(f"invalid IPv6 reference in {what}") from None
        return
    if _IPV4_LIKE_RE.match(text):
        # RFC 3261 25.1 IPv4address: four 1*3DIGIT octets (leading zeros allowed), each <= 255.
        if not IPV4_RE.match(text):
            raise SipParseError(f"invalid IPv4 address in {what}")
        return
    if len(text) > 255 or not _HOSTNAME_RE.match(text):
        raise SipParseError(f"invalid hostname in {what}")


def split_hostport(text: str, what: str) -> tuple[str, int | None]:
    """``host[:port]`` with IPv6 in brackets; the port must be 0..65535."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {what}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SipParseError(f"garbage after IPv6 reference in {what}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
    parse_host(host, what)
    port = None
    if port_text is not None:
        if not _PORT_RE.match(port_text) or int(port_text) > 65535:
            raise SipParseError(f"invalid port in {what}")
        port = int(port_text)
    return host, port


_SIMPLE_URI_PARAMS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()]+(?:=[A-Za-z0-9\-_.!~*'()]+)?"
                                   r"(?:;[A-Za-z0-9\-_.!~*'()]+(?:=[A-Za-z0-9\-_.!~*'()]+)?)*\Z")


def _parse_uri_params(text: str, what: str) -> Params:
    if _SIMPLE_URI_PARAMS_RE.match(text):  # fast path: no escapes or special characters
        return Params([(n, v if e else None) for n, e, v in
                       (p.partition("=") for p in text.split(";"))])
    items: list[tuple[str, str | None]] = []
    for piece in text.split(";"):
        name, eq, value = piece.partition("=")
        if not _PARAM_PART_RE.match(name) or (eq and not _PARAM_PART_RE.match(value)):
            raise SipParseError(f"malformed parameter in {what}")
        items.append((name, value if eq else None))
    return Params(items)


# A fast path for the everyday SIP URI: one C-level match splits it, the host is checked by the
# same (cached) code as the general path.  It accepts a strict subset of what the general
# parser below accepts (no password, no ?headers, no IPv6), so both give the same answer for any
# input (tests/sip/test_fast_paths.py).  Possessive quantifiers (Python 3.11) keep the match
# linear: nothing is ever re-tried.
_PCHAR = rf"(?:[{_UNRESERVED}\[\]/:&+$]++|{_ESC})"
FAST_SIP_URI = (
    rf"(?P<scheme>[Ss][Ii][Pp][Ss]?):(?:(?P<user>(?:[{_UNRESERVED}&=+$,;?/]++|{_ESC})++)@)?"
    r"(?P<host>[A-Za-z0-9.\-]++)(?::(?P<port>[0-9]{1,5}+))?"
    rf"(?P<params>(?:;{_PCHAR}++(?:={_PCHAR}++)?)*+)"
)
_FAST_SIP_URI_RE = re.compile(FAST_SIP_URI + r"\Z")


def sip_uri_from_match(m: re.Match[str], what: str) -> SipUri:
    """Build a SipUri from a match of :data:`FAST_SIP_URI` (its named groups); the host and
    port are checked exactly as the general parser checks them."""
    host = parse_host(m.group("host"), what)
    port_text = m.group("port")
    port = int(port_text) if port_text else None
    if port is not None and port > 65535:
        raise SipParseError(f"invalid port in {what}")
    ptext = m.group("params")
    params = Params([(n, v if e else None) for n, e, v in
                     (p.partition("=") for p in ptext[1:].split(";"))]) if ptext else Params()
    return SipUri(m.group("scheme"), host, m.group("user"), None, port, params, [])


def parse_sip_uri(text: str, what: str = "URI") -> SipUri:
    m = _FAST_SIP_URI_RE.match(text)
    if m is not None:
        return sip_uri_from_match(m, what)
    return parse_sip_uri_general(text, what)


def parse_sip_uri_general(text: str, what: str = "URI") -> SipUri:
    """The general SIP URI parser (the fast path's reference; tests compare the two)."""
    scheme, _, rest = text.partition(":")
    headers: list[tuple[str, str]] = []
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.partition("@")
        if "@" in rest:
            raise SipParseError(f"more than one '@' in {what}")
        user, sep, password_ = userinfo.partition(":")
        password = password_ if sep else None
        if not _USER_RE.match(user):
            raise SipParseError(f"invalid user part in {what}")
        if password is not None and not _PASSWORD_RE.match(password):
            raise SipParseError(f"invalid password in {what}")
    rest, qmark, header_text = rest.partition("?")
    if qmark:
        for piece in header_text.split("&"):
            hname, eq, hvalue = piece.partition("=")
            if not eq or not _HNAME_RE.match(hname) or not _HVALUE_RE.match(hvalue):
                raise SipParseError(f"malformed header component in {what}")
            headers.append((hname, hvalue))
    hostport, semi, param_text = rest.partition(";")
    host, port = split_hostport(hostport, what)
    params = _parse_uri_params(param_text, what) if semi else Params()
    return SipUri(scheme, host, user, password, port, params, headers)


def parse_uri(text: str, what: str = "URI") -> Uri:
    """Parse any URI; sip/sips/tel are structured, any other scheme is kept opaque.

    Raises :class:`SipParseError` (400) for malformed text.
    """
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.match(scheme) or not rest:
        raise SipParseError(f"malformed {what}")
    lscheme = scheme.lower()
    if lscheme in ("sip", "sips"):
        return parse_sip_uri(text, what)
    if lscheme == "tel":
        number, semi, param_text = rest.partition(";")
        if not _TEL_NUMBER_RE.match(number):
            raise SipParseError(f"invalid telephone number in {what}")
        params = _parse_uri_params(param_text, what) if semi else Params()
        return TelUri(number, params, scheme)
    if not _OPAQUE_RE.match(rest):
        raise SipParseError(f"malformed {what}")
    return AbsoluteUri(scheme, rest)
