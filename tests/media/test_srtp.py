"""SRTP contexts over libsrtp2 (known answers, in-place hot path, ROC carry-over) and SDES."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import struct
from collections.abc import Callable

import pylibsrtp
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from sbc.errors import SbcError
from sbc.media import srtp
from sbc.media.sdes import SRTP_SUITES, CryptoAttribute, KeyParam, parse_crypto
from sbc.media.srtp import (
    ERROR_AUTH,
    ERROR_KEY_EXPIRED,
    ERROR_MALFORMED,
    ERROR_OTHER,
    ERROR_REPLAY,
    ERROR_TOO_BIG,
    MAX_PACKET,
    PACKET,
    PACKET_SIZE,
    PACKET_VIEW,
    SUPPORTED_SUITES,
    SrtpContext,
    SrtpError,
    answer_crypto,
    choose_crypto,
    context_from_crypto,
    make_crypto,
    new_key_salt,
    offer_cryptos,
    window_size_for,
)

SSRC = 0xDEADBEEF
CM80 = "AES_CM_128_HMAC_SHA1_80"
CM32 = "AES_CM_128_HMAC_SHA1_32"
GCM128 = "AEAD_AES_128_GCM"
GCM256 = "AEAD_AES_256_GCM"
# The suites pylibsrtp's own API knows: it is the independent peer for them.
PUBLIC = {
    CM80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    CM32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    GCM128: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    GCM256: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
# AES-CM suites: (master key length, SRTP tag length); the reference below implements them.
AES192 = ("AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32")
GCM_KEY_LENGTHS = {GCM128: 16, GCM256: 32}
CM_SUITES = {
    CM80: (16, 10),
    CM32: (16, 4),
    "AES_192_CM_HMAC_SHA1_80": (24, 10),
    "AES_192_CM_HMAC_SHA1_32": (24, 4),
    "AES_256_CM_HMAC_SHA1_80": (32, 10),
    "AES_256_CM_HMAC_SHA1_32": (32, 4),
}


def key_for(suite: str, seed: int = 1) -> bytes:
    n = SRTP_SUITES[suite].key_salt_length
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))


def rtp(seq: int, ssrc: int = SSRC, payload: bytes = bytes(range(160))) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, 0x1000 + seq, ssrc) + payload


def rtcp(ssrc: int = SSRC) -> bytes:
    """A sender report with no report blocks (28 bytes)."""
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4, 5)


def public_session(suite: str, key: bytes, *, outbound: bool) -> pylibsrtp.Session:
    cls = pylibsrtp.Policy
    return pylibsrtp.Session(
        cls(
            key=key,
            ssrc_type=cls.SSRC_ANY_OUTBOUND if outbound else cls.SSRC_ANY_INBOUND,
            srtp_profile=PUBLIC[suite],
        )
    )


def in_place(call: Callable[[int], int], packet: bytes) -> tuple[int, bytes]:
    PACKET_VIEW[0 : len(packet)] = packet
    n = call(len(packet))
    return n, bytes(PACKET_VIEW[0:n]) if n >= 0 else b""


def counting_random() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: bytes([next(counter) & 0xFF]) * n


# --- an independent RFC 3711 / 6188 / 7714 reference (the cryptography package, not libsrtp) ---


def aes_ctr(key: bytes, iv: int, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv.to_bytes(16, "big"))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def kdf(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 4.3.1 with key_derivation_rate 0: AES-CM PRF of (label || 0) XOR master salt.

    A 96-bit AES-GCM master salt is left-aligned in the 112-bit field (zero-padded on the right),
    as libsrtp and other stacks (pion) do; RFC 7714 11 is read both ways (cisco/libsrtp#179).
    """
    x = (label << 48) ^ int.from_bytes(master_salt.ljust(14, b"\0"), "big")
    return aes_ctr(master_key, x << 16, bytes(length))


def rtp_header_length(packet: bytes) -> int:
    """Fixed header, CSRCs and header extension (RFC 3550 5.1/5.3.1): what stays in the clear."""
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension: 4 bytes + its length in 32-bit words
        length += 4 + 4 * struct.unpack("!H", packet[length + 2 : length + 4])[0]
    return length


