"""The media relay core (sbc.media.relay): SDP rewriting by leg policy, SRTP keys per leg,
latching, per-packet forwarding, RFC 3550 statistics, re-keys, timers and the port pool.

The phone's and the PBX's SRTP ends are :class:`Peer`, an implementation of RFC 3711 written
here on top of ``cryptography``'s AES (not libsrtp), with the rollover counter passed
explicitly: what the SBC protects must authenticate under the index the RFC says, and what the
SBC accepts must be what the RFC says a phone sends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass, fields

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sbc.errors import SdpError
from sbc.media import srtp
from sbc.media.relay import (
    RTCP_FLAG,
    Endpoint,
    LegPolicy,
    MediaEvent,
    MediaInterface,
    MediaManager,
    MediaRefused,
    MediaSession,
    MediaSettings,
    PortPool,
)
from sbc.media.sdes import CryptoAttribute, KeyParam, parse_crypto
from sbc.media.sdp import parse_sdp

S80 = "AES_CM_128_HMAC_SHA1_80"
S32 = "AES_CM_128_HMAC_SHA1_32"

pytestmark = pytest.mark.skipif(
    not {S80, S32} <= set(srtp.SUPPORTED_SUITES),
    reason=f"libsrtp does not pass the probe for {S80}/{S32}: {srtp.PROBE_FAILURES}",
)

# --------------------------------------------------------------------------------------------
# An independent SRTP/SRTCP (RFC 3711: AES-CM, HMAC-SHA1, key derivation rate 0)


def _aes_cm(key: bytes, iv: int, data: bytes) -> bytes:
    """AES in counter mode from the 128-bit ``iv`` (RFC 3711 4.1.1)."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv.to_bytes(16, "big"))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _derive(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """A session key (RFC 3711 4.3.1, kdr 0): x = (label || 0^48) XOR salt, IV = x * 2^16."""
    x = (label << 48) ^ int.from_bytes(master_salt, "big")
    return _aes_cm(master_key, x << 16, bytes(length))


class Peer:
    """One side's SRTP under one a=crypto key: the ROC is an argument, there is no replay
    window (a peer that checks nothing is the harshest test of what the SBC sends)."""

    def __init__(self, crypto: CryptoAttribute) -> None:
        assert crypto.suite in (S80, S32)
        key, salt = crypto.master_key, crypto.master_salt
        self.tag = 10 if crypto.suite == S80 else 4  # SRTCP keeps an 80-bit tag (RFC 4568 6.2)
        self.rtp_key, self.rtp_auth, self.rtp_salt = (
            _derive(key, salt, 0, 16),
            _derive(key, salt, 1, 20),
            _derive(key, salt, 2, 14),
        )
        self.rtcp_key, self.rtcp_auth, self.rtcp_salt = (
            _derive(key, salt, 3, 16),
            _derive(key, salt, 4, 20),
            _derive(key, salt, 5, 14),
        )
        self.rtcp_index = 0

    @staticmethod
    def _iv(salt: bytes, ssrc: int, index: int) -> int:
        return (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)

    def _crypt_rtp(self, packet: bytes, roc: int) -> bytes:
        seq, ssrc = struct.unpack_from("!H", packet, 2)[0], struct.unpack_from("!I", packet, 8)[0]
        header = 12 + 4 * (packet[0] & 0x0F)
        iv = self._iv(self.rtp_salt, ssrc, roc << 16 | seq)
        return packet[:header] + _aes_cm(self.rtp_key, iv, packet[header:])

    def protect(self, packet: bytes, roc: int = 0) -> bytes:
        body = self._crypt_rtp(packet, roc)
        mac = hmac.new(self.rtp_auth, body + roc.to_bytes(4, "big"), hashlib.sha1).digest()
        return body + mac[: self.tag]

    def unprotect(self, packet: bytes, roc: int = 0) -> bytes | None:
        body, tag = packet[: -self.tag], packet[-self.tag :]
        mac = hmac.new(self.rtp_auth, body + roc.to_bytes(4, "big"), hashlib.sha1).digest()
        if not hmac.compare_digest(mac[: self.tag], tag):
            return None
        return self._crypt_rtp(body, roc)

    def _crypt_rtcp(self, packet: bytes, index: int) -> bytes:
        ssrc = struct.unpack_from("!I", packet, 4)[0]
        return packet[:8] + _aes_cm(
            self.rtcp_key, self._iv(self.rtcp_salt, ssrc, index), packet[8:]
        )

    def protect_rtcp(self, packet: bytes) -> bytes:
        index = self.rtcp_index
        self.rtcp_index += 1
        body = self._crypt_rtcp(packet, index) + (0x80000000 | index).to_bytes(4, "big")
        return body + hmac.new(self.rtcp_auth, body, hashlib.sha1).digest()[:10]

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        body, tag = packet[:-10], packet[-10:]
        if not hmac.compare_digest(hmac.new(self.rtcp_auth, body, hashlib.sha1).digest()[:10], tag):
            return None
        trailer = int.from_bytes(body[-4:], "big")
        assert trailer & 0x80000000, "SRTCP must be encrypted (E flag, RFC 3711 3.4)"
        return self._crypt_rtcp(body[:-4], trailer & 0x7FFFFFFF)


def rtp(seq: int, ts: int, ssrc: int, payload: bytes = bytes(range(160)), pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def sender_report(ssrc: int, packets: int = 50) -> bytes:
    """An RTCP SR (RFC 3550 6.4.1, PT 200) without report blocks: 28 bytes."""
    return struct.pack(
        "!BBHIIIIII", 0x80, 200, 6, ssrc, 0xE6A1B2C3, 0x80000000, 8000, packets, packets * 160
    )


class Source:
    """An RTP sender: consecutive sequence numbers (and the ROC across 65535 -> 0), 20 ms of
    G.711 per packet, SRTP-protected by ``peer`` when given."""

    def __init__(self, ssrc: int, peer: Peer | None = None, seq: int = 1000) -> None:
        self.ssrc = ssrc
        self.peer = peer
        self.seq = seq
        self.roc = 0
        self.ts = 0

    def packet(self, payload: bytes = bytes(range(160))) -> bytes:
        plain = rtp(self.seq, self.ts, self.ssrc, payload)
        out = self.peer.protect(plain, self.roc) if self.peer is not None else plain
        self.seq += 1
        self.ts += 160
        if self.seq == 0x10000:
            self.seq = 0
            self.roc += 1
        return out


# --------------------------------------------------------------------------------------------
# The harness: ports, key randomness, SDP bodies, a call through offer and answer


class FakePorts:
    """The edge's port allocator: the next even port per interface (``limit`` pairs in all),
    releases recorded."""

    def __init__(self, limit: int | None = None) -> None:
        self.next = {"external": 20000, "internal": 30000}
        self.limit = limit
        self.allocated: list[tuple[str, int]] = []
        self.released: list[tuple[str, int]] = []

    def allocate(self, interface: str, endpoint: Endpoint) -> int | None:
        if self.limit is not None and len(self.allocated) >= self.limit:
            return None
        port = self.next[interface]
        self.next[interface] += 2
        self.allocated.append((interface, port))
        return port

    def release(self, endpoint: Endpoint) -> None:
        self.released.append((endpoint.interface, endpoint.port))


class CounterRandom:
    """Deterministic key material: the k-th call returns bytes (31k + i) mod 256."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return self.value(self.calls, n)

    @staticmethod
    def value(k: int, n: int) -> bytes:
        return bytes((31 * k + i) & 0xFF for i in range(n))


