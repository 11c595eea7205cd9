"""Outbound stream connections (TCP, TLS) to the PBX and to trunks, opened on demand, reused.

Theory of operation
-------------------
The driver writes a message for a stream peer through the connection registered for (interface,
host, port).  When there is none and the peer is one the SBC may connect to (the PBX, reached
over ``pbx.transport`` tcp or tls), the driver hands the message to :class:`Connector`, which
opens one connection per peer and holds what is written meanwhile (at most
:data:`MAX_PENDING` messages; more fail at once).  The connection is an ordinary
:class:`~sbc.net.transport.SipStreamProtocol`: once connected it registers itself with the
driver like an accepted one, under the peer's address, so responses and later requests reuse it,
and what the PBX sends on it is read, framed and limited the same way.  The pending messages are
written as soon as the TCP connection is up (over TLS, the TLS layer holds them until the
handshake is done).  When the connection cannot be made, every pending message is reported back
(:meth:`Driver.connect_failed`), so the transactions fail with a transport error at once (503 to
the caller) rather than at their timeout.

TLS towards the PBX is client TLS through pyOpenSSL (:func:`twisted.internet.ssl.
optionsForClientTLS`): TLS 1.2 at least, the server certificate verified against
``tls.ca_bundle`` (else the system's trust store) and the name ``pbx.server_name`` (else
``pbx.address``), which is also sent as SNI; ``pbx.tls_verify: false`` turns verification off
for a lab PBX with a self-signed certificate (logged as a warning at start).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import protocol, ssl
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

log = Logger(namespace="sbc.outbound")

MAX_PENDING = 64  # messages held per peer while its connection is being made
CONNECT_TIMEOUT = 5.0  # seconds for the TCP connection (the TLS handshake has its own limit)

Address = tuple[str, int]
Key = tuple[str, str, int]  # (interface, host, port)


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer the SBC connects to: its interface, transport and address, and for TLS the name
    its certificate must carry."""

    interface: str
    transport: str
    host: str
    port: int
    server_name: str | None = None

    @property
    def key(self) -> Key:
        return (self.interface, self.host, self.port)


def client_tls_options(server_name: str, *, verify: bool, ca_bundle: Path | None) -> Any:
    """The client TLS options for a peer: TLS 1.2+, its certificate verified against
    ``ca_bundle`` (PEM, one or more certificates) or the platform's trust, and ``server_name``
    (SNI and name check); with ``verify`` False, an unverified TLS 1.2+ connection."""
    minimum = {"raiseMinimumTo": ssl.TLSVersion.TLSv1_2}
    if not verify:
        return ssl.CertificateOptions(verify=False, **minimum)  # type: ignore[arg-type]
    if ca_bundle is not None:
        pem = ca_bundle.read_bytes()
        certs = [ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
                 for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
        trust: Any = ssl.trustRootFromCertificates(certs)
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(server_name, trustRoot=trust,
                                   extraCertificateOptions=minimum)


@dataclass
class _Attempt:
    peer: Peer
    pending: list[tuple[Any, bytes]] = field(default_factory=list)


class Connector:
    """Opens outbound connections to known peers for the driver (see the module docstring).

    ``factory_for(peer)`` builds the :class:`~sbc.net.transport.SipStreamFactory` for a peer's
    connection; ``tls_options_for(peer)`` the client TLS options of a TLS peer; ``failed`` is
    called with the commands that could not be delivered.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        peers: list[Peer],
        factory_for: Callable[[Peer], protocol.Factory],
        failed: Callable[[list[Any]], None],
        tls_options_for: Callable[[Peer], Any] | None = None,
        counters: MutableMapping[str, int] | None = None,
    ) -> None:
        self.reactor = reactor
        self.peers = {p.key: p for p in peers}
        self.factory_for = factory_for
        self.failed = failed
        self.tls_options_for = tls_options_for
        self._attempts: dict[Key, _Attempt] = {}
        self.counters: MutableMapping[str, int] = counters if counters is not None else {}

    def knows(self, interface: str, transport: str, destination: Address) -> bool:
        peer = self.peers.get((interface, destination[0], destination[1]))
        return peer is not None and peer.transport == transport.lower()

    def send(self, command: Any, data: bytes) -> None:
        """Queue ``data`` (the bytes of ``command``) for its peer, connecting if needed."""
        key = (command.interface, command.destination[0], command.destination[1])
        attempt = self._attempts.get(key)
        if attempt is not None:
            if len(attempt.pending) >= MAX_PENDING:
                self._count("outbound.pending_overflow")
                self.failed([command])
                return
            attempt.pending.append((command, data))
            return
        peer = self.peers[key]
        self._attempts[key] = _Attempt(peer, [(command, data)])
        factory = _Watch(self, key, self.factory_for(peer))
        wrapped: Any = factory
        if peer.transport == "tls":
            assert self.tls_options_for is not None
            wrapped = TLSMemoryBIOFactory(self.tls_options_for(peer), True, factory)
        self._count(f"outbound.connect.{peer.transport}")
        log.info("connecting to {transport} {host}:{port}", transport=peer.transport,
                 host=peer.host, port=peer.port)
        self.reactor.connectTCP(peer.host, peer.port, wrapped, timeout=CONNECT_TIMEOUT)

    def connected(self, key: Key, stream: Any) -> None:
        """The connection for ``key`` is up: write what waited for it."""
        attempt = self._attempts.pop(key, None)
        if attempt is None:
            return
        for _, data in attempt.pending:
            stream.send(data)

    def connect_failed(self, key: Key, reason: Failure) -> None:
        attempt = self._attempts.pop(key, None)
        if attempt is None:
            return
        self._count("outbound.connect_failed")
        log.warn("cannot connect to {transport} {host}:{port}: {reason}",
                 transport=attempt.peer.transport, host=attempt.peer.host,
                 port=attempt.peer.port, reason=reason.getErrorMessage())
        self.failed([command for command, _ in attempt.pending])

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


class _Watch(protocol.ClientFactory):
    """The client factory around a peer's stream factory: reports success and failure of the
    connection attempt to the :class:`Connector`."""

    noisy = False

    def __init__(self, connector: Connector, key: Key, inner: protocol.Factory) -> None:
        self.connector = connector
        self.key = key
        self.inner = inner

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted)
        # The stream protocol registers itself with the driver when connected, which tells the
        # connector (Driver.stream_made -> Connector.connected).
        return self.inner.buildProtocol(addr)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self.connector.connect_failed(self.key, reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self.connector.connect_failed(self.key, reason)  # a no-op once connected


__all__ = ["CONNECT_TIMEOUT", "MAX_PENDING", "Connector", "Peer", "client_tls_options"]
