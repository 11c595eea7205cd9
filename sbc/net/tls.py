"""TLS server contexts for SIP over TLS (pyOpenSSL through Twisted).

TLS 1.2 is the floor (1.3 preferred, negotiated by OpenSSL), compression and renegotiation are
off, the cipher list is forward-secret AEAD only.  The certificate chain and key come from PEM
files; optional mutual TLS verifies clients against a CA bundle.

Listeners get a :class:`ReloadableServerContext`: Twisted's ``TLSMemoryBIOFactory`` asks its
connection creator for a new ``SSL.Connection`` for every accepted socket
(``serverConnectionForTLS``), so swapping the options object inside it makes new handshakes use
re-read files while established connections keep the context they were built with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

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
        # With a CA bundle clients are asked for a certificate, and one that does not chain to
        # the bundle fails the handshake; without one only require_client_certificate refuses.
        verify=ca_certs is not None,
        requireCertificate=files.require_client_certificate,
        caCerts=ca_certs,
        enableSessions=False,
    )
    try:
        ctx = options.getContext()  # built once and cached by CertificateOptions
        ctx.set_options(SSL.OP_NO_COMPRESSION | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
        ctx.check_privatekey()
    except SSL.Error:
        raise ConfigError(f"private key {files.private_key} does not match certificate "
                          f"{files.certificate}") from None
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerContext:
    """The TLS connection creator of every listener; :meth:`reload` swaps in re-read files.

    Each accepted socket gets its ``SSL.Connection`` from the options current at accept time, so
    a reload affects new handshakes only.  A reload that fails leaves the old options in place.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.options = server_context_factory(files)
        self.generation = 1

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:  # noqa: N802 (Twisted)
        return self.options.serverConnectionForTLS(protocol)

    def reload(self) -> None:
        """Re-read the certificate, key and CA bundle; raises ConfigError and keeps the old."""
        self.options = server_context_factory(self.files)
        self.generation += 1

    def certificate(self) -> x509.Certificate:
        """The leaf certificate new handshakes present."""
        return self.options.certificate.to_cryptography()


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What a verified client certificate says about its holder, for routing and rules.

    ``names`` lists the subjectAltName DNS names, then IP addresses, then URIs, then the CN
    (RFC 5922 7.1 prefers the SANs; the CN is a fallback for old trunks).
    """

    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    uris: tuple[str, ...]
    serial: int
    sha256: str  # hex fingerprint of the DER certificate

    @property
    def names(self) -> tuple[str, ...]:
        cn = (self.common_name,) if self.common_name else ()
        return (*self.dns_names, *self.ip_addresses, *self.uris, *cn)


def peer_identity(cert: x509.Certificate) -> PeerIdentity:
    """The identity in a peer certificate (one that the handshake has already verified)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns, ips, uris = (), (), ()
    except ValueError:  # a malformed extension: trust nothing in it
        dns, ips, uris = (), (), ()
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    der = cert.public_bytes(serialization.Encoding.DER)
    return PeerIdentity(
        common_name=cn if isinstance(cn, str) else None,
        dns_names=dns,
        ip_addresses=ips,
        uris=uris,
        serial=cert.serial_number,
        sha256=hashlib.sha256(der).hexdigest(),
    )
