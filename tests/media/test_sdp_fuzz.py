"""Hypothesis fuzzing of the SDP and a=crypto parsers (the h11 invariant).

Any input either parses or raises SdpError -- never another exception -- and whatever parses
serializes to bytes that parse back to an equal description.  Profiles (``fast`` by default,
``deep`` with HYPOTHESIS_PROFILE=deep) are registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import base64
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from sbc.errors import SdpError
from sbc.media.sdes import SRTP_SUITES, CryptoAttribute, parse_crypto
from sbc.media.sdp import SessionDescription, parse_sdp

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sdp"
CORPUS = sorted(
    (p.read_bytes() for p in [*FIXTURES.glob("*.sdp"), *FIXTURES.glob("seeds-*/*")]),
    key=len,
)
HEAD = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n"

# Fragments that steer random input towards the interesting branches of the parser.
CLEAN_TOKENS = [
    b" ", b"  ", b"=", b":", b"/", b"|", b";", b"^", b"0", b"8", b"101", b"127", b"128", b"4000",
    b"65535", b"65536", b"2^20", b"2^48", b"1:4", b"IN", b"IP4", b"IP6", b"192.0.2.1", b"::",
    b"233.252.0.1", b"RTP/AVP", b"RTP/SAVP", b"UDP/TLS/RTP/SAVPF", b"audio", b"PCMU/8000",
    b"opus/48000/2", b"inline:", b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
    b"AES_CM_128_HMAC_SHA1_80", b"AEAD_AES_256_GCM", b"KDR=1", b"WSH=64", b"FEC_KEY=inline:",
    b"UNENCRYPTED_SRTP", b"1h", b"-1h", b"7d", b"AS:64", b"20", b"0.5", b"\xc3\xa9",
]  # fmt: skip
DIRTY_TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b"\t", b"\xff", b"\x7f", b"\xef\xbb\xbf"]
TOKENS = CLEAN_TOKENS + DIRTY_TOKENS + [
    b"a=crypto:1 ", b"a=rtpmap:", b"a=fmtp:", b"a=rtcp:", b"a=ptime:", b"a=sendonly",
    b"a=recvonly", b"a=rtcp-mux", b"m=audio 4000 RTP/AVP 0\r\n", b"c=IN IP4 233.252.0.1/127/2",
    b"c=IN IP6 ff1e::1/3", b"o=- 1 1 IN IP4 h\r\n", b"v=0\r\n", b"s=-\r\n", b"t=0 0\r\n",
]  # fmt: skip
# Weighted by repetition: mostly the lines an SBC reads, sometimes the rare and invalid ones.
LINE_TYPES = "aaaaaaaaammmmccccbbtkiuxyvoszrpeVA1 "
ATTRIBUTES = [
    "rtpmap", "fmtp", "ptime", "maxptime", "rtcp", "crypto", "sendrecv", "sendonly", "recvonly",
    "inactive", "rtcp-mux", "ice-pwd", "fingerprint", "x-vendor", "",
]  # fmt: skip


@st.composite
def mutated_corpus(draw: st.DrawFn) -> bytes:
    """A fixture or seed with a few byte flips, truncations, duplications, deletions, splices."""
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "dup", "drop", "splice", "insert"]))
        position = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            index = min(position, len(data) - 1)
            data[index] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[position:]
        elif op in ("dup", "drop"):
            lines = bytes(data).split(b"\n")
            index = min(position, len(lines) - 1)
            if op == "dup":
                lines.insert(index, lines[index])
            else:
                del lines[index]
            data = bytearray(b"\n".join(lines))
        elif op == "splice":
            other = draw(st.sampled_from(CORPUS))
            cut = draw(st.integers(0, len(other)))
            data = data[:position] + other[cut:]
        else:
            fragment = draw(st.sampled_from(TOKENS) | st.binary(max_size=6))
            data[position:position] = fragment
    return bytes(data)


@st.composite
def line_soup(draw: st.DrawFn) -> bytes:
    """A valid-looking head followed by lines of random types and token-built values."""
    lines = [HEAD]
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(LINE_TYPES))
        if kind == "a":
            name = draw(st.sampled_from(ATTRIBUTES)).encode()
            value = b"".join(draw(st.lists(st.sampled_from(CLEAN_TOKENS), max_size=6)))
            text = b"a=" + name + (b":" + value if draw(st.booleans()) else b"")
        else:
            value = b" ".join(draw(st.lists(st.sampled_from(CLEAN_TOKENS), max_size=6)))
            text = kind.encode() + b"=" + value
        if draw(st.integers(0, 9)) == 0:
            cut = draw(st.integers(0, len(text)))
            text = text[:cut] + draw(st.sampled_from(DIRTY_TOKENS)) + text[cut:]
        lines.append(text + draw(st.sampled_from([b"\r\n", b"\n"])))
    return b"".join(lines)


SUITE_LENGTHS = {name: suite.key_salt_length for name, suite in SRTP_SUITES.items()}
SUITE_LENGTHS["VENDOR_SUITE"] = 30


@st.composite
def crypto_value(draw: st.DrawFn, tag: int) -> str:
    """A mostly valid a=crypto value: right-length keys, lifetimes and MKIs near their limits."""
    suite = draw(st.sampled_from(sorted(SUITE_LENGTHS)))
    length = SUITE_LENGTHS[suite] + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
    key = base64.b64encode(draw(st.binary(min_size=length, max_size=length))).decode()
    text = f"inline:{key}"
    if draw(st.booleans()):
        text += draw(st.sampled_from(["|2^20", "|2^31", "|2^48", "|2^49", "|1", "|0", "|1024"]))
    if draw(st.booleans()):
        text += f"|{draw(st.integers(0, 300))}:{draw(st.integers(0, 130))}"
    params = draw(
        st.lists(
            st.sampled_from(["KDR=0", "KDR=24", "KDR=25", "UNENCRYPTED_SRTCP", "WSH=64", "-X"]),
            max_size=2,
        )
    )
    return " ".join([str(tag), suite, text, *params])


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """A description assembled field by field from valid and boundary values."""
    ip4 = st.sampled_from(["192.0.2.1", "0.0.0.0", "233.252.0.1/127", "233.252.0.1/300/2"])
    ip6 = st.sampled_from(["2001:db8::1", "::", "ff1e::1/3", "ff1e::1/3/2"])
    connection = st.one_of(ip4.map("c=IN IP4 {}".format), ip6.map("c=IN IP6 {}".format))
    version = draw(st.integers(0, 2**70))
    lines = ["v=0", f"o=- {draw(st.integers(0, 2**64))} {version} IN IP4 192.0.2.1", "s=-"]
    if draw(st.booleans()):
        lines.append(draw(connection))
    lines.append("t=0 0")
    if draw(st.booleans()):
        lines.append("a=" + draw(st.sampled_from(["sendonly", "recvonly", "inactive", "x:y"])))
    for _ in range(draw(st.integers(0, 3))):
        port = draw(st.sampled_from([0, 9, 4000, 65535, 65536]))
        count = draw(st.sampled_from(["", "", "/2", "/0"]))
        proto = draw(st.sampled_from(["RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", "TCP/MSRP"]))
        formats = draw(st.lists(st.integers(0, 130).map(str) | st.just("*"), max_size=4))
        lines.append(" ".join([f"m=audio {port}{count} {proto}", *formats]))
        if draw(st.booleans()):
            lines.append(draw(connection))
        for tag in range(draw(st.integers(0, 6))):
            lines.append(
                "a="
                + draw(
                    st.one_of(
                        st.tuples(
                            st.integers(0, 130), st.sampled_from(["8000", "48000/2", "0"])
                        ).map(lambda t: f"rtpmap:{t[0]} X/{t[1]}"),
                        st.integers(0, 130).map(lambda pt: f"fmtp:{pt} a=b;c=d"),
                        st.sampled_from(["ptime:20", "ptime:0.5", "maxptime:150", "ptime:0"]),
                        st.sampled_from(["rtcp:4001", "rtcp:9 IN IP4 0.0.0.0", "rtcp:70000"]),
                        st.sampled_from(["rtcp-mux", "sendrecv", "sendonly", "inactive"]),
                        crypto_value(tag + draw(st.integers(0, 1))).map("crypto:{}".format),
                    )
                )
            )
    return "".join(line + "\r\n" for line in lines).encode()


def exercise(description: SessionDescription) -> None:
    """Read every typed view and apply every mutator: none may raise on a parsed description."""
    assert parse_sdp(description.to_bytes()) == description
    repr(description)
    _ = (description.origin, description.connection, description.timing, description.bandwidths)
    _ = (description.direction, description.unknown_lines, description.information)
    for media in description.media:
        _ = (media.media_line, media.payload_types, media.rejected, media.connections)
        _ = (media.resolved_connection, media.bandwidths, media.direction, media.rtpmaps)
        _ = (media.fmtps, media.ptime, media.maxptime, media.rtcp, media.rtcp_mux, media.key)
        for pt in media.payload_types:
            _ = (media.rtpmap(pt), media.fmtp(pt))
        for crypto in media.crypto:
            assert parse_crypto(crypto.to_str()) == crypto
            _ = (crypto.fec_key, crypto.kdr, crypto.wsh, crypto.master_key, repr(crypto))
    copy = description.copy()
    copy.set_origin(username="sbc", unicast_address="2001:db8::1")
    copy.bump_version()
    copy.set_connection_address("203.0.113.1")
    for media in copy.media:
        media.set_port(40000)
        media.set_direction("sendonly")
        media.set_crypto(media.crypto[:1])
        media.set_rtcp(40001, "203.0.113.1")
    copy.remove_unknown_lines()
    assert parse_sdp(copy.to_bytes()) == copy


def check(data: bytes) -> None:
    try:
        description = parse_sdp(data)
    except SdpError:
        return
    exercise(description)


@given(st.binary(max_size=2048))
def test_random_bytes_parse_or_raise_sdp_error(data: bytes) -> None:
    """Random bytes either parse (and round-trip) or raise SdpError, nothing else."""
    check(data)


@given(mutated_corpus())
@example(HEAD + b"m=audio 4000 RTP/AVP 0\r\na=ptime:1.5\r\n")
@example(HEAD + b"a=crypto:1 X inline:AA\r\n")
def test_mutated_fixtures_parse_or_raise_sdp_error(data: bytes) -> None:
    """Fixtures with flipped bytes, cuts, duplicated or dropped lines and splices never crash."""
    check(data)


@given(line_soup())
def test_line_soup_parses_or_raises_sdp_error(data: bytes) -> None:
    """Bodies built from random line types and SDP tokens never crash the parser."""
    check(data)


@given(structured())
def test_structured_descriptions_parse_or_raise_sdp_error(data: bytes) -> None:
    """Descriptions built from valid and boundary field values never crash the parser."""
    check(data)


@given(st.text(max_size=300))
def test_random_text_parses_or_raises_sdp_error(text: str) -> None:
    """Random str input (including lone surrogates) either parses or raises SdpError."""
    try:
        description = parse_sdp(text)
    except SdpError:
        return
    exercise(description)


def check_crypto(value: str) -> None:
    try:
        attribute = parse_crypto(value)
    except SdpError:
        return
    assert isinstance(attribute, CryptoAttribute)
    assert parse_crypto(attribute.to_str()) == attribute
    repr(attribute)
    _ = (attribute.fec_key, attribute.kdr, attribute.wsh, attribute.unknown_session_params)


CRYPTO_PARTS = [
    "1", "01", "999999999", "1234567890", "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32",
    "AEAD_AES_128_GCM", "AEAD_AES_256_GCM", "F8_128_HMAC_SHA1_80", "UNKNOWN_SUITE",
    "inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
    "inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==",
    "inline:", "|", "2^20", "2^48", "2^49", "2^", "1:4", "0:0", "1:129", ";", " ", "KDR=1",
    "KDR=25", "UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP=1", "FEC_ORDER=FEC_SRTP", "FEC_KEY=",
    "WSH=64", "WSH=1", "-X", "=", "\t", "\u00e9",
]  # fmt: skip


@given(st.lists(st.sampled_from(CRYPTO_PARTS), max_size=10).map("".join))
@example("1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd|2^20|1:4")
def test_crypto_token_soup_parses_or_raises_sdp_error(value: str) -> None:
    """a=crypto values built from its tokens either parse and round-trip or raise SdpError."""
    check_crypto(value)


@given(st.text(max_size=200))
def test_random_crypto_text_parses_or_raises_sdp_error(value: str) -> None:
    """Random text given to parse_crypto either parses and round-trips or raises SdpError."""
    check_crypto(value)