def sdp(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


PHONE_KEY1 = bytes(range(30))  # the phone's a=crypto:1 (AES_CM_128_HMAC_SHA1_80)
PHONE_KEY2 = bytes(range(100, 130))  # its a=crypto:2 (AES_CM_128_HMAC_SHA1_32)
PHONE_KEY3 = bytes(range(200, 230))  # its key after a re-key
PBX_KEY = bytes(range(50, 80))

PHONE_IP = "198.51.100.7"  # the phone's NAT: where its packets and its SIP come from
PHONE = (PHONE_IP, 50000)
PHONE_RTCP = (PHONE_IP, 50001)
PBX = ("192.168.1.20", 16000)
PBX_RTCP = ("192.168.1.20", 16001)
INTRUDER = ("203.0.113.66", 40000)

PHONE_SSRC = 0x11223344
PBX_SSRC = 0x55667788

PHONE_HEAD = ("v=0", "o=phone 1000 1000 IN IP4 10.1.1.5", "s=call", "c=IN IP4 10.1.1.5", "t=0 0")
AUDIO = (
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=ptime:20",
)
ICE = (
    "a=ice-ufrag:F7gI",
    "a=ice-pwd:x9cml/YzichV2+XlhiMu8g",
    "a=candidate:1 1 UDP 2130706431 10.1.1.5 4000 typ host",
    f"a=candidate:2 1 UDP 1694498815 {PHONE_IP} 50000 typ srflx raddr 10.1.1.5 rport 4000",
)


def phone_offer(
    *extra: str,
    key1: bytes = PHONE_KEY1,
    direction: str = "sendrecv",
    version: int = 1000,
) -> bytes:
    """The phone's SRTP offer: two a=crypto lines, ICE candidates, a=rtcp with an address,
    its private address in the session c=."""
    head = list(PHONE_HEAD)
    head[1] = f"o=phone 1000 {version} IN IP4 10.1.1.5"
    return sdp(
        *head,
        "m=audio 4000 RTP/SAVP 0 8 101",
        *AUDIO,
        f"a={direction}",
        "a=rtcp:4001 IN IP4 10.1.1.5",
        f"a=crypto:1 {S80} inline:{b64(key1)}",
        f"a=crypto:2 {S32} inline:{b64(PHONE_KEY2)}",
        *ICE,
        *extra,
    )


PBX_HEAD = ("v=0", "o=pbx 5 5 IN IP4 192.168.1.20", "s=pbx", "c=IN IP4 192.168.1.20", "t=0 0")
PBX_AUDIO = (
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=ptime:20",
)


def pbx_answer(*extra: str, proto: str = "RTP/AVP", direction: str = "sendrecv") -> bytes:
    return sdp(*PBX_HEAD, f"m=audio 16000 {proto} 0 101", *PBX_AUDIO, f"a={direction}", *extra)


EXTERNAL = MediaInterface("10.0.0.10", advertised="203.0.113.10")
INTERNAL = MediaInterface("192.168.1.10")
TLS_PHONE = LegPolicy("external", "require", secure=True, peer_host=PHONE_IP)
PLAIN_PBX = LegPolicy("internal", "none", peer_host=PBX[0])


def settings(**overrides: object) -> MediaSettings:
    values: dict[str, object] = {
        "interfaces": {"external": EXTERNAL, "internal": INTERNAL},
        "suites": (S80, S32),
    }
    values.update(overrides)
    return MediaSettings(**values)  # type: ignore[arg-type]


@dataclass
class Call:
    manager: MediaManager
    ports: FakePorts
    random: CounterRandom
    session: MediaSession
    offer: bytes = b""  # what the SBC sent to the PBX
    answer: bytes = b""  # what the SBC sent to the phone

    @property
    def a(self) -> Endpoint:
        """The SBC's endpoint on the phone's leg."""
        return self.session.streams[0].a

    @property
    def b(self) -> Endpoint:
        """The SBC's endpoint on the PBX's leg."""
        return self.session.streams[0].b

    def offer_from(self, leg: str, body: bytes, now: float) -> bytes:
        self.offer = self.manager.offer(self.session, leg, parse_sdp(body), body, now).to_bytes()
        return self.offer

    def answer_from(self, leg: str, body: bytes, now: float) -> bytes:
        self.answer = self.manager.answer(self.session, leg, parse_sdp(body), body, now).to_bytes()
        return self.answer

    def sbc_crypto(self, index: int = 0) -> CryptoAttribute:
        """The SBC's (only) a=crypto in stream ``index`` of its last answer to the phone."""
        (crypto,) = parse_sdp(self.answer).media[index].crypto
        return crypto


def new_call(
    a: LegPolicy = TLS_PHONE,
    b: LegPolicy = PLAIN_PBX,
    *,
    ports: FakePorts | None = None,
    now: float = 0.0,
    **overrides: object,
) -> Call:
    random = CounterRandom()
    ports = ports or FakePorts()
    manager = MediaManager(settings(**overrides), ports, random=random)
    return Call(manager, ports, random, manager.create("call-1", a, b, now))


def srtp_call(
    *offer_extra: str, answer_extra: tuple[str, ...] = (), now: float = 0.0, **overrides: object
) -> Call:
    """A TLS phone (SRTP required) calling a plain-RTP PBX: offered at ``now``, answered at
    ``now + 1``."""
    call = new_call(now=now, **overrides)
    call.offer_from("a", phone_offer(*offer_extra), now)
    call.answer_from("b", pbx_answer(*answer_extra), now + 1)
    return call


def relay(
    ep: Endpoint, packet: bytes, source: tuple[str, int], now: float, *, rtcp_port: bool = False
) -> tuple[str, bytes] | None:
    """Feed a datagram to ``ep`` like the edge does (into PACKET_VIEW, then rtp_in/rtcp_in):
    ``("rtp"|"rtcp", bytes to send)``, or ``None`` when dropped."""
    n = len(packet)
    srtp.PACKET_VIEW[:n] = packet
    m = ep.rtcp_in(n, source, now) if rtcp_port else ep.rtp_in(n, source, now)
    if m < 0:
        return None
    if m >= RTCP_FLAG:
        return "rtcp", bytes(srtp.PACKET_VIEW[: m - RTCP_FLAG])
    return ("rtcp" if rtcp_port else "rtp"), bytes(srtp.PACKET_VIEW[:m])


def crypto(tag: int, suite: str, key: bytes) -> CryptoAttribute:
    return CryptoAttribute(tag, suite, (KeyParam(key),))


def run_timers(manager: MediaManager, until: float) -> list[tuple[float, MediaEvent]]:
    """Fire the manager's timer like the driver does (at each get_timer()) up to ``until``."""
    fired: list[tuple[float, MediaEvent]] = []
    while (deadline := manager.get_timer()) is not None and deadline <= until:
        fired.extend((deadline, event) for event in manager.handle_timer(deadline))
    return fired


# --------------------------------------------------------------------------------------------
# SDP: the main rewrite, both directions


SBC_KEY = CounterRandom.value(1, 30)  # the first key the SBC draws


def test_offer_from_tls_phone_to_plain_pbx() -> None:
    """A TLS phone's SRTP offer reaches the plain PBX as RTP/AVP at the SBC's internal address
    and port, with a=rtcp at port + 1, without crypto, ICE or the phone's addresses, and with
    the codecs, fmtp, ptime and direction unchanged."""
    call = new_call()
    out = call.offer_from("a", phone_offer(), 0.0)
    assert out == sdp(
        "v=0",
        "o=phone 1000 1000 IN IP4 10.1.1.5",  # o= is the gateway's (hide_sdp_body)
        "s=call",
        "c=IN IP4 192.168.1.10",
        "t=0 0",
        "m=audio 30000 RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        "a=sendrecv",
        "a=rtcp:30001",
    )
    assert call.ports.allocated == [("external", 20000), ("internal", 30000)]
    assert call.random.calls == 0  # no key is drawn for a plain leg
    assert (call.a.port, call.b.port) == (20000, 30000)


def test_answer_from_plain_pbx_to_tls_phone() -> None:
    """The PBX's plain answer reaches the phone as RTP/SAVP at the advertised external address
    with the SBC's own key for the tag the SBC chose (1, the better suite), unlike the phone's."""
    call = srtp_call()
    assert call.answer == sdp(
        "v=0",
        "o=pbx 5 5 IN IP4 192.168.1.20",
        "s=pbx",
        "c=IN IP4 203.0.113.10",
        "t=0 0",
        "m=audio 20000 RTP/SAVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        "a=sendrecv",
        "a=rtcp:20001",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8",
    )
    ours = call.sbc_crypto()
    assert ours.key_salt == SBC_KEY
    assert ours.key_salt not in (PHONE_KEY1, PHONE_KEY2)


@pytest.mark.parametrize("offered", [False, True])
def test_rtcp_mux_is_answered_only_when_offered(offered: bool) -> None:
    """a=rtcp-mux goes to the PBX and back to the phone only when the phone offered it (RFC
    5761 5.1.1, RFC 8035); the SBC terminates it per leg, so a PBX without it changes nothing
    for the phone."""
    call = srtp_call(*(["a=rtcp-mux"] if offered else []))
    assert parse_sdp(call.offer).media[0].rtcp_mux is offered
    assert parse_sdp(call.answer).media[0].rtcp_mux is offered
    assert call.a.mux is offered
    assert call.b.mux is False  # the PBX did not answer with it


def test_session_level_ice_and_dtls_attributes_do_not_cross() -> None:
    """ICE and DTLS attributes at session level (RFC 8839 5, RFC 8122 5) are removed too:
    the far side would otherwise run ICE checks or a DTLS handshake against the SBC."""
    body = phone_offer().replace(
        b"t=0 0\r\n",
        b"t=0 0\r\na=ice-options:trickle\r\na=ice-lite\r\na=ice-ufrag:sess\r\n"
        b"a=ice-pwd:0123456789abcdef012345\r\na=fingerprint:sha-256 AB:CD\r\n"
        b"a=setup:actpass\r\na=tool:phone 1.0\r\n",
    )
    call = new_call()
    out = parse_sdp(call.offer_from("a", body, 0.0))
    assert [a.name for a in out.attributes] == ["tool"]
    answer = pbx_answer().replace(b"t=0 0\r\n", b"t=0 0\r\na=ice-lite\r\n")
    assert parse_sdp(call.answer_from("b", answer, 1.0)).attributes == []


# --------------------------------------------------------------------------------------------
# Policies


def test_plain_offer_under_require_is_refused_with_488() -> None:
    """An RTP/AVP offer without a=crypto on a leg that requires SRTP is refused with 488 as a
    security event, and nothing is allocated."""
    call = new_call()
    body = sdp(*PHONE_HEAD, "m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000")
    with pytest.raises(MediaRefused) as info:
        call.offer_from("a", body, 0.0)
    assert (info.value.status, info.value.security) == (488, True)
    assert info.value.reason == "SRTP is required: the offer has no a=crypto"
    assert call.ports.allocated == []
    assert call.manager.counters["media.refused.unencrypted"] == 1


@pytest.mark.parametrize("policy", ["require", "optional"])
def test_sdes_over_unencrypted_signalling_is_refused(policy: str) -> None:
    """SDES keys offered over a non-TLS leg are refused (488, a security event) unless
    allow_insecure_sdes: the key travelled in the clear."""
    leg = LegPolicy("external", policy, secure=False, peer_host=PHONE_IP)  # type: ignore[arg-type]
    call = new_call(leg)
    with pytest.raises(MediaRefused) as info:
        call.offer_from("a", phone_offer(), 0.0)
    assert (info.value.status, info.value.security) == (488, True)
    assert "unencrypted signalling" in info.value.reason
    assert call.ports.allocated == []
    allowed = new_call(leg, allow_insecure_sdes=True)
    allowed.offer_from("a", phone_offer(), 0.0)
    allowed.answer_from("b", pbx_answer(), 1.0)
    assert parse_sdp(allowed.answer).media[0].proto == "RTP/SAVP"


def test_srtp_only_offer_to_a_plain_interface_is_refused() -> None:
    """An RTP/SAVP offer on a leg whose policy is none is refused with 488 (not a security
    event: the SBC simply does not do SRTP there)."""
    leg = LegPolicy("external", "none", secure=True, peer_host=PHONE_IP)
    call = new_call(leg)
    with pytest.raises(MediaRefused) as info:
        call.offer_from("a", phone_offer(), 0.0)
    assert (info.value.status, info.value.security) == (488, False)


def test_optional_policy_keeps_plain_rtp_plain() -> None:
    """Under optional, a plain offer stays plain on both legs: no a=crypto anywhere and no
    SRTP context on either endpoint."""
    leg = LegPolicy("external", "optional", secure=True, peer_host=PHONE_IP)
    call = new_call(leg)
    body = sdp(*PHONE_HEAD, "m=audio 4000 RTP/AVP 0 101", *PBX_AUDIO, "a=sendrecv")
    call.offer_from("a", body, 0.0)
    call.answer_from("b", pbx_answer(), 1.0)
    for out in (call.offer, call.answer):
        m = parse_sdp(out).media[0]
        assert (m.proto, m.crypto) == ("RTP/AVP", [])
    assert call.a.rx is call.a.tx is call.b.rx is call.b.tx is None


def test_optional_policy_uses_srtp_when_offered() -> None:
    """Under optional, an SRTP offer over TLS is answered with SRTP."""
    leg = LegPolicy("external", "optional", secure=True, peer_host=PHONE_IP)
    call = new_call(leg)
    call.offer_from("a", phone_offer(), 0.0)
    call.answer_from("b", pbx_answer(), 1.0)
    assert parse_sdp(call.answer).media[0].proto == "RTP/SAVP"
    assert call.sbc_crypto().tag == 1


TLS_PBX = LegPolicy("internal", "require", secure=True, peer_host=PBX[0])
PBX_SRTP_ANSWER = pbx_answer(f"a=crypto:2 {S32} inline:{b64(PBX_KEY)}", proto="RTP/SAVP")


def test_internal_require_offers_one_crypto_per_allowed_suite() -> None:
    """When the PBX leg requires SRTP, the offer to it is RTP/SAVP with one fresh SBC key per
    allowed suite, tags 1..n, none of them a key of the phone's."""
    call = new_call(b=TLS_PBX)
    out = call.offer_from("a", phone_offer(), 0.0)
    assert out == sdp(
        "v=0",
        "o=phone 1000 1000 IN IP4 10.1.1.5",
        "s=call",
        "c=IN IP4 192.168.1.10",
        "t=0 0",
        "m=audio 30000 RTP/SAVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        "a=sendrecv",
        "a=rtcp:30001",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8",
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:Pj9AQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpb",
    )
    keys = [c.key_salt for c in parse_sdp(out).media[0].crypto]
    assert keys == [CounterRandom.value(1, 30), CounterRandom.value(2, 30)]


def test_internal_answer_without_crypto_is_refused() -> None:
    """A PBX that must use SRTP and answers without a=crypto fails the call (MediaRefused,
    a security event)."""
    call = new_call(b=TLS_PBX)
    call.offer_from("a", phone_offer(), 0.0)
    with pytest.raises(MediaRefused) as info:
        call.answer_from("b", pbx_answer(proto="RTP/SAVP"), 1.0)
    assert (info.value.status, info.value.security) == (488, True)


def test_internal_answer_picking_tag_2_installs_that_key() -> None:
    """The PBX's answer with tag 2 makes the SBC send to it with its tag-2 key and accept its
    answer key; the phone gets a third SBC key, and media flows both ways."""
    call = new_call(b=TLS_PBX)
    offer = call.offer_from("a", phone_offer(), 0.0)
    call.answer_from("b", PBX_SRTP_ANSWER, 1.0)
    sbc_tag2 = parse_sdp(offer).media[0].crypto[1]
    to_phone = call.sbc_crypto()
    assert to_phone.key_salt == CounterRandom.value(3, 30)
    keys = [to_phone.key_salt, *(c.key_salt for c in parse_sdp(offer).media[0].crypto)]
    assert len({*keys, PHONE_KEY1, PHONE_KEY2, PBX_KEY}) == 6
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    sent = relay(call.a, phone.packet(b"hello pbx"), PHONE, 2.0)
    assert sent is not None and sent[0] == "rtp"
    assert Peer(sbc_tag2).unprotect(sent[1]) == rtp(1000, 0, PHONE_SSRC, b"hello pbx")
    assert len(sent[1]) == 12 + 9 + 4  # the 32-bit tag of AES_CM_128_HMAC_SHA1_32
    pbx = Source(PBX_SSRC, Peer(crypto(2, S32, PBX_KEY)))
    back = relay(call.b, pbx.packet(b"hello phone"), PBX, 2.0)
    assert back is not None
    assert Peer(to_phone).unprotect(back[1]) == rtp(1000, 0, PBX_SSRC, b"hello phone")


# --------------------------------------------------------------------------------------------
# Capacity and release


def test_max_sessions_is_refused_with_503() -> None:
    """Beyond max_sessions, create() is refused with 503 (not a security event)."""
    call = new_call(max_sessions=1)
    with pytest.raises(MediaRefused) as info:
        call.manager.create("call-2", TLS_PHONE, PLAIN_PBX, 0.0)
    assert (info.value.status, info.value.security) == (503, False)
    call.manager.close(call.session)
    call.manager.create("call-3", TLS_PHONE, PLAIN_PBX, 1.0)


def test_ports_exhausted_is_503_and_leaks_nothing() -> None:
    """When the ports run out in the middle of an offer (the video line's second endpoint),
    the offer is refused with 503 and every pair it took is released."""
    call = new_call(ports=FakePorts(limit=3))
    body = phone_offer(
        "m=video 4002 RTP/SAVP 96",
        "a=rtpmap:96 H264/90000",
        f"a=crypto:1 {S80} inline:{b64(PHONE_KEY2)}",
    )
    with pytest.raises(MediaRefused) as info:
        call.offer_from("a", body, 0.0)
    assert (info.value.status, info.value.security) == (503, False)
    assert (
        sorted(call.ports.released)
        == sorted(call.ports.allocated)
        == [("external", 20000), ("external", 20002), ("internal", 30000)]
    )
    call.manager.close(call.session)
    assert len(call.ports.released) == 3  # nothing released twice


def test_close_releases_every_port_and_returns_stats() -> None:
    """close() releases both endpoints of every stream, frees the keys and returns the
    statistics; a second close() releases nothing more."""
    call = srtp_call(
        "m=video 4002 RTP/SAVP 96",
        "a=rtpmap:96 H264/90000",
        f"a=crypto:1 {S80} inline:{b64(PHONE_KEY2)}",
        answer_extra=("m=video 16002 RTP/AVP 96", "a=rtpmap:96 H264/90000"),
    )
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    relay(call.a, phone.packet(), PHONE, 2.0)
    stats = call.manager.close(call.session)
    assert (
        sorted(call.ports.released)
        == sorted(call.ports.allocated)
        == [("external", 20000), ("external", 20002), ("internal", 30000), ("internal", 30002)]
    )
    assert call.manager.sessions == {}
    assert stats["srtp_auth_failures"] == 0
    assert [s["index"] for s in stats["streams"]] == [0, 1]
    a = stats["streams"][0]["a"]
    assert (a["port"], a["remote"], a["latched"], a["srtp"], a["packets"]) == (
        20000,
        "198.51.100.7:50000",
        True,
        True,
        1,
    )
    assert stats["streams"][0]["b"]["sent"] == 1
    assert call.a.rx is None and call.a.tx is None
    call.manager.close(call.session)
    assert len(call.ports.released) == 4


# --------------------------------------------------------------------------------------------
# Forwarding


def test_phone_srtp_reaches_the_pbx_as_plain_rtp() -> None:
    """The phone's SRTP is authenticated, decrypted and sent to the PBX's signalled address as
    the phone's RTP packet, byte for byte; the phone's NAT address is latched."""
    call = srtp_call()
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    for i in range(3):
        out = relay(call.a, phone.packet(bytes([i]) * 160), PHONE, 2.0 + i * 0.02)
        assert out == ("rtp", rtp(1000 + i, 160 * i, PHONE_SSRC, bytes([i]) * 160))
    assert call.a.remote_rtp == PHONE and call.a.rtp_latched
    assert call.b.remote_rtp == PBX  # the PBX's signalled address, not yet latched
    assert (call.a.packets, call.b.sent) == (3, 3)


def test_pbx_rtp_reaches_the_phone_under_the_sbc_key() -> None:
    """The PBX's plain RTP goes to the phone SRTP-protected with the key in the SBC's answer
    (an independent implementation decrypts it)."""
    call = srtp_call()
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    relay(call.a, phone.packet(), PHONE, 2.0)  # latch the phone's NAT address
    pbx = Source(PBX_SSRC)
    out = relay(call.b, pbx.packet(b"x" * 160), PBX, 2.01)
    assert out is not None and out[0] == "rtp"
    assert len(out[1]) == 12 + 160 + 10
    assert Peer(call.sbc_crypto()).unprotect(out[1]) == rtp(1000, 0, PBX_SSRC, b"x" * 160)
    assert Peer(crypto(1, S80, PHONE_KEY1)).unprotect(out[1]) is None  # not the phone's key
    assert call.a.remote_rtp == PHONE


def test_rtcp_on_separate_ports_both_ways() -> None:
    """SRTCP from the phone's RTCP port reaches the PBX's RTCP port as RTCP, and the PBX's
    RTCP reaches the phone as SRTCP under the SBC's key (RFC 3711 3.4)."""
    call = srtp_call()
    phone_peer = Peer(crypto(1, S80, PHONE_KEY1))
    relay(call.a, Source(PHONE_SSRC, phone_peer).packet(), PHONE, 2.0)
    report = sender_report(PHONE_SSRC)
    out = relay(call.a, phone_peer.protect_rtcp(report), PHONE_RTCP, 2.1, rtcp_port=True)
    assert out == ("rtcp", report)
    assert call.b.rtcp_target() == PBX_RTCP
    assert call.a.remote_rtcp == PHONE_RTCP and call.a.rtcp_latched
    pbx_report = sender_report(PBX_SSRC)
    back = relay(call.b, pbx_report, PBX_RTCP, 2.2, rtcp_port=True)
    assert back is not None and back[0] == "rtcp"
    assert Peer(call.sbc_crypto()).unprotect_rtcp(back[1]) == pbx_report
    assert call.a.rtcp_target() == PHONE_RTCP
    assert (call.a.rtcp_packets, call.b.rtcp_packets) == (1, 1)


@pytest.mark.parametrize("pbx_mux", [False, True])
def test_rtcp_muxed_on_the_rtp_port(pbx_mux: bool) -> None:
    """With rtcp-mux negotiated (RFC 5761), RTCP (PT 200) arriving on a leg's RTP port is
    flagged as RTCP and goes to the other leg's RTCP target: its RTCP port, or its RTP address
    when that leg muxes too; SRTCP on the phone's side both ways."""
    call = srtp_call("a=rtcp-mux", answer_extra=("a=rtcp-mux",) if pbx_mux else ())
    pbx_target = PBX if pbx_mux else PBX_RTCP
    phone_peer = Peer(crypto(1, S80, PHONE_KEY1))
    report = sender_report(PHONE_SSRC)
    out = relay(call.a, phone_peer.protect_rtcp(report), PHONE, 2.0)  # latches RTP too
    assert out == ("rtcp", report)
    assert call.a.remote_rtp == PHONE and call.a.rtp_latched
    assert call.b.rtcp_target() == pbx_target
    assert call.b.mux is pbx_mux
    back = relay(call.b, sender_report(PBX_SSRC), pbx_target, 2.1, rtcp_port=not pbx_mux)
    assert back is not None and back[0] == "rtcp"
    assert call.a.rtcp_target() == PHONE
    assert Peer(call.sbc_crypto()).unprotect_rtcp(back[1]) == sender_report(PBX_SSRC)
    rtp_back = relay(call.b, rtp(1, 0, PBX_SSRC), PBX, 2.2)
    assert rtp_back is not None and rtp_back[0] == "rtp"


def test_tampered_auth_tag_is_dropped_and_counted_by_source() -> None:
    """A packet whose authentication tag does not verify is dropped, counted as drop_auth,
    and its source recorded; the stream continues."""
    call = srtp_call()
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    relay(call.a, phone.packet(), PHONE, 2.0)
    packet = bytearray(phone.packet())
    packet[-1] ^= 0x01
    assert relay(call.a, bytes(packet), PHONE, 2.02) is None
    assert call.a.drop_auth == 1
    assert call.a.auth_sources == {PHONE_IP: 1}
    assert call.session.auth_failures == 1
    assert relay(call.a, phone.packet(), PHONE, 2.04) is not None
    assert call.a.stats()["drops"] == {"auth": 1}
    assert call.a.stats()["auth_failure_sources"] == {PHONE_IP: 1}


def test_replayed_packet_is_dropped() -> None:
    """The same SRTP packet twice: the second is a replay (RFC 3711 3.3.2), dropped."""
    call = srtp_call()
    packet = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1))).packet()
    assert relay(call.a, packet, PHONE, 2.0) is not None
    assert relay(call.a, packet, PHONE, 2.1) is None
    assert (call.a.drop_replay, call.a.drop_auth, call.b.sent) == (1, 0, 1)


