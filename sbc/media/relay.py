"""The media relay core: port pairs, SDP rewriting, SRTP keys per leg, latching, per-packet
forwarding, timeouts and statistics.  Pure: no sockets, no clock, no reactor.

Theory of operation
-------------------
Every call the B2BUA handles gets a :class:`MediaSession` from the :class:`MediaManager`.  A
session has two legs, ``"a"`` (the caller) and ``"b"`` (the callee), each with a
:class:`LegPolicy`: its interface, its SRTP policy, whether its signalling is TLS and the IP
address its SIP comes from.  Each ``m=`` line of the offer becomes a :class:`Stream` with one
:class:`Endpoint` per leg: an even RTP port and the odd RTCP port above it on that leg's
interface, bound by the edge through the injected :class:`PortAllocator`.

SDP.  :meth:`MediaManager.offer` takes the SDP one leg sent and returns the SDP for the other
leg: every ``c=``, ``m=`` port and ``a=rtcp`` point at the SBC's own endpoint on that leg,
``a=crypto`` is replaced by the SBC's own keys for that leg (or removed when that leg is plain
RTP), the transport profile follows the leg's policy (``RTP/SAVP`` <-> ``RTP/AVP``, keeping
``F`` for feedback profiles), ICE and DTLS attributes (addresses of the far side, and a
handshake the SBC does not terminate) are removed, and codecs and directions pass unchanged.
:meth:`MediaManager.answer` does the same for the answer and installs the keys both ways.  The
B2BUA says which body is an offer and which an answer (RFC 3264: an INVITE's body is the offer
and the responses' the answer, or the 2xx offers and the ACK answers).

An offer is pending until a final answer settles it.  If it fails instead (a non-2xx final, an
answer the policy refuses, a CANCEL or a timeout: RFC 3261 14.1, RFC 3264 8), the B2BUA calls
:meth:`MediaManager.offer_failed` and the session is as it was before the offer: each
endpoint's addresses, latching, ``rtcp-mux``, clock and SRTP contexts (:meth:`Endpoint.mark`,
:meth:`Endpoint.rollback`), each leg's negotiation, and the streams; streams the offer added
are released.  So until the offer is settled nothing it replaced is closed or released: a
replaced key stays valid, a plain re-offer's contexts and a refused stream's ports stay in use.

Policies (RFC 4568, per leg): ``require`` -- an offer without acceptable SDES crypto is refused
with 488 and an answer without it fails the call; ``optional`` -- SRTP when the peer offers it;
``none`` -- plain RTP only, and an SRTP-only offer is refused.  SDES keys travel in the clear
inside SDP, so by default they are refused unless that leg's signalling is TLS.

Keys.  Each leg has its own keys (:mod:`sbc.media.srtp`, drawn from the CSPRNG): the SBC never
forwards an ``a=crypto`` from one leg to the other, and every packet is authenticated with the
inbound leg's key before it is re-encrypted with the outbound leg's (or sent as plain RTP).
When a peer re-keys (a new key in a re-INVITE), the SBC also draws a fresh key for its own
direction on that leg, and both new contexts keep the rollover counter of the SSRCs already
seen (RFC 3711 3.3.1: the ROC belongs to the SSRC's crypto context, a new master key does not
reset it -- a reset ROC is why audio breaks after re-keys with some peers).  The previous
inbound key stays valid for :attr:`MediaSettings.rekey_grace` seconds after the answer, for
packets in flight (an offerer re-keying keeps sending with its old key until it has the answer,
RFC 4568 7.1.4, so until then both keys are accepted).

Latching (symmetric RTP for phones behind NAT).  Before the first packet, media for a leg goes
to the address its SDP signalled.  The endpoint latches to the source of the first packet that
(with SRTP) passes authentication, or (plain RTP) comes from the signalled address or from the
IP the leg's SIP comes from; from then on packets from any other source are dropped and counted
(a third party cannot hijack the stream).  A new address in a re-INVITE unlatches.

The hot path is :meth:`Endpoint.rtp_in` / :meth:`Endpoint.rtcp_in`: the edge receives the
datagram into :data:`sbc.media.srtp.PACKET_VIEW`, calls the endpoint with the length, source and
``now``, and sends ``PACKET_VIEW[:n]`` from the other leg's socket to the other leg's peer when
the result is positive.  It allocates nothing on the normal path, never raises, never logs and
never touches the store: every outcome is a counter on the endpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import secrets
import struct
from collections import deque
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sbc.errors import SbcError, SdpError
from sbc.media import srtp
from sbc.media.sdes import CryptoAttribute
from sbc.media.sdp import Attribute, MediaDescription, SessionDescription, parse_sdp

SrtpPolicy = Literal["require", "optional", "none"]
Address = tuple[str, int]
Leg = Literal["a", "b"]
LEGS: tuple[Leg, Leg] = ("a", "b")

RTCP_FLAG = 0x10000  # rtp_in's result: forward as RTCP (a muxed RTCP packet, RFC 5761 4)
MIN_RTP = 12  # bytes: the fixed RTP header (RFC 3550 5.1)
MIN_RTCP = 8  # bytes: an RTCP header with the sender SSRC (RFC 3550 6.4)
SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000  # packets: RFC 3550 A.1's jump still taken as the same stream
MAX_MISORDER = 100
# The fixed RTP header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
_RTP_HEADER = struct.Struct("!BBHII").unpack_from
DEFAULT_CLOCK_RATE = 8000  # Hz: the clock of G.711/G.729/GSM (RFC 3551 6)
# Attributes that name the far side's addresses or a handshake the SBC does not terminate
# (ICE, RFC 8839; DTLS-SRTP, RFC 5763): never copied to the other leg.
DROPPED_ATTRIBUTES = (
    "candidate", "remote-candidates", "end-of-candidates", "ice-ufrag", "ice-pwd",
    "ice-options", "ice-lite", "ice-mismatch", "ice-pacing", "fingerprint", "setup",
    "tls-id", "rtcp", "rtcp-mux", "rtcp-rsize", "crypto",
)
_DROPPED = frozenset(DROPPED_ATTRIBUTES)
RTP_PROFILES = {"RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"}
DROP_REASONS = ("malformed", "source", "auth", "replay", "crypto", "rate", "no_peer", "expired")


class MediaRefused(SbcError):
    """An offer or answer the media policy cannot accept: ``status`` is the SIP answer (488
    Not Acceptable Here, 503 when the relay is out of capacity), ``reason`` the short text for
    the Warning header and the security event (never key material)."""

    def __init__(self, reason: str, status: int = 488, *, security: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.security = security  # an encryption policy refused it: a security event


@dataclass(frozen=True, slots=True)
class LegPolicy:
    """How one leg of a call may carry media: its interface, SRTP policy, whether its
    signalling is TLS (SDES keys may travel on it), and the IP its SIP comes from (a plain RTP
    source that may be latched besides the signalled address)."""

    interface: str
    srtp: SrtpPolicy = "none"
    secure: bool = False
    peer_host: str | None = None


@dataclass(frozen=True, slots=True)
class MediaInterface:
    """Where one interface's relay ports are bound, and the address SDP advertises."""

    address: str
    advertised: str | None = None

    @property
    def public(self) -> str:
        return self.advertised or self.address


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """What the relay needs from the configuration (see docs/configuration.md, ``media``)."""

    interfaces: dict[str, MediaInterface]
    suites: tuple[str, ...] = ()  # allowed SDES suites, best first; () = every supported one
    allow_insecure_sdes: bool = False
    inactivity_timeout: float = 30.0  # seconds without a packet from either leg
    max_call_duration: float | None = None
    max_sessions: int = 10000
    max_pps: int = 400  # packets per second per endpoint (RTP + RTCP); 20 ms audio is 50
    rekey_grace: float = 5.0  # seconds after the answer the previous inbound key decrypts
    auth_alarm: int = 20  # SRTP authentication failures in one call that raise an event

    def allowed_suites(self) -> tuple[str, ...]:
        supported = srtp.SUPPORTED_SUITES
        if not self.suites:
            return supported
        return tuple(s for s in self.suites if s in supported)


