"""Log observers: JSON lines and text, level filtering, and redaction of secrets."""

from __future__ import annotations

import io
import json
import sys
import types
from typing import Any

import pytest
from twisted.logger import LogBeginner, Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from sbc.app.logging import is_secret_key, make_observer, redact_event, scrub_text, setup_logging

SDES = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzcyAoc2VuZGF8|2^20|1:4"


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def _emit(fmt: str, level: str, emit: Any) -> io.StringIO:
    stream = io.StringIO()
    log = Logger(namespace="sbc.test", observer=make_observer(fmt, level, stream))
    emit(log)
    return stream


def test_json_line_has_time_level_namespace_message_and_fields() -> None:
    """A JSON event is one parseable object with ISO-8601 UTC time and the event's fields."""
    stream = _emit("json", "info", lambda log: log.info("call {call_id} up", call_id="abc", n=3))
    [line] = _lines(stream)
    record = json.loads(line)
    assert record["level"] == "info"
    assert record["namespace"] == "sbc.test"
    assert record["message"] == "call abc up"
    assert record["call_id"] == "abc" and record["n"] == 3
    assert record["time"].endswith("Z") and record["time"][10] == "T"
    assert list(record)[:4] == ["time", "level", "namespace", "message"]


def test_json_time_is_the_event_time() -> None:
    """The time field renders the event's log_time in UTC with milliseconds."""
    stream = io.StringIO()
    observer = make_observer("json", "info", stream)
    observer({"log_time": 0.25, "log_level": LogLevel.info, "log_format": "x",
              "log_namespace": "n"})  # fmt: skip
    assert json.loads(stream.getvalue())["time"] == "1970-01-01T00:00:00.250Z"


def test_reserved_field_names_are_kept_apart() -> None:
    """An event field called message does not overwrite the formatted message."""
    stream = _emit("json", "info", lambda log: log.info("hello", message="field"))
    record = json.loads(stream.getvalue())
    assert record["message"] == "hello" and record["field_message"] == "field"


def test_level_filter() -> None:
    """Events below the configured level are dropped; others are written."""

    def emit(log: Logger) -> None:
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")

    stream = _emit("json", "warn", emit)
    assert [json.loads(x)["message"] for x in _lines(stream)] == ["w", "e"]


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True), ("redis_password", True), ("api_key", True), ("srtpKey", True),
        ("key", True), ("Authorization", True), ("proxy-authorization", True),
        ("proxy_authorization", True), ("credentials", True), ("token", True),
        ("client_secret", True), ("monkey", False), ("call_id", False), ("keyword", False),
        ("log_format", False),
    ],
)  # fmt: skip
def test_secret_key_names(name: str, secret: bool) -> None:
    """Secret field names are recognised by whole words, not substrings."""
    assert is_secret_key(name) is secret


def test_json_output_contains_no_secret() -> None:
    """Secret fields, SDES keys, credential headers and URL passwords never reach the output."""
    sip = 'INVITE sip:a@b SIP/2.0\r\nProxy-Authorization: Digest response="deadbeef"\r\n\r\n'

    def emit(log: Logger) -> None:
        log.info(
            "offer {sdp} via {url} pw={password}",
            sdp=f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {SDES}",
            url="redis://:hunter2@cache:6379",
            password="hunter2",
            authorization='Digest username=alice, response="cafebabe"',
            headers={"Authorization": "Basic YWxpY2U6c2VjcmV0", "Via": "SIP/2.0/TLS x"},
            raw=sip,
            nested=[{"api_key": "k-123"}],
        )

    out = _emit("json", "info", emit).getvalue()
    for secret in ("hunter2", "WVNfX19zZW1jdGwg", "cafebabe", "YWxpY2U6c2VjcmV0", "deadbeef",
                   "k-123"):  # fmt: skip
        assert secret not in out
    record = json.loads(out)
    assert record["password"] == "***"
    assert record["authorization"] == "***"
    assert record["headers"] == {"Authorization": "***", "Via": "SIP/2.0/TLS x"}
    assert record["nested"] == [{"api_key": "***"}]
    assert record["message"] == (
        "offer a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:*** via redis://:***@cache:6379 pw=***"
    )
    assert "Proxy-Authorization: ***" in record["raw"]


def test_secret_in_an_attribute_reached_by_the_format_is_scrubbed() -> None:
    """A format string that reaches into an object cannot leak an SDES key into the message."""
    offer = types.SimpleNamespace(crypto=SDES)
    stream = _emit("text", "info", lambda log: log.info("key {offer.crypto}", offer=offer))
    assert "WVNfX19zZW1jdGwg" not in stream.getvalue()
    assert "key inline:***" in stream.getvalue()


