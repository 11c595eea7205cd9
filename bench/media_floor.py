#!/usr/bin/env python3
"""The floor for bench_media.py: a plain Python UDP relay loop, what a naive Python relay does.

One process, one ``selectors`` (epoll) loop, a pair of sockets per call: the external socket
(the caller sends to it) and the internal one (the PBX sends to it).  A datagram read on one is
sent from the other to that socket's peer, which starts as the address given in the
configuration (as an SDP would give it) and is replaced by the source of every datagram the
socket receives (symmetric RTP latching).  Each readable socket is read until it would block
(at most 64 datagrams per readiness, so one busy socket cannot starve the others), with
``recvfrom`` and ``sendto``, one datagram at a time.

With keys in the configuration it also does the SRTP work of the mode, with pylibsrtp, one
session per direction and leg: unprotect what arrives with the sender's key (RFC 4568: the key
in an a=crypto line is the one its sender encrypts with), protect what leaves with the relay's
own key for that leg.  A packet that fails authentication is dropped and counted.

    python bench/media_floor.py CONFIG.json

CONFIG: ``{"calls": [{"a": [ip, port], "u": [ip, port], "keys": {"ext_in": hex|null,
"ext_out": hex|null, "int_in": hex|null, "int_out": hex|null}}, ...], "max_seconds": 600}``.
``a`` is the caller's media address, ``u`` the PBX's; keys are 30-byte AES_CM_128_HMAC_SHA1_80
master key + salt in hex.  When its sockets are bound it prints one JSON line, ``{"ports":
[[external, internal], ...]}``; on SIGTERM (or after ``max_seconds``) it prints its counters as
one more JSON line and exits.
"""

from __future__ import annotations

import json
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:  # only the SRTP modes need it
    import pylibsrtp
except ImportError:  # pragma: no cover
    pylibsrtp = None

Transform = Callable[[bytes], bytes]


class Leg:
    """One relay socket: where it forwards (``other``) and how it transforms packets."""

    __slots__ = ("sock", "peer", "other", "unprotect", "protect")

    def __init__(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        self.sock = sock
        self.peer = peer
        self.other: Leg | None = None
        self.unprotect: Transform | None = None  # for what arrives on this socket
        self.protect: Transform | None = None  # for what leaves from this socket


def _session(key_hex: str | None, inbound: bool) -> Transform | None:
    if key_hex is None:
        return None
    if pylibsrtp is None:
        raise SystemExit("media_floor: pylibsrtp is needed for SRTP")
    policy = pylibsrtp.Policy(
        key=bytes.fromhex(key_hex),
        ssrc_type=(pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound
                   else pylibsrtp.Policy.SSRC_ANY_OUTBOUND),
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    session = pylibsrtp.Session(policy)
    return session.unprotect if inbound else session.protect


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    sel = selectors.DefaultSelector()
    ports = []
    for call in config["calls"]:
        keys = call.get("keys") or {}
        ext = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        internal = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (ext, internal):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        a, b = Leg(ext, tuple(call["a"])), Leg(internal, tuple(call["u"]))
        a.other, b.other = b, a
        a.unprotect, a.protect = _session(keys.get("ext_in"), True), _session(
            keys.get("ext_out"), False)
        b.unprotect, b.protect = _session(keys.get("int_in"), True), _session(
            keys.get("int_out"), False)
        sel.register(ext, selectors.EVENT_READ, a)
        sel.register(internal, selectors.EVENT_READ, b)
        ports.append([ext.getsockname()[1], internal.getsockname()[1]])
    print(json.dumps({"ports": ports}), flush=True)

    running = True

    def _stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    forwarded = auth_failures = send_errors = 0
    deadline = time.monotonic() + float(config.get("max_seconds", 600))
    while running and time.monotonic() < deadline:  # bounded: SIGTERM or max_seconds
        for key, _ in sel.select(timeout=0.5):
            leg = key.data
            recvfrom = leg.sock.recvfrom
            other = leg.other
            for _ in range(64):
                try:
                    data, addr = recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. ICMP port unreachable reported on this socket
                    break
                leg.peer = addr  # latch
                if leg.unprotect is not None:
                    try:
                        data = leg.unprotect(data)
                    except Exception:  # pylibsrtp.Error, ValueError...: drop and count
                        auth_failures += 1
                        continue
                if other.protect is not None:
                    data = other.protect(data)
                try:
                    other.sock.sendto(data, other.peer)
                    forwarded += 1
                except OSError:
                    send_errors += 1
    print(json.dumps({"forwarded": forwarded, "auth_failures": auth_failures,
                      "send_errors": send_errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
