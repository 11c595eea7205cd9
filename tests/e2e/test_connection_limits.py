"""End to end: connection limits, timeouts, mutual TLS and certificate reload on a real process.

Each test connects from its own loopback address (Linux routes all of 127.0.0.0/8 to lo), so the
per-address limits of one test never touch another's.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from sbc.app import certs as devcerts
from tests.e2e.conftest import (
    SBC,
    SbcProcess,
    ask_options,
    closed_within,
    free_port,
    launched_sbc,
    peer_serial,
    tcp_from,
    wait_until,
)

IDLE = 1.5  # seconds: idle_timeout of the limits process
HANDSHAKE = 0.5  # seconds: tls_handshake_timeout of the limits process
PER_IP = 3

CONFIG = """\
node: {{id: e2e-limits}}
logging: {{format: json, level: debug}}
interfaces:
  external:
    address: 127.0.0.1
    udp: {{enabled: true, port: {sip}}}
    tcp: {{enabled: true, port: {sip}}}
    tls: {{enabled: true, port: {tls}}}
  internal:
    address: 127.0.0.1
    udp: {{enabled: true, port: {internal}}}
limits:
  max_connections: 100
  max_connections_per_ip: {per_ip}
  new_connections_per_second_per_ip: 100
  idle_timeout: {idle}
  tls_handshake_timeout: {handshake}
tls:
  certificate: {certs}/server.crt
  private_key: {certs}/server.key
{tls_extra}"""


def _start(factory: pytest.TempPathFactory, name: str, tls_extra: str = ""):
    base = factory.mktemp(name)
    certs = base / "certs"
    subprocess.run([SBC, "certs", "init", "--dir", str(certs)], check=True,
                   capture_output=True, timeout=60)
    ports = dict(sip=free_port(), tls=free_port(), internal=free_port(socket.SOCK_DGRAM))
    text = CONFIG.format(certs=certs, per_ip=PER_IP, idle=IDLE, handshake=HANDSHAKE,
                         tls_extra=tls_extra.format(certs=certs), **ports)
    return launched_sbc(base, text, certs, ports)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """An sbc with small connection limits and short timeouts."""
    with _start(tmp_path_factory, "limits") as sbc:
        yield sbc


@pytest.fixture(scope="module")
def mutual(tmp_path_factory):
    """An sbc that requires client certificates from its development CA."""
    extra = "  ca_bundle: {certs}/dev-ca.crt\n  require_client_certificate: true\n"
    with _start(tmp_path_factory, "mtls", extra) as sbc:
        yield sbc


@pytest.fixture
def reloadable(tmp_path_factory):
    """An sbc of its own, since the test rewrites its certificate files."""
    with _start(tmp_path_factory, "reload") as sbc:
        yield sbc


# -- clients ------------------------------------------------------------------------------------


def client_context(sbc: SbcProcess, cert: Path | None = None,
                   key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(sbc.certs / "dev-ca.crt"))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def tls_from(source: str, sbc: SbcProcess, ctx: ssl.SSLContext | None = None) -> ssl.SSLSocket:
    raw = tcp_from(source, sbc.tls_port)
    return (ctx or client_context(sbc)).wrap_socket(raw, server_hostname="localhost")


# -- limits -------------------------------------------------------------------------------------


def test_flood_from_one_address_is_refused_while_another_address_is_served(limited):
    """Past max_connections_per_ip, extra TCP connections are closed at once with no answer."""
    held = [tcp_from("127.0.0.10", limited.sip_port) for _ in range(PER_IP)]
    extras = [tcp_from("127.0.0.10", limited.sip_port) for _ in range(5)]
    try:
        for i, s in enumerate(held):
            resp = ask_options(s, f"held{i}")
            assert resp is not None and resp.status == 200
        for i, s in enumerate(extras):
            assert ask_options(s, f"extra{i}") is None
            assert closed_within(s, 1.0) is not None
        with tcp_from("127.0.0.11", limited.sip_port) as other:
            resp = ask_options(other, "other")
            assert resp is not None and resp.status == 200
        resp = ask_options(held[0], "held-again")  # the admitted ones are untouched
        assert resp is not None and resp.status == 200
    finally:
        for s in held + extras:
            s.close()


def test_tls_flood_is_refused_before_any_handshake(limited):
    """Past max_connections_per_ip, extra TLS connections are closed before a handshake."""
    held = [tls_from("127.0.0.12", limited) for _ in range(PER_IP)]
    try:
        for _ in range(3):
            raw = tcp_from("127.0.0.12", limited.tls_port)
            with pytest.raises((ssl.SSLError, OSError)):
                client_context(limited).wrap_socket(raw, server_hostname="localhost")
            raw.close()
        resp = ask_options(held[0], "tls-held", "TLS")
        assert resp is not None and resp.status == 200
        with tls_from("127.0.0.13", limited) as other:
            resp = ask_options(other, "tls-other", "TLS")
            assert resp is not None and resp.status == 200
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("drip", [b"", b"OPT"], ids=["silent", "one-byte-at-a-time"])
def test_slowloris_is_cut_off_by_the_idle_timeout(limited, drip):
    """A client that sends nothing, or a byte now and then, is closed idle_timeout after its last
    byte, while another client's OPTIONS is answered meanwhile."""
    with tcp_from("127.0.0.20", limited.sip_port) as slow:
        last = time.monotonic()
        for byte in drip:
            time.sleep(IDLE / 3)  # slower than any parser wants, faster than the idle timeout
            slow.sendall(bytes([byte]))
            last = time.monotonic()
        with tcp_from("127.0.0.21", limited.sip_port) as other:
            resp = ask_options(other, f"beside-{len(drip)}")
            assert resp is not None and resp.status == 200
        elapsed = closed_within(slow, IDLE + 3.0)
        assert elapsed is not None
        assert time.monotonic() - last >= IDLE - 0.1