class PortAllocator(Protocol):
    """Binds an even RTP port and the RTCP port above it on an interface for ``endpoint``
    (the edge's sockets then deliver to it), and releases them.  ``None``: no pair free."""

    def allocate(self, interface: str, endpoint: Endpoint) -> int | None: ...

    def release(self, endpoint: Endpoint) -> None: ...


class PortPool:
    """The free even ports of a range, per pool key (the edge uses the bind address, so two
    interfaces on one address share it), handed out least recently used first.

    A released pair goes to the back of the queue and is not handed out again for
    ``quarantine`` seconds, so packets still on their way to the previous call (its peer has
    not noticed the BYE yet) find a closed socket, not a new call.  Pure: the edge binds."""

    def __init__(self, start: int, end: int, interfaces: Sequence[str], *,
                 quarantine: float = 2.0) -> None:
        first = start + (start % 2)
        self.quarantine = quarantine
        self._free: dict[str, deque[tuple[float, int]]] = {
            name: deque((0.0, port) for port in range(first, end, 2)) for name in interfaces
        }
        self.size = (end - first + 1) // 2

    def take(self, interface: str, now: float) -> int | None:
        """The least recently used pair out of quarantine, or ``None``."""
        queue = self._free.get(interface)
        if not queue or queue[0][0] > now:
            return None
        return queue.popleft()[1]

    def put(self, interface: str, port: int, now: float) -> None:
        self._free[interface].append((now + self.quarantine, port))

    def free(self, interface: str) -> int:
        return len(self._free.get(interface, ()))


