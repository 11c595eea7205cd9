"""The composition root on a memory reactor: guarded listeners and ``reload_tls``."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from sbc.app import certs
from sbc.app.service import start
from sbc.config import load_config
from sbc.net.transport import SipStreamFactory, SipTlsFactory

pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")

CONFIG = """\
interfaces:
  external:
    tcp: {enabled: true, port: 5060}
    tls: {enabled: true, port: 5061}
  internal:
    udp: {enabled: true, port: 5080}
    tcp: {enabled: true, port: 5080}
limits: {max_connections_per_ip: 2, idle_timeout: 5}
tls: {certificate: server.crt, private_key: server.key}
"""


def test_listeners_share_one_guard_and_reload_tls_swaps_or_keeps_the_context(tmp_path: Path):
    """TCP and TLS listeners share a guard; reload_tls takes good files and refuses bad ones."""
    certs.init_dev_certs(tmp_path)
    (tmp_path / "sbc.yaml").write_text(CONFIG)
    reactor = MemoryReactorClock()
    reactor.listenUDP = lambda port, proto, **kw: None  # type: ignore[attr-defined]
    service = start(load_config(tmp_path / "sbc.yaml"), reactor)
    factories = {port: factory for port, factory, _, _ in reactor.tcpServers}
    assert isinstance(factories[5060], SipStreamFactory)
    assert isinstance(factories[5061], SipTlsFactory)
    assert factories[5060].guard is factories[5061].wrappedFactory.guard is service.guard
    assert service.guard.limits.max_connections_per_ip == 2

    ca = certs.load_key_pair(tmp_path / "dev-ca.crt", tmp_path / "dev-ca.key")
    fresh = certs.issue_server_cert(ca, ["reloaded.test"])
    certs.write_key_pair(fresh, tmp_path / "server.crt", tmp_path / "server.key", overwrite=True)
    assert service.reload_tls() is True
    assert service.tls is not None
    assert service.tls.certificate().serial_number == fresh.certificate.serial_number

    (tmp_path / "server.key").write_text("not a key")
    assert service.reload_tls() is False
    assert service.tls.certificate().serial_number == fresh.certificate.serial_number
    assert service.core.counters["tls.reloaded"] == 1
    assert service.core.counters["tls.reload_failed"] == 1
