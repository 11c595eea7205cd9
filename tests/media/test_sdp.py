"""SDP (RFC 8866): parsing real-device bodies, round trips, rejections and rewriting."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from sbc.errors import SdpError
from sbc.media.sdes import CryptoAttribute, KeyParam
from sbc.media.sdp import (
    MAX_LINE_LENGTH,
    MAX_LINES,
    MAX_SDP_SIZE,
    Attribute,
    Bandwidth,
    Connection,
    Fmtp,
    Line,
    MediaDescription,
    Origin,
    RtcpAttribute,
    RtpMap,
    SessionDescription,
    Timing,
    parse_sdp,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sdp"
DEVICE_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.sdp"))
SEEDS = sorted(
    f"{d.name}/{p.name}" for d in FIXTURES.glob("seeds-*") for p in d.iterdir() if p.is_file()
)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sdp(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


HEAD = ("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0")


def body(*lines: str) -> bytes:
    return sdp(*HEAD, *lines)


# --------------------------------------------------------------------------------------------
# Round trips


def test_fixture_set_is_complete() -> None:
    """All twelve device fixtures and all pjproject seeds are present."""
    assert len(DEVICE_FIXTURES) == 12
    assert len(SEEDS) == 21


@pytest.mark.parametrize("name", DEVICE_FIXTURES)
def test_fixture_round_trips_byte_identical(name: str) -> None:
    """An untouched CRLF description serializes back to exactly the bytes it was parsed from."""
    data = fixture(name)
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert parse_sdp(data).to_bytes() == data


@pytest.mark.parametrize("name", DEVICE_FIXTURES)
def test_bare_lf_input_is_written_with_crlf(name: str) -> None:
    """A body with bare LF line ends parses to the same description and is written with CRLF."""
    data = fixture(name)
    parsed = parse_sdp(data.replace(b"\r\n", b"\n"))
    assert parsed == parse_sdp(data)
    assert parsed.to_bytes() == data


@pytest.mark.parametrize("name", DEVICE_FIXTURES)
def test_str_input_parses_like_bytes(name: str) -> None:
    """A str body parses to the same description as its UTF-8 bytes."""
    data = fixture(name)
    assert parse_sdp(data.decode()) == parse_sdp(data)


@pytest.mark.parametrize("name", SEEDS)
def test_pjproject_seed_parses_or_raises_sdp_error(name: str) -> None:
    """Each pjproject fuzz seed either parses (and round-trips) or raises SdpError, nothing else."""
    data = fixture(name)
    try:
        parsed = parse_sdp(data)
    except SdpError as exc:
        assert exc.status == 488
    else:
        assert parse_sdp(parsed.to_bytes()) == parsed


def test_pjproject_seed_outcomes() -> None:
    """Seeds with wrong key lengths, bad base64, bad tags or garbage are rejected; others pass."""
    outcomes = {}
    for name in SEEDS:
        try:
            parse_sdp(fixture(name))
        except SdpError as exc:
            outcomes[name] = exc.message
        else:
            outcomes[name] = "ok"
    short28 = "line 6 (a=): AES_CM_128_HMAC_SHA1_80 needs a 30-byte key||salt, got 28 bytes"
    assert outcomes == {
        "seeds-sdes/seed-crypto-aes128.sdp": short28,
        "seeds-sdes/seed-crypto-aes256-32.sdp": "ok",
        "seeds-sdes/seed-crypto-aes256.sdp": "ok",
        "seeds-sdes/seed-crypto-duplicate-tags.sdp": short28,
        "seeds-sdes/seed-crypto-invalid-base64.sdp": "line 6 (a=): key||salt is not valid base64",
        "seeds-sdes/seed-crypto-large-tag.sdp": short28,
        "seeds-sdes/seed-crypto-leading-zero-tag.sdp": short28,
        "seeds-sdes/seed-crypto-lifetime-mki.sdp": short28,
        "seeds-sdes/seed-crypto-missing-components.sdp": (
            "line 6 (a=): a=crypto needs a tag, a crypto-suite and key-params"
        ),
        "seeds-sdes/seed-crypto-missing-method.sdp": (
            "line 6 (a=): key-params must use the inline: key method"
        ),
        "seeds-sdes/seed-crypto-multiple-tags.sdp": short28,
        "seeds-sdes/seed-crypto-non-decimal-tag.sdp": (
            "line 6 (a=): crypto tag must have 1 to 9 digits"
        ),
        "seeds-sdes/seed-crypto-session-params.sdp": short28,
        "seeds-sdes/seed-crypto-short-key.sdp": (
            "line 6 (a=): AES_CM_128_HMAC_SHA1_80 needs a 30-byte key||salt, got 3 bytes"
        ),
        "seeds-sdes/seed-crypto-unsupported-suite.sdp": "ok",
        "seeds-sdp/input.1.sdp": "ok",
        "seeds-sdp/input.2.sdp": "ok",
        "seeds-sdp/input.3.sdp": "ok",
        "seeds-sdp/input.4.sdp": "ok",
        "seeds-sdp/input.5.sdp": "ok",
        "seeds-sdp/input.6.sdp": "line 6 (m=): media is not a valid token",
    }


# --------------------------------------------------------------------------------------------
# Device fixtures: key fields


def test_yealink_offer_fields() -> None:
    """A Yealink offer exposes its origin, connection, codecs, fmtp, ptime and direction."""
    offer = parse_sdp(fixture("yealink_t46_offer.sdp"))
    assert offer.version == 0
    assert offer.origin == Origin("-", "20086", 20086, "IN", "IP4", "10.20.30.41")
    assert offer.session_name == "SDP data"
    assert offer.connection == Connection("IN", "IP4", "10.20.30.41")
    assert offer.timing == [Timing(0, 0)]
    (audio,) = offer.media
    assert (audio.media, audio.port, audio.port_count, audio.proto) == (
        "audio",
        11796,
        None,
        "RTP/AVP",
    )
    assert audio.formats == ("0", "8", "9", "18", "101")
    assert audio.payload_types == (0, 8, 9, 18, 101)
    assert audio.rtpmaps == [
        RtpMap(0, "PCMU", 8000),
        RtpMap(8, "PCMA", 8000),
        RtpMap(9, "G722", 8000),
        RtpMap(18, "G729", 8000),
        RtpMap(101, "telephone-event", 8000),
    ]
    assert audio.fmtps == [Fmtp("18", "annexb=no"), Fmtp("101", "0-15")]
    assert audio.fmtp(101) == Fmtp("101", "0-15")
    assert audio.fmtp(101).payload_type == 101  # type: ignore[union-attr]
    assert audio.fmtp(0) is None
    assert audio.ptime == 20.0
    assert audio.maxptime is None
    assert (audio.own_direction, audio.direction) == ("sendrecv", "sendrecv")
    assert audio.connection is None
    assert audio.resolved_connection == Connection("IN", "IP4", "10.20.30.41")
    assert audio.crypto == []
    assert not audio.rtcp_mux and audio.rtcp is None


def test_polycom_offer_takes_direction_from_session_level() -> None:
    """A Polycom offer's session-level a=sendrecv is the media direction when the media has none."""
    offer = parse_sdp(fixture("polycom_vvx_offer.sdp"))
    assert offer.session_name == "Polycom IP Phone"
    assert offer.own_direction == "sendrecv"
    (audio,) = offer.media
    assert audio.own_direction is None
    assert audio.direction == "sendrecv"
    assert audio.rtpmap(127) == RtpMap(127, "telephone-event", 8000)
    assert audio.rtpmap(126) is None
    assert audio.ptime == 20.0


