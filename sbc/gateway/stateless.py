"""Stateless answers: what sbc says before any transaction or dialog exists.

Theory of operation
-------------------
Every message a transport receives passes through here first.  The core takes bytes (or a
framed message, or a framing error) and the source address, and returns what to send back.  It
answers what deserves a stateless answer and counts everything else:

* malformed requests get the status their :class:`~sbc.errors.SipParseError` carries (400, 413,
  414, 505, 513), built from what could be salvaged; malformed responses and requests without a
  readable Via are dropped and counted (RFC 3261 18.1.2, 18.2.1);
* well-formed requests are checked (:func:`~sbc.sip.message.check_request`: 416, 420, 483);
* OPTIONS is answered 200 with what sbc supports (RFC 3261 11.2);
* ACK is absorbed; responses matching no transaction are dropped (RFC 3261 18.1.2);
* any other request gets ``503 Service Unavailable`` with Retry-After: this build has no routing
  towards a PBX yet (the B2BUA comes with the signalling-path work), and saying so honestly is
  better than silence that makes clients retransmit.

Responses go back to the source address and port, and the top Via gets ``received``/``rport``
per RFC 3261 18.2.1 and RFC 3581 so a NATed client can match them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from sbc.errors import SipParseError
from sbc.sip.message import (
    DEFAULT_LIMITS,
    Limits,
    Request,
    Response,
    Salvage,
    build_response,
    check_request,
    parse_message,
)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
RETRY_AFTER = 60  # seconds: how long a client should wait before trying a request again


def stamp_received(via: str, host: str, port: int) -> str:
    """Add ``received`` (RFC 3261 18.2.1) and fill a valueless ``rport`` (RFC 3581 4) on a Via.

    ``via`` is one Via value; anything already present is left alone except an empty rport.
    """
    head, _, params = via.partition(";")
    items = [p for p in params.split(";") if p] if params else []
    names = [p.split("=", 1)[0].strip().lower() for p in items]
    out = []
    for item, name in zip(items, names, strict=True):
        out.append(f"rport={port}" if name == "rport" and "=" not in item else item)
    if "received" not in names:
        out.append(f"received={host}")
    return ";".join([head.rstrip(), *out])


class StatelessCore:
    """The stateless answering machine.  Pure: no sockets, no clock, ids injected."""

    def __init__(
        self,
        *,
        new_tag: Callable[[], str],
        limits: Limits = DEFAULT_LIMITS,
        supported: frozenset[str] = frozenset(),
    ) -> None:
        self.limits = limits
        self.new_tag = new_tag
        self.supported = supported
        self.counters: Counter[str] = Counter()

    def receive_datagram(self, data: bytes, source: tuple[str, int]) -> bytes | None:
        """One UDP datagram in; the bytes to send back to ``source`` (or None)."""
        try:
            msg = parse_message(data, self.limits)
        except SipParseError as err:
            return self.receive_error(err, source)
        return self.receive_message(msg, source)

    def receive_error(self, err: SipParseError, source: tuple[str, int]) -> bytes | None:
        """A message that could not be parsed; answer it if it deserves an answer."""
        if err.status is None or err.salvage is None:
            self.counters["malformed.dropped"] += 1
            return None
        if err.salvage.method == "ACK":
            self.counters["malformed.dropped"] += 1  # never answer an ACK (RFC 3261 17.2.1)
            return None
        self.counters["malformed.answered"] += 1
        return self._answer(err.salvage, err.status, source, list(err.headers))

    def receive_message(self, msg: Request | Response, source: tuple[str, int]) -> bytes | None:
        """A well-formed message; returns the stateless answer, if any."""
        if isinstance(msg, Response):
            self.counters["response.stray"] += 1
            return None
        self.counters[f"request.{msg.method}"] += 1
        if msg.method == "ACK":
            return None
        try:
            check_request(msg, self.supported)
        except SipParseError as err:
            self.counters["rejected.checks"] += 1
            return self._answer(msg, err.status or 400, source, list(err.headers))
        if msg.method == "OPTIONS":
            return self._answer(msg, 200, source, [
                ("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Language", "en")])
        if msg.method == "CANCEL":
            return self._answer(msg, 481, source, [])
        return self._answer(msg, 503, source, [("Retry-After", str(RETRY_AFTER))])

    def _answer(
        self,
        source_msg: Request | Salvage,
        status: int,
        source: tuple[str, int],
        extra: list[tuple[str, str]],
    ) -> bytes:
        resp = build_response(source_msg, status, to_tag=self.new_tag(), extra=extra)
        vias = resp.headers.get_all("via")
        if vias:
            first, sep, rest = vias[0].partition(",")
            vias[0] = stamp_received(first, source[0], source[1]) + sep + rest
            resp.headers.replace_all("Via", vias)
        self.counters[f"answered.{status}"] += 1
        return resp.to_bytes()