def reference_srtp(key_salt: bytes, key_len: int, tag_len: int, packet: bytes, roc: int) -> bytes:
    """RFC 3711 3.1/4.1.1/4.2: the SRTP packet for ``packet`` at rollover counter ``roc``."""
    mk, ms = key_salt[:key_len], key_salt[key_len:]
    k_e, k_a, k_s = kdf(mk, ms, 0, key_len), kdf(mk, ms, 1, 20), kdf(mk, ms, 2, 14)
    seq, ssrc = struct.unpack("!H", packet[2:4])[0], struct.unpack("!I", packet[8:12])[0]
    header_len = rtp_header_length(packet)
    index = (roc << 16) | seq
    iv = (int.from_bytes(k_s, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    protected = packet[:header_len] + aes_ctr(k_e, iv, packet[header_len:])
    tag = hmac.new(k_a, protected + roc.to_bytes(4, "big"), hashlib.sha1).digest()[:tag_len]
    return protected + tag


def reference_gcm_srtp(suite: str, key_salt: bytes, packet: bytes, roc: int) -> bytes:
    """RFC 7714 8: AES-GCM over the payload, the RTP header as AAD, a 16-byte tag."""
    key_len = GCM_KEY_LENGTHS[suite]
    mk, ms = key_salt[:key_len], key_salt[key_len:]
    k_e, k_s = kdf(mk, ms, 0, key_len), kdf(mk, ms, 2, 12)
    seq, ssrc = struct.unpack("!H", packet[2:4])[0], struct.unpack("!I", packet[8:12])[0]
    nonce = bytes(a ^ b for a, b in zip(k_s, struct.pack("!HIIH", 0, ssrc, roc, seq), strict=True))
    header = packet[: rtp_header_length(packet)]
    return header + AESGCM(k_e).encrypt(nonce, packet[len(header) :], header)


def reference_gcm_srtcp(suite: str, key_salt: bytes, packet: bytes, index: int) -> bytes:
    """RFC 7714 9: AES-GCM after the 8-byte header; header and E||index are the AAD."""
    key_len = GCM_KEY_LENGTHS[suite]
    mk, ms = key_salt[:key_len], key_salt[key_len:]
    k_e, k_s = kdf(mk, ms, 3, key_len), kdf(mk, ms, 5, 12)
    ssrc = struct.unpack("!I", packet[4:8])[0]
    trailer = (0x80000000 | index).to_bytes(4, "big")
    nonce = bytes(a ^ b for a, b in zip(k_s, struct.pack("!HIHI", 0, ssrc, 0, index), strict=True))
    return packet[:8] + AESGCM(k_e).encrypt(nonce, packet[8:], packet[:8] + trailer) + trailer


def reference_packets(suite: str, key: bytes, rtp_packet: bytes, rtcp_packet: bytes):
    """(SRTP at ROC 0, SRTCP at index 1) for any suite, by the reference."""
    if suite in GCM_KEY_LENGTHS:
        return (
            reference_gcm_srtp(suite, key, rtp_packet, 0),
            reference_gcm_srtcp(suite, key, rtcp_packet, 1),
        )
    key_len, tag_len = CM_SUITES[suite]
    return (
        reference_srtp(key, key_len, tag_len, rtp_packet, 0),
        reference_srtcp(key, key_len, rtcp_packet, 1),
    )


def reference_srtcp(key_salt: bytes, key_len: int, packet: bytes, index: int) -> bytes:
    """RFC 3711 3.4: the SRTCP packet (E=1, 80-bit tag) for ``packet`` at SRTCP index ``index``."""
    mk, ms = key_salt[:key_len], key_salt[key_len:]
    k_e, k_a, k_s = kdf(mk, ms, 3, key_len), kdf(mk, ms, 4, 20), kdf(mk, ms, 5, 14)
    ssrc = struct.unpack("!I", packet[4:8])[0]
    iv = (int.from_bytes(k_s, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    protected = packet[:8] + aes_ctr(k_e, iv, packet[8:]) + (0x80000000 | index).to_bytes(4, "big")
    return protected + hmac.new(k_a, protected, hashlib.sha1).digest()[:10]


@pytest.mark.parametrize(
    ("master_key", "master_salt", "cipher_key", "cipher_salt", "auth_key"),
    [
        (  # RFC 3711 B.3 (AES-128)
            "E1F97A0D3E018BE0D64FA32C06DE4139",
            "0EC675AD498AFEEBB6960B3AABE6",
            "C61E7A93744F39EE10734AFE3FF7A087",
            "30CBBC08863D8C85D49DB34A9AE1",
            "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4",
        ),
        (  # RFC 6188 7.4 (AES-192)
            "73edc66c4fa15776fb57f9505c17136550ffda71f3e8e5f1",
            "c8522f3acd4ce86d5add78edbb11",
            "31874736a8f1143870c26e4857d8a5b2c4a354407faadabb",
            "2372b82d639b6d8503a47adc0a6c",
            "355b10973cd95b9eacf4061c7e1a7151e7cfbfcb",
        ),
        (  # RFC 6188 7.2 (AES-256)
            "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6",
            "3b04803de51ee7c96423ab5b78d2",
            "5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4",
            "fa31791685ca444a9e07c6c64e93",
            "fd9c32d39ed5fbb5a9dc96b30818454d1313dc05",
        ),
    ],
    ids=["rfc3711-aes128", "rfc6188-aes192", "rfc6188-aes256"],
)
def test_reference_kdf_matches_the_rfc_vectors(
    master_key, master_salt, cipher_key, cipher_salt, auth_key
):
    """The test's own key derivation reproduces the RFC vectors (so it can be trusted)."""
    mk, ms = bytes.fromhex(master_key), bytes.fromhex(master_salt)
    assert kdf(mk, ms, 0, len(mk)) == bytes.fromhex(cipher_key)
    assert kdf(mk, ms, 2, 14) == bytes.fromhex(cipher_salt)
    assert kdf(mk, ms, 1, 20) == bytes.fromhex(auth_key)


@pytest.mark.parametrize("suite", sorted(srtp._KNOWN_ANSWERS))
def test_the_probes_known_answers_are_the_references(suite):
    """The known answers the import probe checks libsrtp against are what the reference computes."""
    key = srtp._PROBE_KEY[: SRTP_SUITES[suite].key_salt_length]
    want_srtp, want_srtcp = reference_packets(suite, key, srtp._KAT_RTP, srtp._KAT_RTCP)
    assert srtp._KNOWN_ANSWERS[suite] == (want_srtp[12:].hex(), want_srtcp[8:].hex())
    assert set(srtp._KNOWN_ANSWERS) == set(srtp._SUITE_POLICIES)


# --- the probe ---------------------------------------------------------------------------


def test_probe_finds_the_usual_suites_on_this_machine():
    """The import probe keeps the SDES suites libsrtp 2.7 has, best first, and ROC control."""
    assert srtp.LIBSRTP_VERSION.startswith("libsrtp2 2.")
    for suite in (CM80, CM32, GCM128, GCM256, "AES_256_CM_HMAC_SHA1_80"):
        assert suite in SUPPORTED_SUITES, srtp.PROBE_FAILURES
    assert "F8_128_HMAC_SHA1_80" not in SUPPORTED_SUITES
    assert SUPPORTED_SUITES[:2] == (GCM256, GCM128)
    assert SUPPORTED_SUITES.index(CM80) < SUPPORTED_SUITES.index(CM32)
    assert srtp.ROC_CONTROL is True
    assert set(srtp.PROBE_FAILURES) <= set(AES192)  # see the AES-192 test below


@pytest.mark.parametrize("suite", AES192)
def test_aes_192_is_offered_only_if_libsrtp_derives_its_keys_right(suite):
    """libsrtp 2.7.0 derives AES-192 keys with AES-256 (cisco/libsrtp#763): the probe's known
    answer catches it; a fixed libsrtp passes the same reference and is then supported."""
    key_len, tag_len = CM_SUITES[suite]
    key = key_for(suite)
    srtp._probing = (suite,)
    try:
        packet = SrtpContext(suite, key, outbound=True).protect(rtp(1))
    finally:
        srtp._probing = ()
    if packet == reference_srtp(key, key_len, tag_len, rtp(1), roc=0):
        assert suite in SUPPORTED_SUITES
    else:
        assert suite not in SUPPORTED_SUITES
        assert srtp.PROBE_FAILURES[suite] == "known-answer test failed"


def test_probe_without_the_abi_path_offers_pylibsrtps_four_suites(monkeypatch):
    """If libsrtp's layout cannot be used, only pylibsrtp's own profiles pass and no ROC control."""
    monkeypatch.setattr(srtp, "_ABI", None)
    monkeypatch.setattr(srtp, "PROBE_FAILURES", {})
    suites, roc_control, _version = srtp._probe()
    assert suites == (GCM256, GCM128, CM80, CM32)
    assert roc_control is False
    assert "abi" in srtp.PROBE_FAILURES


def test_probe_drops_a_suite_whose_round_trip_fails(monkeypatch):
    """A suite whose check fails is left out of the supported list and its failure recorded."""
    monkeypatch.setattr(srtp, "PROBE_FAILURES", {})
    real = srtp._probe_suite
    monkeypatch.setattr(srtp, "_probe_suite", lambda s: "broken" if s == CM32 else real(s))
    suites, roc_control, _version = srtp._probe()
    assert CM32 not in suites and CM80 in suites
    assert srtp.PROBE_FAILURES[CM32] == "broken"
    assert roc_control is True


# --- known answers and independent peers -------------------------------------------------

# RTP with a CSRC and a header extension, so that the encrypted part starts where RFC 3711 says.
RICH_RTP = (
    struct.pack("!BBHII", 0x91, 0x60, 4321, 0x12345678, SSRC)
    + struct.pack("!I", 0xCAFEBABE)
    + struct.pack("!HH", 0xBEDE, 1)
    + b"\x10\xaa\x00\x00"
    + bytes(range(100, 200))
)


SUPPORTED_CM = [s for s in SUPPORTED_SUITES if s in CM_SUITES]
SUPPORTED_GCM = [s for s in SUPPORTED_SUITES if s in GCM_KEY_LENGTHS]


@pytest.mark.parametrize("suite", SUPPORTED_CM)
@pytest.mark.parametrize("packet", [rtp(1), rtp(65535), RICH_RTP], ids=["plain", "seq", "csrc-ext"])
def test_protect_matches_an_independent_aes_cm_implementation(suite, packet):
    """AES-CM SRTP output is byte for byte what an RFC 3711 implementation in the test computes."""
    key_len, tag_len = CM_SUITES[suite]
    key = key_for(suite)
    context = SrtpContext(suite, key, outbound=True)
    assert context.protect(packet) == reference_srtp(key, key_len, tag_len, packet, roc=0)
    receiver = SrtpContext(suite, key, outbound=False)
    assert receiver.unprotect(reference_srtp(key, key_len, tag_len, packet, roc=0)) == packet


@pytest.mark.parametrize("suite", SUPPORTED_GCM)
@pytest.mark.parametrize("packet", [rtp(1), RICH_RTP], ids=["plain", "csrc-ext"])
def test_protect_matches_an_independent_aes_gcm_implementation(suite, packet):
    """AES-GCM SRTP and SRTCP are byte for byte what RFC 7714 computed in the test gives."""
    key = key_for(suite)
    context = SrtpContext(suite, key, outbound=True)
    assert context.protect(packet) == reference_gcm_srtp(suite, key, packet, roc=0)
    assert context.protect_rtcp(rtcp()) == reference_gcm_srtcp(suite, key, rtcp(), 1)
    receiver = SrtpContext(suite, key, outbound=False)
    assert receiver.unprotect(reference_gcm_srtp(suite, key, packet, roc=0)) == packet


@pytest.mark.parametrize("suite", SUPPORTED_CM)
def test_protect_rtcp_matches_an_independent_implementation(suite):
    """SRTCP output (encrypted, E bit, index, 80-bit tag for every suite) matches RFC 3711 3.4."""
    key_len, _tag = CM_SUITES[suite]
    key = key_for(suite)
    context = SrtpContext(suite, key, outbound=True)
    for index in (1, 2):  # libsrtp numbers SRTCP packets from 1
        assert context.protect_rtcp(rtcp()) == reference_srtcp(key, key_len, rtcp(), index)


@pytest.mark.parametrize("suite", sorted(PUBLIC))
def test_round_trips_with_pylibsrtp_as_the_peer(suite):
    """Every pylibsrtp profile interoperates both ways, RTP and RTCP, with pylibsrtp's own API."""
    key = key_for(suite, 2)
    ours_out = SrtpContext(suite, key, outbound=True)
    ours_in = SrtpContext(suite, key, outbound=False)
    peer_in = public_session(suite, key, outbound=False)
    peer_out = public_session(suite, key, outbound=True)
    for seq in (10, 11, 12):
        assert peer_in.unprotect(ours_out.protect(rtp(seq))) == rtp(seq)
        assert ours_in.unprotect(peer_out.protect(rtp(seq, SSRC + 1))) == rtp(seq, SSRC + 1)
    assert peer_in.unprotect_rtcp(ours_out.protect_rtcp(rtcp())) == rtcp()
    assert ours_in.unprotect_rtcp(peer_out.protect_rtcp(rtcp(SSRC + 1))) == rtcp(SSRC + 1)


# --- the in-place hot path ---------------------------------------------------------------


def test_packet_buffer_is_the_documented_size():
    """PACKET is 2048 bytes, PACKET_VIEW a writable view of it, MAX_PACKET leaves trailer room."""
    assert srtp._ffi.sizeof(PACKET) == PACKET_SIZE == 2048
    assert len(PACKET_VIEW) == PACKET_SIZE and not PACKET_VIEW.readonly
    assert MAX_PACKET == 2048 - 148


@pytest.mark.parametrize("suite", SUPPORTED_SUITES)
def test_in_place_and_bytes_apis_agree(suite):
    """protect_in_place gives the bytes protect() gives, and unprotect_in_place undoes it."""
    key = key_for(suite)
    by_bytes = SrtpContext(suite, key, outbound=True)
    by_place = SrtpContext(suite, key, outbound=True)
    receiver = SrtpContext(suite, key, outbound=False)
    for seq in (1, 2):
        expected = by_bytes.protect(rtp(seq))
        n, protected = in_place(by_place.protect_in_place, rtp(seq))
        assert (n, protected) == (len(expected), expected)
        assert in_place(receiver.unprotect_in_place, protected) == (len(rtp(seq)), rtp(seq))
    expected = by_bytes.protect_rtcp(rtcp())
    n, protected = in_place(by_place.protect_rtcp_in_place, rtcp())
    assert (n, protected) == (len(expected), expected)
    assert in_place(receiver.unprotect_rtcp_in_place, protected) == (len(rtcp()), rtcp())
    assert receiver.unprotect_rtcp(by_bytes.protect_rtcp(rtcp())) == rtcp()


@pytest.mark.parametrize("suite", SUPPORTED_SUITES)
@pytest.mark.parametrize("where", [-1, 20], ids=["tag", "payload"])
def test_tampered_packet_fails_authentication_and_stays_intact(suite, where):
    """A modified packet gives ERROR_AUTH, PACKET keeps the bytes, and the genuine one still works.

    (For AES-GCM libsrtp decrypts before checking the tag; the context puts the bytes back so
    that a relay can try the previous key.)
    """
    key = key_for(suite)
    sender = SrtpContext(suite, key, outbound=True)
    receiver = SrtpContext(suite, key, outbound=False)
    genuine = sender.protect(rtp(5))
    forged = bytearray(genuine)
    forged[where] ^= 0x01
    PACKET_VIEW[0 : len(forged)] = forged
    assert receiver.unprotect_in_place(len(forged)) == ERROR_AUTH
    assert bytes(PACKET_VIEW[0 : len(forged)]) == bytes(forged)
    assert in_place(receiver.unprotect_in_place, genuine) == (len(rtp(5)), rtp(5))
    forged = bytearray(sender.protect(rtp(6)))
    forged[where] ^= 0x01
    with pytest.raises(SrtpError) as info:
        receiver.unprotect(bytes(forged))
    assert info.value.code == ERROR_AUTH


@pytest.mark.parametrize("suite", SUPPORTED_SUITES)
def test_wrong_key_fails_authentication_and_previous_key_still_works(suite):
    """A packet under another key fails with ERROR_AUTH untouched, so the old key can be tried."""
    old_key, new_key = key_for(suite, 1), key_for(suite, 2)
    packet = SrtpContext(suite, old_key, outbound=True).protect(rtp(9))
    current = SrtpContext(suite, new_key, outbound=False)
    previous = SrtpContext(suite, old_key, outbound=False)
    PACKET_VIEW[0 : len(packet)] = packet
    assert current.unprotect_in_place(len(packet)) == ERROR_AUTH
    assert previous.unprotect_in_place(len(packet)) == len(rtp(9))
    assert bytes(PACKET_VIEW[0 : len(rtp(9))]) == rtp(9)


@pytest.mark.parametrize("suite", [CM80, GCM128])
def test_replayed_packet_is_refused_inbound(suite):
    """The same SRTP or SRTCP packet a second time gives ERROR_REPLAY (RFC 3711 3.3.2)."""
    key = key_for(suite)
    sender = SrtpContext(suite, key, outbound=True)
    receiver = SrtpContext(suite, key, outbound=False)
    packet = sender.protect(rtp(7))
    assert in_place(receiver.unprotect_in_place, packet)[0] == len(rtp(7))
    assert in_place(receiver.unprotect_in_place, packet)[0] == ERROR_REPLAY
    control = sender.protect_rtcp(rtcp())
    assert in_place(receiver.unprotect_rtcp_in_place, control)[0] == len(rtcp())
    assert in_place(receiver.unprotect_rtcp_in_place, control)[0] == ERROR_REPLAY
    with pytest.raises(SrtpError) as info:
        receiver.unprotect(packet)
    assert info.value.code == ERROR_REPLAY


@pytest.mark.parametrize(("window", "code"), [(64, ERROR_REPLAY), (1024, 100)])
def test_replay_window_size_is_applied(window, code):
    """A packet 100 behind the newest is too old for a 64-packet window, fine for 1024."""
    key = key_for(CM80)
    sender = SrtpContext(CM80, key, outbound=True)
    receiver = SrtpContext(CM80, key, outbound=False, window_size=window)
    late = sender.protect(rtp(100, payload=bytes(88)))
    assert receiver.unprotect(sender.protect(rtp(200))) == rtp(200)
    assert in_place(receiver.unprotect_in_place, late)[0] == code


@pytest.mark.parametrize("suite", [CM80, GCM128])
def test_outbound_may_protect_the_same_sequence_number_again(suite):
    """A relayed retransmission (same SSRC and seq) is protected again, to the same bytes."""
    sender = SrtpContext(suite, key_for(suite), outbound=True)
    first = in_place(sender.protect_in_place, rtp(42))
    second = in_place(sender.protect_in_place, rtp(42))
    assert first == second and first[0] > 0


def test_inbound_context_refuses_to_protect_a_repeat():
    """Without allow_repeat_tx (inbound contexts) libsrtp refuses a repeated index: it is set."""
    context = SrtpContext(CM80, key_for(CM80), outbound=False)
    assert in_place(context.protect_in_place, rtp(42))[0] > 0
    assert in_place(context.protect_in_place, rtp(42))[0] == ERROR_REPLAY


@pytest.mark.parametrize("suite", [CM80, GCM256])
def test_sizes_outside_the_buffer_give_codes_not_exceptions(suite):
    """Too big for PACKET (or its trailer room), negative or absurd lengths: codes, never raises."""
    context = SrtpContext(suite, key_for(suite), outbound=True)
    receiver = SrtpContext(suite, key_for(suite), outbound=False)
    assert context.protect_in_place(MAX_PACKET + 1) == ERROR_TOO_BIG
    assert context.protect_rtcp_in_place(MAX_PACKET + 1) == ERROR_TOO_BIG
    assert receiver.unprotect_in_place(PACKET_SIZE + 1) == ERROR_TOO_BIG
    assert receiver.unprotect_rtcp_in_place(2**70) == ERROR_TOO_BIG
    assert receiver.unprotect_in_place(-1) == ERROR_MALFORMED
    assert context.protect_in_place(-(2**70)) == ERROR_MALFORMED
    assert receiver.unprotect_in_place(0) == ERROR_MALFORMED
    assert receiver.unprotect_in_place(5) == ERROR_MALFORMED
    biggest = rtp(1, payload=bytes(MAX_PACKET - 12))
    n, protected = in_place(context.protect_in_place, biggest)
    assert MAX_PACKET < n <= PACKET_SIZE
    assert in_place(receiver.unprotect_in_place, protected) == (MAX_PACKET, biggest)
    with pytest.raises(SrtpError) as info:
        context.protect(rtp(2, payload=bytes(MAX_PACKET)))
    assert info.value.code == ERROR_TOO_BIG


@given(st.binary(max_size=PACKET_SIZE + 10))
def test_garbage_never_raises_from_the_in_place_calls(data):
    """Arbitrary bytes into unprotect give a negative code, never an exception (h11's invariant)."""
    context = _GARBAGE_SINK
    PACKET_VIEW[0 : min(len(data), PACKET_SIZE)] = data[:PACKET_SIZE]
    assert context.unprotect_in_place(len(data)) < 0
    PACKET_VIEW[0 : min(len(data), PACKET_SIZE)] = data[:PACKET_SIZE]
    assert context.unprotect_rtcp_in_place(len(data)) < 0


_GARBAGE_SINK = SrtpContext(GCM128, key_for(GCM128), outbound=False)


def test_key_lifetime_is_enforced_over_rtp_and_rtcp():
    """After max_packets successful packets (RTP and RTCP) every call gives ERROR_KEY_EXPIRED."""
    key = key_for(CM80)
    sender = SrtpContext(CM80, key, outbound=True, max_packets=3)
    receiver = SrtpContext(CM80, key, outbound=False, max_packets=2)
    packets = [sender.protect(rtp(1)), sender.protect_rtcp(rtcp()), sender.protect(rtp(2))]
    assert in_place(sender.protect_in_place, rtp(3))[0] == ERROR_KEY_EXPIRED
    assert in_place(sender.protect_rtcp_in_place, rtcp())[0] == ERROR_KEY_EXPIRED
    with pytest.raises(SrtpError) as info:
        sender.protect(rtp(3))
    assert info.value.code == ERROR_KEY_EXPIRED
    forged = bytearray(packets[0])
    forged[-1] ^= 1
    assert in_place(receiver.unprotect_in_place, bytes(forged))[0] == ERROR_AUTH  # not counted
    assert in_place(receiver.unprotect_in_place, packets[0])[0] > 0
    assert in_place(receiver.unprotect_rtcp_in_place, packets[1])[0] > 0
    assert receiver.packets_left == 0
    assert in_place(receiver.unprotect_in_place, packets[2])[0] == ERROR_KEY_EXPIRED


def test_closed_context_fails_every_call_and_remembers_rocs():
    """After close() in-place calls give ERROR_OTHER, bytes calls raise, rocs() still answers."""
    key = key_for(CM80)
    receiver = SrtpContext(CM80, key, outbound=False, rocs={SSRC: 4})
    receiver.close()
    receiver.close()
    packet = SrtpContext(CM80, key, outbound=True, rocs={SSRC: 4}).protect(rtp(1))
    assert in_place(receiver.unprotect_in_place, packet)[0] == ERROR_OTHER
    assert receiver.protect_rtcp_in_place(len(rtcp())) == ERROR_OTHER
    with pytest.raises(SrtpError):
        receiver.unprotect(packet)
    assert receiver.rocs() == {SSRC: 4}
    assert "closed" in repr(receiver)


@pytest.mark.parametrize("suite", [CM80, "AES_256_CM_HMAC_SHA1_80", GCM256])
def test_repr_and_errors_never_show_the_key(suite):
    """Neither repr() nor an SrtpError message contains the key in hex, base64 or raw form."""
    key = key_for(suite, 9)
    context = SrtpContext(suite, key, outbound=False)
    with pytest.raises(SrtpError) as info:
        context.unprotect(rtp(1) + bytes(16))
    with pytest.raises(SrtpError) as info2:
        SrtpContext(suite, key + b"x", outbound=True)
    for text in (repr(context), str(info.value), str(info2.value)):
        for form in (key.hex(), key.hex().upper(), base64.b64encode(key).decode(), repr(key)):
            assert form not in text
    assert repr(context) == f"<SrtpContext {suite} inbound>"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("F8_128_HMAC_SHA1_80", bytes(30)), {}),
        (("NO_SUCH_SUITE", bytes(30)), {}),
        ((CM80, bytes(29)), {}),
        ((GCM128, bytes(30)), {}),
        ((CM80, bytes(30)), {"window_size": 63}),
        ((CM80, bytes(30)), {"max_packets": 0}),
        ((CM80, bytes(30)), {"rocs": {2**32: 1}}),
        ((CM80, bytes(30)), {"rocs": {1: -1}}),
    ],
)
def test_bad_context_arguments_raise_srtp_error(args, kwargs):
    """Unsupported suite, wrong key length, small window, zero lifetime, bad ROCs: SrtpError."""
    with pytest.raises(SrtpError) as info:
        SrtpContext(*args, outbound=False, **kwargs)
    assert isinstance(info.value, SbcError)


def test_window_larger_than_libsrtp_allows_is_clamped():
    """A window beyond libsrtp's maximum (a peer's WSH may ask it) becomes 32767, not an error."""
    assert SrtpContext(CM80, bytes(30), outbound=False, window_size=10**9).window_size == 32767


# --- ROC carry-over on re-key (RFC 3711 3.3.1) --------------------------------------------


@pytest.mark.parametrize("suite", SUPPORTED_SUITES)
def test_rekey_keeps_the_rollover_counter(suite):
    """After 65535->0 (ROC 1), new contexts with the carried ROCs work under a fresh key; a
    receiver without them (the peer bug we avoid) fails every packet."""
    old_key, new_key = key_for(suite, 1), key_for(suite, 2)
    old_tx = SrtpContext(suite, old_key, outbound=True)
    old_rx = SrtpContext(suite, old_key, outbound=False)
    for seq in (65533, 65534, 65535, 0, 1):
        assert old_rx.unprotect(old_tx.protect(rtp(seq))) == rtp(seq)
    assert old_tx.rocs() == old_rx.rocs() == {SSRC: 1}
    new_tx = SrtpContext(suite, new_key, outbound=True, rocs=old_tx.rocs())
    new_rx = SrtpContext(suite, new_key, outbound=False, rocs=old_rx.rocs())
    naive_rx = SrtpContext(suite, new_key, outbound=False)
    old_tx.close()
    old_rx.close()
    for seq in (2, 3, 4):
        packet = new_tx.protect(rtp(seq))
        assert in_place(naive_rx.unprotect_in_place, packet)[0] == ERROR_AUTH
        assert in_place(new_rx.unprotect_in_place, packet) == (len(rtp(seq)), rtp(seq))
        if suite in CM_SUITES:
            key_len, tag_len = CM_SUITES[suite]
            assert packet == reference_srtp(new_key, key_len, tag_len, rtp(seq), roc=1)
    assert new_rx.rocs() == new_tx.rocs() == {SSRC: 1}


@pytest.mark.parametrize("suite", sorted(PUBLIC))
def test_carried_roc_interoperates_with_pylibsrtp(suite):
    """A pylibsrtp receiver that has itself seen the wrap (ROC 1) accepts our re-keyed sender's
    packets, and our re-keyed receiver accepts a wrapped pylibsrtp sender's packets."""
    key = key_for(suite, 3)
    peer_tx = public_session(suite, key, outbound=True)
    peer_rx = public_session(suite, key, outbound=False)
    for seq in (65535, 0):  # the peer's own sender walks its receiver over the wrap
        peer_rx.unprotect(peer_tx.protect(rtp(seq)))
    ours_tx = SrtpContext(suite, key, outbound=True, rocs={SSRC: 1})
    ours_rx = SrtpContext(suite, key, outbound=False, rocs={SSRC: 1})
    assert peer_rx.unprotect(ours_tx.protect(rtp(1))) == rtp(1)
    assert ours_rx.unprotect(peer_tx.protect(rtp(2))) == rtp(2)


@pytest.mark.parametrize("first_seq", [40000, 5, 65535])
def test_carried_roc_holds_whatever_the_first_sequence_number(first_seq):
    """The carried ROC is used exactly, also when the first packet is in the upper half."""
    key = key_for(CM80, 4)
    tx = SrtpContext(CM80, key, outbound=True, rocs={SSRC: 3})
    rx = SrtpContext(CM80, key, outbound=False, rocs={SSRC: 3})
    packet = tx.protect(rtp(first_seq))
    assert packet == reference_srtp(key, 16, 10, rtp(first_seq), roc=3)
    assert rx.unprotect(packet) == rtp(first_seq)
    assert rx.rocs() == {SSRC: 3}


def test_rocs_lists_every_ssrc_seen_and_carried():
    """rocs() has every SSRC with a stream (RTP or RTCP), carried ones even before their packet."""
    key = key_for(GCM128)
    tx = SrtpContext(GCM128, key, outbound=True, rocs={7: 2, 8: 0})
    assert tx.rocs() == {7: 2}
    tx.protect(rtp(1, ssrc=1))
    tx.protect_rtcp(rtcp(ssrc=2))
    tx.protect(rtp(3, ssrc=7))
    assert tx.rocs() == {1: 0, 2: 0, 7: 2}


# --- the fallback through pylibsrtp's public API ------------------------------------------


def test_fallback_contexts_interoperate_and_refuse_roc_carry_over(monkeypatch):
    """Without the ABI path contexts use pylibsrtp's API: same packets, codes, no ROC carry-over."""
    key = key_for(CM80)
    ours = SrtpContext(CM80, key, outbound=True)
    monkeypatch.setattr(srtp, "_ABI", None)
    sender = SrtpContext(CM80, key, outbound=True)
    receiver = SrtpContext(CM80, key, outbound=False)
    n, packet = in_place(sender.protect_in_place, rtp(1))
    assert packet == ours.protect(rtp(1))
    assert in_place(receiver.unprotect_in_place, packet) == (len(rtp(1)), rtp(1))
    assert in_place(receiver.unprotect_in_place, packet)[0] == ERROR_REPLAY
    forged = bytearray(sender.protect(rtp(2)))
    forged[-1] ^= 1
    assert in_place(receiver.unprotect_in_place, bytes(forged))[0] == ERROR_AUTH
    assert in_place(sender.protect_in_place, rtp(3, payload=bytes(1400)))[0] == ERROR_TOO_BIG
    assert receiver.rocs() == {}
    with pytest.raises(SrtpError):
        SrtpContext(CM80, key, outbound=False, rocs={SSRC: 1})


def test_without_a_working_roc_check_carry_over_is_refused(monkeypatch):
    """If the import probe could not verify ROC control, carried ROCs raise and rocs() is empty."""
    monkeypatch.setattr(srtp._ABI, "roc_control", False)
    with pytest.raises(SrtpError):
        SrtpContext(CM80, key_for(CM80), outbound=False, rocs={SSRC: 1})
    sender = SrtpContext(CM80, key_for(CM80), outbound=True)
    sender.protect(rtp(1))
    assert sender.rocs() == {}
    assert SrtpContext(CM80, key_for(CM80), outbound=True, rocs={SSRC: 0}).rocs() == {}


# --- RFC 4568 offer/answer -------------------------------------------------------------------

B64_30 = base64.b64encode(bytes(range(30))).decode()
B64_28 = base64.b64encode(bytes(range(28))).decode()


def line(text: str) -> CryptoAttribute:
    return parse_crypto(text)


def test_choose_crypto_follows_the_allowed_order():
    """The accepted line is the best by the operator's order, not by the offer's order."""
    offered = [
        line(f"1 {CM32} inline:{B64_30}"),
        line(f"2 {CM80} inline:{B64_30}"),
        line(f"3 {GCM128} inline:{B64_28}"),
    ]
    assert choose_crypto(offered, [GCM256, CM80, GCM128])[0] is offered[1]
    assert choose_crypto(offered, [GCM128, CM80])[0] is offered[2]
    assert choose_crypto(offered, [CM32]) == (offered[0], "")


def test_choose_crypto_takes_the_first_offered_of_equal_rank():
    """Two lines of the same suite: the offerer's first one wins (RFC 4568 7.1.1)."""
    offered = [line(f"5 {CM80} inline:{B64_30}"), line(f"6 {CM80} inline:{B64_30}")]
    assert choose_crypto(offered, [CM80])[0] is offered[0]


def test_choose_crypto_ignores_allowed_suites_this_libsrtp_lacks(monkeypatch):
    """A suite the operator allows but the probe did not keep is never accepted."""
    monkeypatch.setattr(srtp, "SUPPORTED_SUITES", (CM80,))
    offered = [line(f"1 {CM32} inline:{B64_30}")]
    assert choose_crypto(offered, [CM32, CM80]) == (
        None,
        f"no offered crypto suite is allowed: {CM32} (not supported)",
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (f"1 NO_SUCH_SUITE inline:{B64_30}", "unknown suite"),
        (f"1 F8_128_HMAC_SHA1_80 inline:{B64_30}", "not supported"),
        (f"1 AES_256_CM_HMAC_SHA1_80 inline:{base64.b64encode(bytes(46)).decode()}", "not allowed"),
        (f"1 {CM32} inline:{B64_30}|2^20|1:4", "MKI not supported"),
        (f"1 {CM32} inline:{B64_30}|1:4;inline:{B64_30}|2:4", "MKI not supported"),
        (f"1 {CM32} inline:{B64_30} UNENCRYPTED_SRTP", "UNENCRYPTED_SRTP refused"),
        (f"1 {CM32} inline:{B64_30} UNENCRYPTED_SRTCP", "UNENCRYPTED_SRTCP refused"),
        (f"1 {CM32} inline:{B64_30} UNAUTHENTICATED_SRTP", "UNAUTHENTICATED_SRTP refused"),
        (f"1 {CM32} inline:{B64_30} FEC_ORDER=FEC_SRTP", "FEC not supported"),
        (f"1 {CM32} inline:{B64_30} FEC_KEY=inline:{B64_30}", "FEC not supported"),
        (f"1 {CM32} inline:{B64_30} KDR=1", "KDR not supported"),
        (f"1 {CM32} inline:{B64_30} X-VENDOR=secret", "unknown session parameter X-VENDOR"),
        (f'1 {CM32} inline:{B64_30} X"\\Y', "unknown session parameter X??Y"),
        (f"1 {CM32} inline:{B64_30}|2^15", "key lifetime below 2^16 packets"),
        (f"1 {CM32} inline:{B64_30}|65535", "key lifetime below 2^16 packets"),
    ],
)
def test_choose_crypto_refusals_say_why(value, reason):
    """Each line we cannot honour is skipped with its reason in the 488 text."""
    assert choose_crypto([line(value)], [CM80, CM32, GCM128]) == (
        None,
        f"no offered crypto suite is allowed: {value.split()[1]} ({reason})",
    )


