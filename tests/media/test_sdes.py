"""RFC 4568 a=crypto: parsing, validation, serialization and key redaction."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from sbc.errors import SdpError
from sbc.media.sdes import SRTP_SUITES, CryptoAttribute, KeyParam, parse_crypto

KEY30 = bytes(range(30))
KEY30_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd"
KEY30B = bytes(range(100, 130))
KEY30B_B64 = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CB"
KEY44_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKis="
SUITE80 = "AES_CM_128_HMAC_SHA1_80"


def b64(n: int) -> str:
    return base64.b64encode(bytes(range(n))).decode()


# (value, expected attribute); each value is in canonical form, so to_str() gives it back.
VALID = [
    (
        f"1 {SUITE80} inline:{KEY30_B64}",
        CryptoAttribute(1, SUITE80, (KeyParam(KEY30),)),
    ),
    (
        f"1 {SUITE80} inline:{KEY30_B64}|2^31",
        CryptoAttribute(1, SUITE80, (KeyParam(KEY30, 2**31, lifetime_power=True),)),
    ),
    (
        f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY30_B64}|2^20|1:4",
        CryptoAttribute(
            2, "AES_CM_128_HMAC_SHA1_32", (KeyParam(KEY30, 2**20, True, mki=1, mki_length=4),)
        ),
    ),
    (
        f"1 {SUITE80} inline:{KEY30_B64}|1048576",
        CryptoAttribute(1, SUITE80, (KeyParam(KEY30, 1048576),)),
    ),
    (
        f"1 {SUITE80} inline:{KEY30_B64}|7:1",
        CryptoAttribute(1, SUITE80, (KeyParam(KEY30, mki=7, mki_length=1),)),
    ),
    (
        f"1 {SUITE80} inline:{KEY30_B64}|2^20|1:4;inline:{KEY30B_B64}|2^20|2:4",
        CryptoAttribute(
            1,
            SUITE80,
            (
                KeyParam(KEY30, 2**20, True, mki=1, mki_length=4),
                KeyParam(KEY30B, 2**20, True, mki=2, mki_length=4),
            ),
        ),
    ),
    (
        f"1 {SUITE80} inline:{KEY30_B64} KDR=1 UNENCRYPTED_SRTCP WSH=128 FEC_ORDER=FEC_SRTP",
        CryptoAttribute(
            1,
            SUITE80,
            (KeyParam(KEY30),),
            ("KDR=1", "UNENCRYPTED_SRTCP", "WSH=128", "FEC_ORDER=FEC_SRTP"),
        ),
    ),
    (
        f"1 {SUITE80} inline:{KEY30_B64} UNENCRYPTED_SRTP UNAUTHENTICATED_SRTP -X-VENDOR=1",
        CryptoAttribute(
            1,
            SUITE80,
            (KeyParam(KEY30),),
            ("UNENCRYPTED_SRTP", "UNAUTHENTICATED_SRTP", "-X-VENDOR=1"),
        ),
    ),
    (
        f"1 {SUITE80} inline:{KEY30_B64} FEC_KEY=inline:{KEY30B_B64}|2^10",
        CryptoAttribute(1, SUITE80, (KeyParam(KEY30),), (f"FEC_KEY=inline:{KEY30B_B64}|2^10",)),
    ),
    (
        f"999999999 {SUITE80} inline:{KEY30_B64}",
        CryptoAttribute(999999999, SUITE80, (KeyParam(KEY30),)),
    ),
    (
        f"3 AEAD_AES_256_GCM inline:{KEY44_B64}",
        CryptoAttribute(3, "AEAD_AES_256_GCM", (KeyParam(bytes(range(44))),)),
    ),
    (
        "4 AEAD_AES_256_GCM_8 inline:c2VjcmV0|2^20 KDR=banana",
        CryptoAttribute(
            4,
            "AEAD_AES_256_GCM_8",
            session_params=("KDR=banana",),
            opaque_key_params="inline:c2VjcmV0|2^20",
        ),
    ),
    (
        "5 VENDOR_SUITE vendor:anything|goes;here",
        CryptoAttribute(5, "VENDOR_SUITE", opaque_key_params="vendor:anything|goes;here"),
    ),
]


@pytest.mark.parametrize(("value", "expected"), VALID, ids=[v for v, _ in VALID])
def test_valid_crypto_parses_to_expected_attribute(value: str, expected: CryptoAttribute) -> None:
    """A valid a=crypto value parses to exactly the expected attribute."""
    assert parse_crypto(value) == expected


@pytest.mark.parametrize(("value", "expected"), VALID, ids=[v for v, _ in VALID])
def test_valid_crypto_round_trips_through_to_str(value: str, expected: CryptoAttribute) -> None:
    """to_str() of a parsed canonical a=crypto value gives back the same text."""
    assert parse_crypto(value).to_str() == value
    assert expected.to_str() == value


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        (f"01 {SUITE80} inline:{KEY30_B64}", f"1 {SUITE80} inline:{KEY30_B64}"),
        (f"1  {SUITE80}   inline:{KEY30_B64}  KDR=2 ", f"1 {SUITE80} inline:{KEY30_B64} KDR=2"),
        (f"1 {SUITE80} INLINE:{KEY30_B64}", f"1 {SUITE80} inline:{KEY30_B64}"),
        (f"1 {SUITE80} inline:{KEY30_B64}|0001:4", f"1 {SUITE80} inline:{KEY30_B64}|1:4"),
        (
            "1 AEAD_AES_256_GCM inline:" + KEY44_B64.rstrip("="),
            "1 AEAD_AES_256_GCM inline:" + KEY44_B64,
        ),
    ],
)
def test_liberal_crypto_forms_normalize_on_to_str(value: str, canonical: str) -> None:
    """Leading-zero tags, extra spaces, INLINE, MKI zeros and unpadded base64 are accepted."""
    attribute = parse_crypto(value)
    assert attribute.to_str() == canonical
    assert parse_crypto(canonical) == attribute


@pytest.mark.parametrize(
    ("suite", "length"),
    [
        ("AES_CM_128_HMAC_SHA1_80", 30),
        ("AES_CM_128_HMAC_SHA1_32", 30),
        ("F8_128_HMAC_SHA1_80", 30),
        ("AES_192_CM_HMAC_SHA1_80", 38),
        ("AES_192_CM_HMAC_SHA1_32", 38),
        ("AES_256_CM_HMAC_SHA1_80", 46),
        ("AES_256_CM_HMAC_SHA1_32", 46),
        ("AEAD_AES_128_GCM", 28),
        ("AEAD_AES_256_GCM", 44),
    ],
)
def test_known_suite_accepts_its_exact_key_salt_length_only(suite: str, length: int) -> None:
    """Each known suite takes a key||salt of exactly its length, not one byte more or less."""
    attribute = parse_crypto(f"1 {suite} inline:{b64(length)}")
    assert attribute.suite_known
    assert attribute.key_salt == bytes(range(length))
    assert SRTP_SUITES[suite].key_salt_length == length
    for wrong in (length - 1, length + 1):
        with pytest.raises(SdpError) as excinfo:
            parse_crypto(f"1 {suite} inline:{b64(wrong)}")
        assert (
            excinfo.value.message == f"{suite} needs a {length}-byte key||salt, got {wrong} bytes"
        )


def test_master_key_and_salt_split_by_suite() -> None:
    """master_key and master_salt split key||salt at the suite's key length."""
    gcm = parse_crypto(f"1 AEAD_AES_256_GCM inline:{KEY44_B64}")
    assert gcm.master_key == bytes(range(32))
    assert gcm.master_salt == bytes(range(32, 44))
    cm = parse_crypto(f"1 {SUITE80} inline:{KEY30_B64}")
    assert (cm.master_key, cm.master_salt) == (KEY30[:16], KEY30[16:])


