"""Log output through ``twisted.logger``: JSON lines or human text, filtered by level, redacted.

Every event passes three stages (built by :func:`make_observer`):

1. a level filter (``debug``, ``info``, ``warn``, ``error``);
2. redaction (:func:`redact_event`) on a copy of the event -- other observers still see the
   original: fields whose *name* says they hold a secret (password, secret, token, key,
   authorization, proxy-authorization, credentials...) become ``***``, and secret *content* in
   any string -- RFC 4568 ``inline:`` SDES key material, ``Authorization:`` and
   ``Proxy-Authorization:`` header values, passwords in URLs -- is masked, in nested dicts and
   lists too; the final message is scrubbed again because a format string may reach into an
   object's attributes;
3. formatting: one JSON object per line (``time`` ISO-8601 UTC, ``level``, ``namespace``,
   ``message``, then the event's own fields) or one text line with control characters escaped so
   that a peer cannot forge log lines with CR/LF in a SIP header.

:func:`setup_logging` installs the observer as the process's log destination; tests pass their
own :class:`~twisted.logger.LogBeginner` (or call :func:`make_observer`) and need no reactor.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol, cast

from twisted import logger as tlogger
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogBeginner,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from zope.interface import implementer

from sbc.config.secrets import MASK, scrub_urls

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warn", "error")

_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "tokens",
        "key",
        "keys",
        "authorization",
        "credential",
        "credentials",
        "cookie",
    }
)
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")

# RFC 4568 6.1: key-params = "inline:" key-salt ["|" lifetime] ["|" MKI ":" length]
_INLINE_KEY = re.compile(r"(?i)(inline:)[A-Za-z0-9+/=|:^_-]+")
# A SIP/HTTP credential header, written long or as a raw header line inside a message.
_AUTH_HEADER = re.compile(r"(?im)^([ \t]*(?:proxy-)?authorization[ \t]*:)[^\r\n]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\r|\n")

# Keys that legacy (twisted.python.log) events carry and that the formatted message covers.
_LEGACY_KEYS = frozenset(
    {"message", "time", "system", "format", "isError", "printed", "why", "failure"}
)
_RESERVED = ("time", "level", "namespace", "message")
_MAX_DEPTH = 8


def is_secret_key(name: object) -> bool:
    """Does a field called ``name`` hold a secret?  Matched on words, so ``api_key``,
    ``srtpKey``, ``Proxy-Authorization`` and ``redis_password`` do, ``monkey`` does not."""
    if not isinstance(name, str) or name.startswith("log_"):
        return False
    words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
    return any(word in _SECRET_WORDS for word in words)


def scrub_text(text: str) -> str:
    """``text`` with SDES inline keys, credential header values and URL passwords masked."""
    if "inline:" in text.lower():
        text = _INLINE_KEY.sub(lambda m: m.group(1) + MASK, text)
    if "authorization" in text.lower():
        text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    if "@" in text:
        text = scrub_urls(text)
    return text


def redact(value: Any, _depth: int = 0) -> Any:
    """``value`` with secrets masked: strings scrubbed, containers copied and walked."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, bytes | bytearray):
        return scrub_text(bytes(value).decode("utf-8", "backslashreplace"))
    if _depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: MASK if is_secret_key(k) else redact(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact(v, _depth + 1) for v in value]
        return items if not isinstance(value, tuple) else tuple(items)
    return value