@pytest.mark.parametrize(
    "params", ["KDR=0", "WSH=128", "WSH=100000", "|2^16", "|2^31", "|2^48", "|1048576"]
)
def test_choose_crypto_accepts_harmless_parameters(params):
    """KDR=0 (a single derivation), WSH, and lifetimes from 2^16 up are accepted."""
    separator = "" if params.startswith("|") else " "
    value = f"1 {CM80} inline:{B64_30}{separator}{params}"
    offered = [line(value)]
    assert choose_crypto(offered, [CM80]) == (offered[0], "")


def test_choose_crypto_falls_back_past_refused_lines():
    """A refused better line does not stop an acceptable worse one from being chosen."""
    offered = [line(f"1 {GCM128} inline:{B64_28}|2^20|1:4"), line(f"2 {CM80} inline:{B64_30}")]
    assert choose_crypto(offered, [GCM128, CM80]) == (offered[1], "")


def test_choose_crypto_reason_lists_several_and_is_bounded():
    """The reason names each refused line, at most eight, never key material."""
    assert choose_crypto([], [CM80]) == (None, "no a=crypto offered")
    offered = [line(f"{i} {CM32} inline:{B64_30}|{i}:1") for i in range(1, 21)]
    chosen, reason = choose_crypto(offered, [CM80, CM32])
    assert chosen is None
    assert reason.count("MKI not supported") == 8
    assert reason.endswith(" and 12 more")
    assert B64_30 not in reason and "inline" not in reason