def test_third_address_after_latching_is_dropped_and_spends_no_rate() -> None:
    """Once latched, packets from any other address are dropped as drop_source, even valid
    SRTP, and a flood of them does not use up the phone's packet rate."""
    call = srtp_call(max_pps=5)
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    relay(call.a, phone.packet(), PHONE, 2.0)
    for _ in range(20):
        assert relay(call.a, phone.packet(), INTRUDER, 2.1) is None
    assert relay(call.a, phone.packet(), PHONE, 2.2) is not None
    assert (call.a.drop_source, call.a.drop_rate, call.a.drop_auth) == (20, 0, 0)
    assert call.a.remote_rtp == PHONE


def test_srtp_third_party_cannot_latch_before_the_phone() -> None:
    """Before latching, a third party's packet that does not authenticate neither latches
    nor forwards; the phone's first authentic packet then latches."""
    call = srtp_call()
    forged = Source(PHONE_SSRC, Peer(crypto(1, S80, bytes(30)))).packet()
    assert relay(call.a, forged, INTRUDER, 2.0) is None
    assert not call.a.rtp_latched
    assert call.a.auth_sources == {INTRUDER[0]: 1}
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    assert relay(call.a, phone.packet(), PHONE, 2.1) is not None
    assert call.a.remote_rtp == PHONE and call.a.rtp_latched
    assert relay(call.a, forged, INTRUDER, 2.2) is None
    assert call.a.drop_source == 1