class Endpoint:
    """One leg's side of one stream: the SBC's RTP port and RTCP port on that leg's interface,
    the leg's peer address (signalled, then latched), the inbound and outbound SRTP contexts of
    that leg, and the counters.  :meth:`rtp_in` and :meth:`rtcp_in` are the per-packet path."""

    __slots__ = (
        "interface", "port", "other", "session", "remote_rtp", "remote_rtcp", "signalled_rtp",
        "signalled_rtcp", "trusted_host", "rtp_latched", "rtcp_latched", "mux", "rx", "rx_prev",
        "rx_prev_until", "tx", "max_pps", "win_end", "win_count", "last_rx", "packets", "bytes",
        "rtcp_packets", "rtcp_bytes", "sent", "drops", "drop_malformed", "drop_source",
        "drop_auth", "drop_replay", "drop_crypto", "drop_rate", "drop_no_peer",
        "drop_expired", "base_seq", "max_seq", "cycles", "received", "reordered", "jitter",
        "transit", "clock_rate", "ssrc", "rtp_sock", "rtcp_sock", "auth_sources", "saved",
    )

    def __init__(self, interface: str, session: MediaSession | None = None) -> None:
        self.interface = interface
        self.port = 0
        self.other: Endpoint = self
        self.session = session
        self.remote_rtp: Address | None = None  # where this leg's RTP goes
        self.remote_rtcp: Address | None = None
        self.signalled_rtp: Address | None = None
        self.signalled_rtcp: Address | None = None
        self.trusted_host: str | None = None
        self.rtp_latched = False
        self.rtcp_latched = False
        self.mux = False  # this leg sends and receives RTCP on the RTP port (RFC 5761)
        self.rx: Any = None  # SrtpContext decrypting what this leg sends, or None
        self.rx_prev: Any = None
        self.rx_prev_until = 0.0
        self.tx: Any = None  # SrtpContext encrypting what goes to this leg, or None
        self.max_pps = 0
        self.win_end = 0.0
        self.win_count = 0
        self.last_rx = 0.0
        self.packets = 0  # RTP packets received and accepted from this leg
        self.bytes = 0
        self.rtcp_packets = 0
        self.rtcp_bytes = 0
        self.sent = 0  # packets forwarded to this leg
        self.drop_malformed = 0
        self.drop_source = 0
        self.drop_auth = 0
        self.drop_replay = 0
        self.drop_crypto = 0
        self.drop_rate = 0
        self.drop_no_peer = 0
        self.drop_expired = 0
        # RFC 3550 A.1 / A.8 receiver statistics of this leg's RTP.
        self.base_seq = -1
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.reordered = 0
        self.jitter = 0.0  # in timestamp units
        self.transit: float | None = None
        self.clock_rate = DEFAULT_CLOCK_RATE
        self.ssrc = -1
        self.rtp_sock: Any = None  # the edge's sockets for this endpoint's two ports
        self.rtcp_sock: Any = None
        self.auth_sources: dict[str, int] | None = None
        self.saved: tuple[Any, ...] | None = None  # mark(): the state before an offer

    def __repr__(self) -> str:
        return (f"Endpoint({self.interface}:{self.port} remote={self.remote_rtp} "
                f"latched={self.rtp_latched} srtp={self.rx is not None})")

    # -- the per-packet path ---------------------------------------------------------------

    def rtp_in(self, n: int, addr: Address, now: float) -> int:
        """A datagram of ``n`` bytes from ``addr`` arrived on the RTP port (in
        ``srtp.PACKET_VIEW``).  Returns the length to send from the other leg's RTP port to
        ``other.remote_rtp``, that length plus :data:`RTCP_FLAG` for RTCP to send from the
        other leg's RTCP path (:meth:`rtcp_target`), or -1 when it is dropped (and counted)."""
        if n < MIN_RTP:
            self.drop_malformed += 1
            return -1
        # The fixed header in one call (SRTP leaves it in clear): version, payload type,
        # sequence number, timestamp, SSRC (RFC 3550 5.1).
        b0, b1, seq, ts, ssrc = _RTP_HEADER(srtp.PACKET_VIEW)
        if b0 & 0xC0 != 0x80:  # RTP version 2
            self.drop_malformed += 1
            return -1
        if 64 <= b1 & 0x7F <= 95:  # RTCP PT 192-223 on the RTP port: muxed (RFC 5761 4)
            m = self.rtcp_in(n, addr, now)
            return m + RTCP_FLAG if m >= 0 else m
        rx = self.rx
        # The source before the rate: a third party's flood must not use up the budget of the
        # latched peer (that would mute the call from any address).
        if self.rtp_latched:
            if addr != self.remote_rtp:
                self.drop_source += 1
                return -1
        elif not self._may_latch(addr, rx):
            self.drop_source += 1
            return -1
        if now >= self.win_end:
            self.win_end = now + 1.0
            self.win_count = 0
        self.win_count += 1
        if self.win_count > self.max_pps:
            self.drop_rate += 1
            return -1
        if not self.rtp_latched:
            if rx is None:
                self._latch_rtp(addr)
            else:
                n = self._unprotect(n, addr, now)
                if n < 0:
                    return -1
                self._latch_rtp(addr)
                rx = None  # already decrypted
        if rx is not None:
            n2 = rx.unprotect_in_place(n)
            if n2 < 0:
                n2 = self._unprotect_failed(n, n2, addr, now)
                if n2 < 0:
                    return -1
            n = n2
        self.last_rx = now
        self.packets += 1
        self.bytes += n
        # Receiver statistics (RFC 3550 A.1 sequence, A.8 jitter), integers on the common path.
        if self.base_seq < 0 or ssrc != self.ssrc:
            self._new_source(seq, ssrc)
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if delta < MAX_DROPOUT:
                if seq < self.max_seq:
                    self.cycles += SEQ_MOD
                self.max_seq = seq
            elif delta > SEQ_MOD - MAX_MISORDER:
                self.reordered += 1
            else:  # a jump: RFC 3550 A.1 restarts the count on a new sequence
                self._new_source(seq, ssrc)
        self.received += 1
        transit = now * self.clock_rate // 1 - ts  # integral (a float: no int() call)
        last = self.transit
        self.transit = transit
        if last is not None:
            d = transit - last
            if d < 0:
                d = -d
            if d < 1 << 30:  # a timestamp jump (new talkspurt clock, wrap) is not jitter
                self.jitter += (d - self.jitter) / 16
        other = self.other
        if other.remote_rtp is None:
            other.drop_no_peer += 1
            return -1
        tx = other.tx
        if tx is not None:
            n = tx.protect_in_place(n)
            if n < 0:
                other.drop_crypto += 1
                return -1
        other.sent += 1
        return n

    def rtcp_in(self, n: int, addr: Address, now: float) -> int:
        """An RTCP datagram (on the RTCP port, or muxed): the length to send to the other
        leg's RTCP target, or -1 when dropped."""
        v = srtp.PACKET_VIEW
        if n < MIN_RTCP or v[0] & 0xC0 != 0x80:
            self.drop_malformed += 1
            return -1
        expected = self.remote_rtp if self.mux else self.remote_rtcp
        if self.rtcp_latched and addr != expected:  # before the rate, as in rtp_in
            self.drop_source += 1
            return -1
        if now >= self.win_end:
            self.win_end = now + 1.0
            self.win_count = 0
        self.win_count += 1
        if self.win_count > self.max_pps:
            self.drop_rate += 1
            return -1
        rx = self.rx
        if rx is not None:
            n2 = rx.unprotect_rtcp_in_place(n)
            if n2 < 0 and self.rx_prev is not None and now < self.rx_prev_until:
                n2 = self.rx_prev.unprotect_rtcp_in_place(n)
            if n2 < 0:
                self._count_failure(n2, addr)
                return -1
            n = n2
        if not self.rtcp_latched:
            # RTCP latches like RTP: to an authenticated source (decrypted above), or to the
            # signalled address / the SIP peer's IP / the latched RTP source's IP.
            if rx is None and not (
                addr[:2] == self.signalled_rtcp or addr[:2] == self.signalled_rtp
                or addr[0] == self.trusted_host
                or (self.rtp_latched and self.remote_rtp is not None
                    and addr[0] == self.remote_rtp[0])
            ):
                self.drop_source += 1
                return -1
            self.rtcp_latched = True
            if self.mux:
                if not self.rtp_latched:
                    self._latch_rtp(addr)
            else:
                self.remote_rtcp = addr
        self.last_rx = now
        self.rtcp_packets += 1
        self.rtcp_bytes += n
        other = self.other
        if other.rtcp_target() is None:
            other.drop_no_peer += 1
            return -1
        tx = other.tx
        if tx is not None:
            n = tx.protect_rtcp_in_place(n)
            if n < 0:
                other.drop_crypto += 1
                return -1
        other.sent += 1
        return n

    def rtcp_target(self) -> Address | None:
        """Where RTCP for this leg goes: the RTP address when the leg muxes."""
        return self.remote_rtp if self.mux else self.remote_rtcp

    # -- the uncommon paths ----------------------------------------------------------------

    def _may_latch(self, addr: Address, rx: Any) -> bool:
        if rx is not None:
            return True  # decided by authentication
        return addr[:2] == self.signalled_rtp or addr[0] == self.trusted_host

    def _latch_rtp(self, addr: Address) -> None:
        self.remote_rtp = addr
        self.rtp_latched = True
        if not self.rtcp_latched and not self.mux:
            self.remote_rtcp = (addr[0], addr[1] + 1)  # until RTCP itself arrives

    def _unprotect(self, n: int, addr: Address, now: float) -> int:
        n2 = self.rx.unprotect_in_place(n)
        if n2 < 0:
            return self._unprotect_failed(n, n2, addr, now)
        return n2

    def _unprotect_failed(self, n: int, code: int, addr: Address, now: float) -> int:
        """The current key failed: try the previous one within its grace, else count."""
        prev = self.rx_prev
        if prev is not None and code == srtp.ERROR_AUTH:
            if now < self.rx_prev_until:
                n2 = prev.unprotect_in_place(n)
                if n2 >= 0:
                    return n2
            else:
                prev.close()
                self.rx_prev = None
        self._count_failure(code, addr)
        return -1

    def _count_failure(self, code: int, addr: Address) -> None:
        if code == srtp.ERROR_REPLAY:
            self.drop_replay += 1
            return
        if code == srtp.ERROR_KEY_EXPIRED:
            self.drop_expired += 1
            return
        self.drop_auth += 1
        sources = self.auth_sources
        if sources is None:
            sources = self.auth_sources = {}
        if len(sources) < 64 or addr[0] in sources:  # bounded: a spray from many sources
            sources[addr[0]] = sources.get(addr[0], 0) + 1
        if self.session is not None:
            self.session.auth_failures += 1

    def _new_source(self, seq: int, ssrc: int) -> None:
        self.ssrc = ssrc
        self.base_seq = seq
        self.max_seq = seq
        self.cycles = 0
        self.received = 0
        self.transit = None

    # -- set-up ----------------------------------------------------------------------------

    def signal(self, rtp: Address | None, rtcp: Address | None, mux: bool) -> None:
        """The leg's SDP names ``rtp``/``rtcp`` (``None``: no address, e.g. 0.0.0.0 hold).
        A changed address unlatches: the new one is where media goes until a packet latches."""
        if rtp != self.signalled_rtp or mux != self.mux:
            self.rtp_latched = False
            self.rtcp_latched = False
            self.remote_rtp = rtp
            self.remote_rtcp = rtp if mux else rtcp
        elif rtcp != self.signalled_rtcp and not self.rtcp_latched:
            self.remote_rtcp = rtcp
        self.signalled_rtp = rtp
        self.signalled_rtcp = rtcp
        self.mux = mux

    def stats(self) -> dict[str, Any]:
        """This leg's counters and RFC 3550 receiver statistics (loss, jitter in ms)."""
        expected = self.cycles + self.max_seq - self.base_seq + 1 if self.base_seq >= 0 else 0
        lost = max(0, expected - self.received)
        drops = {reason: getattr(self, f"drop_{reason}") for reason in DROP_REASONS}
        return {
            "port": self.port,
            "remote": f"{self.remote_rtp[0]}:{self.remote_rtp[1]}" if self.remote_rtp else None,
            "latched": self.rtp_latched,
            "srtp": self.rx is not None,
            "packets": self.packets,
            "bytes": self.bytes,
            "rtcp_packets": self.rtcp_packets,
            "sent": self.sent,
            "lost": lost,
            "loss": round(lost / expected, 4) if expected > 0 else 0.0,
            "reordered": self.reordered,
            "jitter_ms": round(self.jitter * 1000 / self.clock_rate, 2),
            "drops": {k: v for k, v in drops.items() if v},
            "auth_failure_sources": dict(self.auth_sources or {}),
        }

    def set_clock(self, rate: int) -> None:
        """The RTP clock of the leg's first format (jitter is reported in ms)."""
        self.clock_rate = rate

    def install_rx(self, crypto: CryptoAttribute, prev_until: float) -> bool:
        """``crypto`` is what the leg now encrypts with.  The SSRCs already seen keep their
        rollover counters in the new context, and the replaced key stays valid until
        ``prev_until`` (``math.inf``: until :meth:`start_grace`).  Whether a key was replaced."""
        rocs = self.rx.rocs() if self.rx is not None else None
        ctx = srtp.context_from_crypto(crypto, outbound=False, rocs=rocs)
        replaced = self.rx is not None
        if replaced:
            if self.rx_prev is not None:
                self._retire(self.rx_prev)
            self.rx_prev = self.rx
            self.rx_prev_until = prev_until
        self.rx = ctx
        return replaced

    def install_tx(self, crypto: CryptoAttribute) -> None:
        """``crypto`` is the SBC's key towards the leg (its SSRCs' rollover counters kept)."""
        rocs = self.tx.rocs() if self.tx is not None else None
        ctx = srtp.SrtpContext(crypto.suite, crypto.key_salt, outbound=True, rocs=rocs)
        if self.tx is not None:
            self._retire(self.tx)
        self.tx = ctx

    def start_grace(self, until: float) -> None:
        """The replaced inbound key stays valid until ``until`` (the re-offer was answered)."""
        if self.rx_prev is not None:
            self.rx_prev_until = until

    def set_mux(self, mux: bool) -> None:
        """Whether the leg multiplexes RTCP on the RTP port, as the answer settled it."""
        self.mux = mux
        if mux and self.signalled_rtp is not None:
            self.remote_rtcp = self.remote_rtp

    def close(self) -> None:
        """Plain RTP from now on: every SRTP context of the leg closed (or, under a
        :meth:`mark`, kept for :meth:`rollback` until :meth:`commit`)."""
        for ctx in (self.rx, self.rx_prev, self.tx):
            if ctx is not None:
                self._retire(ctx)
        self.rx = self.rx_prev = self.tx = None

    # An offer that fails leaves the session as it was before it (RFC 3264 8, RFC 3261 14.1):
    # mark() before the offer changes anything, rollback() when it fails, commit() once an
    # answer accepts it.  Between them a replaced SRTP context is kept, not closed.

    def mark(self) -> None:
        """Remember the negotiated state: signalled and current peer addresses, latching,
        ``rtcp-mux``, clock rate and the SRTP contexts (an earlier mark is committed)."""
        self.commit()
        self.saved = (
            self.signalled_rtp, self.signalled_rtcp, self.remote_rtp, self.remote_rtcp,
            self.rtp_latched, self.rtcp_latched, self.mux, self.clock_rate, self.rx_prev_until,
            self.rx, self.rx_prev, self.tx,
        )

    def rollback(self) -> None:
        """Back to the state :meth:`mark` remembered: the contexts installed since are closed
        and the replaced ones are in force again (counters and statistics are not undone)."""
        saved = self.saved
        if saved is None:
            return
        self.saved = None
        kept = saved[9:]
        for ctx in (self.rx, self.rx_prev, self.tx):
            if ctx is not None and not any(ctx is k for k in kept):
                ctx.close()
        (self.signalled_rtp, self.signalled_rtcp, self.remote_rtp, self.remote_rtcp,
         self.rtp_latched, self.rtcp_latched, self.mux, self.clock_rate, self.rx_prev_until,
         self.rx, self.rx_prev, self.tx) = saved

    def commit(self) -> None:
        """Forget the mark: the contexts replaced since it are closed now."""
        saved = self.saved
        if saved is None:
            return
        self.saved = None
        live = (self.rx, self.rx_prev, self.tx)
        for ctx in saved[9:]:
            if ctx is not None and not any(ctx is c for c in live):
                ctx.close()

    def _retire(self, ctx: Any) -> None:
        """``ctx`` was replaced: closed, unless the mark keeps it for :meth:`rollback`."""
        saved = self.saved
        if saved is not None and any(ctx is k for k in saved[9:]):
            return
        ctx.close()


