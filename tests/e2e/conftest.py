"""A real ``sbc run`` process on 127.0.0.1 for end-to-end tests.

The process is started from the installed console script with a configuration written for the
test (free ports, development certificates from ``sbc certs init``) and stopped with SIGTERM.
Readiness is polled with OPTIONS for a bounded number of attempts.

Shared helpers for the end-to-end tests live here too: clients bound to a chosen loopback
address, sipp ``-trace_msg`` readers, a sipp UAS playing the PBX, a socat TLS bridge and the
reader of the SBC's counters log line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from sbc.sip.message import Response, parse_message

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


# -- clients from a chosen loopback address -----------------------------------------------------
# Linux routes all of 127.0.0.0/8 to lo, so a test that binds its client sockets to an address of
# its own keeps its per-address connection limits apart from every other test's.


def tcp_from(source: str, port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def ask_options(s: socket.socket, call_id: str, transport: str = "TCP") -> Response | None:
    """Send OPTIONS on ``s``; the response, or None when the connection is refused or closed."""
    try:
        s.sendall(options(call_id, transport=transport))
        data = s.recv(65535)
    except (ssl.SSLError, OSError):
        return None
    if not data:
        return None
    resp = parse_message(data)
    assert isinstance(resp, Response)
    return resp


def closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``s`` (EOF or reset), None if it sends data or stays."""
    start = time.monotonic()
    s.settimeout(seconds)
    try:
        data = s.recv(65535)
    except (ConnectionResetError, ssl.SSLError):
        data = b""
    except TimeoutError:
        return None
    return time.monotonic() - start if data == b"" else None


def peer_serial(s: ssl.SSLSocket) -> int:
    der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# -- sipp and socat -----------------------------------------------------------------------------


def trace_blocks(log: Path, direction: str) -> list[str]:
    """The messages of a sipp ``-trace_msg`` log, ``received`` or ``sent``, each starting with
    its start line."""
    out = []
    for block in re.split(r"^-{10,}.*$", log.read_text(errors="replace"), flags=re.M):
        head, _, body = block.strip().partition("\n")
        if f"message {direction}" in head:
            out.append(body.lstrip())
    return out


def trace_markers(messages: list[str], header: str) -> set[str]:
    """Every value of ``header`` in ``messages``."""
    found = set()
    for text in messages:
        for m in re.finditer(rf"^{header}:\s*(.+?)\s*$", text, flags=re.M | re.I):
            found.add(m.group(1))
    return found


def trace_tags(messages: list[str], header: str) -> set[str]:
    """The ``tag`` parameters of ``header`` (From or To) in ``messages``."""
    return {m.group(1) for value in trace_markers(messages, header)
            for m in [re.search(r";tag=([^;>\s]+)", value)] if m}


def trace_branches(messages: list[str]) -> set[str]:
    """The Via ``branch`` parameters in ``messages``."""
    return {m.group(1) for value in trace_markers(messages, "Via")
            for m in re.finditer(r";branch=([^;,\s]+)", value)}


def sipp_trace(directory: Path, scenario: str) -> Path:
    """The ``-trace_msg`` log sipp wrote in ``directory`` for ``scenario`` (the file's stem)."""
    logs = list(directory.glob(f"{scenario}_*_messages.log"))
    assert len(logs) == 1, logs
    return logs[0]


def stop_process(proc: subprocess.Popen, group: bool = False) -> None:
    """SIGTERM ``proc`` (its whole process group with ``group``, for a forking socat), then
    SIGKILL if it has not exited within 5 s."""
    def signal_it(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            elif proc.poll() is None:
                proc.send_signal(sig)

    signal_it(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        signal_it(signal.SIGKILL)
        proc.wait(timeout=5)
    if group:  # the forked children, which the parent does not wait for
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def sipp_uas(sipp: str, scenario: Path, port: int, calls: int, directory: Path
             ) -> subprocess.Popen:
    """A sipp UAS (the PBX) on 127.0.0.1:``port`` over UDP, tracing into ``directory``; it exits
    by itself after ``calls`` calls.  The caller stops it with :func:`stop_process`."""
    directory.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sipp, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-t", "u1",
         "-nostdin", "-m", str(calls), "-trace_msg", "-trace_err"],
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL)


@dataclass
class TlsBridge:
    """A socat that accepts plain TCP on ``port`` and relays each connection over its own
    verified TLS connection to the SBC.  ``dump`` receives every byte that came back from the
    SBC, decrypted (socat ``-R``); ``log`` is socat's ``-d -d`` notice log (one ``accepting
    connection`` line per client connection, the TLS version and cipher of each)."""

    proc: subprocess.Popen[bytes]
    port: int
    dump: Path
    log: Path

    def notices(self) -> str:
        return self.log.read_text(errors="replace")

    def connections(self) -> int:
        return self.notices().count("accepting connection from")


@contextlib.contextmanager
def tls_bridge(socat: str, tls_port: int, cafile: Path, directory: Path):
    """Start socat ``TCP-LISTEN -> OPENSSL`` towards ``tls_port``, verifying the SBC against
    ``cafile`` (and its name against 127.0.0.1); yield a :class:`TlsBridge`; kill it and its
    children at the end.  Readiness is read from socat's log, not probed, so that no connection
    but the test's own ever crosses the bridge."""
    port = free_port()
    dump, log = directory / "socat-from-sbc.raw", directory / "socat.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [socat, "-d", "-d", "-R", str(dump),
             f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
             f"OPENSSL:127.0.0.1:{tls_port},cafile={cafile},verify=1"],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
            start_new_session=True)
    bridge = TlsBridge(proc, port, dump, log)
    try:
        if not wait_until(lambda: proc.poll() is not None or "listening on" in bridge.notices()):
            pytest.fail(f"socat never listened:\n{bridge.notices()}")
        if proc.poll() is not None:
            pytest.fail(f"socat exited:\n{bridge.notices()}")
        yield bridge
    finally:
        stop_process(proc, group=True)


def last_counters(log: Path) -> dict[str, int]:
    """The counters of the last ``counters`` line of an sbc JSON log (written every minute and
    at shutdown: read it after the process has exited)."""
    found: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and isinstance(event.get("counters"), dict):
                found = event["counters"]
    return found
