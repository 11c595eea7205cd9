"""Development certificates: a private CA and the certificates it signs.

``sbc certs init`` writes a development CA (``dev-ca.crt``/``dev-ca.key``) and a server
certificate for ``localhost``, ``127.0.0.1`` and ``::1`` (``server.crt``/``server.key``) signed by
it.  :func:`issue_client_cert` issues client certificates from the same CA for mutual-TLS tests.

Everything uses EC P-256 keys and SHA-256 signatures with the extensions a strict verifier
(RFC 5280, CA/B baseline) expects.  Private keys are written with mode 0600 from the first byte:
the file is created ``O_CREAT | O_EXCL`` under a temporary name with that mode, filled, synced
and only then renamed into place, so a key is never world-readable, not even briefly, and a
crash never leaves half a key behind.  Existing files are not overwritten unless asked.

These certificates are for development and tests only; production deployments point ``tls:``
in the configuration at certificates from their own PKI.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sbc.errors import SbcError

CA_CERT_NAME = "dev-ca.crt"
CA_KEY_NAME = "dev-ca.key"
SERVER_CERT_NAME = "server.crt"
SERVER_KEY_NAME = "server.key"

DEFAULT_DIR = "certs"
DEFAULT_SERVER_DAYS = 825  # the longest TLS server validity that Apple platforms accept
DEFAULT_CA_DAYS = 3650
DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644
_BACKDATE = datetime.timedelta(hours=1)  # tolerate clock skew between peers

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class CertsError(SbcError):
    """Development certificates could not be created (bad input, files in the way)."""


class CertsExistError(CertsError, FileExistsError):
    """Refusing to overwrite existing certificate or key files without ``force``."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        names = ", ".join(str(p) for p in self.paths)
        super().__init__(f"refusing to overwrite existing file(s): {names} (use --force)")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


# A CA is just a key pair whose certificate may sign; the alias documents intent at call sites.
CertificateAuthority = KeyPair


@dataclass(frozen=True, slots=True)
class DevCertPaths:
    """Where :func:`init_dev_certs` wrote its files."""

    ca_certificate: Path
    ca_private_key: Path
    certificate: Path
    private_key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for a (possibly wildcard) host name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    host = name[:-1] if name.endswith(".") else name
    labels = host.split(".")
    if labels and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if not host or len(host) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise CertsError(f"not a valid host name or IP address: {name!r}")
    return x509.DNSName(host.lower())


def _subject_alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        general = _general_name(name)
        if general not in result:
            result.append(general)
    return result


def create_ca(
    common_name: str = "sbc development CA",
    *,
    days: int = DEFAULT_CA_DAYS,
    now: datetime.datetime | None = None,
) -> CertificateAuthority:
    """Create a self-signed development CA that may sign end-entity certificates only."""
    if days < 1:
        raise CertsError("validity must be at least one day")
    now = now or _now()
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sbc development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def _issue(
    ca: CertificateAuthority,
    common_name: str,
    names: Sequence[str],
    usages: list[x509.ObjectIdentifier],
    days: int,
    now: datetime.datetime | None,
) -> KeyPair:
    if days < 1:
        raise CertsError("validity must be at least one day")
    now = now or _now()
    key = _new_key()
    not_after = min(now + datetime.timedelta(days=days), ca.certificate.not_valid_after_utc)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.private_key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def issue_server_cert(
    ca: CertificateAuthority,
    hostnames: Iterable[str] = (),
    *,
    days: int = DEFAULT_SERVER_DAYS,
    now: datetime.datetime | None = None,
) -> KeyPair:
    """Issue a TLS certificate for localhost, 127.0.0.1, ::1 and ``hostnames``.

    The extended key usage allows both serverAuth and clientAuth: an SBC is a TLS client when it
    connects to a PBX or a trunk, and it presents the same certificate there.
    """
    names = [*DEFAULT_SERVER_NAMES, *hostnames]
    extra = [n for n in hostnames if n not in DEFAULT_SERVER_NAMES]
    common_name = extra[0] if extra else "localhost"
    return _issue(
        ca,
        common_name,
        names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days,
        now,
    )


def issue_client_cert(
    ca: CertificateAuthority,
    name: str,
    *,
    days: int = DEFAULT_SERVER_DAYS,
    now: datetime.datetime | None = None,
) -> KeyPair:
    """Issue a client certificate (clientAuth only) with CN ``name`` and ``name`` as its SAN.

    ``name`` is what a ``trusted_peers[].tls_subject`` matches; it must be a host name (a trunk's
    DNS name, or a simple label such as ``trunk-a``) or an IP address.
    """
    return _issue(ca, name, [name], [ExtendedKeyUsageOID.CLIENT_AUTH], days, now)


