"""A phone and a PBX in a few lines of Python, for media tests through a real ``sbc run``.

Both speak SIP over UDP on 127.0.0.x with hand-written messages (parsed with sbc's own parser)
and RTP/SRTP with sockets of their own; SRTP uses pylibsrtp's public API directly, not sbc's
wrapper, so a bug in the SBC's crypto cannot cancel out on both ends.  Every wait is bounded.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from dataclasses import dataclass, field

import pylibsrtp

from sbc.media.sdp import SessionDescription, parse_sdp
from sbc.sip.message import Request, Response, build_response, parse_message

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


def srtp_session(suite: str, key_salt: bytes, outbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=key_salt, srtp_profile=PROFILES[suite],
        ssrc_type=(pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound
                   else pylibsrtp.Policy.SSRC_ANY_INBOUND),
    )
    return pylibsrtp.Session(policy=policy)


def rtp_packet(seq: int, ssrc: int, payload: bytes, pt: int = 0) -> bytes:
    """A 12-byte RTP header (version 2) and ``payload``; timestamp 160 per packet."""
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + payload


def rtcp_packet(ssrc: int) -> bytes:
    """An RTCP receiver report with no report blocks (RFC 3550 6.4.2)."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


@dataclass
class Media:
    """One endpoint's RTP socket and, with SRTP, its two sessions."""

    sock: socket.socket
    tx: pylibsrtp.Session | None = None
    rx: pylibsrtp.Session | None = None
    remote: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, packet: bytes) -> None:
        assert self.remote is not None
        self.sock.sendto(self.tx.protect(packet) if self.tx else packet, self.remote)

    def receive(self, timeout: float = 2.0) -> bytes | None:
        """The next packet (decrypted with SRTP), or None after ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(4096)
        except TimeoutError:
            return None
        return self.rx.unprotect(data) if self.rx else data

    def drain(self, seconds: float = 0.3) -> list[bytes]:
        out = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            packet = self.receive(max(0.01, end - time.monotonic()))
            if packet is None:
                break
            out.append(packet)
        return out


def new_media(host: str = "127.0.0.1") -> Media:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return Media(sock)


def sdp_offer(host: str, port: int, crypto: list[tuple[int, str, bytes]] | None,
              proto: str | None = None, extra: str = "") -> bytes:
    proto = proto or ("RTP/SAVP" if crypto else "RTP/AVP")
    lines = [
        "v=0", f"o=phone 1 1 IN IP4 {host}", "s=PhoneMarker", f"c=IN IP4 {host}", "t=0 0",
        f"m=audio {port} {proto} 0 101", "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "a=sendrecv",
    ]
    for tag, suite, key in crypto or ():
        lines.append(f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}")
    return ("\r\n".join(lines) + "\r\n" + extra).encode()


def sdp_answer(host: str, port: int, crypto: tuple[int, str, bytes] | None = None,
               proto: str = "RTP/AVP") -> bytes:
    lines = [
        "v=0", f"o=pbx 7 7 IN IP4 {host}", "s=PbxBanner", f"c=IN IP4 {host}", "t=0 0",
        f"m=audio {port} {proto} 0 101", "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000", "a=sendrecv",
    ]
    if crypto is not None:
        tag, suite, key = crypto
        lines.append(f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}")
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass
class Sip:
    """A UDP SIP socket that keeps what it received."""

    sock: socket.socket
    inbox: list[Request | Response] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def send(self, data: bytes | Request | Response, to: tuple[str, int]) -> None:
        self.sock.sendto(data if isinstance(data, bytes) else data.to_bytes(), to)

    def wait(self, match, timeout: float = 5.0) -> Request | Response:
        """The first received message ``match`` accepts (already queued or arriving)."""
        end = time.monotonic() + timeout
        while True:
            for message in self.inbox:
                if match(message):
                    self.inbox.remove(message)
                    return message
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching SIP message; got {self.inbox!r}")
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.inbox.append(parse_message(data))


def new_sip(host: str = "127.0.0.1") -> Sip:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return Sip(sock)


def is_response(status: int, method: str = "INVITE"):
    return lambda m: isinstance(m, Response) and m.status == status and m.cseq.method == method


def is_request(method: str):
    return lambda m: isinstance(m, Request) and m.method == method


def invite(phone: Sip, sbc: tuple[str, int], body: bytes, call_id: str) -> bytes:
    host, port = phone.address
    return (
        f"INVITE sip:1000@{sbc[0]}:{sbc[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{call_id};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:phone@{host}>;tag=ph{call_id}\r\n"
        f"To: <sip:1000@{sbc[0]}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:phone@{host}:{port}>\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def in_dialog(method: str, phone: Sip, sbc: tuple[str, int], ok: Response, cseq: int,
              branch: str) -> bytes:
    """An ACK or BYE from the phone in the dialog ``ok`` (the 200 to its INVITE) set up."""
    host, port = phone.address
    contacts = ok.contacts
    assert isinstance(contacts, list) and contacts
    return (
        f"{method} {contacts[0].uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: {ok.headers.get('from')}\r\n"
        f"To: {ok.headers.get('to')}\r\n"
        f"Call-ID: {ok.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def answer(pbx: Sip, request: Request, status: int, body: bytes = b"",
           to_tag: str = "pbxtag") -> None:
    """The PBX's response to ``request`` (with an SDP body when given)."""
    host, port = pbx.address
    extra = [("Contact", f"<sip:pbx@{host}:{port}>")]
    if body:
        extra.append(("Content-Type", "application/sdp"))
    response = build_response(request, status, to_tag=to_tag, extra=extra, body=body)
    via = request.top_via
    assert via is not None
    pbx.send(response, (via.host, via.port or 5060))


def sdp_of(message: Request | Response) -> SessionDescription:
    return parse_sdp(message.body)


def key(length: int = 30) -> bytes:
    return os.urandom(length)