def test_redaction_does_not_touch_the_original_event() -> None:
    """Redaction works on a copy, so other observers still see the real values."""
    event = {"log_format": "x", "password": "hunter2", "d": {"token": "t"}}
    redacted = redact_event(event)
    assert redacted["password"] == "***" and redacted["d"] == {"token": "***"}
    assert event == {"log_format": "x", "password": "hunter2", "d": {"token": "t"}}


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        (f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 {SDES}",
         "a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:***"),
        ("Authorization: Digest x\r\nVia: y", "Authorization: ***\r\nVia: y"),
        ("rediss://u:p@h:1/0 and more", "rediss://u:***@h:1/0 and more"),
        ("sip:alice@example.com", "sip:alice@example.com"),
    ],
)  # fmt: skip
def test_scrub_text(text: str, scrubbed: str) -> None:
    """Secret content is masked inside free text; ordinary SIP URIs are left alone."""
    assert scrub_text(text) == scrubbed


def test_text_line_escapes_control_characters() -> None:
    """A CR/LF inside a logged value cannot start a forged log line."""
    forged = "x\r\n2026-01-01T00:00:00.000Z error [sbc] forged"
    stream = _emit("text", "info", lambda log: log.info("ua {ua}", ua=forged))
    [line] = _lines(stream)
    assert line.endswith(" info  [sbc.test] ua x\\r\\n2026-01-01T00:00:00.000Z error [sbc] forged")


def test_failure_traceback_is_included_and_scrubbed() -> None:
    """log.failure writes the traceback, and secrets in the exception text are masked."""

    def emit(log: Logger) -> None:
        try:
            raise ValueError(f"bad {SDES}")
        except ValueError:
            log.failure("boom", Failure())

    record = json.loads(_emit("json", "info", emit).getvalue())
    assert record["level"] == "critical"
    assert "ValueError: bad inline:***" in record["traceback"]
    assert "WVNfX19zZW1jdGwg" not in record["traceback"]


def test_unserialisable_values_do_not_break_json() -> None:
    """Values JSON cannot encode are written as text; NaN becomes a string."""
    stream = _emit("json", "info", lambda log: log.info("x", obj=object(), nan=float("nan"),
                                                        data=b"\x00bytes"))  # fmt: skip
    record = json.loads(stream.getvalue())
    assert record["obj"].startswith("<object object at")
    assert record["nan"] == "nan"
    assert record["data"] == "\x00bytes"


def test_make_observer_rejects_unknown_format_and_level() -> None:
    """Only the documented formats and levels are accepted."""
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        make_observer("xml", "info", io.StringIO())
    with pytest.raises(ValueError, match="unknown log level 'trace'"):
        make_observer("text", "trace", io.StringIO())


def test_setup_logging_routes_published_events_without_a_reactor() -> None:
    """setup_logging makes the observer the beginner's destination, replaying buffered events."""
    publisher = LogPublisher()
    beginner = LogBeginner(publisher, io.StringIO(), types.SimpleNamespace(stdout=sys.stdout,
                           stderr=sys.stderr), types.SimpleNamespace(showwarning=None))  # fmt: skip
    log = Logger(namespace="sbc.early", observer=publisher)
    log.info("before {token}", token="t0k3n")
    stream = io.StringIO()
    observer = setup_logging("json", "info", stream, beginner=beginner)
    log.info("after")
    messages = [json.loads(x)["message"] for x in _lines(stream)]
    assert messages == ["before ***", "after"]
    assert "t0k3n" not in stream.getvalue()
    assert callable(observer)


def test_stdlib_records_reach_the_redacting_observer() -> None:
    """A standard-library warning from the Redis store (its listener thread) becomes a Twisted
    log event, formatted and redacted like every other: no password reaches the output."""
    import logging as std

    from twisted.logger import globalLogPublisher

    from sbc.app.logging import bridge_stdlib_logging

    out = io.StringIO()
    observer = make_observer("json", "info", out)
    globalLogPublisher.addObserver(observer)
    try:
        bridge_stdlib_logging()
        std.getLogger("sbc.state.redis_store").warning(
            "ban listener: cannot reach %s", "redis+sentinel://u:pw@s1/m?sentinel_password=sp")
    finally:
        globalLogPublisher.removeObserver(observer)
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["namespace"] == "sbc.state.redis_store" and line["level"] == "warn"
    assert "pw" not in line["message"].replace("password", "") and "sp" not in line["message"]
    assert "cannot reach redis+sentinel://u:***@s1/m?sentinel_password=***" in line["message"]
