"""RFC 4568 SDES: the ``a=crypto`` attribute, parsed and written without I/O.

``a=crypto:<tag> <crypto-suite> <key-params> [<session-params>]`` carries SRTP master keys in the
clear inside SDP (the signalling hop is expected to be TLS).  This module turns the attribute value
(the text after ``a=crypto:``) into a :class:`CryptoAttribute` and back.

Suites the SBC knows (RFC 4568 6.2, RFC 6188, RFC 7714) are checked fully: ``inline:`` key
method, base64 key||salt of exactly the suite's length, lifetime, MKI and the SRTP session
parameters.  An unknown suite still parses (``suite_known`` is ``False``) with its key-params kept
verbatim, so that offer/answer can skip it instead of failing the whole offer.

Key material never appears in ``repr()``/``str()`` of these objects nor in error messages: only
:meth:`CryptoAttribute.to_str` (used to write SDP) emits it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from sbc.errors import SdpError

__all__ = [
    "MAX_KEY_LIFETIME",
    "SRTP_SUITES",
    "CryptoAttribute",
    "KeyParam",
    "SrtpSuite",
    "parse_crypto",
    "redact_crypto_value",
]


@dataclass(frozen=True, slots=True)
class SrtpSuite:
    """An SRTP crypto-suite usable with SDES: its name and master key and salt sizes in bytes."""

    name: str
    key_length: int
    salt_length: int

    @property
    def key_salt_length(self) -> int:
        return self.key_length + self.salt_length


SRTP_SUITES: dict[str, SrtpSuite] = {
    suite.name: suite
    for suite in (
        SrtpSuite("AES_CM_128_HMAC_SHA1_80", 16, 14),  # RFC 4568 6.2.1
        SrtpSuite("AES_CM_128_HMAC_SHA1_32", 16, 14),  # RFC 4568 6.2.2
        SrtpSuite("F8_128_HMAC_SHA1_80", 16, 14),  # RFC 4568 6.2.3
        SrtpSuite("AES_192_CM_HMAC_SHA1_80", 24, 14),  # RFC 6188 3
        SrtpSuite("AES_192_CM_HMAC_SHA1_32", 24, 14),  # RFC 6188 3
        SrtpSuite("AES_256_CM_HMAC_SHA1_80", 32, 14),  # RFC 6188 3
        SrtpSuite("AES_256_CM_HMAC_SHA1_32", 32, 14),  # RFC 6188 3
        SrtpSuite("AEAD_AES_128_GCM", 16, 12),  # RFC 7714 12.3
        SrtpSuite("AEAD_AES_256_GCM", 32, 12),  # RFC 7714 12.3
    )
}

MAX_KEY_LIFETIME = 2**48  # packets; the SRTP maximum, RFC 3711 9.2 and RFC 4568 6.1
MAX_MKI_LENGTH = 128  # bytes, RFC 4568 6.1
MIN_WSH = 64  # packets, RFC 4568 6.3.7 (the SRTP replay window minimum)
MAX_KDR = 24  # RFC 4568 6.3.1: KDR=n means 2^n, n in 0..24

_FLAG_PARAMS = frozenset({"UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP"})
_VALUED_PARAMS = frozenset({"KDR", "FEC_ORDER", "FEC_KEY", "WSH"})
_FEC_ORDERS = frozenset({"FEC_SRTP", "SRTP_FEC"})

_TAG = re.compile(r"[0-9]{1,9}")
_SUITE = re.compile(r"[A-Za-z0-9_]+")
_VCHARS = re.compile(r"[\x21-\x7e]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_LIFETIME = re.compile(r"2\^([0-9]{1,2})|([0-9]{1,15})")  # 2^n: never compute a huge power
_MKI = re.compile(r"([0-9]{1,310}):([0-9]{1,3})")
_INLINE_KEY = re.compile(r"(?i)(inline:)[^|; ]*")


def redact_crypto_value(value: str) -> str:
    """Return an ``a=crypto`` value with everything after the suite name replaced by a marker.

    Used by every ``__repr__`` that could otherwise show SRTP keys (including malformed ones).
    """
    head = value.split(" ", 2)
    if len(head) < 3:
        return _INLINE_KEY.sub(r"\1<redacted>", value)
    return f"{head[0]} {head[1]} <redacted>"


def _key_param_error(kp: KeyParam) -> str | None:
    """Why ``kp`` is not a valid key-param, or ``None`` (shared by parser and constructor)."""
    if kp.lifetime is not None:
        if not 1 <= kp.lifetime <= MAX_KEY_LIFETIME:
            return "key lifetime must be between 1 and 2^48 packets"
        if kp.lifetime_power and kp.lifetime & (kp.lifetime - 1):
            return "a 2^n key lifetime must be a power of two"
    elif kp.lifetime_power:
        return "lifetime_power needs a lifetime"
    if (kp.mki is None) != (kp.mki_length is None):
        return "MKI value and MKI length go together"
    if kp.mki_length is not None and kp.mki is not None:
        if not 1 <= kp.mki_length <= MAX_MKI_LENGTH:
            return "MKI length must be between 1 and 128 bytes"
        if not 0 <= kp.mki < 256**kp.mki_length:
            return "MKI value does not fit in the MKI length"
    return None


@dataclass(frozen=True, slots=True, repr=False)
class KeyParam:
    """One ``inline:<key||salt>[|lifetime][|MKI:length]`` key-param (RFC 4568 6.1).

    ``key_salt`` is the decoded master key followed by the master salt.  ``lifetime`` is in
    packets; ``lifetime_power`` records that it was (or is to be) written ``2^n``.  ``mki`` and
    ``mki_length`` (bytes) come together or not at all.
    """

    key_salt: bytes
    lifetime: int | None = None
    lifetime_power: bool = False
    mki: int | None = None
    mki_length: int | None = None

    def __post_init__(self) -> None:
        error = _key_param_error(self)
        if error is not None:
            raise ValueError(error)

    def to_str(self) -> str:
        """The key-param as written in SDP, key material included."""
        text = "inline:" + base64.b64encode(self.key_salt).decode("ascii")
        if self.lifetime is not None:
            if self.lifetime_power:
                text += f"|2^{self.lifetime.bit_length() - 1}"
            else:
                text += f"|{self.lifetime}"
        if self.mki is not None:
            text += f"|{self.mki}:{self.mki_length}"
        return text

    def _lifetime_str(self) -> str:
        if self.lifetime is None:
            return "None"
        if self.lifetime_power:
            return f"2^{self.lifetime.bit_length() - 1}"
        return str(self.lifetime)

    def __repr__(self) -> str:
        return (
            f"KeyParam(key_salt=<{len(self.key_salt)} bytes redacted>, "
            f"lifetime={self._lifetime_str()}, mki={self.mki!r}, mki_length={self.mki_length!r})"
        )


def _crypto_error(c: CryptoAttribute) -> str | None:
    """Why ``c`` is not a valid crypto attribute, or ``None`` (the constructor's check)."""
    if not 0 <= c.tag <= 999_999_999:
        return "crypto tag must have 1 to 9 digits"
    if not _SUITE.fullmatch(c.suite):
        return "crypto-suite must be letters, digits and underscores"
    suite = SRTP_SUITES.get(c.suite)
    if suite is None:
        if c.key_params:
            return "key-params of an unknown suite are kept as opaque text"
        if c.opaque_key_params is None or not _VCHARS.fullmatch(c.opaque_key_params):
            return "an unknown suite needs its key-params text"
    else:
        if c.opaque_key_params is not None:
            return "a known suite needs parsed key-params"
        error = _key_params_error(c.key_params, suite)
        if error is not None:
            return error
    for param in c.session_params:
        if not _VCHARS.fullmatch(param):
            return "session parameters must be visible ASCII without spaces"
    return None


def _key_params_error(key_params: tuple[KeyParam, ...], suite: SrtpSuite) -> str | None:
    if not key_params:
        return "at least one key-param is required"
    for kp in key_params:
        if len(kp.key_salt) != suite.key_salt_length:
            return (
                f"{suite.name} needs a {suite.key_salt_length}-byte key||salt, "
                f"got {len(kp.key_salt)} bytes"
            )
    if len(key_params) > 1:
        # RFC 4568 6.1: with several master keys the MKI is what tells them apart.
        if any(kp.mki is None for kp in key_params):
            return "several key-params need an MKI each"
        if len({kp.mki_length for kp in key_params}) != 1:
            return "several key-params need the same MKI length"
        if len({kp.mki for kp in key_params}) != len(key_params):
            return "several key-params need distinct MKI values"
    return None


@dataclass(frozen=True, slots=True, repr=False)
class CryptoAttribute:
    """An ``a=crypto`` attribute (RFC 4568 9.1).

    For a suite in :data:`SRTP_SUITES` the key-params are parsed into ``key_params`` and
    ``opaque_key_params`` is ``None``; for an unknown suite ``key_params`` is empty and
    ``opaque_key_params`` holds the text verbatim.  ``session_params`` keeps every session
    parameter as written, in order; the known ones are exposed by typed properties.
    """

    tag: int
    suite: str
    key_params: tuple[KeyParam, ...] = ()
    session_params: tuple[str, ...] = ()
    opaque_key_params: str | None = None

    def __post_init__(self) -> None:
        error = _crypto_error(self)
        if error is None and self.suite_known:
            try:
                _check_session_params(self.session_params, SRTP_SUITES[self.suite])
            except SdpError as exc:
                error = exc.message
        if error is not None:
            raise ValueError(error)

    @property
    def suite_known(self) -> bool:
        return self.suite in SRTP_SUITES

    @property
    def srtp_suite(self) -> SrtpSuite | None:
        return SRTP_SUITES.get(self.suite)

    @property
    def key_salt(self) -> bytes:
        """The first key-param's key||salt (``b""`` for an unknown suite)."""
        return self.key_params[0].key_salt if self.key_params else b""

    @property
    def master_key(self) -> bytes:
        suite = self.srtp_suite
        return self.key_salt[: suite.key_length] if suite else b""

    @property
    def master_salt(self) -> bytes:
        suite = self.srtp_suite
        return self.key_salt[suite.key_length :] if suite else b""

    def _param(self, name: str) -> str | None:
        prefix = name + "="
        for param in self.session_params:
            if param.startswith(prefix):
                return param[len(prefix) :]
        return None

    @property
    def kdr(self) -> int | None:
        """Key derivation rate exponent (``KDR=n`` means a rate of 2^n), RFC 4568 6.3.1."""
        value = self._param("KDR") if self.suite_known else None
        return int(value) if value is not None else None

    @property
    def unencrypted_srtp(self) -> bool:
        return self.suite_known and "UNENCRYPTED_SRTP" in self.session_params

    @property
    def unencrypted_srtcp(self) -> bool:
        return self.suite_known and "UNENCRYPTED_SRTCP" in self.session_params

    @property
    def unauthenticated_srtp(self) -> bool:
        return self.suite_known and "UNAUTHENTICATED_SRTP" in self.session_params

    @property
    def fec_order(self) -> str | None:
        return self._param("FEC_ORDER") if self.suite_known else None

    @property
    def fec_key(self) -> tuple[KeyParam, ...]:
        suite = self.srtp_suite
        value = self._param("FEC_KEY") if suite else None
        if suite is None or value is None:
            return ()
        return tuple(_parse_key_param(text, suite) for text in value.split(";"))

    @property
    def wsh(self) -> int | None:
        """Window size hint in packets, RFC 4568 6.3.7."""
        value = self._param("WSH") if self.suite_known else None
        return int(value) if value is not None else None

    @property
    def unknown_session_params(self) -> tuple[str, ...]:
        """Session parameters this module does not interpret (all of them for unknown suites)."""
        if not self.suite_known:
            return self.session_params
        return tuple(p for p in self.session_params if _param_name(p) not in _KNOWN_NAMES)

    def to_str(self) -> str:
        """The attribute value (after ``a=crypto:``), key material included."""
        if self.opaque_key_params is not None:
            key_params = self.opaque_key_params
        else:
            key_params = ";".join(kp.to_str() for kp in self.key_params)
        return " ".join([str(self.tag), self.suite, key_params, *self.session_params])

    def __repr__(self) -> str:
        params = tuple(
            "FEC_KEY=<redacted>" if p.startswith("FEC_KEY=") else p for p in self.session_params
        )
        if not self.suite_known:
            params = tuple(_INLINE_KEY.sub(r"\1<redacted>", p) for p in params)
        opaque = None if self.opaque_key_params is None else "<redacted>"
        return (
            f"CryptoAttribute(tag={self.tag!r}, suite={self.suite!r}, "
            f"key_params={self.key_params!r}, session_params={params!r}, "
            f"opaque_key_params={opaque!r})"
        )


_KNOWN_NAMES = _FLAG_PARAMS | _VALUED_PARAMS


def _param_name(param: str) -> str:
    return param.split("=", 1)[0]


def _parse_lifetime(text: str) -> tuple[int, bool]:
    match = _LIFETIME.fullmatch(text)
    if match is None:
        raise SdpError("key lifetime must be a decimal number or 2^n")
    power = match.group(1) is not None
    number = 2 ** int(match.group(1)) if power else int(match.group(2))
    if not 1 <= number <= MAX_KEY_LIFETIME:
        raise SdpError("key lifetime must be between 1 and 2^48 packets")
    return number, power


def _parse_key_param(text: str, suite: SrtpSuite) -> KeyParam:
    method, sep, info = text.partition(":")
    if not sep or method.lower() != "inline":
        raise SdpError("key-params must use the inline: key method")
    parts = info.split("|")
    if len(parts) > 3:
        raise SdpError("key-params have at most a lifetime and an MKI after the key")
    key_text, extras = parts[0], parts[1:]
    if not _BASE64.fullmatch(key_text):
        raise SdpError("key||salt is not valid base64")
    try:
        # Liberal: some devices omit the base64 padding; the length check below still applies.
        key_salt = base64.b64decode(key_text + "=" * (-len(key_text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SdpError("key||salt is not valid base64") from None
    if len(key_salt) != suite.key_salt_length:
        raise SdpError(
            f"{suite.name} needs a {suite.key_salt_length}-byte key||salt, "
            f"got {len(key_salt)} bytes"
        )
    lifetime_text = mki_text = None
    if len(extras) == 2:
        lifetime_text, mki_text = extras
        if ":" in lifetime_text or ":" not in mki_text:
            raise SdpError("key-params are inline:<key||salt>[|<lifetime>][|<MKI>:<length>]")
    elif len(extras) == 1:
        if ":" in extras[0]:
            mki_text = extras[0]
        else:
            lifetime_text = extras[0]
    lifetime: int | None = None
    power = False
    if lifetime_text is not None:
        lifetime, power = _parse_lifetime(lifetime_text)
    mki: int | None = None
    mki_length: int | None = None
    if mki_text is not None:
        match = _MKI.fullmatch(mki_text)
        if match is None:
            raise SdpError("MKI must be <value>:<length> in decimal")
        mki, mki_length = int(match.group(1)), int(match.group(2))
    try:
        return KeyParam(key_salt, lifetime, power, mki, mki_length)
    except ValueError as exc:
        raise SdpError(str(exc)) from None


def _check_session_params(params: tuple[str, ...], suite: SrtpSuite) -> None:
    """Validate the SRTP session parameters of RFC 4568 6.3; unknown ones are left alone."""
    seen: set[str] = set()
    for param in params:
        name, sep, value = param.partition("=")
        if name in _FLAG_PARAMS:
            if sep:
                raise SdpError(f"{name} takes no value")
        elif name in _VALUED_PARAMS:
            if not sep:
                raise SdpError(f"{name} needs a value")
            if name == "KDR":
                if not re.fullmatch(r"[0-9]{1,2}", value) or int(value) > MAX_KDR:
                    raise SdpError("KDR must be between 0 and 24")
            elif name == "FEC_ORDER":
                if value not in _FEC_ORDERS:
                    raise SdpError("FEC_ORDER must be FEC_SRTP or SRTP_FEC")
            elif name == "FEC_KEY":
                key_params = tuple(_parse_key_param(text, suite) for text in value.split(";"))
                error = _key_params_error(key_params, suite)
                if error is not None:
                    raise SdpError(f"FEC_KEY: {error}")
            elif name == "WSH" and (
                not re.fullmatch(r"[0-9]{2,10}", value) or int(value) < MIN_WSH
            ):
                raise SdpError("WSH must be a number of packets of at least 64")
        else:
            continue
        if name in seen:
            raise SdpError(f"session parameter {name} appears twice")
        seen.add(name)


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse an ``a=crypto`` value (the text after ``a=crypto:``) into a :class:`CryptoAttribute`.

    Raises :class:`SdpError` for a malformed tag or suite name, missing key-params, and, for a
    known suite, a key method other than ``inline``, bad base64, a key||salt of the wrong length,
    a bad lifetime, an MKI length outside 1..128, or a malformed SRTP session parameter.  Fields
    may be separated by several spaces and trailing spaces are ignored.
    """
    fields = [f for f in value.split(" ") if f]
    if len(fields) < 3:
        raise SdpError("a=crypto needs a tag, a crypto-suite and key-params")
    tag_text, suite_name, key_text, *session = fields
    if not _TAG.fullmatch(tag_text):
        raise SdpError("crypto tag must have 1 to 9 digits")
    if not _SUITE.fullmatch(suite_name):
        raise SdpError("crypto-suite must be letters, digits and underscores")
    for field in fields[2:]:
        if not _VCHARS.fullmatch(field):
            raise SdpError("crypto key-params and session parameters must be visible ASCII")
    session_params = tuple(session)
    suite = SRTP_SUITES.get(suite_name)
    if suite is None:
        key_params: tuple[KeyParam, ...] = ()
        opaque: str | None = key_text
    else:
        key_params = tuple(_parse_key_param(text, suite) for text in key_text.split(";"))
        error = _key_params_error(key_params, suite)
        if error is not None:
            raise SdpError(error)
        _check_session_params(session_params, suite)
        opaque = None
    try:
        return CryptoAttribute(int(tag_text), suite_name, key_params, session_params, opaque)
    except ValueError as exc:  # pragma: no cover - the checks above are the same
        raise SdpError(str(exc)) from None