@dataclass(eq=False, slots=True)
class _LegState:
    """One leg's side of one stream's negotiation."""

    proto: str = "RTP/AVP"  # the profile this leg uses
    srtp: bool = False
    their_key: CryptoAttribute | None = None  # what the leg sends with
    our_key: CryptoAttribute | None = None  # what the SBC sends to the leg with
    offered: list[CryptoAttribute] = field(default_factory=list)  # the SBC's offer to it
    offered_mux: bool = False
    grace_pending: bool = False  # a re-offer replaced the leg's key: the grace starts at answer


@dataclass(eq=False, slots=True)
class Stream:
    """One ``m=`` line of a call: an endpoint and negotiation state per leg."""

    index: int
    a: Endpoint
    b: Endpoint
    state: dict[str, _LegState] = field(default_factory=dict)
    rejected: bool = False
    inactive: bool = False  # a=inactive in the last offer or answer: no media expected

    def endpoint(self, leg: str) -> Endpoint:
        return self.a if leg == "a" else self.b


@dataclass(eq=False, slots=True)
class _PendingOffer:
    """An offer awaiting its answer, and what it changed: the undo record of
    :meth:`MediaManager.offer_failed` (the streams' endpoints hold their own :meth:`Endpoint.mark`).
    Releases and closings the offer or its answer call for wait here until an answer settles it."""

    from_leg: str
    streams: list[Stream]  # session.streams before the offer
    # Each stream live before the offer: its legs' negotiation and its a=inactive, as they were.
    saved: list[tuple[Stream, _LegState, _LegState, bool]] = field(default_factory=list)
    added: list[Stream] = field(default_factory=list)  # released if the offer fails
    # Released when the offer is settled: the live streams the offer, or its answer, refused.
    refused: list[Stream] = field(default_factory=list)
    unanswered: list[Stream] = field(default_factory=list)
    plain: list[Endpoint] = field(default_factory=list)  # plain re-offer: keys closed then


