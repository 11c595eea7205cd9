"""SRTP/SRTCP contexts over libsrtp2 and the RFC 4568 (SDES) offer/answer choices, without I/O.

Theory of operation
-------------------
libsrtp2 does the cryptography.  It is statically linked into pylibsrtp's extension module, whose
Python API knows only four profiles, cannot set a rollover counter (ROC) and allocates on every
packet.  The same shared object exports the whole libsrtp2 C API, so this module declares libsrtp
2.x's ``srtp_policy_t`` itself (cffi ABI mode, ``ffi.dlopen`` of that file) and builds sessions
directly: every suite libsrtp has, ``allow_repeat_tx`` on outbound contexts (a relayed
retransmission must not fail), the replay window, and one stream per carried SSRC whose ROC is set
with ``srtp_set_stream_roc`` (RFC 3711 3.3.1: the ROC belongs to the SSRC's crypto context, a new
master key does not reset it).

Nothing is trusted blindly.  At import a probe checks the version (``libsrtp2 2.x``) and our
struct layout against the one pylibsrtp was compiled with, then every suite: a known-answer packet
(RTP and RTCP, computed without libsrtp), a round trip with pylibsrtp's own API (an independent
path through the same library) for the four suites it knows or through our path for the others,
and a forged packet that must fail.  ROC carry-over is checked against a pylibsrtp sender whose
sequence number wraps.  Only suites that pass are in :data:`SUPPORTED_SUITES`; why the others
failed is in :data:`PROBE_FAILURES`.  With libsrtp 2.7.0 the AES-192 suites fail their known
answer (libsrtp derives their keys with AES-256, cisco/libsrtp#763) and are left out.  If our
layout cannot be used, contexts fall back to pylibsrtp's API (its four suites, :data:`ROC_CONTROL`
``False``).  Import never fails.

Hot path
--------
The relay reads a datagram into :data:`PACKET` (``recvfrom_into(PACKET_VIEW)``), calls
``unprotect_in_place(n)`` on the inbound context and ``protect_in_place(m)`` on the outbound one
and sends ``PACKET_VIEW[:k]``: no allocation, no copy, no exception.  The per-packet calls go to
pylibsrtp's compiled (API-mode) binding with our session pointer cast into its ffi once per
context, because that is faster than an ABI-mode call through libffi.  Measured with timeit on the
development machine (best of 27 runs of 20,000; one 172-byte RTP packet = 12-byte header + 160
bytes; through :class:`SrtpContext`'s in-place methods; unprotect excludes the ~50 ns copy of the
packet into PACKET)::

                                          API-mode call   ABI-mode call
    AES_CM_128_HMAC_SHA1_80   protect         ~720 ns         ~810 ns
                              unprotect       ~835 ns         ~925 ns
    AEAD_AES_128_GCM          protect         ~545 ns         ~625 ns
                              unprotect       ~890 ns        ~1000 ns

pylibsrtp's own ``Session.protect`` (bytes in, bytes out) takes ~1200 ns and ~1060 ns.  AEAD
unprotect includes ~170 ns to keep a copy of the packet: libsrtp decrypts AES-GCM in place before
it checks the tag, and a packet that fails must stay intact so that the relay can retry it with
the previous key during a re-key.

The SSRCs a context has seen (for :meth:`SrtpContext.rocs`) cost nothing per packet: libsrtp
already keeps one stream per SSRC, and ``rocs()`` walks that list (``srtp_stream_list_for_each``;
that a stream starts with its SSRC is checked by the probe).

Keys: the master key||salt is copied into a cffi buffer only for the time libsrtp needs to derive
the session keys and is zeroed right after; ``repr()`` of a context shows no key material.
"""

from __future__ import annotations

import importlib
import re
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cffi

from sbc.errors import SbcError
from sbc.media.sdes import MAX_KEY_LIFETIME, SRTP_SUITES, CryptoAttribute, KeyParam

pylibsrtp: Any
try:
    pylibsrtp = importlib.import_module("pylibsrtp")
except Exception:  # pragma: no cover - a hard dependency; this only keeps the import alive
    pylibsrtp = None

__all__ = [
    "DEFAULT_WINDOW_SIZE",
    "ERROR_AUTH",
    "ERROR_KEY_EXPIRED",
    "ERROR_MALFORMED",
    "ERROR_NAMES",
    "ERROR_OTHER",
    "ERROR_REPLAY",
    "ERROR_TOO_BIG",
    "LIBSRTP_VERSION",
    "MAX_KEY_LIFETIME",
    "MAX_PACKET",
    "MAX_WINDOW_SIZE",
    "MIN_KEY_LIFETIME",
    "MIN_WINDOW_SIZE",
    "PACKET",
    "PACKET_SIZE",
    "PACKET_VIEW",
    "PROBE_FAILURES",
    "ROC_CONTROL",
    "SUPPORTED_SUITES",
    "SrtpContext",
    "SrtpError",
    "answer_crypto",
    "choose_crypto",
    "context_from_crypto",
    "make_crypto",
    "max_packets_for",
    "new_key_salt",
    "offer_cryptos",
    "window_size_for",
]