def test_session_parameter_properties() -> None:
    """The RFC 4568 session parameters are exposed typed; unknown ones are listed apart."""
    attribute = parse_crypto(
        f"1 {SUITE80} inline:{KEY30_B64} KDR=24 UNENCRYPTED_SRTP UNENCRYPTED_SRTCP "
        f"UNAUTHENTICATED_SRTP FEC_ORDER=SRTP_FEC FEC_KEY=inline:{KEY30B_B64}|2^10 WSH=64 -FOO"
    )
    assert attribute.kdr == 24
    assert attribute.unencrypted_srtp and attribute.unencrypted_srtcp
    assert attribute.unauthenticated_srtp
    assert attribute.fec_order == "SRTP_FEC"
    assert attribute.fec_key == (KeyParam(KEY30B, 1024, lifetime_power=True),)
    assert attribute.wsh == 64
    assert attribute.unknown_session_params == ("-FOO",)


def test_defaults_when_no_session_parameters() -> None:
    """Without session parameters every typed property has its neutral value."""
    attribute = parse_crypto(f"1 {SUITE80} inline:{KEY30_B64}")
    assert (attribute.kdr, attribute.fec_order, attribute.fec_key, attribute.wsh) == (
        None,
        None,
        (),
        None,
    )
    assert not (
        attribute.unencrypted_srtp or attribute.unencrypted_srtcp or attribute.unauthenticated_srtp
    )