PLAIN_PHONE = LegPolicy("external", "optional", secure=False, peer_host=PHONE_IP)
PLAIN_OFFER = sdp(
    *PHONE_HEAD[:3],
    "c=IN IP4 203.0.113.50",
    "t=0 0",
    "m=audio 7000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
)


@pytest.mark.parametrize(
    ("source", "latches"),
    [
        (("203.0.113.50", 7000), True),  # the signalled address
        ((PHONE_IP, 12345), True),  # any port of the IP the SIP comes from (NAT)
        (("203.0.113.50", 7002), False),
        (("192.0.2.99", 7000), False),
    ],
)
def test_plain_rtp_latches_only_from_signalled_address_or_sip_peer(
    source: tuple[str, int], latches: bool
) -> None:
    """Plain RTP latches only to the address the SDP signalled or to the SIP peer's IP."""
    call = new_call(PLAIN_PHONE)
    call.offer_from("a", PLAIN_OFFER, 0.0)
    call.answer_from("b", pbx_answer(), 1.0)
    out = relay(call.a, rtp(1, 0, PHONE_SSRC), source, 2.0)
    assert (out is not None) is latches
    assert call.a.rtp_latched is latches
    assert call.a.remote_rtp == (source if latches else ("203.0.113.50", 7000))
    assert call.a.drop_source == (0 if latches else 1)


@pytest.mark.parametrize(
    "packet",
    [
        rtp(1, 0, PHONE_SSRC)[:11],  # shorter than the fixed header
        b"\x40" + rtp(1, 0, PHONE_SSRC)[1:],  # version 1
        b"\x00" + rtp(1, 0, PHONE_SSRC)[1:],  # version 0 (a STUN packet starts so)
        b"\xc0" + rtp(1, 0, PHONE_SSRC)[1:],  # version 3
    ],
)
def test_malformed_packet_is_dropped(packet: bytes) -> None:
    """A datagram that is not an RTP version 2 packet is dropped as drop_malformed on both
    ports, before any decryption."""
    call = srtp_call()
    assert relay(call.a, packet, PHONE, 2.0) is None
    on_rtcp_port = packet if len(packet) > 11 else packet[:7]  # RTCP's minimum is 8 bytes
    assert relay(call.a, on_rtcp_port, PHONE_RTCP, 2.0, rtcp_port=True) is None
    assert (call.a.drop_malformed, call.a.drop_auth, call.a.rtp_latched) == (2, 0, False)


def test_rate_limit_per_second() -> None:
    """More than max_pps packets within one second are dropped as drop_rate; the next second
    accepts again."""
    call = srtp_call(max_pps=5)
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    results = [relay(call.a, phone.packet(), PHONE, 10.0 + i * 0.1) for i in range(7)]
    assert [r is not None for r in results] == [True] * 5 + [False] * 2
    assert call.a.drop_rate == 2
    assert relay(call.a, phone.packet(), PHONE, 11.0) is not None
    assert call.a.drop_rate == 2