def test_answer_keeps_tag_and_suite_with_our_own_fresh_key():
    """The answer has the offer's tag and suite, a new key from the random source, no extras."""
    offered = line(f"7 {GCM256} inline:{base64.b64encode(bytes(44)).decode()}|2^31 WSH=256")
    answer = answer_crypto(offered, random=lambda n: b"\x42" * n)
    assert (answer.tag, answer.suite) == (7, GCM256)
    assert answer.key_salt == b"\x42" * 44 != offered.key_salt
    assert answer.session_params == () and answer.key_params[0].lifetime is None
    assert answer.key_params[0].mki is None
    assert answer.to_str() == f"7 {GCM256} inline:{base64.b64encode(b'B' * 44).decode()}"
    with pytest.raises(SrtpError):
        answer_crypto(line(f"7 F8_128_HMAC_SHA1_80 inline:{B64_30}"))


def test_offer_cryptos_numbers_supported_suites_in_order_with_fresh_keys():
    """Tags 1..n follow the given order; unsupported, unknown and repeated suites are left out."""
    offer = offer_cryptos(
        [GCM128, "F8_128_HMAC_SHA1_80", "NOPE", CM80, GCM128, CM32], counting_random()
    )
    assert [(c.tag, c.suite) for c in offer] == [(1, GCM128), (2, CM80), (3, CM32)]
    assert [c.key_salt for c in offer] == [b"\x01" * 28, b"\x02" * 30, b"\x03" * 30]
    key2 = base64.b64encode(bytes([2]) * 30).decode()
    assert offer[1].to_str() == f"2 {CM80} inline:{key2}"