def test_unknown_suite_is_kept_opaque() -> None:
    """An unknown suite parses with suite_known=False and no interpreted keys or parameters."""
    attribute = parse_crypto("7 AES_CM_256_HMAC_SHA1_80 inline:c2VjcmV0 KDR=3")
    assert not attribute.suite_known
    assert attribute.srtp_suite is None
    assert attribute.key_params == ()
    assert attribute.opaque_key_params == "inline:c2VjcmV0"
    assert (attribute.key_salt, attribute.master_key, attribute.master_salt) == (b"", b"", b"")
    assert attribute.kdr is None
    assert attribute.unknown_session_params == ("KDR=3",)


K = f"inline:{KEY30_B64}"
INVALID = [
    ("", "a=crypto needs a tag, a crypto-suite and key-params"),
    ("1", "a=crypto needs a tag, a crypto-suite and key-params"),
    (f"1 {SUITE80}", "a=crypto needs a tag, a crypto-suite and key-params"),
    (f"1a {SUITE80} {K}", "crypto tag must have 1 to 9 digits"),
    (f"1234567890 {SUITE80} {K}", "crypto tag must have 1 to 9 digits"),
    (f"-1 {SUITE80} {K}", "crypto tag must have 1 to 9 digits"),
    (f"1 AES-CM {K}", "crypto-suite must be letters, digits and underscores"),
    (f"1 {SUITE80} {KEY30_B64}", "key-params must use the inline: key method"),
    (f"1 {SUITE80} uri:{KEY30_B64}", "key-params must use the inline: key method"),
    (f"1 {SUITE80} inline:InvalidBase64@@@###", "key||salt is not valid base64"),
    (f"1 {SUITE80} inline:AAAA=AAA", "key||salt is not valid base64"),
    (f"1 {SUITE80} inline:A", "key||salt is not valid base64"),
    (f"1 {SUITE80} inline:", "key||salt is not valid base64"),
    (f"1 {SUITE80} inline:AAAA", f"{SUITE80} needs a 30-byte key||salt, got 3 bytes"),
    (f"1 AEAD_AES_128_GCM {K}", "AEAD_AES_128_GCM needs a 28-byte key||salt, got 30 bytes"),
    (f"1 {SUITE80} {K}|0", "key lifetime must be between 1 and 2^48 packets"),
    (f"1 {SUITE80} {K}|2^49", "key lifetime must be between 1 and 2^48 packets"),
    (f"1 {SUITE80} {K}|281474976710657", "key lifetime must be between 1 and 2^48 packets"),
    (f"1 {SUITE80} {K}|2^", "key lifetime must be a decimal number or 2^n"),
    (f"1 {SUITE80} {K}|2^999999999999999", "key lifetime must be a decimal number or 2^n"),
    (f"1 {SUITE80} {K}|9999999999999999", "key lifetime must be a decimal number or 2^n"),
    (f"1 {SUITE80} {K}|3^4", "key lifetime must be a decimal number or 2^n"),
    (f"1 {SUITE80} {K}|lots", "key lifetime must be a decimal number or 2^n"),
    (f"1 {SUITE80} {K}|", "key lifetime must be a decimal number or 2^n"),
    (f"1 {SUITE80} {K}|1:0", "MKI length must be between 1 and 128 bytes"),
    (f"1 {SUITE80} {K}|1:129", "MKI length must be between 1 and 128 bytes"),
    (f"1 {SUITE80} {K}|256:1", "MKI value does not fit in the MKI length"),
    (f"1 {SUITE80} {K}|1:x", "MKI must be <value>:<length> in decimal"),
    (f"1 {SUITE80} {K}|:4", "MKI must be <value>:<length> in decimal"),
    (
        f"1 {SUITE80} {K}|1:4|2^20",
        "key-params are inline:<key||salt>[|<lifetime>][|<MKI>:<length>]",
    ),
    (
        f"1 {SUITE80} {K}|2^20|2^20",
        "key-params are inline:<key||salt>[|<lifetime>][|<MKI>:<length>]",
    ),
    (
        f"1 {SUITE80} {K}|2^20|1:4|x",
        "key-params have at most a lifetime and an MKI after the key",
    ),
    (f"1 {SUITE80} {K};inline:{KEY30B_B64}", "several key-params need an MKI each"),
    (
        f"1 {SUITE80} {K}|1:4;inline:{KEY30B_B64}|2:2",
        "several key-params need the same MKI length",
    ),
    (
        f"1 {SUITE80} {K}|1:4;inline:{KEY30B_B64}|1:4",
        "several key-params need distinct MKI values",
    ),
    (f"1 {SUITE80} {K};", "key-params must use the inline: key method"),
    (f"1 {SUITE80} {K} KDR=25", "KDR must be between 0 and 24"),
    (f"1 {SUITE80} {K} KDR=x", "KDR must be between 0 and 24"),
    (f"1 {SUITE80} {K} KDR", "KDR needs a value"),
    (f"1 {SUITE80} {K} KDR=1 KDR=1", "session parameter KDR appears twice"),
    (f"1 {SUITE80} {K} UNENCRYPTED_SRTP=1", "UNENCRYPTED_SRTP takes no value"),
    (f"1 {SUITE80} {K} FEC_ORDER=FEC", "FEC_ORDER must be FEC_SRTP or SRTP_FEC"),
    (f"1 {SUITE80} {K} WSH=63", "WSH must be a number of packets of at least 64"),
    (f"1 {SUITE80} {K} WSH=big", "WSH must be a number of packets of at least 64"),
    (f"1 {SUITE80} {K} FEC_KEY=inline:AAAA", f"{SUITE80} needs a 30-byte key||salt, got 3 bytes"),
    (
        f"1 {SUITE80} {K} FEC_KEY={K};{K}",
        "FEC_KEY: several key-params need an MKI each",
    ),
    (
        f"1 {SUITE80} {K} caf\u00e9",
        "crypto key-params and session parameters must be visible ASCII",
    ),
    (
        f"1 {SUITE80} {K}\tKDR=1",
        "crypto key-params and session parameters must be visible ASCII",
    ),
]


