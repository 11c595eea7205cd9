"""Development certificates: chains, extensions, file modes, no overwrite without force."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store
from OpenSSL import SSL

from sbc.app import certs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def dev(tmp_path: Path) -> certs.DevCertPaths:
    return certs.init_dev_certs(tmp_path / "certs", hostnames=["sbc.example.test", "192.0.2.7"])


def test_init_writes_the_four_files(dev: certs.DevCertPaths, tmp_path: Path) -> None:
    """certs init writes dev-ca.crt/.key and server.crt/.key and nothing else."""
    names = sorted(p.name for p in (tmp_path / "certs").iterdir())
    assert names == ["dev-ca.crt", "dev-ca.key", "server.crt", "server.key"]


def test_keys_are_private_and_certificates_public(dev: certs.DevCertPaths) -> None:
    """Private keys are written with mode 0600 and certificates with 0644."""
    assert _mode(dev.ca_private_key) == 0o600
    assert _mode(dev.private_key) == 0o600
    assert _mode(dev.ca_certificate) == 0o644
    assert _mode(dev.certificate) == 0o644


def test_key_mode_does_not_depend_on_umask(tmp_path: Path) -> None:
    """With a permissive umask (0) a key file is still created 0600, never wider."""
    old = os.umask(0)
    try:
        paths = certs.init_dev_certs(tmp_path)
    finally:
        os.umask(old)
    assert _mode(paths.private_key) == 0o600


@pytest.mark.parametrize(
    "name",
    [DNSName("localhost"), IPAddress(ipaddress.ip_address("127.0.0.1")),
     IPAddress(ipaddress.ip_address("::1")), DNSName("sbc.example.test"),
     IPAddress(ipaddress.ip_address("192.0.2.7"))],
)  # fmt: skip
def test_server_certificate_verifies_against_the_dev_ca(
    dev: certs.DevCertPaths, name: DNSName | IPAddress
) -> None:
    """The server certificate chains to the dev CA for each of its names (RFC 5280 verifier)."""
    ca = x509.load_pem_x509_certificate(dev.ca_certificate.read_bytes())
    leaf = x509.load_pem_x509_certificate(dev.certificate.read_bytes())
    chain = PolicyBuilder().store(Store([ca])).build_server_verifier(name).verify(leaf, [])
    assert chain[-1] == ca


def test_server_certificate_rejects_other_names(dev: certs.DevCertPaths) -> None:
    """Verification for a name that is not among the SANs fails."""
    ca = x509.load_pem_x509_certificate(dev.ca_certificate.read_bytes())
    leaf = x509.load_pem_x509_certificate(dev.certificate.read_bytes())
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(DNSName("evil.test"))
    with pytest.raises(x509.verification.VerificationError):
        verifier.verify(leaf, [])


def test_server_certificate_extensions(dev: certs.DevCertPaths) -> None:
    """The server certificate is an EC P-256/SHA-256 end entity for serverAuth and clientAuth."""
    cert = x509.load_pem_x509_certificate(dev.certificate.read_bytes())
    ca = x509.load_pem_x509_certificate(dev.ca_certificate.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature is True
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest != ca_ski.digest


def test_ca_certificate_extensions(dev: certs.DevCertPaths) -> None:
    """The dev CA is a self-signed CA:TRUE certificate allowed to sign certificates."""
    ca = x509.load_pem_x509_certificate(dev.ca_certificate.read_bytes())
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    ca.verify_directly_issued_by(ca)


def test_refuses_to_overwrite_without_force(dev: certs.DevCertPaths) -> None:
    """A second init without force raises CertsExistError and leaves the files unchanged."""
    before = dev.private_key.read_bytes()
    with pytest.raises(certs.CertsExistError) as info:
        certs.init_dev_certs(dev.certificate.parent)
    assert dev.private_key in info.value.paths
    assert dev.private_key.read_bytes() == before


def test_force_replaces_the_files(dev: certs.DevCertPaths) -> None:
    """With force, new keys replace the old ones, still 0600, and no temporary file remains."""
    before = dev.private_key.read_bytes()
    certs.init_dev_certs(dev.certificate.parent, force=True)
    assert dev.private_key.read_bytes() != before
    assert _mode(dev.private_key) == 0o600
    assert not [p for p in dev.certificate.parent.iterdir() if p.name.startswith(".")]


def test_invalid_hostname_writes_nothing(tmp_path: Path) -> None:
    """A host name that cannot go in a SAN is rejected before any file is written."""
    with pytest.raises(certs.CertsError, match="not a valid host name"):
        certs.init_dev_certs(tmp_path / "c", hostnames=["bad name"])
    assert not (tmp_path / "c").exists()


def test_client_certificate_verifies_for_client_auth(dev: certs.DevCertPaths) -> None:
    """issue_client_cert gives a clientAuth-only certificate whose SAN is the client name."""
    ca = certs.load_key_pair(dev.ca_certificate, dev.ca_private_key)
    client = certs.issue_client_cert(ca, "trunk-a")
    verified = (
        PolicyBuilder()
        .store(Store([ca.certificate]))
        .build_client_verifier()
        .verify(client.certificate, [])
    )
    assert verified.subjects == [x509.DNSName("trunk-a")]
    eku = client.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_client_files_need_the_dev_ca(tmp_path: Path) -> None:
    """issue_client_files without a dev CA in the directory fails with a hint."""
    with pytest.raises(certs.CertsError, match="run 'sbc certs init' first"):
        certs.issue_client_files(tmp_path, "trunk-a")


def test_ensure_dev_certs_reuses_an_existing_ca(dev: certs.DevCertPaths) -> None:
    """When only the server files are missing, a new server cert is issued by the same CA."""
    dev.certificate.unlink()
    dev.private_key.unlink()
    assert certs.ensure_dev_certs(dev.certificate.parent) == dev
    ca = x509.load_pem_x509_certificate(dev.ca_certificate.read_bytes())
    x509.load_pem_x509_certificate(dev.certificate.read_bytes()).verify_directly_issued_by(ca)
    assert certs.ensure_dev_certs(dev.certificate.parent) is None


def test_mutual_tls_handshake_in_memory(dev: certs.DevCertPaths, tmp_path: Path) -> None:
    """A client with an issued certificate and the server complete a mutual TLS handshake."""
    client_crt, client_key = certs.issue_client_files(dev.certificate.parent, "trunk-a")

    def context(side: str, crt: Path, key: Path) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate_file(str(crt))
        ctx.use_privatekey_file(str(key))
        ctx.load_verify_locations(str(dev.ca_certificate))
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if side == "s" else 0)
        ctx.set_verify(mode)
        return ctx

    server = SSL.Connection(context("s", dev.certificate, dev.private_key), None)
    server.set_accept_state()
    client = SSL.Connection(context("c", client_crt, client_key), None)
    client.set_connect_state()
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                a.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65536))
    peer = server.get_peer_certificate()
    assert peer is not None
    assert peer.to_cryptography().subject.rfc4514_string() == "CN=trunk-a"
    assert client.get_peer_certificate().to_cryptography().subject.rfc4514_string() == (
        "CN=sbc.example.test"
    )
    assert client.get_protocol_version_name() in ("TLSv1.2", "TLSv1.3")