@dataclass(eq=False, slots=True)
class MediaSession:
    """The media of one call: its streams, the legs' policies, and the offer in flight."""

    key: object  # the B2BUA's handle for the call
    legs: dict[str, LegPolicy]
    created_at: float
    streams: list[Stream] = field(default_factory=list)
    offer_from: str | None = None  # the leg whose offer awaits an answer
    pending: _PendingOffer | None = None  # the offer not yet settled by a final answer
    answered_at: float | None = None
    last_answer: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    last_offer: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    auth_failures: int = 0
    auth_alarmed: bool = False
    shard: int = -1  # the media worker relaying it (-1: not placed yet, or no workers)
    timed_out: bool = False
    closed: bool = False

    @property
    def unsettled_from(self) -> str | None:
        """The leg (``"a"`` or ``"b"``) whose offer no final answer has settled yet, if any."""
        return self.pending.from_leg if self.pending is not None else None

    def endpoints(self) -> Iterator[Endpoint]:
        for stream in self.streams:
            yield stream.a
            yield stream.b

    def last_activity(self) -> float:
        return max((ep.last_rx for ep in self.endpoints()), default=self.created_at)


@dataclass(frozen=True, slots=True)
class MediaEvent:
    """Something the relay noticed that the B2BUA acts on or records: ``kind`` is
    ``"inactive"`` (no media for the inactivity timeout: end the call), ``"duration"`` (the
    maximum call duration reached: end the call) or ``"srtp_auth_failures"`` (a storm of
    unauthenticated packets: a security event, ``detail`` has the counts by source)."""

    kind: str
    key: object
    detail: dict[str, Any] = field(default_factory=dict)


SWEEP_INTERVAL = 1.0  # seconds between inactivity/duration sweeps


