"""Cutting SIP messages out of a byte stream (TCP, TLS): RFC 3261 18.3 and RFC 5626 3.5.1.

Theory of operation
-------------------
A :class:`StreamFramer` is fed bytes as they arrive (``feed``) and asked for events
(``next_event``) until it answers :data:`NEED_DATA`, in the manner of h11.  Events are a parsed
:class:`~sbc.sip.message.Request` / :class:`~sbc.sip.message.Response`, :data:`PING` (a CRLFCRLF
keepalive, to be answered with a single CRLF pong), or :data:`PONG` (a lone CRLF, the answer to
our own ping).

A message is framed by its header section and Content-Length, which is mandatory on streams.
Problems come out as :class:`~sbc.errors.SipParseError`:

* ``fatal=True``: framing is lost (no/negative/duplicated Content-Length, a head or body over
  the caps); answer if ``status`` says so, then close the connection.  The framer refuses
  further use.
* ``fatal=False``: the message was cut out cleanly but is malformed; answer or drop it and carry
  on with the next one.

Memory is bounded: the framer never holds more than one message's worth of bytes beyond what
the caps allow; the transport's own ``max_buffered_bytes`` bounds what it feeds.
"""

from __future__ import annotations

from sbc.errors import SipParseError
from sbc.sip.message import DEFAULT_LIMITS, Head, Limits, Request, Response, parse_head


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
PING = _Sentinel("PING")  # RFC 5626 3.5.1 double-CRLF keepalive: answer with CRLF_PONG
PONG = _Sentinel("PONG")  # a lone CRLF: the peer's answer to our ping
CRLF_PONG = b"\r\n"

StreamEvent = Request | Response | _Sentinel


class StreamFramer:
    """Incremental SIP framing over a reliable byte stream."""

    __slots__ = ("limits", "_buf", "_scan", "_head", "_head_len", "_dead")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buf = bytearray()
        self._scan = 0  # where the search for CRLFCRLF resumes
        self._head: Head | None = None  # parsed head waiting for its body
        self._head_len = 0  # bytes of head + CRLFCRLF before the body
        self._dead = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._dead:
            raise SipParseError("stream framing already failed", None, fatal=True)
        self._buf += data

    def next_event(self) -> StreamEvent:
        """The next event, or :data:`NEED_DATA`; raises :class:`SipParseError` (see module doc)."""
        if self._dead:
            raise SipParseError("stream framing already failed", None, fatal=True)
        try:
            return self._next()
        except SipParseError as e:
            if e.fatal:
                self._dead = True
                self._buf.clear()
            raise

    def _next(self) -> StreamEvent:
        buf = self._buf
        limits = self.limits
        if self._head is None:
            # Keepalives between messages (RFC 5626 3.5.1; RFC 3261 7.5 leading CRLFs).
            if buf[:1] == b"\r":
                if buf.startswith(b"\r\n\r\n"):
                    del buf[:4]
                    self._scan = 0
                    return PING
                if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                    return NEED_DATA  # could still become a ping
                if buf.startswith(b"\r\n"):
                    del buf[:2]
                    self._scan = 0
                    return PONG
            if not buf:
                return NEED_DATA
            end = buf.find(b"\r\n\r\n", self._scan)
            if end < 0:
                if len(buf) > limits.max_message_bytes:
                    raise self._too_large_head()
                self._scan = max(0, len(buf) - 3)
                return NEED_DATA
            if end > limits.max_message_bytes:
                raise self._too_large_head()
            head = parse_head(bytes(buf[:end]), limits)
            if head.content_length is None:
                # RFC 3261 18.3: Content-Length is mandatory on stream transports.
                raise head.fail(SipParseError("Content-Length required on a stream", 400,
                                              fatal=True), framing=True)
            if head.content_length > limits.max_body_bytes:
                raise head.fail(SipParseError("message body too large", 413, fatal=True),
                                framing=True)
            if end + 4 + head.content_length > limits.max_message_bytes:
                raise head.fail(SipParseError("message too large", 513, fatal=True),
                                framing=True)
            self._head = head
            self._head_len = end + 4
        head = self._head
        assert head.content_length is not None
        total = self._head_len + head.content_length
        if len(buf) < total:
            return NEED_DATA
        body = bytes(buf[self._head_len : total])
        del buf[:total]
        self._head = None
        self._scan = 0
        if head.error is not None:
            raise head.error
        msg = head.start
        msg.body = body
        return msg

    def _too_large_head(self) -> SipParseError:
        """513 for a header section over the cap, answered only if a Via can be salvaged from
        the complete lines received so far."""
        cap = self.limits.max_message_bytes
        last = self._buf.rfind(b"\r\n", 0, cap)
        head = parse_head(bytes(self._buf[: max(last, 0)]), self.limits)
        return head.fail(SipParseError("header section too large", 513, fatal=True),
                         framing=True)