def redact_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a log event with secret fields and secret content masked.

    ``log_*`` bookkeeping is kept as is except ``log_format``, whose literal text is scrubbed
    (``log.info(f"... {sdp}")`` puts content straight into the format).
    """
    result: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_"):
            result[key] = (
                scrub_text(value) if key == "log_format" and isinstance(value, str) else value
            )
        elif is_secret_key(key):
            result[key] = MASK
        else:
            result[key] = redact(value)
    return result


def _iso_time(event: Mapping[str, Any]) -> str:
    when = event.get("log_time")
    if not isinstance(when, int | float):
        when = datetime.datetime.now(datetime.UTC).timestamp()
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _level_name(event: Mapping[str, Any]) -> str:
    return str(getattr(event.get("log_level"), "name", "info"))


def _message(event: Mapping[str, Any]) -> str:
    return scrub_text(formatEvent(dict(event)))


def _traceback(event: Mapping[str, Any]) -> str | None:
    failure = event.get("log_failure")
    if failure is None:
        return None
    try:
        text = failure.getTraceback()
    except Exception:  # a broken failure must not break logging
        text = repr(failure)
    return scrub_text(text)


def _is_legacy(event: Mapping[str, Any]) -> bool:
    return "isError" in event or event.get("log_namespace") == "log_legacy"


def _jsonable(value: Any, _depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {str(k): _jsonable(v, _depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [_jsonable(v, _depth + 1) for v in value]
    try:
        text = str(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    return scrub_text(text)


def format_json(event: Mapping[str, Any]) -> str:
    """One JSON object (no newline) for a redacted event."""
    out: dict[str, Any] = {
        "time": _iso_time(event),
        "level": _level_name(event),
        "namespace": event.get("log_namespace", "-"),
        "message": _message(event),
    }
    legacy = _is_legacy(event)
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_"):
            continue
        if legacy and key in _LEGACY_KEYS:
            continue
        name = f"field_{key}" if key in _RESERVED else key
        out[name] = _jsonable(value)
    traceback = _traceback(event)
    if traceback is not None:
        out["traceback"] = traceback
    return json.dumps(out, ensure_ascii=False, default=str)


def _escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


def format_text(event: Mapping[str, Any]) -> str:
    """One human line (plus an indented traceback if any) for a redacted event."""
    line = (
        f"{_iso_time(event)} {_level_name(event):<5} [{event.get('log_namespace', '-')}] "
        f"{_escape_controls(_message(event))}"
    )
    traceback = _traceback(event)
    if traceback is not None:
        line += "\n" + "\n".join("    " + t for t in traceback.rstrip("\n").splitlines())
    return line


class Writable(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


@implementer(ILogObserver)
class StreamObserver:
    """Redact, format and write each event to ``stream`` as one line (never raises)."""

    def __init__(self, stream: Writable, formatter: Callable[[Mapping[str, Any]], str]) -> None:
        self.stream = stream
        self.formatter = formatter

    def __call__(self, event: Mapping[str, Any]) -> None:
        try:
            text = self.formatter(redact_event(event))
        except Exception as exc:  # never let one odd event kill logging
            text = f"<log event could not be formatted: {type(exc).__name__}>"
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # closed or broken stream: nowhere left to report it
            pass


def make_observer(
    fmt: str = "text", level: str = "info", stream: IO[str] | None = None
) -> ILogObserver:
    """A level-filtered, redacting observer writing ``fmt`` (text or json) lines to ``stream``
    (default: standard error at the time of each write)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (expected one of: {', '.join(LEVELS)})")
    formatter = format_json if fmt == "json" else format_text
    target: Writable = stream if stream is not None else _StderrProxy()
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    writer = cast(ILogObserver, StreamObserver(target, formatter))
    return cast(ILogObserver, FilteringLogObserver(writer, [cast(Any, predicate)]))


class _StderrProxy:
    """Writes to whatever ``sys.stderr`` is now (pytest and daemons replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(
    fmt: str = "text",
    level: str = "info",
    stream: IO[str] | None = None,
    *,
    beginner: LogBeginner | None = None,
) -> ILogObserver:
    """Start logging to ``stream`` in ``fmt`` at ``level`` and return the observer.

    The observer becomes the only destination of ``beginner`` (default: Twisted's global one,
    which also replays events buffered since startup and routes ``warnings``); standard I/O is
    left alone.  No reactor is needed.
    """
    observer = make_observer(fmt, level, stream)
    target = beginner if beginner is not None else tlogger.globalLogBeginner
    target.beginLoggingTo([observer], discardBuffer=False, redirectStandardIO=False)
    if beginner is None:
        bridge_stdlib_logging()
    return observer


class _StdlibBridge(logging.Handler):
    """Standard-library log records (redis-py, the Redis store's listener thread) into the
    Twisted logger, so they get the same format, level filter and redaction."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string in a library: still say something
            text = str(record.msg)
        level = (tlogger.LogLevel.error if record.levelno >= logging.ERROR
                 else tlogger.LogLevel.warn if record.levelno >= logging.WARNING
                 else tlogger.LogLevel.info if record.levelno >= logging.INFO
                 else tlogger.LogLevel.debug)
        tlogger.Logger(namespace=record.name).emit(level, "{text}", text=text)


def bridge_stdlib_logging() -> None:
    """Route the ``sbc`` and ``redis`` standard-library loggers into the Twisted logger
    (once), instead of plain text on stderr."""
    for name in ("sbc", "redis"):
        std = logging.getLogger(name)
        if not any(isinstance(h, _StdlibBridge) for h in std.handlers):
            std.addHandler(_StdlibBridge())
            std.setLevel(logging.INFO)
            std.propagate = False
