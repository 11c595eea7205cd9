"""Root errors of sbc.

Two families matter to the rest of the code:

* :class:`SipParseError` -- the peer sent something we cannot accept.  It carries the SIP status
  code to answer with (``status``) or ``None`` when the message deserves no answer and is only
  dropped and counted (malformed responses, garbage that salvages no Via).  ``fatal`` tells a
  stream transport that framing is lost and the connection must be closed (RFC 3261 18.3).
* :class:`ConfigError` -- a configuration or rule file is wrong.  It carries the file, the
  1-based line and column, the key path and what was expected, and renders as
  ``file:line:col: key.path: message (expected ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from sbc.sip.message import Salvage


class SbcError(Exception):
    """Base class of every error sbc raises on purpose."""


class SipParseError(SbcError):
    """A SIP message (or part of one) that cannot be accepted.

    ``status`` is the response code to send (400, 413, 414, 416, 420, 483, 505, 513) or ``None``
    for a silent, counted drop.  ``headers`` are extra headers the response must carry (the
    Unsupported list of a 420).  ``salvage`` holds the headers recovered from a broken request so
    that a response can still be built; ``fatal`` means a stream's framing is lost.
    """

    def __init__(
        self,
        message: str,
        status: int | None = 400,
        *,
        salvage: Salvage | None = None,
        fatal: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.salvage = salvage
        self.fatal = fatal
        self.headers = headers  # extra response headers, e.g. Unsupported for a 420

    def __repr__(self) -> str:
        return f"SipParseError({self.message!r}, status={self.status!r}, fatal={self.fatal!r})"


class SdpError(SbcError):
    """An SDP body (RFC 8866) or one of its attributes (e.g. RFC 4568 a=crypto) is malformed.

    The signalling layer answers an offer it cannot parse with ``status`` (488 by default).
    """

    def __init__(self, message: str, status: int = 488) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a text file: 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class ConfigError(SbcError):
    """A configuration or rule file is invalid.

    Rendered as ``file:line:col: key.path: message (expected ...)`` so an operator can jump to it.
    """

    def __init__(
        self,
        message: str,
        *,
        location: Location | None = None,
        path: str = "",
        expected: str = "",
    ) -> None:
        self.message = message
        self.location = location
        self.path = path
        self.expected = expected
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.location is not None:
            parts.append(str(self.location))
        if self.path:
            parts.append(self.path)
        text = ": ".join(parts + [self.message])
        if self.expected:
            text += f" (expected {self.expected})"
        return text
