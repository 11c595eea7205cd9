"""TLS edge: peer identity, context reload and mutual TLS, with in-memory handshakes."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sbc.app import certs
from sbc.errors import ConfigError
from sbc.gateway.stateless import StatelessCore
from sbc.ids import CountingIdSource
from sbc.net.limits import ConnectionGuard, StreamLimits
from sbc.net.tls import ReloadableServerContext, TlsFiles, peer_identity
from sbc.net.transport import SipStreamFactory, SipTlsFactory

# Twisted's CertificateOptions hands pyOpenSSL PKey/X509 objects, which pyOpenSSL 26 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs.init_dev_certs(d)
    certs.issue_client_files(d, "trunk-a")
    return d


def test_peer_identity_lists_san_names_then_cn():
    """SAN DNS names, IPs and URIs, then the CN, are extracted from a certificate."""
    ca = certs.create_ca()
    pair = certs.issue_client_cert(ca, "trunk-a.example.net")
    ident = peer_identity(pair.certificate)
    assert ident.dns_names == ("trunk-a.example.net",)
    assert ident.common_name == "trunk-a.example.net"
    assert ident.names == ("trunk-a.example.net", "trunk-a.example.net")
    assert ident.serial == pair.certificate.serial_number and len(ident.sha256) == 64

    now = datetime.datetime.now(datetime.UTC)
    uri_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")]))
        .issuer_name(ca.certificate.subject).public_key(pair.private_key.public_key())
        .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier("sip:trunk.example.net"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.5"))]), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    ident = peer_identity(uri_cert)
    assert (ident.dns_names, ident.ip_addresses, ident.uris) == (
        (), ("192.0.2.5",), ("sip:trunk.example.net",))
    assert ident.names == ("192.0.2.5", "sip:trunk.example.net", "peer")


class Server:
    """One server-side TLS connection of a SipTlsFactory over a StringTransport."""

    def __init__(self, context: ReloadableServerContext) -> None:
        self.clock = Clock()
        core = StatelessCore(new_tag=CountingIdSource("t").tag)
        self.guard = ConnectionGuard(StreamLimits(), core.counters)
        streams = SipStreamFactory(core, "external", self.guard, self.clock, tls=True)
        self.factory = SipTlsFactory(context, streams, self.clock)

    def connect(self):
        addr = IPv4Address("TCP", "192.0.2.9", 40000)
        tls = self.factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        tls.makeConnection(transport)
        return tls, transport


def client(pki: Path, name: str | None = None) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(str(pki / "dev-ca.crt"))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
    if name is not None:
        ctx.use_certificate_file(str(pki / f"{name}.crt"))
        ctx.use_privatekey_file(str(pki / f"{name}.key"))
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn


def pump(server: Server, tls, transport: StringTransport, conn: SSL.Connection) -> None:
    """Shuttle bytes both ways until neither side has anything to say (bounded)."""
    for _ in range(20):
        moved = False
        with contextlib.suppress(SSL.WantReadError, SSL.Error):  # the server side is asserted
            conn.do_handshake()
        try:
            data = conn.bio_read(65536)
        except SSL.WantReadError:
            data = b""
        if data:
            tls.dataReceived(data)
            moved = True
        server.clock.advance(0)  # Twisted aggregates small TLS writes until the next turn
        out = transport.value()
        transport.clear()
        if out:
            conn.bio_write(out)
            moved = True
        if not moved:
            return


def files(pki: Path, **kw) -> TlsFiles:
    return TlsFiles(pki / "server.crt", pki / "server.key", **kw)


def test_mutual_tls_extracts_the_client_identity(pki):
    """A client certificate from the CA completes the handshake and names the connection."""
    server = Server(ReloadableServerContext(files(pki, ca_bundle=pki / "dev-ca.crt",
                                                  require_client_certificate=True)))
    tls, transport = server.connect()
    conn = client(pki, "trunk-a")
    pump(server, tls, transport, conn)
    sip = tls.wrappedProtocol
    assert sip.handshake_done and sip.peer_identity is not None
    assert sip.peer_identity.names == ("trunk-a", "trunk-a")


def test_mutual_tls_without_client_certificate_fails_and_is_counted(pki):
    """Without a client certificate the handshake fails and is counted for the source."""
    server = Server(ReloadableServerContext(files(pki, ca_bundle=pki / "dev-ca.crt",
                                                  require_client_certificate=True)))
    tls, transport = server.connect()
    pump(server, tls, transport, client(pki))
    assert transport.disconnecting and not tls.wrappedProtocol.handshake_done
    tls.connectionLost(Failure(ConnectionDone()))
    assert server.guard.events.get("192.0.2.9")["tls.handshake_failed"] == 1
    assert server.guard.open_total == 0


def test_reload_changes_the_certificate_of_new_connections_only(pki, tmp_path):
    """After reload a new handshake gets the new certificate; a connection made before keeps
    the old one even if its handshake finishes later."""
    for name in ("server.crt", "server.key", "dev-ca.crt"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    context = ReloadableServerContext(files(tmp_path))
    server = Server(context)
    old_tls, old_transport = server.connect()  # accepted before the reload

    ca = certs.load_key_pair(pki / "dev-ca.crt", pki / "dev-ca.key")
    fresh = certs.issue_server_cert(ca, ["reloaded.test"])
    certs.write_key_pair(fresh, tmp_path / "server.crt", tmp_path / "server.key", overwrite=True)
    context.reload()
    assert context.generation == 2
    assert context.certificate().serial_number == fresh.certificate.serial_number

    new_tls, new_transport = server.connect()
    old_conn, new_conn = client(tmp_path), client(tmp_path)
    pump(server, old_tls, old_transport, old_conn)
    pump(server, new_tls, new_transport, new_conn)
    old_serial = old_conn.get_peer_certificate().to_cryptography().serial_number
    new_serial = new_conn.get_peer_certificate().to_cryptography().serial_number
    assert new_serial == fresh.certificate.serial_number != old_serial


@pytest.mark.parametrize("breakage", ["garbage", "mismatched key", "missing"])
def test_failed_reload_keeps_the_previous_context(pki, tmp_path, breakage):
    """Broken files make reload raise ConfigError and leave the working context in place."""
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    context = ReloadableServerContext(files(tmp_path))
    before = context.options
    if breakage == "garbage":
        (tmp_path / "server.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nxx\n")
    elif breakage == "mismatched key":
        (tmp_path / "server.key").write_bytes((pki / "trunk-a.key").read_bytes())
    else:
        (tmp_path / "server.crt").unlink()
    with pytest.raises(ConfigError):
        context.reload()
    assert context.options is before and context.generation == 1
    assert isinstance(context.certificate(), x509.Certificate)