def test_no_peer_address_on_the_other_leg_is_dropped() -> None:
    """Media before the other leg has an address (the PBX has not answered) is dropped and
    counted as drop_no_peer on that leg."""
    call = new_call()
    call.offer_from("a", phone_offer(), 0.0)
    phone_peer = Peer(crypto(1, S80, PHONE_KEY1))
    assert relay(call.a, Source(PHONE_SSRC, phone_peer).packet(), PHONE, 0.5) is None
    assert (
        relay(
            call.a,
            phone_peer.protect_rtcp(sender_report(PHONE_SSRC)),
            PHONE_RTCP,
            0.5,
            rtcp_port=True,
        )
        is None
    )
    assert call.b.drop_no_peer == 2
    assert call.a.rtp_latched  # authenticated: the phone's address is known already


# --------------------------------------------------------------------------------------------
# Receiver statistics (RFC 3550 A.1, A.8)


def plain_call() -> Call:
    call = new_call(PLAIN_PHONE)
    call.offer_from("a", PLAIN_OFFER, 0.0)
    call.answer_from("b", pbx_answer(), 1.0)
    return call


def test_loss_counts_sequence_gaps_across_the_wrap() -> None:
    """Loss is expected minus received with the extended sequence number (RFC 3550 A.1
    arithmetic): 65533..3 with seq 1 missing is 7 expected, 6 received, 1 lost."""
    call = plain_call()
    for i, seq in enumerate([65533, 65534, 65535, 0, 2, 3]):
        relay(call.a, rtp(seq, 160 * i, PHONE_SSRC), ("203.0.113.50", 7000), 2.0)
    assert (call.a.base_seq, call.a.max_seq, call.a.cycles) == (65533, 3, 65536)
    stats = call.a.stats()
    assert (stats["lost"], stats["loss"], stats["reordered"]) == (1, 0.1429, 0)


def test_reordered_packets_are_counted_and_not_lost() -> None:
    """A late packet (behind the highest sequence number) counts as reordered, not as lost
    and not as a new highest number."""
    call = plain_call()
    for seq in [10, 11, 13, 12, 14]:
        relay(call.a, rtp(seq, 0, PHONE_SSRC), ("203.0.113.50", 7000), 2.0)
    stats = call.a.stats()
    assert (call.a.max_seq, stats["reordered"], stats["lost"], stats["loss"]) == (14, 1, 0, 0.0)


def test_jitter_follows_rfc3550_a8() -> None:
    """Interarrival jitter at 8000 Hz: J += (|D| - J) / 16 on transit differences."""
    call = plain_call()
    # Packets every 1/64 s (125 samples); the third arrives 1/64 s late and the fourth on
    # time right behind it.  Transits 7000, 7000, 7125, 7000: |D| = 0, 125, 125.
    for ts, now in [(1000, 1.0), (1125, 1.015625), (1250, 1.046875), (1375, 1.046875)]:
        relay(call.a, rtp(ts // 125, ts, PHONE_SSRC), ("203.0.113.50", 7000), now)
    # J = 0; J = 125/16 = 7.8125; J = 7.8125 + (125 - 7.8125)/16 = 15.13671875
    assert call.a.jitter == 15.13671875
    assert call.a.stats()["jitter_ms"] == 1.89  # 15.13671875 / 8 samples per ms


# --------------------------------------------------------------------------------------------
# Re-keys


def rekey(
    call: Call, offer_at: float, answer_at: float, *, answer: bytes | None = None
) -> CryptoAttribute:
    """The phone re-offers with PHONE_KEY3; the PBX answers; returns the SBC's new key."""
    call.offer_from("a", phone_offer(key1=PHONE_KEY3, version=1001), offer_at)
    call.answer_from("b", answer or pbx_answer(), answer_at)
    return call.sbc_crypto()


def test_rekey_answer_carries_a_fresh_sbc_key() -> None:
    """When the phone re-keys, the SBC's answer carries a new key of its own too, and the
    PBX's leg sees an unchanged offer (it is plain)."""
    call = srtp_call()
    first_offer, old = call.offer, call.sbc_crypto()
    new = rekey(call, 10.0, 10.5)
    assert new.tag == old.tag == 1
    assert new.key_salt not in (old.key_salt, PHONE_KEY3, PHONE_KEY1)
    assert call.offer == first_offer.replace(b"1000 1000", b"1000 1001")
    assert call.manager.counters["media.rekey"] == 1


def test_rekey_with_the_same_pbx_answer_body_still_rekeys() -> None:
    """A re-key answered by the PBX with the very body it sent before still gets the SBC's
    fresh key: a cached answer belongs to one offer/answer exchange."""
    call = srtp_call()
    old = call.sbc_crypto()
    new = rekey(call, 10.0, 10.5, answer=pbx_answer())
    assert new.key_salt != old.key_salt
    pbx = Source(PBX_SSRC)
    relay(call.a, Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY3))).packet(), PHONE, 11.0)
    out = relay(call.b, pbx.packet(), PBX, 11.0)
    assert out is not None and Peer(new).unprotect(out[1]) is not None


def test_rekey_old_key_decrypts_within_grace_only() -> None:
    """After a re-key the phone's old key still decrypts for rekey_grace seconds from the
    answer (late packets), not after; the new key keeps decrypting."""
    call = srtp_call(rekey_grace=5.0)
    old_phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    assert relay(call.a, old_phone.packet(), PHONE, 2.0) is not None
    rekey(call, 10.0, 11.0)
    # The phone switched at seq 1005; its packets 1001..1003 under the old key were late.
    new_phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY3)), seq=1005)
    assert relay(call.a, new_phone.packet(), PHONE, 11.5) is not None
    assert relay(call.a, old_phone.packet(), PHONE, 15.9) is not None
    assert relay(call.a, old_phone.packet(), PHONE, 16.0) is None
    assert (call.a.drop_auth, call.a.drop_replay) == (1, 0)
    assert relay(call.a, new_phone.packet(), PHONE, 16.1) is not None


def test_rekey_keeps_the_old_key_until_the_answer() -> None:
    """A re-INVITE answered late (20 s) does not cut the phone off: it keeps sending with its
    old key until it has the answer (RFC 4568 7.1.4), so the grace starts at the answer; a
    phone that switches early is accepted too."""
    call = srtp_call(rekey_grace=5.0)
    old_phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    call.offer_from("a", phone_offer(key1=PHONE_KEY3, version=1001), 10.0)
    for now in (12.0, 20.0):
        assert relay(call.a, old_phone.packet(), PHONE, now) is not None
    new_phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY3)), seq=1100)
    assert relay(call.a, new_phone.packet(), PHONE, 25.0) is not None
    assert relay(call.a, old_phone.packet(), PHONE, 29.9) is not None
    call.answer_from("b", pbx_answer(), 30.0)
    assert relay(call.a, old_phone.packet(), PHONE, 34.9) is not None
    assert relay(call.a, old_phone.packet(), PHONE, 35.0) is None


@pytest.mark.skipif(
    not srtp.ROC_CONTROL, reason="this libsrtp cannot set a rollover counter (srtp.ROC_CONTROL)"
)
def test_rekey_carries_the_rollover_counter_both_ways() -> None:
    """Both sides cross sequence 65535 -> 0 before the re-key; after it, the phone's packets
    under its new key with ROC 1 decrypt, and the SBC protects the PBX's packets under its
    new key with ROC 1 (RFC 3711 3.3.1: a new master key does not reset the ROC)."""
    call = srtp_call()
    old_sbc = Peer(call.sbc_crypto())
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)), seq=65534)
    pbx = Source(PBX_SSRC, seq=65534)
    for i in range(4):  # 65534, 65535, 0, 1
        assert relay(call.a, phone.packet(), PHONE, 2.0 + i / 50) is not None
        out = relay(call.b, pbx.packet(), PBX, 2.0 + i / 50)
        assert out is not None
        assert old_sbc.unprotect(out[1], roc=0 if i < 2 else 1) is not None
    assert (phone.roc, pbx.roc) == (1, 1)
    new_sbc = Peer(rekey(call, 10.0, 10.5))
    phone.peer = Peer(crypto(1, S80, PHONE_KEY3))
    sent = relay(call.a, phone.packet(b"after"), PHONE, 11.0)
    assert sent == ("rtp", rtp(2, 4 * 160, PHONE_SSRC, b"after"))
    out = relay(call.b, pbx.packet(b"after"), PBX, 11.0)
    assert out is not None
    assert new_sbc.unprotect(out[1], roc=1) == rtp(2, 4 * 160, PBX_SSRC, b"after")
    assert new_sbc.unprotect(out[1], roc=0) is None


# --------------------------------------------------------------------------------------------
# Re-offers, repeated answers, rejected and extra streams


def test_reoffer_without_changes_gives_the_same_sdp() -> None:
    """A re-INVITE with the same SDP (session refresh) gives the same offer and answer, keys
    and ports included; with only o= bumped, only o= differs."""
    call = srtp_call()
    offer, answer = call.offer, call.answer
    call.offer_from("a", phone_offer(), 100.0)
    call.answer_from("b", pbx_answer(), 100.5)
    assert (call.offer, call.answer) == (offer, answer)
    bumped = call.offer_from("a", phone_offer(version=1001), 200.0)
    assert bumped == offer.replace(b"1000 1000", b"1000 1001")
    assert call.answer_from("b", pbx_answer().replace(b"5 5", b"5 6"), 200.5) == answer.replace(
        b"5 5", b"5 6"
    )
    assert len(call.ports.allocated) == 2
    assert call.manager.counters.get("media.rekey") is None