def test_linphone_srtp_offer_has_two_crypto_lines() -> None:
    """A Linphone RTP/SAVP offer carries an 80- and a 32-bit-tag AES_CM_128 key, in order."""
    offer = parse_sdp(fixture("linphone_srtp_offer.sdp"))
    assert offer.origin.username == "alice"
    assert offer.attribute("rtcp-xr") == Attribute(
        "rtcp-xr", "rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics"
    )
    (audio,) = offer.media
    assert audio.proto == "RTP/SAVP"
    assert audio.rtpmap(96) == RtpMap(96, "opus", 48000, 2)
    assert [(c.tag, c.suite, c.suite_known) for c in audio.crypto] == [
        (1, "AES_CM_128_HMAC_SHA1_80", True),
        (2, "AES_CM_128_HMAC_SHA1_32", True),
    ]
    first = audio.crypto[0]
    assert first.key_salt == base64.b64decode("rE8MV0XNVIH376BxMdFpxsb828UpgvJH4a6zWVua")
    assert (len(first.master_key), len(first.master_salt)) == (16, 14)
    assert [a.value for a in audio.attributes_named("rtcp-fb")] == [
        "* trr-int 1000",
        "* ccm tmmbr",
    ]


def test_zoiper_offer_fields() -> None:
    """A Zoiper offer keeps its fmtp text verbatim and announces rtcp-mux."""
    offer = parse_sdp(fixture("zoiper5_offer.sdp"))
    assert offer.origin == Origin("Z", "0", 14284937, "IN", "IP4", "192.168.1.33")
    (audio,) = offer.media
    assert audio.fmtp(106) == Fmtp("106", "sprop-maxcapturerate=16000; minptime=20; useinbandfec=1")
    assert audio.rtcp_mux
    assert [r.clock_rate for r in audio.rtpmaps if r.encoding == "telephone-event"] == [48000, 8000]


def test_asterisk_offer_has_maxptime_and_port_only_rtcp() -> None:
    """An Asterisk offer exposes a=ptime, a=maxptime and a port-only a=rtcp."""
    (audio,) = parse_sdp(fixture("asterisk_pjsip_offer.sdp")).media
    assert (audio.ptime, audio.maxptime) == (20.0, 150.0)
    assert audio.rtcp == RtcpAttribute(13563)


def test_freeswitch_offer_mixes_known_and_unknown_suites() -> None:
    """FreeSWITCH's AEAD_AES_256_GCM_8 is an unknown suite; GCM and AES_CM_128 are checked."""
    (audio,) = parse_sdp(fixture("freeswitch_srtp_offer.sdp")).media
    unknown, gcm, cm = audio.crypto
    assert (unknown.tag, unknown.suite, unknown.suite_known, unknown.key_params) == (
        1,
        "AEAD_AES_256_GCM_8",
        False,
        (),
    )
    assert (gcm.tag, gcm.suite, len(gcm.master_key), len(gcm.master_salt)) == (
        2,
        "AEAD_AES_256_GCM",
        32,
        12,
    )
    assert (cm.tag, cm.suite, len(cm.key_salt)) == (3, "AES_CM_128_HMAC_SHA1_80", 30)
    assert audio.rtcp == RtcpAttribute(16385, "IN", "IP4", "203.0.113.5")


def test_carrier_trunk_offer_uses_session_level_connection_and_bandwidth() -> None:
    """A carrier offer's only c= and b= are at session level; the media inherits the c=."""
    offer = parse_sdp(fixture("carrier_trunk_offer.sdp"))
    assert offer.bandwidths == [Bandwidth("AS", 80)]
    (audio,) = offer.media
    assert audio.connection is None
    assert audio.resolved_connection == Connection("IN", "IP4", "198.51.100.77")
    assert audio.bandwidths == []
    assert audio.formats == ("8", "101")
    assert audio.maxptime == 20.0


def test_webrtc_offer_fields() -> None:
    """A WebRTC offer: SAVPF proto, media-level c=, rtcp-mux, ICE, fingerprint and extmaps."""
    offer = parse_sdp(fixture("webrtc_offer.sdp"))
    assert offer.connection is None
    assert offer.attribute("group") == Attribute("group", "BUNDLE 0")
    assert offer.attribute("extmap-allow-mixed") == Attribute("extmap-allow-mixed")
    assert offer.attribute("msid-semantic") == Attribute("msid-semantic", " WMS")
    (audio,) = offer.media
    assert audio.proto == "UDP/TLS/RTP/SAVPF"
    assert audio.is_rtp
    assert audio.connection == Connection("IN", "IP4", "203.0.113.40")
    assert audio.rtcp == RtcpAttribute(9, "IN", "IP4", "0.0.0.0")
    assert audio.rtcp_mux
    assert len(audio.attributes_named("candidate")) == 2
    assert audio.attribute("setup") == Attribute("setup", "actpass")
    assert audio.attribute("fingerprint").value.startswith("sha-256 F9:4B:")  # type: ignore[union-attr]
    assert [a.value for a in audio.attributes_named("extmap")] == [
        "1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "4 urn:ietf:params:rtp-hdrext:sdes:mid",
    ]
    assert audio.fmtp(111) == Fmtp("111", "minptime=10;useinbandfec=1")


