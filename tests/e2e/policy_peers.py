"""Python SIP peers for the rule-engine end-to-end tests: a PBX that answers on its own thread,
phones that register (with digest) and call, a private redis-server, security-event readers.

Everything speaks SIP over UDP on 127.0.0.x with hand-written messages parsed by sbc's own
parser.  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sbc.sip.message import Request, Response, build_response, parse_message
from tests.e2e.conftest import stop_process, wait_until
from tests.e2e.media_peers import sdp_answer, sdp_offer

REALM = "sbc-users"
_counter = itertools.count(1)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_params(header: str) -> dict[str, str]:
    """The parameters of a ``Digest ...`` challenge or credentials header."""
    return {k.lower(): (q if q else t) for k, q, t in
            re.findall(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))', header)}


def digest_response(user: str, password: str, realm: str, method: str, uri: str, nonce: str,
                    qop: str | None = None, nc: str = "", cnonce: str = "") -> str:
    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    if qop:
        return md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return md5(f"{ha1}:{nonce}:{ha2}")


def user_of(uri: object) -> str | None:
    return getattr(uri, "user", None)


# -- the PBX ------------------------------------------------------------------------------------


@dataclass
class Seen:
    """A request the PBX received."""

    at: float
    method: str
    user: str | None  # the Request-URI user (the dialled number; None for REGISTER)
    from_user: str | None
    to_user: str | None
    call_id: str
    request: Request


class FakePbx:
    """A PBX on ``host`` that answers every request on a thread of its own.

    REGISTER: 200 with the Contacts it was given (with ``users``: 404 for any other user, a
    digest challenge first, and 403 for wrong credentials); INVITE: 200 with an SDP answer, or
    486 for numbers starting with one of ``busy_prefixes``; ACK: nothing; anything else: 200.
    Every request is kept in :attr:`seen`."""

    def __init__(self, host: str = "127.0.0.1", users: dict[str, str] | None = None,
                 busy_prefixes: tuple[str, ...] = ()) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((host, 0))
        self.users = users
        self.busy_prefixes = busy_prefixes
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tags: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="fake-pbx", daemon=True)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def __enter__(self) -> FakePbx:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        self.rtp.close()

    # -- what it saw -------------------------------------------------------------------------

    def requests(self, method: str | None = None, user: str | None = None,
                 prefix: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen
                    if (method is None or s.method == method)
                    and (user is None or s.user == user)
                    and (prefix is None or (s.user or "").startswith(prefix))]

    def calls(self, method: str = "INVITE", **kw: str) -> set[str]:
        """The distinct Call-IDs of ``method`` requests (retransmissions counted once)."""
        return {s.call_id for s in self.requests(method, **kw)}

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                message = parse_message(data)
            except Exception:
                continue
            if not isinstance(message, Request):
                continue
            with self._lock:
                self.seen.append(Seen(time.monotonic(), message.method, user_of(message.uri),
                                      user_of(message.from_.uri), user_of(message.to.uri),
                                      message.call_id, message))
            try:
                self._answer(message)
            except OSError:
                return

    def _reply(self, request: Request, status: int, extra: list[tuple[str, str]] | None = None,
               body: bytes = b"") -> None:
        tag = None
        if status > 100:
            tag = self._tags.setdefault(request.call_id, f"pbx{next(_counter)}")
        host, port = self.sock.getsockname()
        headers = [("Contact", f"<sip:pbx@{host}:{port}>")] if request.method == "INVITE" else []
        headers += extra or []
        if body:
            headers.append(("Content-Type", "application/sdp"))
        response = build_response(request, status, to_tag=tag, extra=headers, body=body)
        via = request.top_via
        assert via is not None
        self.sock.sendto(response.to_bytes(), (via.host, via.port or 5060))

    def _answer(self, request: Request) -> None:
        method = request.method
        if method == "ACK":
            return
        if method == "REGISTER":
            self._register(request)
        elif method == "INVITE" and request.to.tag is None:
            user = user_of(request.uri) or ""
            if any(user.startswith(p) for p in self.busy_prefixes):
                self._reply(request, 486)
                return
            host = self.rtp.getsockname()[0]
            body = sdp_answer(host, self.rtp.getsockname()[1]) if request.body else b""
            self._reply(request, 200, body=body)
        else:
            self._reply(request, 200)

    def _register(self, request: Request) -> None:
        given = request.contacts
        contacts = [("Contact", f"{c};expires=600") for c in given] if isinstance(given, list) \
            else []
        if self.users is None:
            self._reply(request, 200, contacts)
            return
        if user_of(request.to.uri) not in self.users:
            self._reply(request, 404)  # no such user (a PBX without "always auth reject")
            return
        auth = request.headers.get("authorization")
        if auth is None:
            self._reply(request, 401, [("WWW-Authenticate",
                                        f'Digest realm="{REALM}", nonce="n{next(_counter)}", '
                                        'algorithm=MD5')])
            return
        p = digest_params(auth)
        password = self.users.get(p.get("username", ""))
        good = password is not None and p.get("response") == digest_response(
            p["username"], password, p.get("realm", ""), "REGISTER", p.get("uri", ""),
            p.get("nonce", ""), p.get("qop"), p.get("nc", ""), p.get("cnonce", ""))
        if good:
            self._reply(request, 200, contacts)
        else:
            self._reply(request, 403)


# -- phones -------------------------------------------------------------------------------------


@dataclass
class Phone:
    """A UDP phone on ``host`` talking to the SBC at 127.0.0.1:``sbc_port``."""

    host: str
    sbc_port: int
    user: str = "1001"
    password: str | None = None
    user_agent: str = "TestPhone/1.0"
    sock: socket.socket = field(init=False)
    inbox: list[Request | Response] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.host, 0))

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.sbc_port))

    def receive(self, match: Callable[[Request | Response], bool], timeout: float
                ) -> Request | Response | None:
        """The first message ``match`` accepts within ``timeout``; requests from the SBC that
        do not match (BYE of a call ended by policy, retransmissions) are answered 200."""
        end = time.monotonic() + timeout
        while True:
            for message in self.inbox:
                if match(message):
                    self.inbox.remove(message)
                    return message
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            message = parse_message(data)
            if isinstance(message, Request) and message.method in ("BYE", "CANCEL", "OPTIONS"):
                self.sock.sendto(build_response(message, 200).to_bytes(),
                                 ("127.0.0.1", self.sbc_port))
            self.inbox.append(message)

    def final(self, call_id: str, method: str, timeout: float) -> Response | None:
        found = self.receive(lambda m: isinstance(m, Response) and m.call_id == call_id
                             and m.cseq.method == method and m.status >= 200, timeout)
        assert found is None or isinstance(found, Response)
        return found

    def _request(self, method: str, ruri: str, to: str, call_id: str, cseq: int, from_tag: str,
                 extra: str = "", body: bytes = b"") -> bytes:
        return (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{call_id}{cseq}"
            f"{method};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@127.0.0.1>;tag={from_tag}\r\n"
            f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{self.user}@{self.host}:{self.port}>\r\n"
            f"User-Agent: {self.user_agent}\r\n{extra}"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def register(self, timeout: float = 3.0, expires: int = 120) -> Response | None:
        """REGISTER (``expires=0``: unregister this phone's Contact), answering a digest
        challenge with ``password``; the final response."""
        call_id = f"reg{next(_counter)}-{self.host}"
        ruri = f"sip:127.0.0.1:{self.sbc_port}"
        to = f"<sip:{self.user}@127.0.0.1>"
        extra = f"Expires: {expires}\r\n"
        self.send(self._request("REGISTER", ruri, to, call_id, 1, "r" + call_id, extra))
        response = self.final(call_id, "REGISTER", timeout)
        if response is None or response.status != 401 or self.password is None:
            return response
        challenge = digest_params(response.headers.get("www-authenticate") or "")
        answer = digest_response(self.user, self.password, challenge["realm"], "REGISTER",
                                 ruri, challenge["nonce"])
        auth = (f'Authorization: Digest username="{self.user}", realm="{challenge["realm"]}", '
                f'nonce="{challenge["nonce"]}", uri="{ruri}", response="{answer}", '
                f'algorithm=MD5\r\n')
        self.send(self._request("REGISTER", ruri, to, call_id, 2, "r" + call_id, extra + auth))
        return self.final(call_id, "REGISTER", timeout)

    def invite(self, number: str, call_id: str | None = None) -> str:
        """Send an INVITE (with an SDP offer) for ``number``; its Call-ID."""
        call_id = call_id or f"call{next(_counter)}-{number}-{self.host}"
        body = sdp_offer(self.host, 4000, None)
        self.send(self._request("INVITE", f"sip:{number}@127.0.0.1:{self.sbc_port}",
                                f"<sip:{number}@127.0.0.1>", call_id, 1, "t" + call_id,
                                body=body))
        return call_id

    def call(self, number: str, timeout: float = 3.0) -> Response | None:
        """INVITE ``number``; ACK a 2xx; the final response (None: nothing came)."""
        call_id = self.invite(number)
        response = self.final(call_id, "INVITE", timeout)
        if response is not None and 200 <= response.status < 300:
            self.ack(response)
        return response

    def ack(self, ok: Response) -> None:
        self.send(self._in_dialog("ACK", ok, 1))

    def bye(self, ok: Response, timeout: float = 3.0) -> Response | None:
        self.send(self._in_dialog("BYE", ok, 2))
        return self.final(ok.call_id, "BYE", timeout)

    def _in_dialog(self, method: str, ok: Response, cseq: int) -> bytes:
        contacts = ok.contacts
        assert isinstance(contacts, list) and contacts
        return (
            f"{method} {contacts[0].uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{ok.call_id}{method}"
            f";rport\r\nMax-Forwards: 70\r\n"
            f"From: {ok.headers.get('from')}\r\nTo: {ok.headers.get('to')}\r\n"
            f"Call-ID: {ok.call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    def options(self, timeout: float = 0.5) -> Response | None:
        call_id = f"opt{next(_counter)}-{self.host}"
        self.send(self._request("OPTIONS", f"sip:127.0.0.1:{self.sbc_port}",
                                "<sip:127.0.0.1>", call_id, 1, "o" + call_id))
        return self.final(call_id, "OPTIONS", timeout)


# -- redis-server -------------------------------------------------------------------------------


@dataclass
class PrivateRedis:
    """A redis-server of this test's own on 127.0.0.1:``port``, without persistence."""

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        if not wait_until(self.ready):
            self.stop()
            pytest.fail(f"redis-server on port {self.port} did not start")

    def ready(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", self.port))
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
            except OSError:
                return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@contextlib.contextmanager
def private_redis(directory: Path, port: int) -> Iterator[PrivateRedis]:
    server = PrivateRedis(port, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the SBC's log ------------------------------------------------------------------------------


def security_events(log: Path, kind: str | None = None) -> list[dict]:
    """The ``sbc.security`` events of an sbc JSON log, of type ``kind`` when given."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"sbc.security"' not in line:
            continue
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if kind is None or event.get("type") == kind:
                out.append(event)
    return out


def sbc_config(sip: int, internal: int, pbx: int, rules: list[str], *, node: str = "e2e-attack",
               unknown_source: str = "reject", state: str = "") -> str:
    """An sbc configuration: UDP only, plain RTP, the given rule files (and ``state`` section)."""
    files = ", ".join(json.dumps(r) for r in rules)
    return (
        f"node: {{id: {node}}}\n"
        "logging: {format: json, level: info}\n"
        "interfaces:\n"
        "  external:\n"
        "    address: 127.0.0.1\n"
        f"    udp: {{enabled: true, port: {sip}}}\n"
        "    tcp: {enabled: false}\n"
        "    tls: {enabled: false}\n"
        "  internal:\n"
        "    address: 127.0.0.1\n"
        f"    udp: {{enabled: true, port: {internal}}}\n"
        f"pbx: {{address: 127.0.0.1, port: {pbx}, transport: udp}}\n"
        "media: {srtp: none}\n"
        f"routing: {{unknown_source: {unknown_source}}}\n"
        f"rules:\n  files: [{files}]\n"
        + state
    )