def test_same_answer_twice_gives_the_same_sdp() -> None:
    """The same answer body in a 183 and then in the 200 gives the same SDP both times, the
    SBC's key included."""
    call = new_call()
    call.offer_from("a", phone_offer(), 0.0)
    first = call.answer_from("b", pbx_answer(), 1.0)
    second = call.answer_from("b", pbx_answer(), 5.0)
    assert first == second
    assert call.random.calls == 1


def test_stream_rejected_by_the_answerer() -> None:
    """A stream the answerer rejects (port 0) is rejected toward the offerer (port 0, no
    address or key of anyone) and its ports are released; the other stream carries on."""
    call = new_call()
    call.offer_from(
        "a",
        phone_offer(
            "m=video 4002 RTP/SAVP 96",
            "a=rtpmap:96 H264/90000",
            f"a=crypto:1 {S80} inline:{b64(PHONE_KEY2)}",
        ),
        0.0,
    )
    answer = pbx_answer("m=video 0 RTP/AVP 96")
    out = parse_sdp(call.answer_from("b", answer, 1.0))
    video = out.media[1]
    assert (video.port, video.crypto, video.rtcp) == (0, [], None)
    assert out.media[0].port == 20000
    assert sorted(call.ports.released) == [("external", 20002), ("internal", 30002)]
    assert call.session.streams[1].rejected
    assert [s["index"] for s in call.manager.stats(call.session)["streams"]] == [0]


def test_video_stream_gets_its_own_ports_and_keys() -> None:
    """A second m= line (video) gets its own pair on each leg and its own SBC key; its own
    c= line is read, and rewritten to the SBC's address."""
    call = srtp_call(
        "m=video 4002 RTP/SAVP 96",
        "c=IN IP4 10.1.1.6",
        "a=rtpmap:96 H264/90000",
        f"a=crypto:1 {S80} inline:{b64(PHONE_KEY2)}",
        answer_extra=("m=video 16002 RTP/AVP 96", "a=rtpmap:96 H264/90000"),
    )
    offer, answer = parse_sdp(call.offer), parse_sdp(call.answer)
    assert [m.port for m in offer.media] == [30000, 30002]
    assert [m.port for m in answer.media] == [20000, 20002]
    assert [m.rtcp.port for m in offer.media if m.rtcp] == [30001, 30003]
    keys = [call.sbc_crypto(index=i).key_salt for i in (0, 1)]
    assert keys[0] != keys[1]
    assert offer.media[1].connection is not None
    assert offer.media[1].connection.address == "192.168.1.10"
    video = call.session.streams[1]
    assert video.a.signalled_rtp == ("10.1.1.6", 4002)
    assert video.b.remote_rtp == ("192.168.1.20", 16002)
    assert video.b.clock_rate == 90000
    assert video.a.rx is not call.a.rx


def test_non_rtp_media_line_gets_port_0() -> None:
    """An m=image udptl (T.38) line the relay cannot carry goes on with port 0, nothing is
    allocated for it, and the answer's matching port-0 line is accepted."""
    call = new_call()
    out = parse_sdp(
        call.offer_from("a", phone_offer("m=image 5000 udptl t38", "a=T38FaxVersion:0"), 0.0)
    )
    image = out.media[1]
    assert (image.port, image.proto, image.formats) == (0, "udptl", ("t38",))
    assert len(call.ports.allocated) == 2
    answer = parse_sdp(call.answer_from("b", pbx_answer("m=image 0 udptl t38"), 1.0))
    assert [m.port for m in answer.media] == [20000, 0]


def test_answer_with_a_different_number_of_streams_is_an_sdp_error() -> None:
    """An answer that does not have one m= line per offered stream is an SdpError."""
    call = new_call()
    call.offer_from("a", phone_offer(), 0.0)
    with pytest.raises(SdpError):
        call.answer_from("b", pbx_answer("m=video 0 RTP/AVP 96"), 1.0)


def test_large_wsh_is_bounded() -> None:
    """A WSH hint (RFC 4568 6.3.7) is a minimum: the window is never smaller than the default
    and never larger than libsrtp's maximum."""
    for wsh, window in [
        (64, srtp.DEFAULT_WINDOW_SIZE),
        (4096, 4096),
        (9999999999, srtp.MAX_WINDOW_SIZE),
    ]:
        call = new_call()
        call.offer_from(
            "a",
            phone_offer().replace(
                f"inline:{b64(PHONE_KEY1)}".encode(), f"inline:{b64(PHONE_KEY1)} WSH={wsh}".encode()
            ),
            0.0,
        )
        assert call.a.rx.window_size == window


# --------------------------------------------------------------------------------------------
# Offers that fail: the session stays as it was (RFC 3264 8, RFC 3261 14.1)


def moved_offer(*extra: str, key1: bytes = PHONE_KEY1) -> bytes:
    """The phone's re-offer (o= version 1001) from another address: 10.1.1.9:4100."""
    return (
        phone_offer(*extra, key1=key1, version=1001)
        .replace(b"10.1.1.5", b"10.1.1.9")
        .replace(b"m=audio 4000", b"m=audio 4100")
        .replace(b"a=rtcp:4001", b"a=rtcp:4101")
    )


VIDEO = (
    "m=video 4002 RTP/SAVP 96",
    "a=rtpmap:96 H264/90000",
    f"a=crypto:1 {S80} inline:{b64(PHONE_KEY2)}",
)
VIDEO_ANSWER = ("m=video 16002 RTP/AVP 96", "a=rtpmap:96 H264/90000")
OPTIONAL_PHONE = LegPolicy("external", "optional", secure=True, peer_host=PHONE_IP)
PLAIN_REOFFER = sdp(
    "v=0",
    "o=phone 1000 1001 IN IP4 10.1.1.5",
    "s=call",
    "c=IN IP4 10.1.1.5",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0 8 101",
    *AUDIO,
    "a=sendrecv",
    "a=rtcp:4001 IN IP4 10.1.1.5",
)


def values(obj: object) -> tuple[object, ...]:
    """A dataclass's field values (a leg's negotiation state compares by identity)."""
    return tuple(getattr(obj, f.name) for f in fields(obj))  # type: ignore[arg-type]


class PoolPorts(FakePorts):
    """FakePorts whose pairs come from a real PortPool (4 pairs per interface from 20000, no
    quarantine), as the edge's do: ``pool.free()`` is what is left."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = PortPool(20000, 20008, ["external", "internal"], quarantine=0.0)

    def allocate(self, interface: str, endpoint: Endpoint) -> int | None:
        port = self.pool.take(interface, 0.0)
        if port is not None:
            self.allocated.append((interface, port))
        return port

    def release(self, endpoint: Endpoint) -> None:
        super().release(endpoint)
        self.pool.put(endpoint.interface, endpoint.port, 0.0)


def test_failed_reoffer_restores_the_address_and_the_latched_peer() -> None:
    """A re-offer from a new address unlatches at once; when it fails the endpoint is back on
    the signalled address and the latched NAT address of before, media goes there, the new
    address is a stranger, and a late answer answers nothing."""
    call = srtp_call()
    offer, answer = call.offer, call.answer
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    assert relay(call.a, phone.packet(), PHONE, 2.0) is not None  # latches the NAT address
    call.offer_from("a", moved_offer(), 10.0)
    a = call.a
    moved = ("10.1.1.9", 4100)
    assert (a.signalled_rtp, a.remote_rtp, a.rtp_latched) == (moved, moved, False)
    assert call.manager.offer_failed(call.session, "a") is True
    assert (a.signalled_rtp, a.signalled_rtcp, a.remote_rtp, a.remote_rtcp) == (
        ("10.1.1.5", 4000),
        ("10.1.1.5", 4001),
        PHONE,
        PHONE_RTCP,
    )
    assert (a.rtp_latched, a.rtcp_latched, a.mux, a.clock_rate) == (True, False, False, 8000)
    assert (call.session.offer_from, call.session.pending) == (None, None)
    assert call.manager.counters["media.offer_failed"] == 1
    assert call.manager.offer_failed(call.session, "a") is False  # nothing left to undo
    with pytest.raises(SdpError):
        call.answer_from("b", pbx_answer(), 11.0)
    pbx = Source(PBX_SSRC)
    assert relay(call.b, pbx.packet(), PBX, 12.0) is not None and a.remote_rtp == PHONE
    assert relay(call.a, phone.packet(), ("10.1.1.9", 4100), 12.0) is None
    assert relay(call.a, phone.packet(), PHONE, 12.0) == ("rtp", rtp(1002, 320, PHONE_SSRC))
    assert (a.drop_source, a.drop_auth) == (1, 0)
    # The session is consistent: the same re-offer as before, answered, gives the same SDP.
    assert call.offer_from("a", phone_offer(version=1001), 20.0) == offer.replace(
        b"1000 1000", b"1000 1001"
    )
    assert call.answer_from("b", pbx_answer(), 20.5) == answer
    assert len(call.ports.allocated) == 2 and call.ports.released == []


def test_failed_rekey_brings_the_old_key_back() -> None:
    """When the phone's re-key fails, its old key decrypts again with no end, the new key is
    refused and counted, and the SBC's key towards the phone is the one of before."""
    call = srtp_call(rekey_grace=5.0)
    old_phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    assert relay(call.a, old_phone.packet(), PHONE, 2.0) is not None
    rx, tx = call.a.rx, call.a.tx
    call.offer_from("a", phone_offer(key1=PHONE_KEY3, version=1001), 10.0)
    assert call.a.rx is not rx and call.a.rx_prev is rx
    assert call.manager.offer_failed(call.session, "a") is True
    assert call.a.rx is rx and call.a.rx_prev is None and call.a.tx is tx
    new_phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY3)), seq=1100)
    assert relay(call.a, new_phone.packet(), PHONE, 11.0) is None
    assert relay(call.a, old_phone.packet(), PHONE, 100.0) == ("rtp", rtp(1001, 160, PHONE_SSRC))
    assert (call.a.drop_auth, call.a.drop_replay, call.a.auth_sources) == (1, 0, {PHONE_IP: 1})
    assert call.session.streams[0].state["a"].their_key == crypto(1, S80, PHONE_KEY1)
    out = relay(call.b, Source(PBX_SSRC).packet(b"b" * 160), PBX, 100.0)
    assert out is not None
    assert Peer(call.sbc_crypto()).unprotect(out[1]) == rtp(1000, 0, PBX_SSRC, b"b" * 160)