class SrtpError(SbcError):
    """An SRTP context cannot be built or a packet cannot be (un)protected.

    ``code`` is one of the ``ERROR_*`` values the in-place calls return.  The message never
    contains key material.
    """

    def __init__(self, message: str, code: int = -1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# Negative codes returned by the in-place calls (never raised on the hot path).
ERROR_OTHER = -1  # anything else libsrtp reports, or a closed context
ERROR_AUTH = -2  # authentication tag check failed (srtp_err_status_auth_fail, cipher_fail)
ERROR_REPLAY = -3  # replayed or too old for the replay window, RFC 3711 3.3.2
ERROR_TOO_BIG = -4  # does not fit PACKET (with room for the trailer when protecting)
ERROR_KEY_EXPIRED = -5  # the master key's lifetime is used up, RFC 3711 9.2
ERROR_MALFORMED = -6  # too short or not an RTP/RTCP packet (bad_param, parse_err)

ERROR_NAMES: dict[int, str] = {
    ERROR_OTHER: "SRTP failure",
    ERROR_AUTH: "SRTP authentication failed",
    ERROR_REPLAY: "SRTP replay detected",
    ERROR_TOO_BIG: "packet too big",
    ERROR_KEY_EXPIRED: "SRTP master key lifetime exhausted",
    ERROR_MALFORMED: "malformed RTP/RTCP packet",
}

# libsrtp2 srtp_err_status_t -> our code; anything not listed is ERROR_OTHER.
_STATUS_CODES: dict[int, int] = {
    2: ERROR_MALFORMED,  # bad_param (e.g. shorter than a header)
    7: ERROR_AUTH,  # auth_fail
    8: ERROR_AUTH,  # cipher_fail: an AEAD packet shorter than its tag cannot be verified
    9: ERROR_REPLAY,  # replay_fail
    10: ERROR_REPLAY,  # replay_old
    15: ERROR_KEY_EXPIRED,  # key_expired
    21: ERROR_MALFORMED,  # parse_err
    26: ERROR_REPLAY,  # pkt_idx_old
}
_CLOSED_STATUS = 13  # srtp_err_status_no_ctx, what a closed context reports

PACKET_SIZE = 2048  # bytes in PACKET
# RFC 3711 trailers as libsrtp bounds them: SRTCP index (4) + tag (16) + MKI (128).
_MAX_TRAILER = 4 + 16 + 128
MAX_PACKET = PACKET_SIZE - _MAX_TRAILER  # the largest packet protect_in_place accepts
_PUBLIC_BUFFER = 1500  # pylibsrtp.Session's own buffer, for the fallback path

MIN_WINDOW_SIZE = 64  # packets, RFC 3711 3.3.2 (SRTP-WINDOW-SIZE >= 64)
MAX_WINDOW_SIZE = 0x7FFF  # packets, the largest replay window libsrtp 2.x accepts
DEFAULT_WINDOW_SIZE = 1024  # packets: tolerant of bursty reordering at no security cost
# MAX_KEY_LIFETIME (2^48 packets, RFC 3711 9.2) comes from sdes; it is libsrtp's hard limit too.
# Shortest a=crypto key lifetime we accept: 2^16 packets, one sequence-number cycle (about 22
# minutes of 20 ms audio).  A shorter lifetime obliges the peer to re-key by re-INVITE more
# often than that per stream, which no sane device does (they send 2^31, 2^20 or nothing); a
# tiny value is a misconfiguration or an attempt to make us churn signalling.
MIN_KEY_LIFETIME = 2**16

_PROBE_SSRC = 0x5EC0DE01
_PROBE_KEY = bytes(range(1, 47))  # sliced to each suite's key||salt length; never used for media
# Known answers: _KAT_RTP and _KAT_RTCP protected with _PROBE_KEY (first SRTP packet, SRTCP index
# 1), everything after the RTP/RTCP header.  Computed independently of libsrtp (the ``cryptography``
# package, RFC 3711 4.3 key derivation checked against RFC 3711 B.3 and RFC 6188 7.2/7.4; for
# AES-GCM, RFC 7714 with the 96-bit master salt left-aligned in the KDF as libsrtp and other
# stacks do); tests/media/test_srtp.py recomputes them.  libsrtp 2.7.0 fails AES-192: it derives
# the session keys with AES-256 (cisco/libsrtp#763, fixed after 2.7.0), so a peer would not
# interoperate; the probe leaves those suites out until the library is fixed.
_KAT_RTP = struct.pack("!BBHII", 0x80, 0, 7, 0x1007, _PROBE_SSRC) + bytes(range(16))
_KAT_RTCP = struct.pack("!BBHIII", 0x80, 201, 2, _PROBE_SSRC, 0x01020304, 0x05060708)
_KNOWN_ANSWERS: dict[str, tuple[str, str]] = {
    "AEAD_AES_256_GCM": (
        "08cb1ba7d8fa5911bf8f138931bfc0f65685b4606eab8f189644f0d034f8d033",
        "a24335544c7fa768f81e74fe08f8ba99f36caa492cc7853580000001",
    ),
    "AEAD_AES_128_GCM": (
        "33eba61989a38d80d904b440c5b6cf76e051a0894a0b0ceacd94555bc18ff0cb",
        "db2972b8cd69d1e81270745ee652086471c5f66650f5f9ef80000001",
    ),
    "AES_256_CM_HMAC_SHA1_80": (
        "ebb67fa2e53aaa0f40a26113c3585179d18dea9b19c54f7be4e9",
        "92e7305940142e88800000018b8c7502b45844c06faa",
    ),
    "AES_192_CM_HMAC_SHA1_80": (
        "fc2b98824a792d7d67b06a32ca87cd1b7c8f3147a1b420596b0e",
        "e6871c07a200f98c800000014c8dbb21ec831e863ee4",
    ),
    "AES_CM_128_HMAC_SHA1_80": (
        "a82de741d0e0d9618d81e070e3e567c9c9af2cb16f9106c872b2",
        "5b9689567b85ab0d8000000198baf66bfeb6e48d16ff",
    ),
    "AES_256_CM_HMAC_SHA1_32": (
        "ebb67fa2e53aaa0f40a26113c3585179d18dea9b",
        "92e7305940142e88800000018b8c7502b45844c06faa",
    ),
    "AES_192_CM_HMAC_SHA1_32": (
        "fc2b98824a792d7d67b06a32ca87cd1b7c8f3147",
        "e6871c07a200f98c800000014c8dbb21ec831e863ee4",
    ),
    "AES_CM_128_HMAC_SHA1_32": (
        "a82de741d0e0d9618d81e070e3e567c9c9af2cb1",
        "5b9689567b85ab0d8000000198baf66bfeb6e48d16ff",
    ),
}


# --- libsrtp2 through cffi ABI mode --------------------------------------------------------

# libsrtp 2.x public types (srtp.h) plus the two private facts rocs() relies on: a session starts
# with its stream list and a stream starts with its SSRC in network order (srtp_priv.h, 2.6+).
_CDEF = """
typedef enum { ssrc_undefined = 0, ssrc_specific = 1, ssrc_any_inbound = 2,
               ssrc_any_outbound = 3 } srtp_ssrc_type_t;
typedef struct { srtp_ssrc_type_t type; unsigned int value; } srtp_ssrc_t;
typedef struct srtp_crypto_policy_t {
    uint32_t cipher_type; int cipher_key_len; uint32_t auth_type;
    int auth_key_len; int auth_tag_len; int sec_serv;
} srtp_crypto_policy_t;
typedef struct srtp_master_key_t {
    unsigned char *key; unsigned char *mki_id; unsigned int mki_size;
} srtp_master_key_t;
typedef struct srtp_policy_t {
    srtp_ssrc_t ssrc;
    srtp_crypto_policy_t rtp;
    srtp_crypto_policy_t rtcp;
    unsigned char *key;
    srtp_master_key_t **keys;
    unsigned long num_master_keys;
    void *deprecated_ekt;
    unsigned long window_size;
    int allow_repeat_tx;
    int *enc_xtn_hdr;
    int enc_xtn_hdr_count;
    struct srtp_policy_t *next;
} srtp_policy_t;
typedef struct srtp_ctx_t_ { void *stream_list; void *stream_template; void *user_data; } srtp_ctx;
typedef srtp_ctx *srtp_t;
typedef struct { uint32_t ssrc; } srtp_stream_head;

int srtp_create(srtp_t *session, const srtp_policy_t *policy);
int srtp_add_stream(srtp_t session, const srtp_policy_t *policy);
int srtp_dealloc(srtp_t session);
int srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr);
int srtp_unprotect(srtp_t ctx, void *srtp_hdr, int *len_ptr);
int srtp_protect_rtcp(srtp_t ctx, void *rtcp_hdr, int *pkt_octet_len);
int srtp_unprotect_rtcp(srtp_t ctx, void *srtcp_hdr, int *pkt_octet_len);
int srtp_set_stream_roc(srtp_t session, uint32_t ssrc, uint32_t roc);
int srtp_get_stream_roc(srtp_t session, uint32_t ssrc, uint32_t *roc);
const char *srtp_get_version_string(void);
void srtp_crypto_policy_set_rtp_default(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_rtcp_default(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_cm_192_hmac_sha1_80(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_cm_192_hmac_sha1_32(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_gcm_128_16_auth(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_gcm_256_16_auth(srtp_crypto_policy_t *p);
void srtp_stream_list_for_each(void *list, int (*callback)(void *, void *), void *data);
"""

# Suite -> (RTP policy setter, RTCP policy setter).  The _32 suites keep an
# 80-bit SRTCP tag (RFC 4568 6.2.2, RFC 6188 3); libsrtp's 128-bit HMAC-SHA1-80 setter is its
# "default" (the _80 name is only a macro).
_SUITE_POLICIES: dict[str, tuple[str, str]] = {
    "AEAD_AES_256_GCM": (
        "srtp_crypto_policy_set_aes_gcm_256_16_auth",
        "srtp_crypto_policy_set_aes_gcm_256_16_auth",
    ),
    "AEAD_AES_128_GCM": (
        "srtp_crypto_policy_set_aes_gcm_128_16_auth",
        "srtp_crypto_policy_set_aes_gcm_128_16_auth",
    ),
    "AES_256_CM_HMAC_SHA1_80": (
        "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80",
        "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80",
    ),
    "AES_192_CM_HMAC_SHA1_80": (
        "srtp_crypto_policy_set_aes_cm_192_hmac_sha1_80",
        "srtp_crypto_policy_set_aes_cm_192_hmac_sha1_80",
    ),
    "AES_CM_128_HMAC_SHA1_80": (
        "srtp_crypto_policy_set_rtp_default",
        "srtp_crypto_policy_set_rtcp_default",
    ),
    "AES_256_CM_HMAC_SHA1_32": (
        "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32",
        "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80",
    ),
    "AES_192_CM_HMAC_SHA1_32": (
        "srtp_crypto_policy_set_aes_cm_192_hmac_sha1_32",
        "srtp_crypto_policy_set_aes_cm_192_hmac_sha1_80",
    ),
    "AES_CM_128_HMAC_SHA1_32": (
        "srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32",
        "srtp_crypto_policy_set_rtcp_default",
    ),
}
# Best first: AEAD, then longer keys, then longer tags.  F8_128_HMAC_SHA1_80 is never offered.
_PREFERENCE = (
    "AEAD_AES_256_GCM",
    "AEAD_AES_128_GCM",
    "AES_256_CM_HMAC_SHA1_80",
    "AES_192_CM_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_80",
    "AES_256_CM_HMAC_SHA1_32",
    "AES_192_CM_HMAC_SHA1_32",
    "AES_CM_128_HMAC_SHA1_32",
)


class _Abi:
    """libsrtp2 opened in ABI mode, plus the hot-path functions (API mode when available)."""

    def __init__(self, ffi: Any, lib: Any, version: str) -> None:
        self.ffi = ffi
        self.lib = lib
        self.version = version
        self.pffi: Any = None  # pylibsrtp's compiled ffi, when its functions are usable
        self.use_api = False  # per-packet calls through pylibsrtp's API-mode binding
        self.roc_control = False
        self.setters: dict[str, tuple[Any, Any]] = {}
        self.collector: Any = None  # the srtp_stream_list_for_each callback
        self.abi_calls = (
            lib.srtp_protect,
            lib.srtp_unprotect,
            lib.srtp_protect_rtcp,
            lib.srtp_unprotect_rtcp,
        )
        self.api_calls: tuple[Any, Any, Any, Any] | None = None

    def hot_calls(self) -> tuple[Any, Any, Any, Any]:
        if self.use_api and self.api_calls is not None:
            return self.api_calls
        return self.abi_calls


def _load_abi() -> _Abi | None:
    """Open libsrtp2 in ABI mode and check the policy layout; ``None`` if it cannot be used."""
    if pylibsrtp is None:
        return None
    try:
        binding = pylibsrtp._binding
        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        lib = ffi.dlopen(binding.__file__)
        version = ffi.string(lib.srtp_get_version_string()).decode("ascii", "replace")
        if not re.fullmatch(r"libsrtp2 2\.[0-9]+\.[0-9]+\S*", version):
            return None
        pffi = binding.ffi
        if ffi.sizeof("srtp_policy_t") != pffi.sizeof("srtp_policy_t"):
            return None
        if ffi.sizeof("srtp_crypto_policy_t") != pffi.sizeof("srtp_crypto_policy_t"):
            return None
        for name, field in pffi.typeof("srtp_policy_t").fields:
            if ffi.offsetof("srtp_policy_t", name) != field.offset:
                return None
        abi = _Abi(ffi, lib, version)
    except Exception:
        return None
    try:
        plib = binding.lib
        abi.api_calls = (
            plib.srtp_protect,
            plib.srtp_unprotect,
            plib.srtp_protect_rtcp,
            plib.srtp_unprotect_rtcp,
        )
        pffi.cast("srtp_t", 0)
        abi.pffi = pffi
        abi.use_api = True
    except Exception:  # pragma: no cover - a pylibsrtp without them: ABI calls only
        abi.api_calls = None
    for suite, (rtp_name, rtcp_name) in _SUITE_POLICIES.items():
        try:
            abi.setters[suite] = (getattr(lib, rtp_name), getattr(lib, rtcp_name))
        except Exception:  # pragma: no cover - a libsrtp built without this cipher
            continue
    try:

        @ffi.callback("int(void *, void *)")
        def collect(stream: Any, data: Any) -> int:
            ffi.from_handle(data).append(ffi.cast("srtp_stream_head *", stream).ssrc)
            return 0

        abi.collector = collect
    except Exception:  # pragma: no cover - no executable memory for callbacks
        abi.collector = None
    return abi


_ABI = _load_abi()

# The one packet buffer of the hot path.  It belongs to this module; the relay fills it with
# recvfrom_into(PACKET_VIEW) and sends PACKET_VIEW[:n] after the in-place calls.
_ffi: Any = _ABI.ffi if _ABI is not None else cffi.FFI()
PACKET: Any = _ffi.new("char[]", PACKET_SIZE)
PACKET_VIEW: memoryview = memoryview(_ffi.buffer(PACKET))
# A second buffer for the bytes convenience API, so that it never clobbers PACKET.
_SCRATCH: Any = _ffi.new("char[]", PACKET_SIZE)
_SCRATCH_VIEW: memoryview = memoryview(_ffi.buffer(_SCRATCH))


def _closed_call(session: Any, buf: Any, length: Any) -> int:
    return _CLOSED_STATUS


# With AES-GCM libsrtp (over OpenSSL) decrypts in place *before* it checks the tag, so a packet
# that fails authentication is left garbled; the relay must be able to retry it with the previous
# key during a re-key, so AEAD unprotect keeps a copy and puts it back on failure (~170 ns).
_SAVED: Any = _ffi.new("char[]", PACKET_SIZE)


def _preserving(call: Any) -> Callable[[Any, Any, Any], int]:
    """``call`` (an unprotect), leaving the buffer as it was when it fails."""

    def unprotect(session: Any, buf: Any, length: Any, _saved: Any = _SAVED) -> int:
        n = length[0]
        _ffi.memmove(_saved, buf, n)
        status: int = call(session, buf, length)
        if status:
            _ffi.memmove(buf, _saved, n)
        return status

    return unprotect


# --- the fallback: pylibsrtp's public API ------------------------------------------------------

_PUBLIC_PROFILES: dict[str, str] = {
    "AES_CM_128_HMAC_SHA1_80": "SRTP_PROFILE_AES128_CM_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32": "SRTP_PROFILE_AES128_CM_SHA1_32",
    "AEAD_AES_128_GCM": "SRTP_PROFILE_AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM": "SRTP_PROFILE_AEAD_AES_256_GCM",
}
_STATUS_TOO_BIG = 1006  # private: a packet beyond pylibsrtp's 1500-byte buffer
_STATUS_CODES[_STATUS_TOO_BIG] = ERROR_TOO_BIG


def _public_status(exc: Exception) -> int:
    try:
        return int(pylibsrtp.ERRORS.index(str(exc)))
    except (AttributeError, ValueError):
        return 1


def _public_call(method: str, trailer: int) -> Callable[[Any, Any, Any], int]:
    """A (session, buffer, length_ptr) -> status call made of pylibsrtp's bytes API."""

    def call(session: Any, buf: Any, length: Any) -> int:
        n = length[0]
        if n > _PUBLIC_BUFFER - trailer:
            return _STATUS_TOO_BIG
        try:
            out = getattr(session, method)(_ffi.buffer(buf, n)[:])
        except pylibsrtp.Error as exc:
            return _public_status(exc)
        except (ValueError, TypeError):
            return _STATUS_TOO_BIG
        _ffi.memmove(buf, out, len(out))
        length[0] = len(out)
        return 0

    return call


_PUBLIC_CALLS = (
    _public_call("protect", _MAX_TRAILER - 4),
    _public_call("unprotect", 0),
    _public_call("protect_rtcp", _MAX_TRAILER),
    _public_call("unprotect_rtcp", 0),
)


# --- contexts ------------------------------------------------------------------------------


def _check_args(
    suite: str,
    key_salt: bytes,
    rocs: Mapping[int, int] | None,
    window_size: int,
    max_packets: int | None,
) -> None:
    spec = SRTP_SUITES.get(suite)
    if spec is None or (suite not in SUPPORTED_SUITES and suite not in _probing):
        raise SrtpError(f"SRTP suite {suite!r} is not supported by this libsrtp")
    if not isinstance(key_salt, bytes | bytearray) or len(key_salt) != spec.key_salt_length:
        raise SrtpError(f"{suite} needs a {spec.key_salt_length}-byte key||salt")
    if window_size < MIN_WINDOW_SIZE:
        raise SrtpError(f"SRTP replay window must be at least {MIN_WINDOW_SIZE} packets")
    if max_packets is not None and max_packets < 1:
        raise SrtpError("SRTP key lifetime must be at least one packet")
    for ssrc, roc in (rocs or {}).items():
        if not (0 <= ssrc <= 0xFFFFFFFF and 0 <= roc <= 0xFFFFFFFF):
            raise SrtpError("SSRC and rollover counter must be 32-bit unsigned integers")


class SrtpContext:
    """One direction of one leg's stream: SRTP and SRTCP of one ``m=`` line, under one key.

    ``key_salt`` is the master key followed by the master salt (RFC 4568 key-params order).  An
    outbound context protects (any SSRC, ``allow_repeat_tx`` so that a relayed retransmission is
    protected again instead of failing); an inbound context unprotects (any SSRC, replay window
    of ``window_size`` packets).  ``rocs`` carries the rollover counter of known SSRCs into this
    context when a stream is re-keyed (take it from the old context's :meth:`rocs`).
    ``max_packets`` is the key's lifetime: after that many packets (RTP and RTCP together) every
    call fails with :data:`ERROR_KEY_EXPIRED`, RFC 3711 9.2.

    The in-place calls work on :data:`PACKET` and never raise; the bytes calls raise
    :class:`SrtpError`.  :meth:`close` frees the libsrtp session (garbage collection does too).
    """

    __slots__ = (
        "_budget",
        "_carried",
        "_closed_rocs",
        "_hot",
        "_len",
        "_owner",
        "_protect",
        "_protect_rtcp",
        "_public",
        "_session",
        "_unprotect",
        "_unprotect_rtcp",
        "max_packets",
        "outbound",
        "suite",
        "window_size",
    )

    def __init__(
        self,
        suite: str,
        key_salt: bytes,
        *,
        outbound: bool,
        rocs: Mapping[int, int] | None = None,
        window_size: int = DEFAULT_WINDOW_SIZE,
        max_packets: int | None = None,
    ) -> None:
        _check_args(suite, key_salt, rocs, window_size, max_packets)
        self.suite = suite
        self.outbound = outbound
        # Larger than libsrtp accepts (a peer's WSH hint can be): the largest it has.
        self.window_size = min(window_size, MAX_WINDOW_SIZE)
        self.max_packets = max_packets
        # Packets this key may still process; libsrtp's own hard limit is 2^48 per stream.
        self._budget = min(max_packets, MAX_KEY_LIFETIME) if max_packets else MAX_KEY_LIFETIME
        self._carried = {ssrc: roc for ssrc, roc in (rocs or {}).items() if roc}
        self._closed_rocs: dict[int, int] | None = None
        self._owner: Any = None
        self._hot: Any = None
        abi = _ABI
        if abi is not None and suite in abi.setters:
            if self._carried and not (abi.roc_control or _probing):
                raise SrtpError("SRTP rollover counter carry-over failed its check at import")
            self._public = False
            self._session = self._create(abi, bytes(key_salt))
            calls = abi.hot_calls()
            if calls is abi.api_calls:
                self._hot = abi.pffi.cast("srtp_t", int(abi.ffi.cast("uintptr_t", self._session)))
            else:
                self._hot = self._session
            if suite.startswith("AEAD_"):
                protect, unprotect, protect_rtcp, unprotect_rtcp = calls
                calls = (protect, _preserving(unprotect), protect_rtcp, _preserving(unprotect_rtcp))
        else:
            self._public = True
            self._session = self._create_public(bytes(key_salt))
            self._hot = self._session
            calls = _PUBLIC_CALLS
        self._protect, self._unprotect, self._protect_rtcp, self._unprotect_rtcp = calls
        self._len = _ffi.new("int *")

    def _create(self, abi: _Abi, key_salt: bytes) -> Any:
        ffi, lib = abi.ffi, abi.lib
        policy = ffi.new("srtp_policy_t *")
        set_rtp, set_rtcp = abi.setters[self.suite]
        set_rtp(ffi.addressof(policy.rtp))
        set_rtcp(ffi.addressof(policy.rtcp))
        key = ffi.new("unsigned char[]", key_salt)
        try:
            policy.key = key
            policy.ssrc.type = lib.ssrc_any_outbound if self.outbound else lib.ssrc_any_inbound
            policy.window_size = self.window_size
            policy.allow_repeat_tx = 1 if self.outbound else 0
            holder = ffi.new("srtp_t *")
            status = lib.srtp_create(holder, policy)
            if status:
                raise SrtpError(f"srtp_create failed (libsrtp status {status})")
            session = ffi.gc(holder[0], lib.srtp_dealloc)
            # RFC 3711 3.3.1: the ROC belongs to the SSRC's crypto context; a re-key keeps it.
            for ssrc, roc in self._carried.items():
                policy.ssrc.type = lib.ssrc_specific
                policy.ssrc.value = ssrc
                status = lib.srtp_add_stream(session, policy)
                if not status:
                    status = lib.srtp_set_stream_roc(session, ssrc, roc)
                if status:
                    ffi.release(session)
                    raise SrtpError(f"cannot carry the SRTP rollover counter (status {status})")
        finally:
            ffi.memmove(key, bytes(len(key_salt)), len(key_salt))  # derived keys stay in libsrtp
            policy.key = ffi.NULL
        self._owner = abi
        return session

    def _create_public(self, key_salt: bytes) -> Any:
        if self._carried:
            raise SrtpError("SRTP rollover counter carry-over is unavailable with this libsrtp")
        cls = pylibsrtp.Policy
        policy = cls(
            key=key_salt,
            ssrc_type=cls.SSRC_ANY_OUTBOUND if self.outbound else cls.SSRC_ANY_INBOUND,
            srtp_profile=getattr(cls, _PUBLIC_PROFILES[self.suite]),
        )
        policy.allow_repeat_tx = self.outbound
        policy.window_size = self.window_size
        try:
            return pylibsrtp.Session(policy)
        except Exception:
            raise SrtpError("cannot create the SRTP session") from None

    def __repr__(self) -> str:
        direction = "outbound" if self.outbound else "inbound"
        state = " closed" if self._closed_rocs is not None else ""
        return f"<SrtpContext {self.suite} {direction}{state}>"

    # -- hot path: PACKET in place, negative codes, never raises ------------------------------
    # The trailing keyword defaults bind module constants as locals (about 40 ns a call less
    # than global look-ups); callers pass only ``n``.

    def _refused(self, n: int, limit: int) -> int:
        if self._budget <= 0:
            return ERROR_KEY_EXPIRED
        return ERROR_TOO_BIG if n > limit else ERROR_MALFORMED

    def unprotect_in_place(
        self, n: int, _buf: Any = PACKET, _max: int = PACKET_SIZE, _codes: Any = _STATUS_CODES
    ) -> int:
        """Verify and decrypt the SRTP packet in ``PACKET[0:n]``: its RTP length, or a code < 0."""
        if self._budget > 0 and 0 <= n <= _max:
            length = self._len
            length[0] = n
            status = self._unprotect(self._hot, _buf, length)
            if not status:
                self._budget -= 1
                return length[0]
            return _codes.get(status, ERROR_OTHER)
        return self._refused(n, _max)

    def protect_in_place(
        self, n: int, _buf: Any = PACKET, _max: int = MAX_PACKET, _codes: Any = _STATUS_CODES
    ) -> int:
        """Encrypt and authenticate the RTP packet in ``PACKET[0:n]``: its SRTP length or a code."""
        if self._budget > 0 and 0 <= n <= _max:
            length = self._len
            length[0] = n
            status = self._protect(self._hot, _buf, length)
            if not status:
                self._budget -= 1
                return length[0]
            return _codes.get(status, ERROR_OTHER)
        return self._refused(n, _max)

    def unprotect_rtcp_in_place(
        self, n: int, _buf: Any = PACKET, _max: int = PACKET_SIZE, _codes: Any = _STATUS_CODES
    ) -> int:
        """Verify and decrypt the SRTCP packet in ``PACKET[0:n]``: its RTCP length, or a code."""
        if self._budget > 0 and 0 <= n <= _max:
            length = self._len
            length[0] = n
            status = self._unprotect_rtcp(self._hot, _buf, length)
            if not status:
                self._budget -= 1
                return length[0]
            return _codes.get(status, ERROR_OTHER)
        return self._refused(n, _max)

    def protect_rtcp_in_place(
        self, n: int, _buf: Any = PACKET, _max: int = MAX_PACKET, _codes: Any = _STATUS_CODES
    ) -> int:
        """Protect the RTCP compound packet in ``PACKET[0:n]``: its SRTCP length, or a code."""
        if self._budget > 0 and 0 <= n <= _max:
            length = self._len
            length[0] = n
            status = self._protect_rtcp(self._hot, _buf, length)
            if not status:
                self._budget -= 1
                return length[0]
            return _codes.get(status, ERROR_OTHER)
        return self._refused(n, _max)

    # -- bytes convenience API (tests, endpoints): raises SrtpError -------------------------

    def _bytes_call(self, call: Callable[[Any, Any, Any], int], packet: bytes, limit: int) -> bytes:
        n = len(packet)
        if n > limit:
            raise SrtpError(ERROR_NAMES[ERROR_TOO_BIG], ERROR_TOO_BIG)
        if self._budget <= 0:
            raise SrtpError(ERROR_NAMES[ERROR_KEY_EXPIRED], ERROR_KEY_EXPIRED)
        _SCRATCH_VIEW[0:n] = packet
        length = self._len
        length[0] = n
        status = call(self._hot, _SCRATCH, length)
        if status:
            code = _STATUS_CODES.get(status, ERROR_OTHER)
            raise SrtpError(f"{ERROR_NAMES[code]} (libsrtp status {status})", code)
        self._budget -= 1
        return bytes(_SCRATCH_VIEW[0 : length[0]])

    def protect(self, packet: bytes) -> bytes:
        """The SRTP packet for an RTP packet; raises :class:`SrtpError`."""
        return self._bytes_call(self._protect, packet, MAX_PACKET)

    def unprotect(self, packet: bytes) -> bytes:
        """The RTP packet inside an SRTP packet; raises :class:`SrtpError`."""
        return self._bytes_call(self._unprotect, packet, PACKET_SIZE)

    def protect_rtcp(self, packet: bytes) -> bytes:
        """The SRTCP packet for an RTCP compound packet; raises :class:`SrtpError`."""
        return self._bytes_call(self._protect_rtcp, packet, MAX_PACKET)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The RTCP packet inside an SRTCP packet; raises :class:`SrtpError`."""
        return self._bytes_call(self._unprotect_rtcp, packet, PACKET_SIZE)

    # -- rollover counters and lifetime --------------------------------------------------------

    def rocs(self) -> dict[int, int]:
        """The rollover counter of every SSRC this context has a stream for (re-key carry-over).

        Includes the SSRCs carried in at construction (a ROC never goes back, so a carried value
        that has not been used yet still counts).  After :meth:`close`, the values at close time.
        """
        if self._closed_rocs is not None:
            return dict(self._closed_rocs)
        result = dict(self._carried)
        abi = self._owner
        if self._public or abi is None or abi.collector is None:
            return result
        if not (abi.roc_control or _probing):
            return result
        ffi, lib = abi.ffi, abi.lib
        seen: list[int] = []
        handle = ffi.new_handle(seen)
        lib.srtp_stream_list_for_each(self._session.stream_list, abi.collector, handle)
        roc = ffi.new("uint32_t *")
        for raw in seen:
            ssrc = int.from_bytes(struct.pack("=I", raw), "big")  # stored in network order
            if lib.srtp_get_stream_roc(self._session, ssrc, roc) == 0:
                result[ssrc] = max(int(roc[0]), result.get(ssrc, 0))
        return result

    @property
    def packets_left(self) -> int:
        """Packets this key may still protect or unprotect (its lifetime), RFC 3711 9.2."""
        return max(self._budget, 0)

    def close(self) -> None:
        """Free the libsrtp session now; later calls fail with :data:`ERROR_OTHER`."""
        if self._closed_rocs is not None:
            return
        self._closed_rocs = self.rocs()
        self._protect = self._unprotect = _closed_call
        self._protect_rtcp = self._unprotect_rtcp = _closed_call
        self._hot = None
        if not self._public and self._owner is not None:
            self._owner.ffi.release(self._session)
        self._session = None


# --- the import-time probe ------------------------------------------------------------------

_probing: tuple[str, ...] = ()  # suites contexts may use while the probe runs
# Why a suite or the ROC probe failed (for diagnostics: ``python -c "import sbc.media.srtp as s;
# print(s.PROBE_FAILURES)"``); empty when everything passed.
PROBE_FAILURES: dict[str, str] = {}


def _failed(what: str, why: object) -> None:
    PROBE_FAILURES[what] = str(why)[:200]


def _probe_rtp(seq: int, ssrc: int = _PROBE_SSRC) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, 0x1000 + seq, ssrc) + bytes(range(160))


def _probe_rtcp(ssrc: int = _PROBE_SSRC) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)  # an empty receiver report, RFC 3550 6.4.2


def _public_session(suite: str, key_salt: bytes, outbound: bool) -> Any:
    cls = pylibsrtp.Policy
    policy = cls(
        key=key_salt,
        ssrc_type=cls.SSRC_ANY_OUTBOUND if outbound else cls.SSRC_ANY_INBOUND,
        srtp_profile=getattr(cls, _PUBLIC_PROFILES[suite]),
    )
    return pylibsrtp.Session(policy)


def _unprotect_code(context: SrtpContext, packet: bytes) -> int:
    try:
        context.unprotect(packet)
    except SrtpError as exc:
        return exc.code
    return 0


def _probe_suite(suite: str) -> str | None:
    """Why ``suite`` cannot be used, or ``None``: known answers, an independent peer, forgeries."""
    key = _PROBE_KEY[: SRTP_SUITES[suite].key_salt_length]
    sender = SrtpContext(suite, key, outbound=True)
    receiver = SrtpContext(suite, key, outbound=False)
    try:
        srtp, srtcp = sender.protect(_KAT_RTP), sender.protect_rtcp(_KAT_RTCP)
        want_srtp, want_srtcp = _KNOWN_ANSWERS[suite]
        if srtp[12:] != bytes.fromhex(want_srtp) or srtcp[8:] != bytes.fromhex(want_srtcp):
            return "known-answer test failed"
        rtp, rtcp = _probe_rtp(7), _probe_rtcp()
        if suite in _PUBLIC_PROFILES:
            peer = _public_session(suite, key, outbound=False)
            back = _public_session(suite, key, outbound=True)
            if (
                peer.unprotect(sender.protect(rtp)) != rtp
                or peer.unprotect_rtcp(sender.protect_rtcp(rtcp)) != rtcp
                or receiver.unprotect(back.protect(rtp)) != rtp
                or receiver.unprotect_rtcp(back.protect_rtcp(rtcp)) != rtcp
            ):
                return "pylibsrtp's own API disagrees"
        elif receiver.unprotect(srtp) != _KAT_RTP or receiver.unprotect_rtcp(srtcp) != _KAT_RTCP:
            return "round trip failed"
        forged = bytearray(sender.protect(_probe_rtp(9)))
        forged[-1] ^= 1
        if _unprotect_code(receiver, bytes(forged)) != ERROR_AUTH:
            return "a forged packet was not refused"
        return None
    finally:
        sender.close()
        receiver.close()


def _probe_roc() -> bool:
    """A pylibsrtp sender wraps its sequence number (ROC 1); a re-keyed receiver carries ROC 1."""
    suite = "AES_CM_128_HMAC_SHA1_80"
    key = _PROBE_KEY[:30]
    sender = _public_session(suite, key, outbound=True)
    old = SrtpContext(suite, key, outbound=False)
    for seq in (65535, 0):
        if old.unprotect(sender.protect(_probe_rtp(seq))) != _probe_rtp(seq):
            return False
    carried = old.rocs()
    packet = sender.protect(_probe_rtp(1))
    fresh = SrtpContext(suite, key, outbound=False)
    again = SrtpContext(suite, key, outbound=False, rocs=carried)
    ok = (
        carried == {_PROBE_SSRC: 1}
        and _unprotect_code(fresh, packet) == ERROR_AUTH
        and again.rocs() == carried
        and again.unprotect(packet) == _probe_rtp(1)
        and again.rocs() == carried
    )
    for context in (old, fresh, again):
        context.close()
    return ok


def _probe_one(suite: str, passed: list[str], available: Mapping[str, object]) -> None:
    if suite not in available:
        _failed(suite, "not available in this libsrtp")
        return
    try:
        why = _probe_suite(suite)
    except Exception as exc:
        why = repr(exc)
    if why is None:
        passed.append(suite)
        PROBE_FAILURES.pop(suite, None)
    else:
        _failed(suite, why)


def _probe() -> tuple[tuple[str, ...], bool, str]:
    """The suites that work, whether ROCs can be carried, and libsrtp's version."""
    global _ABI, _probing
    suites: list[str] = []
    roc_control = False
    version = _ABI.version if _ABI is not None else "unknown"
    if pylibsrtp is None:  # pragma: no cover
        return (), False, version
    _probing = _PREFERENCE
    try:
        if _ABI is None:
            _failed("abi", "libsrtp2 2.x layout not usable; pylibsrtp's API only")
        else:
            for suite in _PREFERENCE:
                _probe_one(suite, suites, _ABI.setters)
            if not suites:
                _ABI = None  # our declarations do not work at all: pylibsrtp's API only
            elif _ABI.collector is None:
                _failed("roc", "no cffi callback for srtp_stream_list_for_each")
            else:
                try:
                    roc_control = _probe_roc()
                except Exception as exc:
                    _failed("roc", repr(exc))
                if not roc_control:
                    PROBE_FAILURES.setdefault("roc", "rollover counter carry-over check failed")
        if _ABI is None:
            for suite in _PREFERENCE:
                _probe_one(suite, suites, _PUBLIC_PROFILES)
    finally:
        _probing = ()
    if _ABI is not None:
        _ABI.roc_control = roc_control
    return tuple(suites), roc_control, version


SUPPORTED_SUITES: tuple[str, ...] = ()
ROC_CONTROL: bool = False
LIBSRTP_VERSION: str = "unknown"
SUPPORTED_SUITES, ROC_CONTROL, LIBSRTP_VERSION = _probe()


# --- RFC 4568 offer/answer ----------------------------------------------------------------


def new_key_salt(suite: str, random: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """A fresh master key||salt of ``suite``'s length from ``random`` (a CSPRNG by default)."""
    spec = SRTP_SUITES.get(suite)
    if spec is None:
        raise SrtpError(f"unknown SRTP suite {suite!r}")
    key_salt = random(spec.key_salt_length)
    if not isinstance(key_salt, bytes) or len(key_salt) != spec.key_salt_length:
        raise SrtpError("the key source returned the wrong number of bytes")
    return key_salt


def make_crypto(
    tag: int, suite: str, random: Callable[[int], bytes] = secrets.token_bytes
) -> CryptoAttribute:
    """An ``a=crypto`` line with a fresh inline key, no lifetime, no MKI, no session params."""
    return CryptoAttribute(tag, suite, (KeyParam(new_key_salt(suite, random)),))


def offer_cryptos(
    suites: Sequence[str], random: Callable[[int], bytes] = secrets.token_bytes
) -> list[CryptoAttribute]:
    """The ``a=crypto`` lines of an offer: tags 1..n, one fresh key each, in ``suites`` order.

    Suites not in :data:`SUPPORTED_SUITES` (unknown names included) and repeats are skipped.
    """
    usable = [s for s in dict.fromkeys(suites) if s in SUPPORTED_SUITES]
    return [make_crypto(tag, suite, random) for tag, suite in enumerate(usable, start=1)]


_REFUSED_FLAGS = ("UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP")
_MAX_LISTED = 8  # refusals listed in a reason; an offer with 1000 lines gives a short text
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _refusal(crypto: CryptoAttribute, rank: Mapping[str, int]) -> str | None:
    """Why we cannot honour this offered line, or ``None``."""
    if not crypto.suite_known:
        return "unknown suite"
    if crypto.suite not in SUPPORTED_SUITES:
        return "not supported"
    if crypto.suite not in rank:
        return "not allowed"
    if len(crypto.key_params) != 1 or crypto.key_params[0].mki is not None:
        return "MKI not supported"
    for flag in _REFUSED_FLAGS:
        if flag in crypto.session_params:
            return f"{flag} refused"
    if crypto.fec_order is not None or any(p.startswith("FEC_KEY=") for p in crypto.session_params):
        return "FEC not supported"
    if crypto.kdr:  # KDR=0 (non-standard, seen in the wild) means a single derivation too
        return "KDR not supported"
    unknown = crypto.unknown_session_params
    if unknown:  # only the name, made safe for a Warning header's quoted text
        name = _UNSAFE.sub("?", unknown[0].split("=", 1)[0][:32])
        return f"unknown session parameter {name}"
    lifetime = crypto.key_params[0].lifetime
    if lifetime is not None and lifetime < MIN_KEY_LIFETIME:
        return "key lifetime below 2^16 packets"
    return None


def choose_crypto(
    offered: Sequence[CryptoAttribute], allowed: Sequence[str]
) -> tuple[CryptoAttribute | None, str]:
    """The offered ``a=crypto`` line to accept, best by ``allowed`` order, or why there is none.

    ``allowed`` is the operator's preference list (best first); it is filtered by
    :data:`SUPPORTED_SUITES`.  Among equally ranked lines the first offered wins (RFC 4568 7.1.1:
    the most preferred line is listed first).  A line is skipped for an unknown or unsupported or
    disallowed suite, an MKI or several keys, UNENCRYPTED_SRTP/UNENCRYPTED_SRTCP/
    UNAUTHENTICATED_SRTP, FEC_ORDER/FEC_KEY, a KDR other than 0, an unknown session parameter,
    or a key lifetime below :data:`MIN_KEY_LIFETIME`; WSH is accepted (see
    :func:`window_size_for`).  Returns ``(line, "")``, or ``(None, reason)`` with a short text
    for a 488 Warning and the security event.
    """
    order = [s for s in dict.fromkeys(allowed) if s in SUPPORTED_SUITES]
    rank = {suite: i for i, suite in enumerate(order)}
    best: CryptoAttribute | None = None
    refused: list[str] = []
    for crypto in offered:
        why = _refusal(crypto, rank)
        if why is not None:
            refused.append(f"{crypto.suite[:64]} ({why})")
        elif best is None or rank[crypto.suite] < rank[best.suite]:
            best = crypto
    if best is not None:
        return best, ""
    if not refused:
        return None, "no a=crypto offered"
    listed = ", ".join(refused[:_MAX_LISTED])
    if len(refused) > _MAX_LISTED:
        listed += f" and {len(refused) - _MAX_LISTED} more"
    return None, f"no offered crypto suite is allowed: {listed}"


def answer_crypto(
    chosen: CryptoAttribute, random: Callable[[int], bytes] = secrets.token_bytes
) -> CryptoAttribute:
    """Our answer to the accepted line: same tag and suite, our own fresh key (RFC 4568 7.1.2)."""
    if chosen.suite not in SUPPORTED_SUITES:
        raise SrtpError(f"SRTP suite {chosen.suite[:64]!r} is not supported")
    return make_crypto(chosen.tag, chosen.suite, random)


def window_size_for(crypto: CryptoAttribute, default: int = DEFAULT_WINDOW_SIZE) -> int:
    """The replay window for the context that receives with ``crypto``'s key.

    WSH (RFC 4568 6.3.7) is the sender's hint of the window it needs.  A larger window than the
    hint costs nothing in security (each packet index is still accepted once) and a smaller one
    drops reordered packets, so the larger of the hint and ``default`` is used, within libsrtp's
    64..32767.
    """
    wsh = crypto.wsh
    size = default if wsh is None else max(default, wsh)
    return min(max(size, MIN_WINDOW_SIZE), MAX_WINDOW_SIZE)


def max_packets_for(crypto: CryptoAttribute) -> int | None:
    """The key lifetime of ``crypto``'s (only) key in packets, or ``None`` (RFC 4568 6.1)."""
    return crypto.key_params[0].lifetime if crypto.key_params else None


def context_from_crypto(
    crypto: CryptoAttribute,
    *,
    outbound: bool,
    rocs: Mapping[int, int] | None = None,
    default_window: int = DEFAULT_WINDOW_SIZE,
) -> SrtpContext:
    """The context for an accepted ``a=crypto`` line's key, with its window and lifetime.

    In RFC 4568 each side's ``a=crypto`` carries the key *that side sends with*: the peer's line
    builds our inbound context, our own line our outbound one.
    """
    return SrtpContext(
        crypto.suite,
        crypto.key_salt,
        outbound=outbound,
        rocs=rocs,
        window_size=window_size_for(crypto, default_window),
        max_packets=max_packets_for(crypto),
    )