class MediaManager:
    """Creates and ends :class:`MediaSession` objects, rewrites their SDP and reports timeouts
    (see the module docstring)."""

    def __init__(self, settings: MediaSettings, ports: PortAllocator, *,
                 random: Callable[[int], bytes] = secrets.token_bytes,
                 counters: MutableMapping[str, int] | None = None,
                 endpoint_type: type[Endpoint] | None = None) -> None:
        self.settings = settings
        self.ports = ports
        # The media workers' edge substitutes an endpoint that forwards its set-up to the
        # worker process that owns its sockets (sbc.net.media_workers).
        self.endpoint_type = endpoint_type or Endpoint
        self.random = random
        self.sessions: dict[int, MediaSession] = {}
        self.counters: MutableMapping[str, int] = counters if counters is not None else {}
        self._sweep_at: float | None = None

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- sessions --------------------------------------------------------------------------

    def create(self, key: object, a: LegPolicy, b: LegPolicy, now: float) -> MediaSession:
        """A session for a new call; :class:`MediaRefused` (503) beyond ``max_sessions``."""
        if len(self.sessions) >= self.settings.max_sessions:
            self._count("media.refused.capacity")
            raise MediaRefused("media sessions exhausted", 503)
        session = MediaSession(key, {"a": a, "b": b}, now)
        self.sessions[id(session)] = session
        if self._sweep_at is None:
            self._sweep_at = now + SWEEP_INTERVAL
        return session

    def close(self, session: MediaSession) -> dict[str, Any]:
        """End ``session``: release its ports and keys; return its statistics."""
        record = self.stats(session)
        if session.closed:
            return record
        session.closed = True
        self.sessions.pop(id(session), None)
        pending, session.pending = session.pending, None
        if pending is not None:  # the keys an unanswered offer replaced go too
            for stream, _a, _b, _inactive in pending.saved:
                stream.a.commit()
                stream.b.commit()
        for stream in session.streams:
            self._release(stream)
        return record

    def stats(self, session: MediaSession) -> dict[str, Any]:
        """Per stream and leg: packets, bytes, drops by reason, loss, jitter."""
        return {
            "streams": [
                {"index": s.index, "a": s.a.stats(), "b": s.b.stats()}
                for s in session.streams if not s.rejected
            ],
            "srtp_auth_failures": session.auth_failures,
        }

    def _release(self, stream: Stream) -> None:
        for ep in (stream.a, stream.b):
            if ep.port:
                self.ports.release(ep)
                ep.port = 0
            ep.close()
        stream.rejected = True

    # -- timers ----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        return self._sweep_at if self.sessions else None

    def handle_timer(self, now: float) -> list[MediaEvent]:
        """The sweep: sessions idle past the inactivity timeout or past the maximum duration,
        and SRTP authentication failure storms."""
        if self._sweep_at is None or now < self._sweep_at:
            return []
        self._sweep_at = now + SWEEP_INTERVAL if self.sessions else None
        s = self.settings
        events: list[MediaEvent] = []
        for session in list(self.sessions.values()):
            if session.auth_failures >= s.auth_alarm and not session.auth_alarmed:
                session.auth_alarmed = True
                sources: dict[str, int] = {}
                for ep in session.endpoints():
                    for host, count in (ep.auth_sources or {}).items():
                        sources[host] = sources.get(host, 0) + count
                events.append(MediaEvent("srtp_auth_failures", session.key,
                                         {"count": session.auth_failures, "sources": sources}))
            if session.answered_at is None or session.timed_out:
                continue
            if (s.max_call_duration is not None
                    and now - session.answered_at >= s.max_call_duration):
                events.append(MediaEvent("duration", session.key,
                                         {"seconds": round(now - session.answered_at)}))
                session.timed_out = True
                continue
            if s.inactivity_timeout > 0 and _expects_media(session):
                idle = now - max(session.last_activity(), session.answered_at)
                if idle >= s.inactivity_timeout:
                    events.append(MediaEvent("inactive", session.key, {"idle": round(idle, 1)}))
                    session.timed_out = True  # reported once; the B2BUA ends the call
        for event in events:
            self._count(f"media.event.{event.kind}")
        return events

    # -- offer/answer ----------------------------------------------------------------------

    def offer(self, session: MediaSession, from_leg: str, sdp: SessionDescription,
              body: bytes, now: float) -> SessionDescription:
        """``sdp`` (raw ``body``) is an offer from ``from_leg``: check it against that leg's
        policy, allocate endpoints for new streams, install the offerer's keys, and return
        the offer for the other leg.  Raises :class:`MediaRefused` (nothing changed then).

        The offer stays pending until :meth:`answer` settles it with a final answer, or
        :meth:`offer_failed` undoes it; until then what it replaced (the offerer's address and
        key, the SRTP contexts of a plain re-offer, the streams it refuses) is kept."""
        to_leg = "b" if from_leg == "a" else "a"
        cached = session.last_offer.get(from_leg)
        if cached is not None and cached[0] == body and session.offer_from == from_leg:
            return parse_sdp(cached[1])  # the same offer again (a retransmission relayed)
        plans = [self._plan_offer(session, from_leg, to_leg, i, m)
                 for i, m in enumerate(sdp.media)]
        if sdp.media and all(p is None for p in plans) and any(
            _refusable(m) for m in sdp.media
        ):
            raise self._refusal(session, from_leg, sdp)
        if session.pending is not None:
            # An offer crossing one still unanswered: the B2BUA answers such an offer 491 or 500
            # itself (RFC 3311 5.2); should one reach here, the earlier one is kept from here
            # on, and the new one can be undone.
            self._settle(session, now)
        out = sdp.copy()
        _strip_session(out)
        interface = session.legs[to_leg].interface
        address = self.settings.interfaces[interface].public
        out.set_connection_address(address)
        pending = session.pending = self._checkpoint(session, from_leg)
        try:
            for i, (m_in, m_out, chosen) in enumerate(zip(sdp.media, out.media, plans,
                                                          strict=True)):
                stream = session.streams[i] if i < len(session.streams) else None
                if chosen is None:
                    _reject_media(m_out)
                    if stream is not None and not stream.rejected:
                        pending.refused.append(stream)  # it carries media until the answer
                    continue
                if stream is None or stream.rejected:
                    stream = self._new_stream(session, i)
                    pending.added.append(stream)
                self._apply_offer(session, stream, from_leg, to_leg, m_in, m_out, chosen, now)
        except MediaRefused:
            self._rollback(session)  # e.g. no ports for a later stream: nothing changed
            raise
        while len(session.streams) < len(sdp.media):  # trailing lines refused (port 0)
            session.streams.append(_placeholder(session, len(session.streams)))
        session.offer_from = from_leg
        session.last_answer.pop(to_leg, None)  # a cached answer answered an earlier offer
        result = out.to_bytes()
        session.last_offer[from_leg] = (body, result)
        self._count("media.offer")
        return out

    def answer(self, session: MediaSession, from_leg: str, sdp: SessionDescription,
               body: bytes, now: float, *, provisional: bool = False) -> SessionDescription:
        """``sdp`` answers the offer the SBC sent to ``from_leg``: install that leg's address
        and keys, and return the answer for the offerer.  The same answer again (a 183 then
        the 200, a retransmitted 2xx) gives the same SDP, keys included.  Raises
        :class:`MediaRefused` when the answer breaks that leg's policy, :class:`SdpError` when
        it does not answer the offer.

        A final answer settles the offer (what it replaced is released, a replaced key's grace
        starts); a ``provisional`` one (in an unreliable 18x) is applied but the offer can still
        fail (RFC 3261 14.1: a non-2xx final to a re-INVITE leaves the session unchanged)."""
        cached = session.last_answer.get(from_leg)
        if cached is not None and cached[0] == body:
            pending = session.pending
            if not provisional and (pending is None or pending.from_leg != from_leg):
                self._settle(session, now)
            return parse_sdp(cached[1])
        offerer = "b" if from_leg == "a" else "a"
        if session.offer_from != offerer:
            raise SdpError("an answer without an offer in progress")
        if len(sdp.media) != len(session.streams):
            raise SdpError("the answer does not have one m= line per offered stream")
        out = sdp.copy()
        _strip_session(out)
        interface = session.legs[offerer].interface
        out.set_connection_address(self.settings.interfaces[interface].public)
        pending = session.pending
        if pending is not None:
            pending.unanswered.clear()  # a 200 may accept what its 183 refused
        for stream, m_in, m_out in zip(session.streams, sdp.media, out.media, strict=True):
            if stream.rejected or (pending is not None and stream in pending.refused):
                _reject_media(m_out)
                continue
            if m_in.port == 0:
                _reject_media(m_out)
                if pending is None:
                    self._release(stream)
                else:
                    pending.unanswered.append(stream)
                continue
            self._apply_answer(session, stream, from_leg, offerer, m_in, m_out, now)
        result = out.to_bytes()
        session.last_answer[from_leg] = (body, result)
        self._count("media.answer")
        if not provisional or pending is None:
            self._settle(session, now)
        return out

    def offer_failed(self, session: MediaSession, from_leg: str) -> bool:
        """The offer ``from_leg`` made got no accepted answer (a non-2xx final, an answer the
        policy refused, a CANCEL, a timeout, an ACK without the answer): the session goes back
        to what it was before it (RFC 3264 8, RFC 3261 14.1), both legs' endpoints of every
        stream included, and the streams it added are released.  Whether anything was undone:
        nothing is once a final answer settled the offer, or when the pending one is the other
        leg's."""
        pending = session.pending
        if session.closed or pending is None or pending.from_leg != from_leg:
            return False
        self._rollback(session)
        session.offer_from = None  # a late answer answers nothing now
        session.last_offer.pop(from_leg, None)
        session.last_answer.pop("b" if from_leg == "a" else "a", None)
        self._count("media.offer_failed")
        return True

    def answered(self, session: MediaSession, now: float) -> None:
        """The call is answered (its 2xx): inactivity and duration count from here."""
        if session.answered_at is None:
            session.answered_at = now

    # -- the offer in progress: settle or undo ---------------------------------------------

    @staticmethod
    def _checkpoint(session: MediaSession, from_leg: str) -> _PendingOffer:
        """The undo record of an offer about to be applied; every live endpoint is marked."""
        pending = _PendingOffer(from_leg, list(session.streams))
        for stream in session.streams:
            if stream.rejected:
                continue
            pending.saved.append((stream, _copy_state(stream.state["a"]),
                                  _copy_state(stream.state["b"]), stream.inactive))
            stream.a.mark()
            stream.b.mark()
        return pending

    def _settle(self, session: MediaSession, now: float) -> None:
        """The offer in progress was answered: what it replaced is let go (marks committed,
        plain re-offer keys closed, refused streams released), and each replaced inbound key
        keeps decrypting for the grace from ``now`` (packets in flight)."""
        pending, session.pending = session.pending, None
        if pending is not None:
            for stream, _a, _b, _inactive in pending.saved:
                stream.a.commit()
                stream.b.commit()
            for ep in pending.plain:
                ep.close()
            for stream in (*pending.refused, *pending.unanswered):
                self._release(stream)
        for stream in session.streams:
            if stream.rejected:
                continue
            for leg in LEGS:
                state = stream.state[leg]
                if state.grace_pending:
                    # RFC 4568 7.1.4: a re-keying peer uses its old key until it has the
                    # answer, so the grace for packets in flight counts from here.
                    state.grace_pending = False
                    stream.endpoint(leg).start_grace(now + self.settings.rekey_grace)

    def _rollback(self, session: MediaSession) -> None:
        """Undo the offer in progress: the streams it added released, every other stream's
        endpoints, negotiation and a=inactive as they were, the ones it refused kept."""
        pending, session.pending = session.pending, None
        if pending is None:
            return
        for stream in pending.added:
            self._release(stream)
        session.streams[:] = pending.streams
        for stream, a, b, inactive in pending.saved:
            stream.state["a"], stream.state["b"] = a, b
            stream.inactive = inactive
            stream.a.rollback()
            stream.b.rollback()

    # -- offer details ---------------------------------------------------------------------

    def _plan_offer(self, session: MediaSession, from_leg: str, to_leg: str, index: int,
                    m: MediaDescription) -> CryptoAttribute | bool | None:
        """What to do with the offered stream: ``None`` refuse it (port 0), ``False`` accept
        it as plain RTP, a :class:`CryptoAttribute` accept it with that SDES crypto."""
        if m.rejected or not _refusable(m):
            return None
        policy = session.legs[from_leg]
        proto = m.proto.upper()
        savp = "SAVP" in proto
        offered = m.crypto
        chosen: CryptoAttribute | None = None
        if offered and policy.srtp != "none" and (
            policy.secure or self.settings.allow_insecure_sdes
        ):
            chosen, _reason = srtp.choose_crypto(offered, self.settings.allowed_suites())
        if policy.srtp == "require" and chosen is None:
            return None
        if savp and chosen is None:
            return None  # an SRTP-only stream the SBC cannot (or may not) decrypt
        to_policy = session.legs[to_leg]
        if to_policy.srtp == "require" and not (
            to_policy.secure or self.settings.allow_insecure_sdes
        ):
            return None  # the other leg needs keys it may not be sent
        return chosen if chosen is not None else False

    def _refusal(self, session: MediaSession, from_leg: str,
                 sdp: SessionDescription) -> MediaRefused:
        """Why no stream of the offer was accepted, as the 488 to send."""
        policy = session.legs[from_leg]
        to_policy = session.legs["b" if from_leg == "a" else "a"]
        allowed = self.settings.allowed_suites()
        insecure_ok = self.settings.allow_insecure_sdes
        for m in sdp.media:
            if not _refusable(m):
                continue
            offered = m.crypto
            if to_policy.srtp == "require" and not (to_policy.secure or insecure_ok):
                self._count("media.refused.sdes_insecure")
                return MediaRefused("the other leg requires SRTP over insecure signalling")
            if offered and policy.srtp != "none" and not (policy.secure or insecure_ok):
                self._count("media.refused.sdes_insecure")
                return MediaRefused("SDES keys over an unencrypted signalling transport",
                                    security=True)
            if policy.srtp == "require" and not offered:
                self._count("media.refused.unencrypted")
                return MediaRefused("SRTP is required: the offer has no a=crypto",
                                    security=True)
            if offered and policy.srtp != "none":
                _chosen, reason = srtp.choose_crypto(offered, allowed)
                self._count("media.refused.crypto")
                return MediaRefused(reason, security=True)
            if "SAVP" in m.proto.upper():
                self._count("media.refused.srtp_not_allowed")
                return MediaRefused("SRTP is not used on this interface")
        self._count("media.refused.no_stream")
        return MediaRefused("no acceptable media stream")

    def _new_stream(self, session: MediaSession, index: int) -> Stream:
        a = self.endpoint_type(session.legs["a"].interface, session)
        b = self.endpoint_type(session.legs["b"].interface, session)
        a.other, b.other = b, a
        for ep, leg in ((a, "a"), (b, "b")):
            ep.max_pps = self.settings.max_pps
            ep.trusted_host = session.legs[leg].peer_host
            ep.last_rx = session.created_at
        stream = Stream(index, a, b, {"a": _LegState(), "b": _LegState()})
        for ep in (a, b):
            port = self.ports.allocate(ep.interface, ep)
            if port is None:
                self._release(stream)
                self._count("media.refused.ports")
                raise MediaRefused("no free media ports", 503)
            ep.port = port
        if index < len(session.streams):
            session.streams[index] = stream
        else:
            while len(session.streams) < index:  # earlier refused lines keep their place
                session.streams.append(_placeholder(session, len(session.streams)))
            session.streams.append(stream)
        return stream

    def _apply_offer(self, session: MediaSession, stream: Stream, from_leg: str, to_leg: str,
                     m_in: MediaDescription, m_out: MediaDescription,
                     chosen: CryptoAttribute | bool, now: float) -> None:
        src = stream.state[from_leg]
        dst = stream.state[to_leg]
        src_ep = stream.endpoint(from_leg)
        dst_ep = stream.endpoint(to_leg)
        src.proto = m_in.proto
        src.offered_mux = m_in.rtcp_mux
        stream.inactive = m_in.direction == "inactive"
        # The offerer's side: its address now (media to it may start before the answer, e.g.
        # early media), its key for what it sends; the SBC's key for it goes in the answer.
        rtp, rtcp = _addresses(m_in)
        src_ep.signal(rtp, rtcp, m_in.rtcp_mux)
        _set_clock(src_ep, m_in)
        if isinstance(chosen, CryptoAttribute):
            self._install_their_key(src_ep, src, chosen, now, deferred=True)
        elif src_ep.saved is not None and session.pending is not None:
            # A plain re-offer: the offerer sends SRTP until it has the answer, and if the
            # offer fails its keys are in force again; they are closed when it is settled.
            _set_plain(src)
            session.pending.plain.append(src_ep)
        else:
            self._plain(src_ep, src)
        # The other leg's offer: the SBC's endpoint there, its own keys, that leg's profile.
        to_policy = session.legs[to_leg]
        want_srtp = to_policy.srtp == "require" or (
            to_policy.srtp == "optional" and isinstance(chosen, CryptoAttribute)
            and (to_policy.secure or self.settings.allow_insecure_sdes)
        )
        feedback = m_in.proto.upper().endswith("F")
        if want_srtp:
            dst.proto = "RTP/SAVPF" if feedback else "RTP/SAVP"
            if not dst.offered or not dst.srtp:
                dst.offered = srtp.offer_cryptos(self.settings.allowed_suites(), self.random)
            offer_keys = dst.offered
        else:
            dst.proto = "RTP/AVPF" if feedback else "RTP/AVP"
            dst.offered = []
            offer_keys = []
        dst.offered_mux = m_in.rtcp_mux
        _rewrite(m_out, dst_ep, dst.proto, offer_keys, mux=m_in.rtcp_mux)

    def _apply_answer(self, session: MediaSession, stream: Stream, from_leg: str, offerer: str,
                      m_in: MediaDescription, m_out: MediaDescription, now: float) -> None:
        ans = stream.state[from_leg]
        off = stream.state[offerer]
        ans_ep = stream.endpoint(from_leg)
        off_ep = stream.endpoint(offerer)
        rtp, rtcp = _addresses(m_in)
        mux = m_in.rtcp_mux and ans.offered_mux
        stream.inactive = stream.inactive or m_in.direction == "inactive"
        ans_ep.signal(rtp, rtcp, mux)
        _set_clock(ans_ep, m_in)
        _set_clock(off_ep, m_in)
        if ans.offered:
            picked = _answered_crypto(m_in.crypto, ans.offered)
            if picked is None:
                if session.legs[from_leg].srtp == "require" or "SAVP" in m_in.proto.upper():
                    self._count("media.refused.answer_crypto")
                    raise MediaRefused("the answer has no usable a=crypto for the offered keys",
                                       security=True)
                ans.offered = []
                self._plain(ans_ep, ans)
            else:
                ours, theirs = picked
                self._install_our_key(ans_ep, ans, ours)
                self._install_their_key(ans_ep, ans, theirs, now,
                                        deferred=session.pending is not None)
        else:
            self._plain(ans_ep, ans)
        # The answer to the offerer: its own profile, the SBC's key for it.
        answer_keys: list[CryptoAttribute] = []
        if off.srtp and off.their_key is not None:
            if off.our_key is None or off.our_key.tag != off.their_key.tag or (
                off.our_key.suite != off.their_key.suite
            ):
                self._install_our_key(off_ep, off,
                                      srtp.answer_crypto(off.their_key, self.random))
            assert off.our_key is not None
            answer_keys = [off.our_key]
        _rewrite(m_out, off_ep, off.proto, answer_keys, mux=off.offered_mux)
        off_ep.set_mux(off.offered_mux)

    # -- keys ------------------------------------------------------------------------------

    def _install_their_key(self, ep: Endpoint, state: _LegState, crypto: CryptoAttribute,
                           now: float, *, deferred: bool) -> None:
        """``crypto`` is what the leg encrypts with: the endpoint's inbound context.  A new key
        keeps the ROC of the SSRCs already seen and keeps the old key for a grace period; the
        SBC then re-keys its own direction too (fresh key per re-key).  ``deferred``: an offer
        is in progress, so the grace starts when it is settled (:meth:`_settle`)."""
        old = state.their_key
        if old is not None and old.suite == crypto.suite and old.key_salt == crypto.key_salt:
            state.srtp = True
            return
        # An offerer keeps its old key until it has the answer, and an offer that fails
        # brings the old key back: until then the old key has no end.
        until = math.inf if deferred else now + self.settings.rekey_grace
        if ep.install_rx(crypto, until):
            self._count("media.rekey")
            state.grace_pending = deferred
        rekey = state.their_key is not None
        state.their_key = crypto
        state.srtp = True
        if rekey and state.our_key is not None:
            state.our_key = None  # a fresh SBC key for this leg goes in the answer

    @staticmethod
    def _install_our_key(ep: Endpoint, state: _LegState, crypto: CryptoAttribute) -> None:
        old = state.our_key
        if old is not None and old.suite == crypto.suite and old.key_salt == crypto.key_salt:
            return
        ep.install_tx(crypto)
        state.our_key = crypto
        state.srtp = True

    @staticmethod
    def _plain(ep: Endpoint, state: _LegState) -> None:
        ep.close()
        _set_plain(state)