def test_refused_plain_reoffer_keeps_srtp() -> None:
    """A plain re-offer leaves SRTP running until the answer; when it fails the contexts are
    the same ones, never closed, both ways; answered, plain RTP from the answer on."""
    call = new_call(OPTIONAL_PHONE)
    call.offer_from("a", phone_offer(), 0.0)
    call.answer_from("b", pbx_answer(), 1.0)
    sbc = Peer(call.sbc_crypto())
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    pbx = Source(PBX_SSRC)
    assert relay(call.a, phone.packet(), PHONE, 2.0) is not None
    rx, tx = call.a.rx, call.a.tx
    call.offer_from("a", PLAIN_REOFFER, 10.0)
    assert call.a.rx is rx and call.a.tx is tx  # the phone sends SRTP until it has the answer
    assert relay(call.a, phone.packet(), PHONE, 10.5) == ("rtp", rtp(1001, 160, PHONE_SSRC))
    assert call.manager.offer_failed(call.session, "a") is True
    assert call.a.rx is rx and call.a.tx is tx
    assert call.session.streams[0].state["a"].srtp is True
    assert relay(call.a, phone.packet(), PHONE, 11.0) == ("rtp", rtp(1002, 320, PHONE_SSRC))
    out = relay(call.b, pbx.packet(), PBX, 11.0)
    assert out is not None and sbc.unprotect(out[1]) == rtp(1000, 0, PBX_SSRC)
    # The same offer accepted this time: plain RTP both ways once answered.
    call.offer_from("a", PLAIN_REOFFER, 20.0)
    answer = parse_sdp(call.answer_from("b", pbx_answer(), 20.5)).media[0]
    assert (answer.proto, answer.crypto) == ("RTP/AVP", [])
    assert (call.a.rx, call.a.rx_prev, call.a.tx) == (None, None, None)
    assert relay(call.b, pbx.packet(b"p" * 160), PBX, 21.0) == (
        "rtp",
        rtp(1001, 160, PBX_SSRC, b"p" * 160),
    )


def test_stream_refused_by_a_failed_reoffer_keeps_its_ports() -> None:
    """A re-offer that drops the video (port 0) releases nothing before the answer: when it
    fails, the video stream keeps its ports and relays on; answered, its ports go back."""
    call = srtp_call(*VIDEO, answer_extra=VIDEO_ANSWER)
    video = call.session.streams[1]
    no_video = phone_offer("m=video 0 RTP/SAVP 96", "a=rtpmap:96 H264/90000", version=1001)
    assert [m.port for m in parse_sdp(call.offer_from("a", no_video, 10.0)).media] == [30000, 0]
    assert call.ports.released == [] and not video.rejected
    assert call.manager.offer_failed(call.session, "a") is True
    assert call.session.streams == [call.session.streams[0], video]
    assert (video.rejected, video.a.port, video.b.port) == (False, 20002, 30002)
    camera = Source(0x0BADCAFE, Peer(crypto(1, S80, PHONE_KEY2)))
    assert relay(video.a, camera.packet(b"v" * 160), (PHONE_IP, 50002), 11.0) == (
        "rtp",
        rtp(1000, 0, 0x0BADCAFE, b"v" * 160),
    )
    assert video.b.sent == 1
    call.offer_from("a", no_video, 20.0)
    call.answer_from("b", pbx_answer("m=video 0 RTP/AVP 96"), 20.5)
    assert sorted(call.ports.released) == [("external", 20002), ("internal", 30002)]
    assert video.rejected and video.a.rx is None


def test_streams_added_by_a_failed_reoffer_go_back_to_the_pool() -> None:
    """A re-offer that adds video takes a pair on each leg; when it fails both pairs are back
    in the pool and the session has its one stream again."""
    ports = PoolPorts()
    call = new_call(ports=ports)
    call.offer_from("a", phone_offer(), 0.0)
    call.answer_from("b", pbx_answer(), 1.0)
    assert (ports.pool.free("external"), ports.pool.free("internal")) == (3, 3)
    out = parse_sdp(call.offer_from("a", phone_offer(*VIDEO, version=1001), 10.0))
    assert [m.port for m in out.media] == [20000, 20002]
    assert (ports.pool.free("external"), ports.pool.free("internal")) == (2, 2)
    assert call.manager.offer_failed(call.session, "a") is True
    assert (ports.pool.free("external"), ports.pool.free("internal")) == (3, 3)
    assert sorted(ports.released) == [("external", 20002), ("internal", 20002)]
    assert len(call.session.streams) == 1


def test_ports_running_out_in_a_reoffer_change_nothing() -> None:
    """A re-offer that moves and re-keys the audio and adds video, refused with 503 when the
    video's second pair is not there, leaves everything as it was: the audio's address, latch
    and keys, the offer in progress and the cached offer; the one pair it took goes back."""
    call = srtp_call(ports=FakePorts(limit=3))
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    assert relay(call.a, phone.packet(), PHONE, 2.0) is not None
    a, state = call.a, values(call.session.streams[0].state["a"])
    before = (a.signalled_rtp, a.remote_rtp, a.rtp_latched, a.rx, a.rx_prev, a.rx_prev_until, a.tx)
    last_offer = dict(call.session.last_offer)
    with pytest.raises(MediaRefused) as info:
        call.offer_from("a", moved_offer(*VIDEO, key1=PHONE_KEY3), 10.0)
    assert info.value.status == 503
    assert (a.signalled_rtp, a.remote_rtp, a.rtp_latched, a.rx, a.rx_prev, a.rx_prev_until,
            a.tx) == before
    assert a.saved is None and call.b.saved is None
    assert values(call.session.streams[0].state["a"]) == state
    assert call.session.streams[0].state["a"].their_key == crypto(1, S80, PHONE_KEY1)
    assert (call.session.offer_from, call.session.pending, call.session.last_offer) == (
        "a",
        None,
        last_offer,
    )
    assert len(call.session.streams) == 1 and call.ports.released == [("external", 20002)]
    assert relay(call.a, phone.packet(), PHONE, 11.0) == ("rtp", rtp(1001, 160, PHONE_SSRC))


PBX_KEY2 = bytes(range(150, 180))  # the PBX's video key
PBX_KEY3 = bytes(range(180, 210))  # its audio key in the refused answer


def test_refused_answer_is_undone_on_the_answering_leg_too() -> None:
    """The PBX answers a re-offer from a new address with a new audio key, and a video line
    without a=crypto where SRTP is required: the answer is refused (MediaRefused) after the
    audio was applied; the failed offer puts the PBX's endpoint back too (address, key)."""
    call = new_call(b=TLS_PBX)
    call.offer_from("a", phone_offer(*VIDEO), 0.0)
    video_answer = ("m=video 16002 RTP/SAVP 96", "a=rtpmap:96 H264/90000")
    call.answer_from(
        "b",
        pbx_answer(f"a=crypto:2 {S32} inline:{b64(PBX_KEY)}", *video_answer,
                   f"a=crypto:1 {S80} inline:{b64(PBX_KEY2)}", proto="RTP/SAVP"),
        1.0,
    )
    b, to_phone = call.b, Peer(call.sbc_crypto())
    rx, tx = b.rx, b.tx
    call.offer_from("a", phone_offer(*VIDEO, version=1001), 10.0)
    refused = pbx_answer(
        f"a=crypto:2 {S32} inline:{b64(PBX_KEY3)}", *video_answer, proto="RTP/SAVP"
    ).replace(b"192.168.1.20", b"192.168.1.21")
    with pytest.raises(MediaRefused):
        call.answer_from("b", refused, 10.5)
    assert b.remote_rtp == ("192.168.1.21", 16000) and b.rx is not rx  # the audio was applied
    assert call.manager.offer_failed(call.session, "a") is True
    assert (b.signalled_rtp, b.remote_rtp, b.rx, b.rx_prev, b.tx) == (PBX, PBX, rx, None, tx)
    new_pbx = Source(PBX_SSRC, Peer(crypto(2, S32, PBX_KEY3)))
    assert relay(call.b, new_pbx.packet(), PBX, 11.0) is None
    pbx = Source(PBX_SSRC, Peer(crypto(2, S32, PBX_KEY)), seq=2000)
    out = relay(call.b, pbx.packet(b"x" * 160), PBX, 11.0)
    assert out is not None and to_phone.unprotect(out[1]) == rtp(2000, 0, PBX_SSRC, b"x" * 160)
    assert b.drop_auth == 1


