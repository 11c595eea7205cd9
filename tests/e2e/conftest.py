"""A real ``sbc run`` process on 127.0.0.1 for end-to-end tests.

The process is started from the installed console script with a configuration written for the
test (free ports, development certificates from ``sbc certs init``) and stopped with SIGTERM.
Readiness is polled with OPTIONS for a bounded number of attempts.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SBC = str(Path(sys.executable).with_name("sbc"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, other) as s2:
            try:
                s2.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def options(call_id: str, port: int = 9, transport: str = "UDP") -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK{call_id};rport\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


@dataclass
class SbcProcess:
    proc: subprocess.Popen[bytes]
    sip_port: int  # UDP and TCP on the external interface
    tls_port: int
    internal_port: int
    certs: Path
    log: Path

    def udp_exchange(self, data: bytes, timeout: float = 2.0) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(data, ("127.0.0.1", self.sip_port))
            try:
                return s.recv(65535)
            except TimeoutError:
                return None

    def alive(self) -> bool:
        return self.proc.poll() is None


CONFIG = """\
node: {{id: e2e}}
logging: {{format: json, level: info}}
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
  max_buffered_bytes: 131072
tls:
  certificate: {certs}/server.crt
  private_key: {certs}/server.key
  min_version: "1.2"
"""


@pytest.fixture(scope="module")
def sbc_process(tmp_path_factory: pytest.TempPathFactory):
    """A running sbc with UDP+TCP and TLS on the external interface."""
    base = tmp_path_factory.mktemp("sbc")
    certs = base / "certs"
    subprocess.run([SBC, "certs", "init", "--dir", str(certs)], check=True,
                   capture_output=True, timeout=60)
    ports = dict(sip=free_port(), tls=free_port(), internal=free_port(socket.SOCK_DGRAM))
    try:
        with launched_sbc(base, CONFIG.format(certs=certs, **ports), certs, ports) as sbc:
            yield sbc
    finally:
        shutil.rmtree(certs, ignore_errors=True)


def wait_until(predicate, attempts: int = 50, interval: float = 0.1) -> bool:
    """Poll ``predicate`` a bounded number of times."""
    for _ in range(attempts):
        if predicate():
            return True
        time.sleep(interval)
    return False


@contextlib.contextmanager
def launched_sbc(base: Path, config_text: str, certs: Path, ports: dict[str, int]):
    """Start ``sbc run`` with ``config_text`` written to ``base``; yield it; SIGTERM at the end.

    ``ports`` needs ``sip`` (a UDP listener on 127.0.0.1, used for the readiness probe), ``tls``
    and ``internal``.
    """
    config = base / "sbc.yaml"
    config.write_text(config_text)
    log = base / "sbc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([SBC, "run", "-c", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    sbc = SbcProcess(proc, ports["sip"], ports["tls"], ports["internal"], certs, log)
    try:
        for attempt in range(100):  # bounded: about 10 s
            if not sbc.alive():
                pytest.fail(f"sbc exited early:\n{log.read_text()}")
            if sbc.udp_exchange(options(f"ready{attempt}"), timeout=0.1):
                break
        else:
            pytest.fail(f"sbc never answered OPTIONS:\n{log.read_text()}")
        yield sbc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