def test_rfc2543_hold_offer() -> None:
    """A hold offer with c=0.0.0.0 and a=sendonly is recognizable as such."""
    offer = parse_sdp(fixture("hold_rfc2543_offer.sdp"))
    assert offer.connection is not None and offer.connection.is_unspecified
    (audio,) = offer.media
    assert audio.direction == "sendonly"
    assert audio.resolved_connection == Connection("IN", "IP4", "0.0.0.0")


def test_ipv6_offer_fields() -> None:
    """An IPv6 offer has IP6 origin, connection and a=rtcp addresses."""
    offer = parse_sdp(fixture("baresip_ipv6_offer.sdp"))
    assert offer.origin == Origin("-", "2094810346", 3527291410, "IN", "IP6", "2001:db8:1::10")
    assert offer.connection == Connection("IN", "IP6", "2001:db8:1::10")
    assert not offer.connection.is_unspecified
    (audio,) = offer.media
    assert audio.bandwidths == [Bandwidth("AS", 64)]
    assert audio.rtcp == RtcpAttribute(40001, "IN", "IP6", "2001:db8:1::10")
    assert audio.attribute("tool") is None
    assert offer.attribute("tool") == Attribute("tool", "baresip 3.10.1")


def test_answer_with_rejected_video_stream() -> None:
    """An answer that rejects video keeps the m=video line with port 0."""
    answer = parse_sdp(fixture("video_rejected_answer.sdp"))
    audio, video = answer.media
    assert (audio.port, audio.rejected) == (5004, False)
    assert (video.media, video.port, video.rejected) == ("video", 0, True)
    assert video.bandwidths == [Bandwidth("TIAS", 1024000)]
    assert video.rtpmap(99) == RtpMap(99, "H264", 90000)
    assert video.fmtp(99) == Fmtp("99", "profile-level-id=42801F; packetization-mode=1")


def test_all_line_types_multicast_and_unknown_letter() -> None:
    """Every RFC 8866 line type, multicast c= forms, a port count and an unknown y= are exposed."""
    d = parse_sdp(fixture("all_fields_multicast.sdp"))
    assert d.origin.sess_id == "0033445566"
    assert d.session_name == "Seminar on session border control"
    assert d.information == "All the line types of RFC 8866 in one description"
    assert d.uri == "https://example.com/seminar/sbc"
    assert d.emails == ["Jane Doe <jane@example.com>"]
    assert d.phones == ["+1 617 555 0100"]
    assert d.connection == Connection("IN", "IP4", "233.252.0.1", ttl=127, count=2)
    assert d.bandwidths == [Bandwidth("CT", 1024)]
    assert d.timing == [Timing(3034423619, 3042462419)]
    assert d.values("r") == ["7d 1h 0 25h"]
    assert d.values("z") == ["2882844526 -1h 2898848070 0"]
    assert d.key == "prompt"
    assert d.direction == "recvonly"
    assert d.unknown_lines == [Line("y", "0100000001")]
    audio, msrp, video = d.media
    assert (audio.port, audio.port_count) == (49170, 2)
    assert audio.information == "Main audio"
    assert audio.connection == Connection("IN", "IP6", "ff1e:db8::101", count=3)
    assert audio.key == "prompt"
    assert audio.rtpmap(96) == RtpMap(96, "L16", 16000, 2)
    assert audio.direction == "recvonly"
    assert (msrp.proto, msrp.formats, msrp.is_rtp, msrp.payload_types) == (
        "TCP/MSRP",
        ("*",),
        False,
        (),
    )
    assert msrp.attribute("path") == Attribute("path", "msrp://198.51.100.1:50000/seminar;tcp")
    assert video.direction == "inactive"


@pytest.mark.parametrize(
    ("session_attr", "media_attr", "expected"),
    [
        (None, None, "sendrecv"),
        ("sendonly", None, "sendonly"),
        (None, "recvonly", "recvonly"),
        ("sendonly", "inactive", "inactive"),
        ("inactive", "sendrecv", "sendrecv"),
    ],
)
def test_media_direction_resolution(
    session_attr: str | None, media_attr: str | None, expected: str
) -> None:
    """Media direction: media-level attribute, else session-level, else sendrecv (RFC 8866 6.7)."""
    lines = list(HEAD)
    if session_attr:
        lines.append(f"a={session_attr}")
    lines.append("m=audio 4000 RTP/AVP 0")
    if media_attr:
        lines.append(f"a={media_attr}")
    assert parse_sdp(sdp(*lines)).media[0].direction == expected


def test_detached_media_description_defaults_to_sendrecv() -> None:
    """A media section not attached to a session resolves direction and connection on its own."""
    media = MediaDescription([Line("m", "audio 4000 RTP/AVP 0")])
    assert media.direction == "sendrecv"
    assert media.resolved_connection is None


# --------------------------------------------------------------------------------------------
# Liberal parsing