@pytest.mark.parametrize(("value", "message"), INVALID, ids=[v for v, _ in INVALID])
def test_invalid_crypto_raises_sdp_error(value: str, message: str) -> None:
    """A malformed a=crypto value raises SdpError (488) with the exact reason."""
    with pytest.raises(SdpError) as excinfo:
        parse_crypto(value)
    assert excinfo.value.message == message
    assert excinfo.value.status == 488


def test_error_messages_never_contain_key_material() -> None:
    """An SdpError about a key does not quote the key."""
    for value in (
        f"1 {SUITE80} inline:{KEY30_B64}AAAA",
        f"1 {SUITE80} inline:{KEY30_B64}|2^99",
        f"1 {SUITE80} inline:{KEY30_B64} FEC_KEY=inline:{KEY30B_B64}AA",
    ):
        with pytest.raises(SdpError) as excinfo:
            parse_crypto(value)
        assert KEY30_B64 not in str(excinfo.value)
        assert KEY30B_B64[:20] not in str(excinfo.value)


def test_repr_and_str_mask_key_material() -> None:
    """repr() and str() of a crypto attribute never show the inline key, FEC key or opaque text."""
    attribute = parse_crypto(
        f"1 {SUITE80} inline:{KEY30_B64}|2^31|1:4 FEC_KEY=inline:{KEY30B_B64} KDR=1"
    )
    text = repr(attribute)
    assert text == (
        "CryptoAttribute(tag=1, suite='AES_CM_128_HMAC_SHA1_80', "
        "key_params=(KeyParam(key_salt=<30 bytes redacted>, lifetime=2^31, mki=1, "
        "mki_length=4),), session_params=('FEC_KEY=<redacted>', 'KDR=1'), "
        "opaque_key_params=None)"
    )
    assert str(attribute) == text
    opaque = parse_crypto("2 SECRET_SUITE inline:c2VjcmV0 -X=inline:c2VjcmV0")
    assert "c2VjcmV0" not in repr(opaque)
    assert "c2VjcmV0" not in repr(opaque.key_params) + str(opaque)