# -- helpers -------------------------------------------------------------------------------


def _refusable(m: MediaDescription) -> bool:
    """An RTP stream over UDP the relay can carry (not a rejected line, T.38, TCP, DTLS)."""
    return m.port != 0 and m.proto.upper() in RTP_PROFILES


def _reject_media(m: MediaDescription) -> None:
    """Port 0 (RFC 3264 6), keeping the formats; nothing of the far side's addresses."""
    m.set_port(0)
    m.remove_attributes_named(_DROPPED)


def _strip_session(sdp: SessionDescription) -> None:
    """Session-level ICE and DTLS attributes (RFC 8839 5.4, RFC 8122 5) do not cross either."""
    sdp.remove_attributes_named(_DROPPED)


def _set_plain(state: _LegState) -> None:
    state.srtp = False
    state.grace_pending = False
    state.their_key = state.our_key = None


def _copy_state(state: _LegState) -> _LegState:
    return dataclasses.replace(state, offered=list(state.offered))


def _placeholder(session: MediaSession, index: int) -> Stream:
    a = Endpoint(session.legs["a"].interface)
    b = Endpoint(session.legs["b"].interface)
    return Stream(index, a, b, {"a": _LegState(), "b": _LegState()}, rejected=True)


def _addresses(m: MediaDescription) -> tuple[Address | None, Address | None]:
    """The RTP and RTCP addresses ``m`` signals; ``None`` for an unspecified address (hold
    with 0.0.0.0, RFC 3264 8.4) or a name the relay does not resolve."""
    connection = m.resolved_connection
    if connection is None or m.port == 0:
        return None, None
    host = connection.address.split("/")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None, None
    if ip.is_unspecified or ip.is_multicast:
        return None, None
    rtp = (str(ip), m.port)
    rtcp_attr = m.rtcp
    if rtcp_attr is None:
        rtcp = (str(ip), m.port + 1)  # RFC 3550 11
    else:
        rtcp_host = str(ip)
        if rtcp_attr.address is not None:
            with contextlib.suppress(ValueError):
                rtcp_host = str(ipaddress.ip_address(rtcp_attr.address))
        rtcp = (rtcp_host, rtcp_attr.port)
    return rtp, rtcp