@pytest.mark.parametrize(
    ("data", "check"),
    [
        (b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\n", lambda d: d.session_name == "-"),
        (body("m=audio 4000 RTP/AVP 0")[:-2], lambda d: d.media[0].formats == ("0",)),
        (body("m=audio 4000 RTP/AVP 0") + b"\r\n\r\n", lambda d: len(d.media) == 1),
        (body("m=audio 4000 RTP/AVP 0") + b" \t\r\n\n", lambda d: len(d.media) == 1),
        (
            body("m=audio  4000   RTP/AVP 0 8 "),
            lambda d: (d.media[0].port, d.media[0].formats) == (4000, ("0", "8")),
        ),
        (body("a=sendonly \t"), lambda d: d.direction == "sendonly"),
        (sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-"), lambda d: d.timing == []),
        (sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s="), lambda d: d.session_name == ""),
        (sdp("v=0", "s=-", "o=- 1 1 IN IP4 192.0.2.1"), lambda d: d.origin.sess_version == 1),
        (body("m=audio 0 RTP/AVP"), lambda d: d.media[0].formats == ()),
        (
            sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "a=x", "t=0 0", "c=IN IP4 192.0.2.2"),
            lambda d: d.connection == Connection("IN", "IP4", "192.0.2.2"),
        ),
        (
            body("m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "c=IN IP4 192.0.2.3"),
            lambda d: d.media[0].connection == Connection("IN", "IP4", "192.0.2.3"),
        ),
        (
            body("x=before", "m=audio 4000 RTP/AVP 0", "y=after"),
            lambda d: d.unknown_lines == [Line("x", "before"), Line("y", "after")],
        ),
        (
            body("m=audio 4000 RTP/AVP 0", "a=sendonly", "a=sendonly"),
            lambda d: d.media[0].direction == "sendonly",
        ),
        (
            sdp("v=0", "o=\u00e9 1 1 IN IP4 h", "s=caf\u00e9"),
            lambda d: (d.origin.username, d.session_name) == ("\u00e9", "caf\u00e9"),
        ),
        (body("a=ptime:0.5"), lambda d: d.attribute("ptime") == Attribute("ptime", "0.5")),
        (body("m=audio 4000 RTP/AVP 0", "a=ptime:12.5"), lambda d: d.media[0].ptime == 12.5),
        (body("m=audio 4000 RTP/AVP 0", "a=fmtp:0"), lambda d: d.media[0].fmtp(0) == Fmtp("0", "")),
        (
            body("m=audio 4000 RTP/AVP 0", "b=X-VENDOR:5"),
            lambda d: d.media[0].bandwidths[0].bwtype == "X-VENDOR",
        ),
        (body("c=IN IP4 host.example.com"), lambda d: d.connection.address == "host.example.com"),
        (body("c=ATM NSAP 47.0091.8100.0000"), lambda d: d.connection.addrtype == "NSAP"),
        (body("m=audio 4000 RTP/AVP 0", "a=rtcp:0"), lambda d: d.media[0].rtcp == RtcpAttribute(0)),
        (bytearray(body()), lambda d: d.origin.sess_id == "1"),
        (memoryview(body()), lambda d: d.origin.sess_id == "1"),
    ],
)
def test_liberal_inputs_are_accepted(
    data: bytes, check: Callable[[SessionDescription], bool]
) -> None:
    """Harmless deviations real devices make parse, and keep their exact lines on output."""
    parsed = parse_sdp(data)
    assert check(parsed)
    assert parse_sdp(parsed.to_bytes()) == parsed


def test_liberal_lines_are_written_back_verbatim() -> None:
    """Extra spaces, trailing whitespace and odd order are kept byte for byte."""
    data = sdp(
        "v=0",
        "s=-",
        "o=-  7 7 IN IP4 192.0.2.1 ",
        "a=x:y",
        "c=IN IP4 192.0.2.1",
        "m=audio  4000 RTP/AVP 0 ",
        "a=sendrecv\t",
    )
    assert parse_sdp(data).to_bytes() == data


def test_missing_final_line_end_and_trailing_blank_lines_are_normalized() -> None:
    """A missing final CRLF is added and trailing blank lines are dropped on output."""
    data = body("m=audio 4000 RTP/AVP 0")
    assert parse_sdp(data[:-2]).to_bytes() == data
    assert parse_sdp(data + b"\r\n \r\n\t\n").to_bytes() == data


# --------------------------------------------------------------------------------------------
# Rejections


def _big(n: int) -> str:
    return "x" * n


REJECTED = [
    (b"", "SDP must start with v="),
    (b"\r\n\r\n", "SDP must start with v="),
    (sdp("o=- 1 1 IN IP4 h", "v=0", "s=-"), "SDP must start with v="),
    (sdp("V=0", "o=- 1 1 IN IP4 h", "s=-"), "SDP must start with v="),
    (b"\xef\xbb\xbf" + body(), "SDP must start with v="),
    (sdp("v=1", "o=- 1 1 IN IP4 h", "s=-"), "line 1 (v=): only SDP version 0 is supported"),
    (sdp("v=0", "s=-", "t=0 0"), "SDP needs exactly one o= (origin) line, found 0"),
    (body("o=- 2 2 IN IP4 h"), "SDP needs exactly one o= (origin) line, found 2"),
    (
        sdp("v=0", "o=- 1 1 IN IP4 h", "t=0 0"),
        "SDP needs exactly one s= (session name) line, found 0",
    ),
    (body("s=again"), "SDP needs exactly one s= (session name) line, found 2"),
    (body("v=0"), "line 5: v= must be the first line only"),
    (body("hello"), "line 5: not of the form <type>=<value>"),
    (body("X=1"), "line 5: not of the form <type>=<value>"),
    (body("1=1"), "line 5: not of the form <type>=<value>"),
    (body(" a=x"), "line 5: not of the form <type>=<value>"),
    (body("a =x"), "line 5: not of the form <type>=<value>"),
    (body("", "a=x"), "line 5: not of the form <type>=<value>"),
    (body("  ", "a=x"), "line 5: not of the form <type>=<value>"),
    (b"v=0\ro=- 1 1 IN IP4 h\r\ns=-\r\n", "line 1: CR without LF"),
    (body("a=x\ry"), "line 5: CR without LF"),
    (body("a=x\x00"), "NUL byte in SDP"),
    (body() + b"a=\xff\r\n", "SDP is not UTF-8"),
    (body() + b"a=" + b"x" * MAX_SDP_SIZE + b"\r\n", "SDP body too large"),
    (body() + b"a=x\r\n" * MAX_LINES, "too many SDP lines"),
    (body("a=" + _big(MAX_LINE_LENGTH)), f"line 5: longer than {MAX_LINE_LENGTH} characters"),
    (sdp("v=0", "o=- 1 1 IN IP4", "s=-"), "line 2 (o=): o= needs 6 fields"),
    (sdp("v=0", "o=- 1 x IN IP4 h", "s=-"), "line 2 (o=): sess-version must be a decimal number"),
    (sdp("v=0", "o=- one 1 IN IP4 h", "s=-"), "line 2 (o=): sess-id must be a decimal number"),
    (sdp("v=0", "o=- 1 1 I(N IP4 h", "s=-"), "line 2 (o=): nettype is not a valid token"),
    (
        sdp("v=0", "o=- 1 \u0661 IN IP4 h", "s=-"),
        "line 2 (o=): sess-version must be a decimal number",
    ),
    (body("c=IN IP4"), "line 5 (c=): c= needs 3 fields"),
    (body("c=IN IP4 233.252.0.1/256"), "line 5 (c=): multicast TTL must be at most 255"),
    (body("c=IN IP4 233.252.0.1/x"), "line 5 (c=): multicast TTL must be a decimal number"),
    (body("c=IN IP4 233.252.0.1/1/0"), "line 5 (c=): multicast address count must be at least 1"),
    (body("c=IN IP4 233.252.0.1/1/2/3"), "line 5 (c=): IP4 multicast is <address>/<ttl>[/<count>]"),
    (body("c=IN IP6 ff1e::1/3/2"), "line 5 (c=): IP6 multicast is <address>[/<count>]"),
    (body("c=IN IP4 /1"), "line 5 (c=): connection-address is empty"),
    (body("c=IN IP4 192.0.2.1", "c=IN IP4 192.0.2.2"), "more than one session-level c= line"),
    (body("b=AS"), "line 5 (b=): b= is <bwtype>:<bandwidth>"),
    (body("b=AS:fast"), "line 5 (b=): bandwidth must be a decimal number"),
    (body("b=:64"), "line 5 (b=): bwtype is not a valid token"),
    (body("t=0"), "line 5 (t=): t= needs 2 fields"),
    (body("t=now 0"), "line 5 (t=): start-time must be a decimal number"),
    (body("r=7d 1h"), "line 5 (r=): r= is <interval> <duration> <offset>..."),
    (body("r=7d 1h 0 1y"), "line 5 (r=): r= is <interval> <duration> <offset>..."),
    (body("z=2882844526"), "line 5 (z=): z= is <adjustment time> <offset>..."),
    (body("z=2882844526 +1h"), "line 5 (z=): z= offset must be [-]<number>[d|h|m|s]"),
    (body("m=audio 4000"), "line 5 (m=): m= needs media, port and proto"),
    (body("m=audio abc RTP/AVP 0"), "line 5 (m=): port must be a decimal number"),
    (body("m=audio -1 RTP/AVP 0"), "line 5 (m=): port must be a decimal number"),
    (body("m=audio 65536 RTP/AVP 0"), "line 5 (m=): port must be at most 65535"),
    (body("m=audio 123456 RTP/AVP 0"), "line 5 (m=): port must be a decimal number"),
    (body("m=audio 4000/0 RTP/AVP 0"), "line 5 (m=): number of ports must be at least 1"),
    (body("m=audio 4000/ RTP/AVP 0"), "line 5 (m=): number of ports must be a decimal number"),
    (body("m=audio 4000 RTP/AVP 128"), "line 5 (m=): RTP payload type must be at most 127"),
    (body("m=audio 4000 RTP/AVP PCMU"), "line 5 (m=): RTP payload type must be a decimal number"),
    (body("m=audio 4000 RTP//AVP 0"), "line 5 (m=): proto is not a valid token"),
    (body("m=aud(io 4000 RTP/AVP 0"), "line 5 (m=): media is not a valid token"),
    (body("m=audio 4000 RTP/AVP 0", "t=0 0"), "line 6: t= is not allowed in a media description"),
    (
        body("m=audio 4000 RTP/AVP 0", "o=- 1 1 IN IP4 10.0.0.1"),
        "line 6: o= is not allowed in a media description",
    ),
    (body("m=audio 4000 RTP/AVP 0", "v=0"), "line 6: v= is not allowed in a media description"),
    (body("a="), "line 5 (a=): attribute name is not a valid token"),
    (body("a=:x"), "line 5 (a=): attribute name is not a valid token"),
    (body("a=bad name:x"), "line 5 (a=): attribute name is not a valid token"),
    (
        body("a=rtpmap:96 opus"),
        "line 5 (a=): rtpmap is <payload type> <encoding>/<clock rate>[/<channels>]",
    ),
    (
        body("a=rtpmap:96 opus/48000/2/1"),
        "line 5 (a=): rtpmap is <payload type> <encoding>/<clock rate>[/<channels>]",
    ),
    (body("a=rtpmap:200 opus/48000"), "line 5 (a=): rtpmap payload type must be at most 127"),
    (body("a=rtpmap:96 opus/0"), "line 5 (a=): rtpmap clock rate and channels must be positive"),
    (body("a=rtpmap:96 opus/48k"), "line 5 (a=): rtpmap clock rate must be a decimal number"),
    (body("a=rtpmap"), "line 5 (a=): a=rtpmap needs a value"),
    (body("a=fmtp: 0-15"), "line 5 (a=): fmtp format is not a valid token"),
    (body("a=ptime:0"), "line 5 (a=): a=ptime must be a positive number of milliseconds"),
    (body("a=ptime:20ms"), "line 5 (a=): a=ptime must be a positive number of milliseconds"),
    (body("a=maxptime:-1"), "line 5 (a=): a=maxptime must be a positive number of milliseconds"),
    (body("a=rtcp:70000"), "line 5 (a=): rtcp port must be at most 65535"),
    (body("a=rtcp:5001 IN IP4"), "line 5 (a=): rtcp is <port> [<nettype> <addrtype> <address>]"),
    (body("a=sendrecv:1"), "line 5 (a=): a=sendrecv takes no value"),
    (body("a=rtcp-mux:yes"), "line 5 (a=): a=rtcp-mux takes no value"),
    (body("a=crypto"), "line 5 (a=): a=crypto needs a value"),
    (
        body("m=audio 4000 RTP/SAVP 0", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA"),
        "line 6 (a=): AES_CM_128_HMAC_SHA1_80 needs a 30-byte key||salt, got 3 bytes",
    ),
    (
        body("m=audio 4000 RTP/AVP 0", "a=sendonly", "a=recvonly"),
        "media description 1: conflicting direction attributes",
    ),
    (body("a=sendonly", "a=inactive"), "session level: conflicting direction attributes"),
    (
        body(
            "m=audio 4000 RTP/AVP 0",
            "m=audio 4002 RTP/SAVP 0",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
        ),
        "media description 2: duplicate a=crypto tag",
    ),
]


@pytest.mark.parametrize(("data", "message"), REJECTED, ids=[m for _, m in REJECTED])
def test_malformed_sdp_raises_sdp_error(data: bytes, message: str) -> None:
    """Garbage and RFC 8866 violations that matter raise SdpError (488) with the exact reason."""
    with pytest.raises(SdpError) as excinfo:
        parse_sdp(data)
    assert excinfo.value.message == message
    assert excinfo.value.status == 488


def test_str_with_lone_surrogate_is_rejected() -> None:
    """A str body that is not encodable Unicode raises SdpError."""
    with pytest.raises(SdpError) as excinfo:
        parse_sdp(body().decode() + "a=\udcff\r\n")
    assert excinfo.value.message == "SDP text is not valid Unicode"


def test_exactly_max_lines_is_accepted() -> None:
    """MAX_LINES lines are fine; the cap rejects only more."""
    data = body() + b"a=x\r\n" * (MAX_LINES - len(HEAD))
    assert len(parse_sdp(data).lines) == MAX_LINES


def test_non_bytes_input_is_a_type_error() -> None:
    """Passing something other than bytes or str is a programming error, not an SdpError."""
    with pytest.raises(TypeError):
        parse_sdp(12345)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Mutators


def test_topology_hiding_rewrite_of_yealink_offer() -> None:
    """Rewriting o=, c= and the media port changes exactly those lines and keeps the rest."""
    offer = parse_sdp(fixture("yealink_t46_offer.sdp"))
    offer.set_origin(username="sbc", unicast_address="203.0.113.1")
    assert offer.bump_version() == 20087
    offer.set_connection_address("203.0.113.1")
    offer.media[0].set_port(40000)
    assert offer.to_bytes() == sdp(
        "v=0",
        "o=sbc 20086 20087 IN IP4 203.0.113.1",
        "s=SDP data",
        "c=IN IP4 203.0.113.1",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0 8 9 18 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:18 G729/8000",
        "a=fmtp:18 annexb=no",
        "a=ptime:20",
        "a=sendrecv",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
    )


def test_ipv6_origin_and_connection_rewrite_switch_addrtype() -> None:
    """Giving an IPv4 address to an IPv6 description switches o= and c= to IP4."""
    offer = parse_sdp(fixture("baresip_ipv6_offer.sdp"))
    offer.set_origin(unicast_address="198.51.100.1")
    offer.set_connection_address("198.51.100.1")
    offer.media[0].set_rtcp(30001, "198.51.100.1")
    offer.media[0].set_port(30000)
    assert offer.to_bytes() == sdp(
        "v=0",
        "o=- 2094810346 3527291410 IN IP4 198.51.100.1",
        "s=-",
        "c=IN IP4 198.51.100.1",
        "t=0 0",
        "a=tool:baresip 3.10.1",
        "m=audio 30000 RTP/AVP 9 0 8 101",
        "b=AS:64",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=rtcp:30001 IN IP4 198.51.100.1",
        "a=sendrecv",
        "a=label:1",
        "a=rtcp-rsize",
        "a=ptime:20",
    )


def test_webrtc_connection_rewrite_touches_only_media_level_c() -> None:
    """With c= only at media level, set_connection_address rewrites it and adds none at session."""
    offer = parse_sdp(fixture("webrtc_offer.sdp"))
    offer.set_connection_address("2001:db8::5")
    original = fixture("webrtc_offer.sdp")
    assert offer.to_bytes() == original.replace(
        b"c=IN IP4 203.0.113.40\r\n", b"c=IN IP6 2001:db8::5\r\n"
    )
    assert offer.connection is None


def test_media_connection_is_inserted_after_m_line() -> None:
    """A media section without c= gets one right after its m= (and i=) line."""
    offer = parse_sdp(fixture("carrier_trunk_offer.sdp"))
    offer.media[0].set_connection_address("203.0.113.9")
    assert offer.to_bytes() == fixture("carrier_trunk_offer.sdp").replace(
        b"m=audio 30000 RTP/AVP 8 101\r\n",
        b"m=audio 30000 RTP/AVP 8 101\r\nc=IN IP4 203.0.113.9\r\n",
    )
    multi = parse_sdp(fixture("all_fields_multicast.sdp"))
    multi.media[2].set_connection_address("203.0.113.9")
    assert multi.media[2].lines[:2] == (
        Line("m", "video 51372 RTP/AVP 99"),
        Line("c", "IN IP4 203.0.113.9"),
    )
    multi.media[0].set_connection_address("203.0.113.9")
    assert multi.media[0].lines[:3] == (
        Line("m", "audio 49170/2 RTP/AVP 0 96"),
        Line("i", "Main audio"),
        Line("c", "IN IP4 203.0.113.9"),
    )


def test_session_connection_is_added_when_no_c_line_exists() -> None:
    """A description without any c= gets a session-level one after the v/o/s/i/u/e/p lines."""
    offer = parse_sdp(body("m=audio 4000 RTP/AVP 0"))
    offer.set_connection_address("192.0.2.7")
    assert offer.to_bytes() == sdp(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.7",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0",
    )


def test_multicast_connections_collapse_to_one_unicast_address() -> None:
    """Rewriting multicast c= lines drops TTL/count and keeps one c= per section."""
    d = parse_sdp(fixture("all_fields_multicast.sdp"))
    d.set_connection_address("203.0.113.1")
    assert d.connection == Connection("IN", "IP4", "203.0.113.1")
    assert [m.resolved_connection for m in d.media] == [Connection("IN", "IP4", "203.0.113.1")] * 3
    assert b"c=IN IP4 233.252.0.1/127/2\r\n" not in d.to_bytes()
    assert b"c=IN IP4 203.0.113.1\r\nb=CT:1024\r\n" in d.to_bytes()
    assert b"i=Main audio\r\nc=IN IP4 203.0.113.1\r\nb=AS:64\r\n" in d.to_bytes()


def test_set_port_drops_port_count_unless_given() -> None:
    """set_port replaces the port and the /count suffix."""
    d = parse_sdp(fixture("all_fields_multicast.sdp"))
    d.media[0].set_port(40000)
    assert d.media[0].lines[0] == Line("m", "audio 40000 RTP/AVP 0 96")
    d.media[0].set_port(40000, port_count=2)
    assert d.media[0].lines[0] == Line("m", "audio 40000/2 RTP/AVP 0 96")
    d.media[0].set_port(0)
    assert d.media[0].rejected


def test_set_formats_rewrites_the_m_line() -> None:
    """set_formats writes the new format list and leaves attributes alone."""
    offer = parse_sdp(fixture("yealink_t46_offer.sdp"))
    offer.media[0].set_formats([8, 101])
    assert offer.media[0].lines[0] == Line("m", "audio 11796 RTP/AVP 8 101")
    assert len(offer.media[0].rtpmaps) == 5


def test_set_crypto_replaces_lines_in_place() -> None:
    """New a=crypto lines take the place of the first old one; the other old ones go."""
    offer = parse_sdp(fixture("linphone_srtp_offer.sdp"))
    key = bytes(range(30))
    new = CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", (KeyParam(key),))
    offer.media[0].set_crypto([new])
    original = fixture("linphone_srtp_offer.sdp")
    start = original.index(b"a=crypto:1 ")
    end = original.index(b"a=rtcp-fb:")
    assert offer.to_bytes() == (
        original[:start]
        + b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\r\n"
        + original[end:]
    )
    assert offer.media[0].crypto == [new]


def test_set_crypto_empty_removes_and_appends_when_absent() -> None:
    """set_crypto([]) removes every a=crypto; on a stream without one it appends at the end."""
    offer = parse_sdp(fixture("linphone_srtp_offer.sdp"))
    offer.media[0].set_crypto([])
    assert b"a=crypto" not in offer.to_bytes()
    plain = parse_sdp(fixture("hold_rfc2543_offer.sdp"))
    new = CryptoAttribute(5, "AEAD_AES_128_GCM", (KeyParam(bytes(28), 2**31, True),))
    plain.media[0].set_crypto([new])
    assert plain.to_bytes() == fixture("hold_rfc2543_offer.sdp") + (
        b"a=crypto:5 AEAD_AES_128_GCM inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==|2^31\r\n"
    )


def test_set_crypto_rejects_duplicate_tags() -> None:
    """Writing two a=crypto lines with the same tag is refused."""
    offer = parse_sdp(fixture("linphone_srtp_offer.sdp"))
    first = offer.media[0].crypto[0]
    with pytest.raises(ValueError, match="^invalid change: duplicate a=crypto tag$"):
        offer.media[0].set_crypto([first, first])
    with pytest.raises(ValueError, match="^invalid change: duplicate a=crypto tag$"):
        offer.media[0].add_attribute("crypto", first.to_str())
    assert offer.to_bytes() == fixture("linphone_srtp_offer.sdp")


def test_adding_a_second_direction_is_refused() -> None:
    """add_attribute cannot create conflicting direction attributes; set_direction replaces."""
    offer = parse_sdp(fixture("yealink_t46_offer.sdp"))
    with pytest.raises(ValueError, match="^invalid change: conflicting direction attributes$"):
        offer.media[0].add_attribute("sendonly")
    offer.media[0].add_attribute("sendrecv")
    assert offer.media[0].direction == "sendrecv"


def test_set_direction_replaces_in_place_or_appends() -> None:
    """set_direction rewrites the existing direction line, or appends one if there is none."""
    hold = parse_sdp(fixture("hold_rfc2543_offer.sdp"))
    hold.media[0].set_direction("sendrecv")
    assert hold.to_bytes() == fixture("hold_rfc2543_offer.sdp").replace(
        b"a=sendonly\r\n", b"a=sendrecv\r\n"
    )
    polycom = parse_sdp(fixture("polycom_vvx_offer.sdp"))
    polycom.media[0].set_direction("inactive")
    polycom.set_direction("sendonly")
    data = polycom.to_bytes()
    assert data.endswith(b"a=ptime:20\r\na=inactive\r\n")
    assert b"t=0 0\r\na=sendonly\r\nm=audio" in data
    assert polycom.media[0].direction == "inactive"


def test_origin_setter_and_bump() -> None:
    """Assigning an Origin rewrites o=; bump_version increments sess-version only."""
    d = parse_sdp(fixture("all_fields_multicast.sdp"))
    d.origin = Origin("sbc", "42", 1, "IN", "IP4", "203.0.113.1")
    d.bump_version()
    assert d.lines[1] == Line("o", "sbc 42 2 IN IP4 203.0.113.1")
    huge = parse_sdp(sdp("v=0", "o=- 1 " + "9" * 100 + " IN IP4 h", "s=-"))
    huge.bump_version()
    assert huge.origin.sess_version == 10**100


def test_rtcp_attribute_rewrite_and_removal() -> None:
    """set_rtcp replaces a=rtcp in place (port only or full form) and None removes it."""
    offer = parse_sdp(fixture("freeswitch_srtp_offer.sdp"))
    audio = offer.media[0]
    audio.set_rtcp(20001, "2001:db8::1")
    assert audio.rtcp == RtcpAttribute(20001, "IN", "IP6", "2001:db8::1")
    audio.set_rtcp(20001)
    assert offer.to_bytes().endswith(b"a=rtcp:20001\r\n")
    audio.set_rtcp(None)
    assert audio.rtcp is None
    assert b"a=rtcp" not in offer.to_bytes()


def test_add_and_remove_attributes() -> None:
    """add_attribute appends; remove_attributes removes all of a name and counts them."""
    offer = parse_sdp(fixture("linphone_srtp_offer.sdp"))
    audio = offer.media[0]
    assert audio.remove_attributes("rtcp-fb") == 2
    assert audio.remove_attributes("rtcp-fb") == 0
    audio.add_attribute("rtcp-mux")
    audio.add_attribute("label", "1")
    assert audio.lines[-2:] == (Line("a", "rtcp-mux"), Line("a", "label:1"))
    assert audio.rtcp_mux


def test_views_follow_mutations() -> None:
    """Typed views read after a mutation reflect it (the view cache is dropped on change)."""
    offer = parse_sdp(fixture("linphone_srtp_offer.sdp"))
    audio = offer.media[0]
    assert (audio.port, len(audio.crypto), audio.rtcp_mux, audio.direction) == (
        7078,
        2,
        False,
        "sendrecv",
    )
    assert audio.rtpmap(96) == RtpMap(96, "opus", 48000, 2)
    audio.set_port(5000)
    audio.set_crypto(audio.crypto[1:])
    audio.add_attribute("rtcp-mux")
    audio.set_direction("recvonly")
    audio.remove_attributes("rtpmap")
    offer.set_origin(username="sbc")
    assert (audio.port, len(audio.crypto), audio.rtcp_mux, audio.direction) == (
        5000,
        1,
        True,
        "recvonly",
    )
    assert audio.rtpmap(96) is None
    assert offer.origin.username == "sbc"


def test_lookups_parse_each_line_at_most_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Looking up every payload type of a hostile 1000-line body does not re-parse the lines."""
    lines = ["m=audio 4000 RTP/AVP " + " ".join(str(i % 128) for i in range(700))]
    lines += [f"a=rtpmap:{i % 128} X{i}/8000" for i in range(MAX_LINES - len(HEAD) - 1)]
    media = parse_sdp(body(*lines)).media[0]
    calls = []
    original = RtpMap.parse.__func__  # type: ignore[attr-defined]

    def counting(cls: type[RtpMap], value: str) -> RtpMap:
        calls.append(value)
        return original(cls, value)

    monkeypatch.setattr(RtpMap, "parse", classmethod(counting))
    found = [media.rtpmap(pt) for pt in media.payload_types]
    assert found[0] == RtpMap(0, "X0", 8000)
    assert found[129] == RtpMap(1, "X1", 8000)
    assert len(calls) == len(lines) - 1


def test_remove_unknown_lines() -> None:
    """remove_unknown_lines drops undefined line types everywhere and counts them."""
    d = parse_sdp(body("x=1", "m=audio 4000 RTP/AVP 0", "y=2", "y=3"))
    assert d.remove_unknown_lines() == 3
    assert d.to_bytes() == body("m=audio 4000 RTP/AVP 0")


def test_copy_is_independent() -> None:
    """Mutating a copy leaves the original description unchanged."""
    original = parse_sdp(fixture("yealink_t46_offer.sdp"))
    copy = original.copy()
    assert copy == original
    copy.set_connection_address("203.0.113.1")
    copy.media[0].set_port(1)
    copy.bump_version()
    assert original.to_bytes() == fixture("yealink_t46_offer.sdp")
    assert copy != original
    assert copy.media[0].session is copy


def test_add_media_attaches_the_section() -> None:
    """add_media makes session-level defaults apply to the new section."""
    d = parse_sdp(body("a=recvonly"))
    media = MediaDescription([Line("m", "audio 4000 RTP/AVP 0")])
    d.add_media(media)
    assert media.direction == "recvonly"
    assert d.to_bytes() == body("a=recvonly", "m=audio 4000 RTP/AVP 0")
    with pytest.raises(ValueError):
        d.add_media(MediaDescription([Line("a", "x")]))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.set_connection_address("192.0.2.1\r\na=evil"),
        lambda d: d.set_connection_address("192.0.2.1 extra"),
        lambda d: d.set_connection_address("233.252.0.1/5"),
        lambda d: d.set_connection_address(""),
        lambda d: d.set_origin(username="two words"),
        lambda d: d.set_origin(unicast_address="a\x00b"),
        lambda d: d.set_origin(sess_id="abc"),
        lambda d: d.media[0].set_port(65536),
        lambda d: d.media[0].set_port(-1),
        lambda d: d.media[0].set_formats(["x y"]),
        lambda d: d.media[0].set_direction("hold"),
        lambda d: d.media[0].set_rtcp(70000),
        lambda d: d.media[0].add_attribute("bad name"),
        lambda d: d.media[0].add_attribute("ptime", "soon"),
        lambda d: d.media[0].add_attribute("x", "\udcff"),
        lambda d: d.add_attribute("sendrecv", "1"),
    ],
)
def test_mutators_refuse_values_that_would_not_parse(
    mutate: Callable[[SessionDescription], None],
) -> None:
    """A mutator given a value that would inject or corrupt a line raises ValueError."""
    d = parse_sdp(fixture("yealink_t46_offer.sdp"))
    with pytest.raises(ValueError) as excinfo:
        mutate(d)
    assert not isinstance(excinfo.value, SdpError)
    assert d.to_bytes() == fixture("yealink_t46_offer.sdp")


# --------------------------------------------------------------------------------------------
# Key material stays out of repr()


def test_repr_masks_crypto_keys_and_ice_password() -> None:
    """repr() of descriptions, sections, lines and attributes never shows SRTP keys or ice-pwd."""
    secrets = [
        "rE8MV0XNVIH376BxMdFpxsb828UpgvJH4a6zWVua",
        "VOEXO/Q0ZViglStUafS0lrjMOqB9Dkc4JC4odu3M",
        "hceIQwtTnV0sY3b3y8VZd6zJ43yvXK/E/ZvPmQEo",
        "QCat9lD7zXKHeEqsHFU9qTTFrK8mckVLtNG3sUFRuGRHIsOKhiwhRF/Wbxg=",
        "z2h4sU3ORkrEg2wHpC9PFS8e",
    ]
    texts = []
    for name in ("linphone_srtp_offer.sdp", "freeswitch_srtp_offer.sdp", "webrtc_offer.sdp"):
        d = parse_sdp(fixture(name))
        media = d.media[0]
        texts += [repr(d), str(d), repr(media), repr(media.lines), repr(media.attributes)]
        texts += [repr(media.crypto), str(media.crypto)]
    joined = "\n".join(texts)
    for secret in secrets:
        assert secret in b"".join(fixture(n) for n in DEVICE_FIXTURES).decode()
        assert secret not in joined
    assert "crypto:1 AES_CM_128_HMAC_SHA1_80 <redacted>" in joined
    assert "ice-pwd:<redacted>" in joined


def test_repr_masks_k_line_and_keys_in_malformed_shapes() -> None:
    """k= values and inline: keys in other attributes are masked in repr()."""
    assert repr(Line("k", "base64:c2VjcmV0")) == "Line('k', '<redacted>')"
    assert (
        repr(Line("a", "x-key:inline:c2VjcmV0|2^20")) == "Line('a', 'x-key:inline:<redacted>|2^20')"
    )
    assert repr(Attribute("crypto", "1 X inline:c2VjcmV0")) == (
        "Attribute('crypto', '1 X <redacted>')"
    )
    assert repr(Attribute("key-mgmt", "mikey AQAFgM0")) == "Attribute('key-mgmt', '<redacted>')"
    assert repr(Line("a", "sendrecv")) == "Line('a', 'sendrecv')"


def test_sdp_error_does_not_quote_the_key() -> None:
    """The SdpError for a bad a=crypto line names the problem, not the key."""
    data = body(
        "m=audio 4000 RTP/SAVP 0", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2VjcmV0c2VjcmV0"
    )
    with pytest.raises(SdpError) as excinfo:
        parse_sdp(data)
    assert "c2VjcmV0" not in str(excinfo.value)