def test_to_str_is_the_only_way_out_for_keys() -> None:
    """to_str() writes the key material that repr() hides."""
    attribute = CryptoAttribute(9, SUITE80, (KeyParam(KEY30, 2**31, lifetime_power=True),))
    assert attribute.to_str() == f"9 {SUITE80} inline:{KEY30_B64}|2^31"
    assert KEY30_B64 not in repr(attribute)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: KeyParam(KEY30, lifetime=0), "key lifetime must be between 1 and 2^48 packets"),
        (
            lambda: KeyParam(KEY30, lifetime=3, lifetime_power=True),
            "a 2^n key lifetime must be a power of two",
        ),
        (lambda: KeyParam(KEY30, lifetime_power=True), "lifetime_power needs a lifetime"),
        (lambda: KeyParam(KEY30, mki=1), "MKI value and MKI length go together"),
        (
            lambda: KeyParam(KEY30, mki=1, mki_length=200),
            "MKI length must be between 1 and 128 bytes",
        ),
        (
            lambda: CryptoAttribute(1, SUITE80, (KeyParam(b"short"),)),
            f"{SUITE80} needs a 30-byte key||salt, got 5 bytes",
        ),
        (lambda: CryptoAttribute(1, SUITE80), "at least one key-param is required"),
        (
            lambda: CryptoAttribute(1, "OTHER", (KeyParam(KEY30),)),
            "key-params of an unknown suite are kept as opaque text",
        ),
        (lambda: CryptoAttribute(1, "OTHER"), "an unknown suite needs its key-params text"),
        (
            lambda: CryptoAttribute(10**9, SUITE80, (KeyParam(KEY30),)),
            "crypto tag must have 1 to 9 digits",
        ),
        (
            lambda: CryptoAttribute(1, SUITE80, (KeyParam(KEY30),), ("KDR=99",)),
            "KDR must be between 0 and 24",
        ),
        (
            lambda: CryptoAttribute(1, SUITE80, (KeyParam(KEY30),), ("A B",)),
            "session parameters must be visible ASCII without spaces",
        ),
    ],
)
def test_constructors_reject_invalid_values_with_value_error(
    build: Callable[[], object], message: str
) -> None:
    """Building an invalid KeyParam or CryptoAttribute in code is a ValueError, not a 488."""
    with pytest.raises(ValueError) as excinfo:
        build()
    assert not isinstance(excinfo.value, SdpError)
    assert str(excinfo.value) == message