def test_default_keys_are_fresh_random_bytes():
    """Without an injected source every key is new (the CSPRNG)."""
    keys = {make_crypto(1, CM80).key_salt for _ in range(8)}
    assert len(keys) == 8 and all(len(k) == 30 for k in keys)


@pytest.mark.parametrize("suite", sorted(SRTP_SUITES))
def test_new_key_salt_has_the_suites_length(suite):
    """A key||salt is exactly the suite's master key plus master salt length."""
    asked = []
    key = new_key_salt(suite, lambda n: asked.append(n) or bytes(n))
    assert len(key) == SRTP_SUITES[suite].key_salt_length == asked[0]


def test_new_key_salt_refuses_unknown_suites_and_short_random_output():
    """An unknown suite or a random source returning the wrong size is an SrtpError."""
    with pytest.raises(SrtpError):
        new_key_salt("NOPE")
    with pytest.raises(SrtpError):
        new_key_salt(CM80, lambda n: bytes(n - 1))


def test_context_from_crypto_applies_lifetime_and_window_hint():
    """A line's key lifetime becomes max_packets and its WSH (above the default) the window."""
    crypto = line(f"1 {CM80} inline:{B64_30}|2^20 WSH=4096")
    context = context_from_crypto(crypto, outbound=False)
    assert (context.suite, context.outbound) == (CM80, False)
    assert context.max_packets == 2**20 and context.packets_left == 2**20
    assert context.window_size == 4096
    assert window_size_for(line(f"1 {CM80} inline:{B64_30} WSH=128")) == 1024
    assert window_size_for(line(f"1 {CM80} inline:{B64_30}")) == 1024
    plain = CryptoAttribute(1, CM80, (KeyParam(bytes(30)),))
    assert context_from_crypto(plain, outbound=True).max_packets is None
