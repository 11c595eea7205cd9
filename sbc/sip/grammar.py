"""Lexical pieces of RFC 3261 section 25 shared by URIs and header fields.

Everything here works on ``str`` values whose header folding has already been undone (a folded
line becomes a single SP, RFC 3261 7.3.1).  Text outside the ASCII range only ever appears in
quoted strings and opaque header values; the message layer decodes bytes as UTF-8 with
``surrogateescape`` so that every byte survives a parse/serialize round trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from sbc.errors import SipParseError

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")  RFC 3261 25.1
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN_RE = re.compile(rf"[{TOKEN_CHARS}]+\Z")
# word adds "(" ")" "<" ">" ":" "\" DQUOTE "/" "[" "]" "?" "{" "}"  (Call-ID, RFC 3261 25.1)
WORD_RE = re.compile(rf"[{TOKEN_CHARS}()<>:\\\"/\[\]?{{}}]+\Z")
CALL_ID_RE = re.compile(
    rf"[{TOKEN_CHARS}()<>:\\\"/\[\]?{{}}]+(?:@[{TOKEN_CHARS}()<>:\\\"/\[\]?{{}}]+)?\Z"
)
# qdtext excludes CTLs; a quoted-pair may escape any octet but CR and LF (RFC 3261 25.1).
QUOTED_STRING_RE = re.compile(r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"')
CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A generic-param value: token / host / quoted-string.  Hosts add ":" "[" "]" (IPv6, RFC 5118 4.5).
_PARAM_RE = re.compile(
    rf"\s*;\s*([{TOKEN_CHARS}]+)(?:\s*=\s*(\"(?:[^\"\\\r\n]|\\[\x00-\x7f])*\"|[{TOKEN_CHARS}:\[\]]+))?\s*"
)

WSP = " \t"
_SIMPLE_PARAMS_RE = re.compile(rf"(?:;[{TOKEN_CHARS}]+(?:=[{TOKEN_CHARS}:\[\]]+)?)*")
_SIMPLE_PARAM_RE = re.compile(rf";([{TOKEN_CHARS}]+)(?:=([{TOKEN_CHARS}:\[\]]+))?")


class Params:
    """An ordered multimap of ``;name[=value]`` parameters with case-insensitive names.

    Values are kept exactly as written (escaped, quoted); a valueless parameter has ``None``.
    Order and spelling survive serialization so untouched headers round-trip byte for byte.

    The items are held in a tuple that mutators replace whole: a tuple of string pairs is one
    object fewer than a list and the garbage collector stops tracking it, which matters for the
    many parameter lists a busy gateway keeps alive in lingering transactions.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str | None]] = ()) -> None:
        self._items: tuple[tuple[str, str | None], ...] = tuple(items)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        lname = name.lower()
        return any(n.lower() == lname for n, _ in self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Params):
            return NotImplemented
        return self._items == other._items

    def __repr__(self) -> str:
        return f"Params({list(self._items)!r})"

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        for n, v in self._items:
            if n == lname or n.lower() == lname:
                return v
        return default

    def set(self, name: str, value: str | None = None) -> None:
        """Replace the first parameter called ``name`` (dropping any others) or append it."""
        lname = name.lower()
        out: list[tuple[str, str | None]] = []
        done = False
        for n, v in self._items:
            if n.lower() == lname:
                if not done:
                    out.append((n, value))
                    done = True
            else:
                out.append((n, v))
        if not done:
            out.append((name, value))
        self._items = tuple(out)

    def remove(self, name: str) -> None:
        lname = name.lower()
        self._items = tuple((n, v) for n, v in self._items if n.lower() != lname)

    def copy(self) -> Params:
        return Params(self._items)

    def to_str(self) -> str:
        return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in self._items)


def parse_params(text: str, pos: int, what: str) -> tuple[Params, int]:
    """Parse ``*( SEMI generic-param )`` from ``text[pos:]``; stop at a comma or the end.

    Returns the parameters and the position after them.  An empty parameter (``;;``) or a
    value with characters no grammar allows is a 400.
    """
    n = len(text)
    # Fast path: the common unquoted ";name=value;flag" run, validated and split in two C calls.
    m = _SIMPLE_PARAMS_RE.match(text, pos)
    if m is not None and m.end() == n:
        return Params([(k, v or None) for k, v in _SIMPLE_PARAM_RE.findall(text, pos)]), n
    items: list[tuple[str, str | None]] = []
    while pos < n:
        # skip whitespace before the next ';' or ','
        while pos < n and text[pos] in WSP:
            pos += 1
        if pos >= n or text[pos] == ",":
            break
        if text[pos] != ";":
            raise SipParseError(f"unexpected {text[pos]!r} in {what} parameters")
        m = _PARAM_RE.match(text, pos)
        if m is None:
            raise SipParseError(f"malformed parameter in {what}")
        items.append((m.group(1), m.group(2)))
        pos = m.end()
    return Params(items), pos


def split_commas(value: str, what: str) -> list[str]:
    """Split a header value at top-level commas (not inside quotes or angle brackets).

    Empty elements (``a,,b`` or a trailing comma) are a 400: RFC 3261 7.3.1 lists need values.
    """
    if "," not in value:
        return [value]
    parts: list[str] = []
    start = 0
    i = 0
    n = len(value)
    in_angle = False
    while i < n:
        c = value[i]
        if c == '"' and not in_angle:
            m = QUOTED_STRING_RE.match(value, i)
            if m is None:
                raise SipParseError(f"unterminated quoted string in {what}")
            i = m.end()
            continue
        if c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    for p in parts:
        if not p.strip(WSP):
            raise SipParseError(f"empty element in {what} list")
    return parts


def unquote(quoted: str) -> str:
    """The content of a quoted-string with its quoted-pairs resolved."""
    inner = quoted[1:-1]
    if "\\" not in inner:
        return inner
    return re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)


def quote(text: str) -> str:
    """A quoted-string for ``text`` (backslash and DQUOTE escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_token(text: str) -> bool:
    return TOKEN_RE.match(text) is not None