def _set_clock(ep: Endpoint, m: MediaDescription) -> None:
    """The RTP clock of the first format (for jitter in ms); 8000 Hz when unknown."""
    for pt in m.payload_types[:1]:
        rtpmap = m.rtpmap(pt)
        if rtpmap is not None and rtpmap.clock_rate > 0:
            ep.set_clock(rtpmap.clock_rate)
        elif pt == 9:  # G.722's RTP clock is 8000 Hz although it samples at 16 kHz
            ep.set_clock(8000)


def _rewrite(m: MediaDescription, ep: Endpoint, proto: str, keys: Sequence[CryptoAttribute],
             *, mux: bool) -> None:
    """``m`` as the SBC's own stream on ``ep``'s leg."""
    # Every c= line (session and media level) was pointed at ``address`` by the caller.
    m._set_media_line(dataclasses.replace(m.media_line, proto=proto, port=ep.port,
                                          port_count=None))
    m.remove_attributes_named(_DROPPED)
    added = [Attribute("rtcp", str(ep.port + 1))]  # RFC 3605
    if mux:
        added.append(Attribute("rtcp-mux"))  # RFC 5761
    added.extend(Attribute("crypto", key.to_str()) for key in keys)
    m.extend_attributes(added)


def _answered_crypto(answered: Sequence[CryptoAttribute], offered: Sequence[CryptoAttribute]
                     ) -> tuple[CryptoAttribute, CryptoAttribute] | None:
    """(the SBC's offered crypto the answer accepted, the answerer's own), RFC 4568 5.1.2:
    one line, with the tag and suite of an offered one."""
    for theirs in answered:
        for ours in offered:
            if (ours.tag == theirs.tag and ours.suite == theirs.suite and theirs.suite_known
                    and theirs.key_params and theirs.key_params[0].mki is None):
                return ours, theirs
    return None


def _expects_media(session: MediaSession) -> bool:
    """Whether silence means trouble: not when every stream is on hold both ways."""
    for stream in session.streams:
        if not stream.rejected and not stream.inactive and (
            stream.a.signalled_rtp or stream.b.signalled_rtp
        ):
            return True
    return False