def test_unfinished_tls_handshake_is_cut_off_by_the_handshake_timeout(limited):
    """A TLS client that starts a ClientHello and never finishes it is closed in time."""
    with tcp_from("127.0.0.30", limited.tls_port) as s:
        start = time.monotonic()
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00")  # a record header and half a handshake header
        assert closed_within(s, HANDSHAKE + 3.0) is not None
        elapsed = time.monotonic() - start
    assert HANDSHAKE - 0.1 <= elapsed < IDLE  # the handshake timer, not the idle one


# -- mutual TLS ---------------------------------------------------------------------------------


def test_client_certificate_from_the_ca_is_accepted_and_identified(mutual):
    """A client certificate issued by the configured CA is accepted; its name is extracted."""
    subprocess.run([SBC, "certs", "client", "trunk-a", "--dir", str(mutual.certs)], check=True,
                   capture_output=True, timeout=60)
    ctx = client_context(mutual, mutual.certs / "trunk-a.crt", mutual.certs / "trunk-a.key")
    with tls_from("127.0.0.40", mutual, ctx) as s:
        resp = ask_options(s, "mtls-ok", "TLS")
        assert resp is not None and resp.status == 200
    assert wait_until(lambda: "trunk-a" in mutual.log.read_text(), attempts=30)


def test_client_certificate_from_another_ca_is_refused(mutual, tmp_path):
    """A client certificate from a CA outside ca_bundle fails the handshake."""
    other = devcerts.create_ca("some other CA")
    pair = devcerts.issue_client_cert(other, "intruder")
    devcerts.write_key_pair(pair, tmp_path / "c.crt", tmp_path / "c.key")
    ctx = client_context(mutual, tmp_path / "c.crt", tmp_path / "c.key")
    try:
        s = tls_from("127.0.0.41", mutual, ctx)
    except (ssl.SSLError, OSError):
        return  # refused during the handshake (TLS 1.2)
    with s:  # TLS 1.3: the client finishes first; the server's alert arrives on the first read
        assert ask_options(s, "mtls-other-ca", "TLS") is None


def test_client_without_certificate_is_refused(mutual):
    """A client that presents no certificate fails the handshake under mutual TLS."""
    try:
        s = tls_from("127.0.0.42", mutual)
    except (ssl.SSLError, OSError):
        return
    with s:
        assert ask_options(s, "mtls-none", "TLS") is None


# -- certificate reload -------------------------------------------------------------------------


def test_sighup_reloads_the_certificate_for_new_connections_only(reloadable):
    """After SIGHUP new connections see the new certificate; an open one keeps working; broken
    files are refused with an error and the last good certificate stays."""
    sbc = reloadable
    old = tls_from("127.0.0.50", sbc)
    with old:
        old_serial = peer_serial(old)
        ca = devcerts.load_key_pair(sbc.certs / "dev-ca.crt", sbc.certs / "dev-ca.key")
        new = devcerts.issue_server_cert(ca, ["reloaded.test"])
        devcerts.write_key_pair(new, sbc.certs / "server.crt", sbc.certs / "server.key",
                                overwrite=True)
        sbc.proc.send_signal(signal.SIGHUP)

        def sees_new() -> bool:
            with tls_from("127.0.0.51", sbc) as s:
                return peer_serial(s) == new.certificate.serial_number

        assert wait_until(sees_new, attempts=50)
        assert new.certificate.serial_number != old_serial
        resp = ask_options(old, "old-after-reload", "TLS")
        assert resp is not None and resp.status == 200

        (sbc.certs / "server.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n")
        sbc.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "TLS reload failed" in sbc.log.read_text(), attempts=50)
        assert sbc.alive()
        with tls_from("127.0.0.52", sbc) as s:
            assert peer_serial(s) == new.certificate.serial_number
            resp = ask_options(s, "after-broken-reload", "TLS")
            assert resp is not None and resp.status == 200