def test_an_offer_answered_in_a_183_can_still_fail() -> None:
    """An answer in a provisional response does not settle the re-offer: after it, a non-2xx
    final still puts both legs back (RFC 3261 14.1); a final answer with the same body
    settles it (the next failure undoes nothing)."""
    call = srtp_call()
    call.offer_from("a", moved_offer(), 10.0)
    moved_pbx = pbx_answer().replace(b"192.168.1.20", b"192.168.1.21")
    call.manager.answer(call.session, "b", parse_sdp(moved_pbx), moved_pbx, 10.2,
                        provisional=True)
    assert (call.a.remote_rtp, call.b.remote_rtp) == (("10.1.1.9", 4100), ("192.168.1.21", 16000))
    assert call.manager.offer_failed(call.session, "a") is True
    assert (call.a.remote_rtp, call.b.remote_rtp) == (("10.1.1.5", 4000), PBX)
    call.offer_from("a", moved_offer(), 20.0)
    call.manager.answer(call.session, "b", parse_sdp(moved_pbx), moved_pbx, 20.2,
                        provisional=True)
    call.answer_from("b", moved_pbx, 20.5)  # the 200: the same answer, settled
    assert call.manager.offer_failed(call.session, "a") is False
    assert (call.a.remote_rtp, call.b.remote_rtp) == (("10.1.1.9", 4100), ("192.168.1.21", 16000))


# --------------------------------------------------------------------------------------------
# Timers


def test_inactivity_event_after_the_timeout_not_before() -> None:
    """With no packet after the call is answered, "inactive" comes at the first sweep
    inactivity_timeout seconds after the answer, not earlier."""
    call = srtp_call(inactivity_timeout=30.0)
    call.manager.answered(call.session, 1.0)
    assert run_timers(call.manager, 30.9) == []
    fired = run_timers(call.manager, 31.0)
    assert fired == [(31.0, MediaEvent("inactive", "call-1", {"idle": 30.0}))]
    assert call.manager.counters["media.event.inactive"] == 1


def test_packets_keep_the_call_alive() -> None:
    """Each packet restarts the inactivity count."""
    call = srtp_call(inactivity_timeout=30.0)
    call.manager.answered(call.session, 1.0)
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    assert run_timers(call.manager, 20.0) == []
    relay(call.a, phone.packet(), PHONE, 20.0)
    assert run_timers(call.manager, 49.0) == []
    assert [(t, e.kind) for t, e in run_timers(call.manager, 50.0)] == [(50.0, "inactive")]


def test_inactive_streams_do_not_time_out() -> None:
    """A call whose only stream is a=inactive (on hold both ways) expects no media."""
    call = new_call(inactivity_timeout=30.0)
    call.offer_from("a", phone_offer(direction="inactive"), 0.0)
    call.answer_from("b", pbx_answer(direction="inactive"), 1.0)
    call.manager.answered(call.session, 1.0)
    assert run_timers(call.manager, 200.0) == []


def test_early_media_answer_does_not_start_the_timers() -> None:
    """An answer in a 183 (early media) does not start the inactivity or duration count; the
    2xx (answered()) does."""
    call = srtp_call(inactivity_timeout=30.0, max_call_duration=60.0)
    assert run_timers(call.manager, 100.0) == []
    call.manager.answered(call.session, 100.0)
    assert [(t, e.kind) for t, e in run_timers(call.manager, 130.0)] == [(130.0, "inactive")]


def test_max_call_duration() -> None:
    """max_call_duration after the answer gives a "duration" event, packets or not."""
    call = srtp_call(max_call_duration=60.0)
    call.manager.answered(call.session, 1.0)
    phone = Source(PHONE_SSRC, Peer(crypto(1, S80, PHONE_KEY1)))
    for t in range(2, 62, 5):
        relay(call.a, phone.packet(), PHONE, float(t))
    assert run_timers(call.manager, 60.0) == []
    assert run_timers(call.manager, 61.0) == [
        (61.0, MediaEvent("duration", "call-1", {"seconds": 60}))
    ]


def test_srtp_auth_failure_storm_raises_one_event() -> None:
    """auth_alarm failed authentications in a call give one "srtp_auth_failures" event with
    the counts by source, once."""
    call = srtp_call(auth_alarm=3)
    forged = Peer(crypto(1, S80, bytes(30)))
    relay(call.a, Source(PHONE_SSRC, forged).packet(), INTRUDER, 2.0)
    relay(call.a, Source(PHONE_SSRC, forged, seq=7).packet(), ("192.0.2.1", 9), 2.0)
    assert run_timers(call.manager, 3.0) == []
    relay(call.a, Source(PHONE_SSRC, forged, seq=8).packet(), INTRUDER, 3.5)
    assert run_timers(call.manager, 10.0) == [
        (
            4.0,
            MediaEvent(
                "srtp_auth_failures",
                "call-1",
                {"count": 3, "sources": {INTRUDER[0]: 2, "192.0.2.1": 1}},
            ),
        )
    ]


def test_timer_is_armed_only_with_sessions() -> None:
    """get_timer() is the next sweep while a session exists and None without any."""
    call = new_call(now=5.0)
    assert call.manager.get_timer() == 6.0
    assert call.manager.handle_timer(5.5) == []
    assert call.manager.get_timer() == 6.0
    call.manager.handle_timer(6.0)
    assert call.manager.get_timer() == 7.0
    call.manager.close(call.session)
    assert call.manager.get_timer() is None


# --------------------------------------------------------------------------------------------
# PortPool


def test_port_pool_hands_out_even_ports_only() -> None:
    """An odd start rounds up; every port handed out is even, with its RTCP port within the
    (inclusive) range."""
    pool = PortPool(10001, 10009, ["external"])
    ports = []
    while (port := pool.take("external", 0.0)) is not None:
        ports.append(port)
    assert ports == [10002, 10004, 10006, 10008]
    assert pool.take("internal", 0.0) is None


def test_port_pool_is_least_recently_used_first() -> None:
    """Released pairs go to the back: the pool cycles through the whole range."""
    pool = PortPool(10000, 10005, ["internal"], quarantine=0.0)
    assert pool.take("internal", 0.0) == 10000
    pool.put("internal", 10000, 1.0)
    assert [pool.take("internal", 2.0) for _ in range(3)] == [10002, 10004, 10000]
    assert pool.free("internal") == 0


def test_port_pool_respects_the_quarantine() -> None:
    """A released pair is not handed out again before ``quarantine`` seconds."""
    pool = PortPool(10000, 10001, ["external"], quarantine=2.0)
    assert pool.take("external", 0.0) == 10000
    assert pool.take("external", 0.0) is None
    pool.put("external", 10000, 5.0)
    assert pool.free("external") == 1
    assert pool.take("external", 6.9) is None
    assert pool.take("external", 7.0) == 10000


# --------------------------------------------------------------------------------------------
# The independent SRTP itself


def test_independent_srtp_agrees_with_libsrtp() -> None:
    """The test's own SRTP and libsrtp (through sbc.media.srtp) read each other's packets,
    for both suites, RTP and RTCP: the peers above are a fair referee."""
    for suite, key in [(S80, PHONE_KEY1), (S32, PHONE_KEY2)]:
        attr = parse_crypto(f"1 {suite} inline:{b64(key)}")
        ours = Peer(attr)
        theirs_in = srtp.SrtpContext(suite, key, outbound=False)
        theirs_out = srtp.SrtpContext(suite, key, outbound=True)
        packet = rtp(7, 99, PHONE_SSRC)
        assert theirs_in.unprotect(ours.protect(packet)) == packet
        assert ours.unprotect(theirs_out.protect(packet)) == packet
        report = sender_report(PHONE_SSRC)
        assert theirs_in.unprotect_rtcp(ours.protect_rtcp(report)) == report
        assert ours.unprotect_rtcp(theirs_out.protect_rtcp(report)) == report


def test_an_ipv6_phone_gets_an_ipv6_answer_and_the_pbx_an_ipv4_offer() -> None:
    """External media on IPv6 (advertised 2001:db8::10), internal on IPv4: each leg's SDP names
    its own family (c=IN IP6 / IN IP4), and the phone's IPv6 packets reach the PBX."""
    v6 = MediaInterface("2001:db8::10")
    phone6 = LegPolicy("external", "none", peer_host="2001:db8::5")
    call = new_call(phone6, PLAIN_PBX, interfaces={"external": v6, "internal": INTERNAL})
    offer = sdp("v=0", "o=phone 1 1 IN IP6 2001:db8::5", "s=call", "c=IN IP6 2001:db8::5",
                "t=0 0", "m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=sendrecv")
    out = call.offer_from("a", offer, 0.0)
    assert b"c=IN IP4 192.168.1.10\r\n" in out and b"IP6" not in out.split(b"t=0 0")[1]
    answer = call.answer_from("b", pbx_answer(), 1.0)
    assert b"c=IN IP6 2001:db8::10\r\n" in answer and b"m=audio 20000 RTP/AVP 0 101" in answer
    assert call.a.remote_rtp == ("2001:db8::5", 4000)
    got = relay(call.a, rtp(1, 160, 0x55), ("2001:db8::5", 4000, 0, 0), 2.0)
    assert got == ("rtp", rtp(1, 160, 0x55)) and call.a.rtp_latched
    assert relay(call.a, rtp(2, 320, 0x55), ("2001:db8::66", 4000, 0, 0), 2.1) is None
    assert call.a.drop_source == 1