def load_key_pair(certificate: Path, private_key: Path) -> KeyPair:
    """Read a PEM certificate and its unencrypted EC private key (e.g. the dev CA)."""
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertsError(f"{private_key}: expected an EC private key")
    return KeyPair(cert, key)


def write_file_atomic(path: Path, data: bytes, *, mode: int, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``, atomically.

    The temporary file is created with ``O_EXCL`` and ``mode`` (so it is never readable by others,
    whatever the umask) in the target directory, synced, then renamed over ``path``
    (``overwrite``) or hard-linked to it, which fails if ``path`` appeared in the meantime.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits we want (never added any)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_key_pair(
    pair: KeyPair, certificate: Path, private_key: Path, *, overwrite: bool = False
) -> None:
    """Write ``pair`` as PEM: the key with mode 0600, the certificate with 0644."""
    write_file_atomic(private_key, pair.private_key_pem(), mode=KEY_FILE_MODE, overwrite=overwrite)
    write_file_atomic(certificate, pair.certificate_pem(), mode=CERT_FILE_MODE, overwrite=overwrite)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not force:
        raise CertsExistError(existing)


def dev_cert_paths(directory: Path | str) -> DevCertPaths:
    """The four file names ``sbc certs init`` uses inside ``directory``."""
    directory = Path(directory)
    return DevCertPaths(
        ca_certificate=directory / CA_CERT_NAME,
        ca_private_key=directory / CA_KEY_NAME,
        certificate=directory / SERVER_CERT_NAME,
        private_key=directory / SERVER_KEY_NAME,
    )


def init_dev_certs(
    directory: Path | str = DEFAULT_DIR,
    *,
    force: bool = False,
    days: int = DEFAULT_SERVER_DAYS,
    hostnames: Sequence[str] = (),
) -> DevCertPaths:
    """Create a development CA and a server certificate signed by it in ``directory``.

    Raises :class:`CertsExistError` (nothing written) if any of the four files exists and
    ``force`` is false, and :class:`CertsError` for an invalid host name or validity.
    """
    paths = dev_cert_paths(directory)
    targets = [paths.ca_certificate, paths.ca_private_key, paths.certificate, paths.private_key]
    _refuse_existing(targets, force)
    ca = create_ca(days=max(days, DEFAULT_CA_DAYS))
    server = issue_server_cert(ca, hostnames, days=days)  # validates host names before writing
    Path(directory).mkdir(parents=True, exist_ok=True)
    write_key_pair(ca, paths.ca_certificate, paths.ca_private_key, overwrite=force)
    write_key_pair(server, paths.certificate, paths.private_key, overwrite=force)
    return paths


def issue_client_files(
    directory: Path | str,
    name: str,
    *,
    force: bool = False,
    days: int = DEFAULT_SERVER_DAYS,
) -> tuple[Path, Path]:
    """Issue a client certificate from the dev CA in ``directory`` as ``NAME.crt``/``NAME.key``."""
    directory = Path(directory)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise CertsError(f"not a usable client name: {name!r}")
    paths = dev_cert_paths(directory)
    if not (paths.ca_certificate.exists() and paths.ca_private_key.exists()):
        raise CertsError(f"no development CA in {directory} (run 'sbc certs init' first)")
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    _refuse_existing([cert_path, key_path], force)
    ca = load_key_pair(paths.ca_certificate, paths.ca_private_key)
    write_key_pair(issue_client_cert(ca, name, days=days), cert_path, key_path, overwrite=force)
    return cert_path, key_path


def ensure_dev_certs(directory: Path | str = DEFAULT_DIR) -> DevCertPaths | None:
    """Make sure ``directory`` holds a server certificate; create what is missing.

    Nothing happens when ``server.crt`` exists (``None`` is returned).  Otherwise a server
    certificate is issued from the dev CA already there (so clients that trust it keep working),
    or a new CA and server certificate are created.  A stray ``server.key`` without its
    certificate is not overwritten (:class:`CertsExistError`).
    """
    paths = dev_cert_paths(directory)
    if paths.certificate.exists():
        return None
    if not (paths.ca_certificate.exists() and paths.ca_private_key.exists()):
        return init_dev_certs(directory)
    _refuse_existing([paths.private_key], force=False)
    ca = load_key_pair(paths.ca_certificate, paths.ca_private_key)
    write_key_pair(issue_server_cert(ca), paths.certificate, paths.private_key)
    return paths
