"""TLS server contexts for SIP over TLS (pyOpenSSL through Twisted).

TLS 1.2 is the floor (1.3 preferred, negotiated by OpenSSL), compression and renegotiation are
off, the cipher list is forward-secret AEAD only.  The certificate chain and key come from PEM
files; optional mutual TLS verifies clients against a CA bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl

from sbc.errors import ConfigError

# Forward-secret AEAD suites for TLS 1.2 (TLS 1.3 suites are all AEAD and set by OpenSSL).
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class TlsFiles:
    certificate: Path
    private_key: Path
    ca_bundle: Path | None = None
    require_client_certificate: bool = False
    min_version: str = "1.2"


def _read_chain(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load certificate chain {path}: {e}") from None
    if not certs:
        raise ConfigError(f"no certificate in {path}")
    return certs


def server_context_factory(files: TlsFiles) -> ssl.CertificateOptions:
    """A Twisted context factory for a TLS listener; raises ConfigError for unusable files."""
    chain = _read_chain(files.certificate)
    try:
        key = serialization.load_pem_private_key(files.private_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot load private key {files.private_key}: "
                          f"{type(e).__name__}") from None
    ca_certs = None
    if files.ca_bundle is not None:
        ca_certs = [crypto.X509.from_cryptography(c) for c in _read_chain(files.ca_bundle)]
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=_MIN_VERSIONS[files.min_version],
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        verify=files.require_client_certificate,
        requireCertificate=files.require_client_certificate,
        caCerts=ca_certs if files.require_client_certificate else None,
        enableSessions=False,
    )
    ctx = options.getContext()  # built once and cached by CertificateOptions
    ctx.set_options(SSL.OP_NO_COMPRESSION | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise ConfigError(f"private key {files.private_key} does not match certificate "
                          f"{files.certificate}") from None
    return options
