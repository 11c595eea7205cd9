"""The fast parsing paths for URIs, name-addrs and Vias agree with the general parsers."""

import contextlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sbc.errors import SipParseError
from sbc.sip.headers import (
    parse_name_addr,
    parse_name_addr_general,
    parse_via_value,
    parse_via_value_general,
)
from sbc.sip.message import parse_message
from sbc.sip.uri import parse_sip_uri, parse_sip_uri_general

FIXTURES = Path(__file__).parent.parent / "fixtures"


def outcome(fn, text):
    try:
        value = fn(text)
    except SipParseError as e:
        return ("error", e.status)
    return ("ok", repr(value), str(value))


def _samples():
    values = {"via": set(), "na": set(), "uri": set()}
    for path in [*FIXTURES.glob("sip-corpus/*.sip"), *FIXTURES.glob("sip-torture/*.dat")]:
        try:
            msg = parse_message(path.read_bytes())
        except SipParseError:
            continue
        values["via"].update(msg.headers.values("via"))
        for key in ("from", "to", "contact", "route", "record-route"):
            with contextlib.suppress(SipParseError):
                values["na"].update(msg.headers.values(key))
        if hasattr(msg, "uri"):
            values["uri"].add(str(msg.uri))
    return {k: sorted(v) for k, v in values.items()}


SAMPLES = _samples()
MUTATIONS = ["", " ", ";", ";;", "=", ":", "@", "<", ">", '"', "%", "%4", "[", "]", "?", ",",
             "\t", "0", "99999", "-", ".", "a", "\x00", "é"]


def _mutants(text):
    for i in range(0, len(text) + 1, max(1, len(text) // 12)):
        for m in MUTATIONS:
            yield text[:i] + m + text[i:]
            yield text[:i] + m + text[i + 1:]


def test_samples_exist():
    """The differential tests run over real values from the fixtures."""
    assert len(SAMPLES["via"]) > 20 and len(SAMPLES["na"]) > 40 and len(SAMPLES["uri"]) > 20


def test_fast_and_general_agree_on_fixture_values_and_mutants():
    """For every fixture value and thousands of mutants, both paths give the same result."""
    pairs = [("via", parse_via_value, parse_via_value_general),
             ("na", parse_name_addr, parse_name_addr_general),
             ("uri", parse_sip_uri, parse_sip_uri_general)]
    checked = 0
    for kind, fast, general in pairs:
        for value in SAMPLES[kind]:
            for text in _mutants(value):
                if kind == "uri" and not text.lower().startswith("sip"):
                    continue
                assert outcome(fast, text) == outcome(general, text), text
                checked += 1
    assert checked > 5000


ALPHABET = st.sampled_from(list("sipSIP:@;=<>\"., \t-_%[]?&+$/0123456789abcdefz!~*'()"))


@given(st.text(ALPHABET, max_size=60))
def test_fast_and_general_agree_on_random_text(tail):
    """Random text after a plausible prefix gets the same answer from both paths."""
    for fast, general, prefix in [
        (parse_sip_uri, parse_sip_uri_general, "sip:"),
        (parse_name_addr, parse_name_addr_general, "<sip:"),
        (parse_via_value, parse_via_value_general, "SIP/2.0/UDP "),
    ]:
        text = prefix + tail
        assert outcome(fast, text) == outcome(general, text)
