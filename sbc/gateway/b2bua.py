"""The B2BUA: calls both ways between the outside and the PBX, registration relay, sans-I/O.

Theory of operation
-------------------
A :class:`B2BUA` is the SBC's transaction user (RFC 3261 6: a back-to-back user agent).  It
owns two :class:`~sbc.sip.transaction.TransactionLayer` objects, one per interface
(``"external"``: the internet, ``"internal"``: the PBX), a :class:`~sbc.gateway.registrar.
Registrar`, and a table of :class:`Call` objects.  Inputs are :meth:`B2BUA.receive` (a parsed
message, the :class:`Origin` it came from, ``now``), :meth:`B2BUA.handle_timer`,
:meth:`B2BUA.send_failed` (the edge could not deliver a command) and :meth:`B2BUA.flow_closed`
(a connection went away); outputs are :class:`Send` commands, pulled with
:meth:`B2BUA.commands`, and one deadline, :meth:`B2BUA.get_timer`.  Nothing here reads a clock,
opens a socket or draws randomness: the :class:`~sbc.ids.IdSource` is injected.

Legs and peers
~~~~~~~~~~~~~~
A call has an A-leg (whoever sent the INVITE; the SBC is its UAS) and a B-leg (the SBC is its
UAC).  Each leg has a *peer*, an :class:`Origin` naming the interface, transport and address
every message of that leg goes to: for the caller, the address its INVITE came from (RFC 3581
symmetric response, and so a phone behind NAT is reached); for the PBX, the configured PBX
address; for a registered user, the flow its REGISTER came on (RFC 5626 5.3: never another
connection).  A call from a phone goes external -> internal, a call from the PBX to a registered
user internal -> external; the code is the same.

Admission
~~~~~~~~~
* External requests that open something (an INVITE outside a call) are accepted from a source
  that holds a live registration on that very flow, from a source address the edge found
  registered in the shared store (``registered_elsewhere``: any node, any flow from that IP; see
  below), from a configured trunk (source CIDR,
  transport and, over TLS, the client certificate's names), or, when
  ``unknown_source == "allow"``, from anyone; otherwise they are refused with 403 or dropped
  silently (``"reject"``/``"drop"``).  REGISTER is accepted from anyone: the PBX authenticates
  it.  OPTIONS outside a call is answered by the SBC itself (it is the only thing the outside
  can see).
* Internal requests are accepted from the PBX's address only; anything else on the internal
  interface gets the same treatment as an unknown external source.
* Registrations on other nodes: the B2BUA does no I/O, so it cannot ask the shared store.  The
  registrar reports every binding that becomes live or goes away (:attr:`B2BUA.binding_changes`)
  for the edge to publish, and :meth:`B2BUA.registration_matters` tells the edge which requests
  are worth a look-up; the edge then hands the request in with ``registered_elsewhere=True``
  when a live binding from the same source IP exists on any node.  Only an external request
  outside a dialog uses that flag, and only where a local registration would have admitted it.

What crosses between legs
~~~~~~~~~~~~~~~~~~~~~~~~~
Every message a leg carries is built here for that leg.  What crosses from the other leg goes
through :mod:`sbc.gateway.topology` only: the end-to-end headers of
:func:`~sbc.gateway.topology.crossing_headers` (with the option tags this B2BUA cannot carry end
to end, such as ``100rel`` and ``replaces``, removed from Supported and Require), the SDP with
the SBC's own ``o=`` line, ``s=-`` and no session-level ``i=``/``u=``/``e=``/``p=``
(:func:`~sbc.gateway.topology.hide_sdp_body`), and, inside a call, a few harmless body types
(DTMF relay, plain text).  Reason phrases are not copied (the standard phrase is written), nor
are Via, Contact, Record-Route, Call-ID, tags, CSeq, Server or User-Agent.  Each leg's Contact
is the SBC's own address on that leg's interface and transport.

Media
~~~~~
With a :class:`~sbc.media.relay.MediaManager` (always, in ``sbc run``), every INVITE gets a
media session before any transaction is created, and every SDP that crosses is an offer or an
answer given to the relay, which returns it rewritten for the other leg: the SBC's own relay
ports and addresses, its own SDES keys per leg, the leg's profile (RFC 3264 roles: the INVITE's
body offers and the responses answer, or the 2xx offers and the ACK answers; the same for
re-INVITE and UPDATE).  An offer the media policy refuses gets 488 (503 when the relay is out of
ports or sessions) with a ``Warning`` before anything is sent on; a refused answer fails the call
like an unreadable one.  An SDP that is neither offer nor answer does not cross.  The relay's
inactivity and duration limits end a confirmed call with a BYE (with a ``Reason``) on both
legs.  Each call that ends leaves a record (:attr:`B2BUA.records`) with its media statistics, and
policy refusals and SRTP authentication storms are security events (:attr:`B2BUA.events`).

Calls
~~~~~
* An initial INVITE: :func:`~sbc.sip.message.check_request` (416, 420, 483), 482 for a merged
  request (RFC 3261 8.2.2.2), 400 without exactly one SIP Contact, 488 for an SDP offer that
  does not parse, 100 Trying, and a fresh B-leg INVITE (new Call-ID, From tag and branch;
  Max-Forwards decremented per RFC 3261 16.6 step 3, so 1 is forwarded as 0 and only 0 is
  answered 483).  From the outside it goes to the PBX; from the PBX, a Request-URI whose user is
  a registration token goes to that user's flow (404 for an unknown token, 480 when the
  registration lapsed or its connection is gone), a number covered by a trunk route
  (:class:`TrunkRoute`, longest prefix) to that trunk, anything else is 404.
* The B-leg's responses are relayed on the A-leg with the SBC's own To tag (one per call) and
  Contact; a non-2xx final is ACKed by the B-leg transaction and its A-leg copy's ACK absorbed
  by the A-leg transaction; a 2xx confirms both dialogs, and the B-leg 2xx is ACKed end to end
  **when the A-leg ACK arrives** (so an SDP answer in the ACK can be relayed).  A retransmitted
  B-leg 2xx is relayed again before that ACK (that is how the A-leg 2xx is retransmitted, RFC
  3261 13.3.1.4, when the B-leg is unreliable) and answered with the same B-leg ACK after it.
  When the B-leg is reliable and the A-leg is not, the B-leg never retransmits, so the SBC
  retransmits the A-leg 2xx itself (T1, doubling up to T2) until the ACK.  If the caller never
  ACKs (Timer L), the B-leg is ACKed and both legs get a BYE (RFC 3261 13.3.1.4); a BYE from
  the caller before its ACK ACKs the B-leg first.  A 2xx whose SDP does not parse is refused
  with 502 on the A-leg, ACKed and hung up on the B-leg.  The 2xx of a relayed re-INVITE to
  an unreliable sender is retransmitted by the SBC itself (T1 doubling to T2) until its ACK;
  the other side's retransmissions of it are not relayed.  A re-INVITE 2xx never ACKed by
  Timer L ends the call: the other side's 2xx is ACKed and both legs get a BYE.
* CANCEL of a pending INVITE: 200 to the CANCEL, a CANCEL on the B-leg built from the B-leg
  INVITE (RFC 3261 9.1; held until the B-leg has a provisional response), and the B-leg's final
  (normally 487) relayed.  If the B-leg sends no final within 64*T1 of the CANCEL, the A-leg
  gets 487 anyway.
* BYE from either side of a confirmed call: 200 to it, a BYE on the other leg, the call
  forgotten once that BYE has its final response or times out; a re-INVITE still pending on the
  leg that hung up is answered 487.
* REFER and SUBSCRIBE inside a call get 405 (their URIs and dialog ids belong to one leg),
  PRACK 481 (reliable provisionals are never offered).  Any other request inside a call
  (re-INVITE for hold/resume, UPDATE, INFO, OPTIONS, MESSAGE, NOTIFY...) is relayed on the
  other leg as a request of that leg's dialog (its own CSeq, Contact, route set), and its
  responses come back the same way; a re-INVITE's 2xx is ACKed end to end when the
  sender's ACK arrives, like the initial one.  A re-INVITE while another is pending, or before
  the call is confirmed, gets 491 (RFC 3261 14.2).  With the media relay, an offer (re-INVITE
  or UPDATE with SDP) while an offer is unanswered gets 491 when the other side made that
  offer (glare) and 500 with a Retry-After of 0-10 s when the sender did (RFC 3311 5.2); it is
  not relayed.  CSeq out of order gets 500 and a request outside a known dialog 481 (RFC 3261
  12.2.2).
* While the call rings, the B-leg's first provisional with a To tag and its A-leg copy make
  early dialogs on both legs: UPDATE (a connected-line update without SDP, RFC 3311) and INFO
  (RFC 6086) cross between them; anything else there gets 481 (491 for an INVITE).  At the
  answer the confirmed dialogs take over the early ones' CSeq numbers.
* 408 on the A-leg when the B-leg INVITE times out (Timer B); 503 when the transport towards the
  PBX or a trunk fails, 480 when the flow towards a registered user does (RFC 3261 8.1.3.1, RFC
  5626 5.3).  A connection that closes fails the requests still waiting on it at once
  (:meth:`B2BUA.flow_closed`).

Registration relay
~~~~~~~~~~~~~~~~~~
A REGISTER from the outside is relayed to the PBX through the :class:`~sbc.gateway.registrar.
Registrar`: each Contact is replaced by an SBC address on the internal interface whose user is
an opaque token for that binding and flow; Expires are bounded per side
(:class:`~sbc.gateway.registrar.RegistrationPolicy`).  The Request-URI, From, To, CSeq and the
credentials pass unchanged, so the PBX's digest authentication (its 401/407 and the client's
answer) works end to end; the Call-ID is a keyed hash of the client's, stable across the
client's refreshes.  The PBX's final answer goes back with the client's own Contacts and the
client-side expiry; a refresh that changes nothing is answered locally (registration caching).
Failed authentications are counted per source and username by the registrar.  Registrations are
swept every :data:`SWEEP_INTERVAL` seconds; an expired one is not unregistered at the PBX (it
lapses there on its own; until then its token answers 480).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import heapq
import ipaddress
import re
from collections import deque
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Literal

from sbc.errors import SdpError, SipParseError
from sbc.gateway.registrar import (
    AuthFailures,
    Delivery,
    RegisterOutcome,
    RegisterRejected,
    Registrar,
    RegistrationPolicy,
)
from sbc.gateway.stateless import stamp_received
from sbc.gateway.topology import crossing_headers, hide_sdp_body
from sbc.ids import IdSource
from sbc.media.relay import LegPolicy, MediaManager, MediaRefused, MediaSession
from sbc.media.sdp import SessionDescription, parse_sdp
from sbc.policy.model import (
    AuthFailed,
    CallEnded,
    CallTick,
    PolicyEvent,
    ResponseSent,
    SrtpFailed,
)
from sbc.sip.dialog import Dialog, DialogError, DialogState, initial_request
from sbc.sip.headers import Headers, NameAddr, canonical_name
from sbc.sip.message import (
    REASON_PHRASES,
    Request,
    Response,
    build_response,
    check_request,
)
from sbc.sip.transaction import (
    DEFAULT_TIMERS,
    AckReceived,
    ClientTransaction,
    Event,
    ResponseReceived,
    ServerTransaction,
    Terminated,
    TimedOut,
    TimerSettings,
    Transaction,
    TransactionLayer,
    TransportFailed,
)
from sbc.sip.uri import SipUri, TelUri, parse_uri

EXTERNAL = "external"
INTERNAL = "internal"
RELIABLE_TRANSPORTS = frozenset({"tcp", "tls", "sctp", "ws", "wss"})  # RFC 3261 18: no retransmits
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE"
ACCEPT = "application/sdp"
SDP_USERNAME = "-"  # RFC 8866 5.2: "-" when the host does not support user ids
SWEEP_INTERVAL = 5.0  # seconds between registration expiry sweeps
# Methods RFC 3261 and its extensions define: out of a call they get 405, others 501 (8.2.1).
KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK",
    "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
})
# Requests that open a subscription inside a call carry URIs and dialog ids of one leg (Refer-To,
# Replaces, event packages): relayed as they are, they would break or leak, so they get 405 until
# the B2BUA translates them.
NOT_RELAYED_IN_DIALOG = frozenset({"REFER", "SUBSCRIBE"})
RELAYED_IN_EARLY_DIALOG = frozenset({"UPDATE", "INFO"})  # RFC 3311 5.1, RFC 6086 4.2
# Option tags whose meaning is tied to one hop or one dialog's identifiers: a B2BUA relaying the
# header unchanged would promise what it cannot keep (reliable provisionals, Replaces of a dialog
# id only one leg knows, GRUUs, outbound flows, Path).  They are removed from what crosses.
# Final responses sent outside that the rule engine hears about (extension enumeration,
# password guessing): no such user, forbidden, credentials needed or refused.
POLICY_STATUSES = frozenset({401, 403, 404, 407, 484})
LEG_BOUND_OPTION_TAGS = frozenset({"100rel", "replaces", "gruu", "outbound", "path", "join"})
# Bodies that may cross inside a call besides SDP: they carry no addresses.
CROSSING_BODY_TYPES = frozenset({
    "application/dtmf-relay", "application/dtmf", "text/plain",
    "application/media_control+xml",
})

Address = tuple[str, int]
UnknownSourcePolicy = Literal["reject", "drop", "allow"]


@dataclass(frozen=True, slots=True)
class SipAddress:
    """Where a SIP element listens: host, port and transport (``udp``, ``tcp``, ``tls``)."""

    host: str
    port: int
    transport: str = "udp"

    @property
    def reliable(self) -> bool:
        return self.transport.lower() in RELIABLE_TRANSPORTS

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def via(self, branch: str) -> str:
        """A Via value with this address as sent-by (RFC 3261 18.1.1)."""
        host = _uri_host(self.host)
        return f"SIP/2.0/{self.transport.upper()} {host}:{self.port};branch={branch}"

    def contact(self, user: str | None = None) -> str:
        """A Contact value pointing at this address."""
        transport = "" if self.transport.lower() == "udp" else f";transport={self.transport}"
        userinfo = f"{user}@" if user else ""
        return f"<sip:{userinfo}{_uri_host(self.host)}:{self.port}{transport}>"


@dataclass(frozen=True, slots=True)
class Origin:
    """A peer: where a received message came from, or where a leg's messages go.  The
    interface, the transport and the address (host, port); for a TLS peer that presented a
    certificate, ``identity`` holds its names (SAN DNS/URI entries and CN), which are not part
    of its equality (the flow is the connection)."""

    interface: str
    transport: str
    host: str
    port: int
    identity: tuple[str, ...] = field(default=(), compare=False)

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    @property
    def reliable(self) -> bool:
        return self.transport.lower() in RELIABLE_TRANSPORTS


@dataclass(frozen=True, slots=True)
class Trunk:
    """A SIP trunk (carrier or partner) trusted to send calls in: recognised by source network,
    transport (``any`` or one) and, when ``tls_subject`` is set, a client certificate naming
    it."""

    name: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    transport: str = "any"
    tls_subject: str | None = None
    srtp: str | None = None  # the trunk's SRTP policy (None: the external default)

    def matches(self, origin: Origin) -> bool:
        if self.transport != "any" and origin.transport.lower() != self.transport:
            return False
        try:
            ip = ipaddress.ip_address(origin.host)
        except ValueError:
            return False
        if not any(ip in net for net in self.networks):
            return False
        return self.tls_subject is None or self.tls_subject in origin.identity


@dataclass(frozen=True, slots=True)
class TrunkRoute:
    """Calls from the PBX whose Request-URI user starts with ``prefix`` go to ``peer`` (an
    external :class:`Origin`), the trunk ``name``.  The longest matching prefix wins."""

    prefix: str
    peer: Origin
    name: str
    srtp: str | None = None  # the trunk's SRTP policy (None: the external default)


@dataclass(frozen=True, slots=True)
class B2buaSettings:
    """The SBC's addresses on each side (written into its Via and Contact; ``listeners`` lists
    the external ones per transport, ``external`` is the default), the PBX to send calls to,
    the domain of the From towards the PBX, the transaction timers, the option tags the SBC
    supports (a Require naming anything else is answered 420), registration bounds, the trunks
    and what to do with requests from unknown sources."""

    external: SipAddress
    internal: SipAddress
    pbx: SipAddress
    domain: str
    timers: TimerSettings = DEFAULT_TIMERS
    supported: frozenset[str] = frozenset()
    ring_timeout: float = 180.0  # RFC 3261 16.6 step 11, Timer C: more than 3 minutes
    listeners: tuple[SipAddress, ...] = ()
    internal_listeners: tuple[SipAddress, ...] = ()
    registration: RegistrationPolicy = field(default_factory=RegistrationPolicy)
    trunks: tuple[Trunk, ...] = ()
    routes: tuple[TrunkRoute, ...] = ()
    unknown_source: UnknownSourcePolicy = "reject"
    srtp_external: str = "require"  # media.srtp: the external legs' SRTP policy
    srtp_internal: str = "none"  # pbx.srtp: the PBX leg's

    def route(self, user: str) -> TrunkRoute | None:
        """The trunk route for a number: the longest matching prefix, or ``None``."""
        best: TrunkRoute | None = None
        for route in self.routes:
            if user.startswith(route.prefix) and (
                best is None or len(route.prefix) > len(best.prefix)
            ):
                best = route
        return best

    def own(self, interface: str, transport: str) -> SipAddress:
        """The SBC's address on ``interface`` for ``transport`` (the interface's default when
        it has no listener for that transport)."""
        t = transport.lower()
        default = self.internal if interface == INTERNAL else self.external
        for listener in self.internal_listeners if interface == INTERNAL else self.listeners:
            if listener.transport == t:
                return listener
        return default if default.transport == t else SipAddress(default.host, default.port, t)


@dataclass(frozen=True, slots=True)
class Send:
    """Command: serialize ``message`` and send it on ``interface`` over ``transport`` to
    ``destination``."""

    interface: str
    transport: str
    destination: Address
    message: Request | Response


Command = Send


class CallState(enum.Enum):
    """Where a call is: the B-leg INVITE pending, answered (2xx relayed, the A-leg ACK awaited),
    confirmed, or ending (a BYE is on its way on one leg)."""

    CALLING = "calling"
    ANSWERED = "answered"
    CONFIRMED = "confirmed"
    ENDING = "ending"
    ENDED = "ended"


@dataclass(eq=False, slots=True)
class Call:
    """One call: the A-leg (the caller, SBC as UAS) and the B-leg (the callee, SBC as UAC)."""

    a_invite: Request
    a_peer: Origin
    a_txn: ServerTransaction
    a_tag: str
    b_invite: Request
    b_peer: Origin
    b_txn: ClientTransaction | None = None
    a_dialog: Dialog | None = None
    b_dialog: Dialog | None = None
    b_ack: Request | None = None
    state: CallState = CallState.CALLING
    provisional: bool = False  # the B-leg INVITE has had a provisional (RFC 3261 9.1)
    cancel_pending: bool = False
    cancel_deadline: float | None = None
    a_final_sent: bool = False
    a_status: int | None = None  # the final status the caller got
    to_user: bool = False  # the B-leg goes to a registered user's flow (480 when it fails)
    ring_deadline: float | None = None  # Timer C: when the B-leg INVITE is given up
    # The A-leg 2xx retransmitted by the SBC itself (RFC 3261 13.3.1.4) when the A-leg is
    # unreliable but the B-leg is reliable (no retransmissions to relay): next time, interval.
    a_2xx: Response | None = None
    a_2xx_at: float | None = None
    a_2xx_every: float = 0.0
    reinvite: _Relay | None = None  # the re-INVITE in progress, either way
    # While it rings: the early dialogs of the B-leg's first provisional with a To tag and of
    # its A-leg copy, for UPDATE and INFO before the answer (RFC 3311, RFC 6086).
    a_early: Dialog | None = None
    b_early: Dialog | None = None
    relays: dict[int, _Relay] = field(default_factory=dict)  # in-dialog requests in progress
    # SDP origin per interface: session id, version, and the last body that crossed to it.
    sdp: dict[str, _SdpOrigin] = field(default_factory=dict)
    media: MediaSession | None = None  # the relay's session (None without a media manager)
    offer_in_invite: bool = False  # RFC 3264: the INVITE offered, so its responses answer
    created_at: float = 0.0
    answered_at: float | None = None
    end_reason: str | None = None
    recorded: bool = False
    account: str | None = None  # the caller's user (From), for the rule engine
    destination: str | None = None  # the number called (Request-URI user)
    trunk: str | None = None  # the trunk it came in from, or the trunk route it went out on

    @property
    def a_key(self) -> tuple[str, str, str]:
        return (self.a_peer.interface, self.a_invite.call_id, self.a_tag)

    @property
    def b_key(self) -> tuple[str, str, str]:
        return (self.b_peer.interface, self.b_invite.call_id, self.b_invite.from_.tag or "")


@dataclass(slots=True)
class _SdpOrigin:
    sess_id: str
    version: int = 0
    last: bytes | None = None


@dataclass(eq=False, slots=True)
class _Relay:
    """A request relayed from one side to the other outside the call's own INVITE: an
    in-dialog request (``call`` set), a REGISTER (``handle`` set) or an OPTIONS to a registered
    user.  ``server`` answers the sender, ``client`` carries ``out`` to ``target``."""

    source: Origin
    request: Request
    server: ServerTransaction
    target: Origin
    out: Request
    call: Call | None = None
    from_a: bool = False  # in a call: the sender is the A-leg peer
    handle: int | None = None
    to_tag: str | None = None
    to_user: bool = False  # the target is a registered user's flow
    client: ClientTransaction | None = None
    final_sent: bool = False
    provisional: bool = False
    cancelled: bool = False
    ack: Request | None = None  # a re-INVITE's 2xx: the ACK sent on the other leg
    offer: bool = False  # the request carried an SDP offer (its responses answer)
    answer_due: bool = False  # its 2xx carried the offer: the ACK must answer (RFC 3264)
    # A re-INVITE's 2xx to an unreliable sender, sent again until its ACK (RFC 3261 13.3.1.4):
    # the response, when next, and the interval (T1 doubling up to T2).
    ok: Response | None = None
    ok_at: float | None = None
    ok_every: float = 0.0
    status: int | None = None  # the final status sent to the sender


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a transaction's messages go, and what it is for."""

    peer: Origin
    call: Call | None
    role: str  # "a-invite", "b-invite", "b-cancel", "bye", "local", "relay-in", "relay-out"
    relay: _Relay | None = None


class B2BUA:
    """The pure B2BUA: messages in with their :class:`Origin` and ``now``, :class:`Send`
    commands out, one deadline (see the module docstring)."""

    def __init__(
        self,
        settings: B2buaSettings,
        ids: IdSource,
        *,
        auth_failures: AuthFailures | None = None,
        counters: MutableMapping[str, int] | None = None,
        media: MediaManager | None = None,
    ) -> None:
        self.settings = settings
        self.ids = ids
        # The media relay: every call's SDP is rewritten to the SBC's own ports and keys.
        # Without one, SDP crosses with only its origin hidden (unit tests of signalling).
        self.media = media
        # Security events and call records for the edge to write (drained, bounded).
        self.events: deque[dict[str, object]] = deque(maxlen=10000)
        self.records: deque[dict[str, object]] = deque(maxlen=10000)
        # Facts for the rule engine (auth failures, answers sent outside, calls that end).
        self.policy_events: deque[PolicyEvent] = deque(maxlen=10000)
        self._now = 0.0  # the last time an input carried
        self.layers = {
            EXTERNAL: TransactionLayer(settings.timers),
            INTERNAL: TransactionLayer(settings.timers),
        }
        self.registrar = Registrar(ids, settings.registration, auth_failures)
        # Bindings that became live or went away, for the edge to publish to the shared store.
        self.binding_changes = self.registrar.changes
        self.pbx = Origin(INTERNAL, settings.pbx.transport, settings.pbx.host, settings.pbx.port)
        self.calls: dict[tuple[str, str, str], Call] = {}
        # Per-event work must not grow with the number of calls: live calls and the calls with
        # a CANCEL give-up timer are kept apart, by identity, so neither needs a scan of calls.
        self._live: dict[int, Call] = {}
        self._cancelling: dict[int, Call] = {}
        self._retransmitting: dict[int, Call] = {}
        self._relay_2xx: dict[int, _Relay] = {}  # re-INVITE 2xx sent again until the ACK
        # Timer C of every call still ringing: a heap with lazy deletion (an entry is live while
        # the call's ring_deadline still equals it), so many ringing calls cost O(log n).
        self._ring_heap: list[tuple[float, int, Call]] = []
        self._ring_seq = 0
        self._routes: dict[Transaction, _Route] = {}
        self._commands: list[Command] = []
        self._sweep_at: float | None = None
        # Keyed hash of client REGISTER Call-IDs: stable per client, unlinkable without the key
        # (drawn at the first REGISTER).
        self._call_id_key: bytes | None = None
        self.counters: MutableMapping[str, int] = counters if counters is not None else {}

    # -- outputs ---------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        """The commands produced since the last call, in order (and forget them)."""
        out, self._commands = self._commands, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction, call or registration sweep, or ``None``."""
        deadlines = [layer.get_timer() for layer in self.layers.values()]
        deadlines.extend(call.cancel_deadline for call in self._cancelling.values())
        deadlines.extend(call.a_2xx_at for call in self._retransmitting.values())
        deadlines.extend(relay.ok_at for relay in self._relay_2xx.values())
        heap = self._ring_heap
        while heap and heap[0][2].ring_deadline != heap[0][0]:
            heapq.heappop(heap)
        if heap:
            deadlines.append(heap[0][0])
        deadlines.append(self._sweep_at)
        if self.media is not None:
            deadlines.append(self.media.get_timer())
        return min((d for d in deadlines if d is not None), default=None)

    def __len__(self) -> int:
        """The number of calls in progress."""
        return len(self._live)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _set_cancel_deadline(self, call: Call, deadline: float | None) -> None:
        call.cancel_deadline = deadline
        if deadline is None:
            self._cancelling.pop(id(call), None)
        else:
            self._cancelling[id(call)] = call

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, message: Request | Response, origin: Origin, now: float, *,
                registered_elsewhere: bool = False) -> None:
        """Handle one parsed message from ``origin``.  ``registered_elsewhere``: the edge found
        a live registration from ``origin``'s IP address in the shared store (another node, or
        another flow), so a request :meth:`registration_matters` for is admitted as if that
        flow were registered here."""
        self._now = now
        layer = self.layers[origin.interface]
        if isinstance(message, Response):
            txn = layer.receive_response(message, now)
            if txn is not None:  # a stray response is dropped (RFC 3261 18.1.2)
                self._pump(txn, now)
            elif message.cseq.method == "INVITE" and 200 <= message.status < 300:
                self._stray_2xx(message, origin, now)
            return
        _stamp_received(message, origin)
        server = layer.receive_request(message, now)
        if server is not None:  # a retransmission, or the ACK of a non-2xx final
            self._pump(server, now)
            return
        if message.method == "ACK":
            self._ack(message, origin, now)
            return
        try:
            self._request(message, origin, now, registered_elsewhere)
        except SipParseError as e:
            if e.status is not None:
                self._reject(message, origin, now, e.status, list(e.headers))
        except SdpError as e:
            self._reject(message, origin, now, e.status)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        self._now = now
        for layer in self.layers.values():
            for txn in layer.handle_timer(now):
                self._pump(txn, now)
        for call in list(self._cancelling.values()):
            if call.cancel_deadline is not None and call.cancel_deadline <= now:
                self._set_cancel_deadline(call, None)
                self._fail_a_leg(call, 487, now)  # RFC 3261 9.1: give up waiting after 64*T1
        for call in list(self._retransmitting.values()):
            if call.a_2xx_at is not None and call.a_2xx_at <= now:
                self._retransmit_2xx(call, now)
        for relay in list(self._relay_2xx.values()):
            if relay.ok_at is not None and relay.ok_at <= now:
                self._retransmit_relay_2xx(relay, now)
        heap = self._ring_heap
        while heap and heap[0][0] <= now:
            when, _, call = heapq.heappop(heap)
            if call.ring_deadline == when:
                call.ring_deadline = None
                self._ring_timeout(call, now)
        if self._sweep_at is not None and self._sweep_at <= now:
            self.registrar.expire(now)
            self._arm_sweep(now)
        if self.media is not None:
            for event in self.media.handle_timer(now):
                owner = event.key
                if not isinstance(owner, Call):
                    continue
                call = owner
                if event.kind == "srtp_auth_failures":
                    self._security("srtp.auth_failures", call, now, **event.detail)
                    sources = event.detail.get("sources")
                    for host, count in (sources.items() if isinstance(sources, dict) else ()):
                        # The rule engine hears of each source (a ban for an attacker).
                        self.policy_events.append(SrtpFailed(
                            source_ip=str(host), interface=EXTERNAL, transport="udp",
                            call_id=call.a_invite.call_id, count=int(count),
                            account=call.account))
                elif event.kind == "inactive":
                    self._count("media.timeout.inactive")
                    self._hangup(call, now, "media inactivity",
                                 'SIP;cause=408;text="Media timeout"')
                elif event.kind == "duration":
                    self._count("media.timeout.duration")
                    self._hangup(call, now, "maximum call duration",
                                 'SIP;cause=408;text="Maximum call duration"')

    def send_failed(self, command: Send, now: float) -> None:
        """The edge could not deliver ``command`` (no connection to that peer any more): the
        transaction that sent it fails with a transport error (RFC 3261 17.1.4)."""
        message = command.message
        if not isinstance(message, Request) or message.method == "ACK":
            return
        via = message.top_via
        if via is None or via.branch is None:
            return
        txn = self.layers[command.interface].find_client(via.branch, message.cseq.method)
        if txn is not None:
            txn.transport_error(now)
            self._pump(txn, now)

    def flow_closed(self, flow: Origin, now: float) -> None:
        """The connection ``flow`` is gone: registrations made over it answer 480 from now on
        (RFC 5626 5.3), and the requests sent over it that still wait for an answer fail with a
        transport error (RFC 3261 17.1.4) instead of waiting for their timeout (a TLS handshake
        to the PBX that failed, a phone that disconnected while ringing).  Flows close rarely,
        so the scan of the transactions in progress is affordable."""
        self.registrar.flow_closed(flow, now)
        if not flow.reliable:
            return
        waiting = [
            txn for txn, route in self._routes.items()
            if isinstance(txn, ClientTransaction) and route.peer == flow and not txn.terminated
        ]
        for txn in waiting:
            txn.transport_error(now)
            self._pump(txn, now)
            route = self._routes.get(txn)
            call = None if route is None else route.call
            if (route is not None and route.role == "b-invite" and call is not None
                    and not txn.terminated and call.state is CallState.CALLING):
                # Ringing over a connection that is gone: no final can come back, and no CANCEL
                # can be sent.  The caller is told now and the transaction dropped.
                self._fail_a_leg(call, 480 if call.to_user else 503, now)
                txn.abandon()
                self._pump(txn, now)

    def _arm_sweep(self, now: float) -> None:
        busy = len(self.registrar) > 0 or self.registrar.next_deadline() is not None
        self._sweep_at = now + SWEEP_INTERVAL if busy else None

    # -- requests --------------------------------------------------------------------------

    def _request(self, request: Request, origin: Origin, now: float,
                 registered_elsewhere: bool = False) -> None:
        method = request.method
        if method == "CANCEL":
            self._cancel(request, origin, now)
            return
        if method not in KNOWN_METHODS:
            self._reject(request, origin, now, 501)  # RFC 3261 8.2.1
            return
        check_request(request, self.settings.supported)
        if request.to.tag is not None:
            if self._admitted(request, origin, now, in_dialog=True):
                self._in_dialog(request, origin, now)
            return
        if self.layers[origin.interface].is_merged(request):
            self._reject(request, origin, now, 482)
            return
        if method == "OPTIONS" and (origin.interface == EXTERNAL or not self._token(request)):
            self._reject(request, origin, now, 200, self._capabilities())  # RFC 3261 11.2
            return
        if method == "REGISTER" and origin.interface == EXTERNAL:
            self._register(request, origin, now)
            return
        if method not in ("INVITE", "OPTIONS"):
            self._reject(request, origin, now, 405, [("Allow", ALLOW)])
            return
        if not self._admitted(request, origin, now, in_dialog=False,
                              registered_elsewhere=registered_elsewhere):
            return
        if origin.interface == EXTERNAL:
            self._invite_to_pbx(request, origin, now)
        else:
            self._to_registered_user(request, origin, now)

    def registration_matters(self, request: Request, origin: Origin) -> bool:
        """Whether admitting ``request`` from ``origin`` may depend on a registration: an
        INVITE outside a dialog from the outside, from a source that is not a trunk, when
        ``unknown_source`` does not admit anyone.  (REGISTER is accepted from anyone, OPTIONS
        from the outside is answered here, other methods outside a dialog get 405.)  The edge
        asks the shared store about the source's other registrations only for these."""
        return (
            origin.interface == EXTERNAL
            and request.method == "INVITE"
            and request.to.tag is None
            and self.settings.unknown_source != "allow"
            and not any(trunk.matches(origin) for trunk in self.settings.trunks)
        )

    def _admitted(self, request: Request, origin: Origin, now: float, *, in_dialog: bool,
                  registered_elsewhere: bool = False) -> bool:
        """Whether ``origin`` may send ``request``; if not, it was answered 403 or dropped."""
        if origin.interface == INTERNAL:
            ok = origin.host == self.pbx.host
        elif in_dialog:
            ok = True  # it must still match a dialog, whose peer is checked there
        else:
            ok = (
                self.settings.unknown_source == "allow"
                or self.registrar.registered_flow(origin, now)
                or any(trunk.matches(origin) for trunk in self.settings.trunks)
            )
            if not ok and registered_elsewhere:
                ok = True
                self._count("admitted.registered_elsewhere")
        if ok:
            return True
        self._count(f"refused.{origin.interface}")
        if self.settings.unknown_source != "drop":
            self._reject(request, origin, now, 403)
        return False

    def _capabilities(self) -> list[tuple[str, str]]:
        out = [("Allow", ALLOW), ("Accept", ACCEPT)]
        if self.settings.supported:
            out.append(("Supported", ", ".join(sorted(self.settings.supported))))
        return out

    @staticmethod
    def _token(request: Request) -> str | None:
        uri = request.uri
        return uri.user_unescaped if isinstance(uri, SipUri) else None

    def _invite_to_pbx(self, invite: Request, origin: Origin, now: float) -> None:
        s = self.settings
        user = _user(invite.uri)
        if not user:
            raise SipParseError("Request-URI without a user", 404)
        from_ = invite.from_
        from_user = _user(from_.uri) or "anonymous"
        local_uri = str(NameAddr(SipUri("sip", s.domain, user=from_user), from_.display_name))
        remote_uri = str(NameAddr(SipUri("sip", s.pbx.host, user=user)))
        ruri = SipUri("sip", s.pbx.host, user=user, port=s.pbx.port)
        self._invite(invite, origin, now, self.pbx, ruri, local_uri, remote_uri)

    def _to_registered_user(self, request: Request, origin: Origin, now: float) -> None:
        """A request from the PBX to ``sip:{token}@sbc``: to the user's flow, or 404/480; an
        INVITE for a number a trunk route covers goes to that trunk."""
        token = self._token(request)
        if not token:
            raise SipParseError("no route for this Request-URI", 404)
        found = self.registrar.lookup(token, now)
        if (
            not isinstance(found, Delivery)
            and found.status == 404
            and request.method == "INVITE"
            and (route := self.settings.route(token)) is not None
        ):
            self._invite_to_trunk(request, origin, now, token, route)
            return
        if not isinstance(found, Delivery):
            self._count(f"undeliverable.{found.status}")
            self._reject(request, origin, now, found.status)
            return
        binding = found.binding
        flow = binding.flow
        assert isinstance(flow, Origin)
        target = parse_uri(binding.contact, "Contact")
        if not isinstance(target, SipUri):
            raise SipParseError("binding without a SIP contact", 480)
        own = self.settings.own(EXTERNAL, flow.transport)
        from_ = request.from_
        from_user = _user(from_.uri) or "anonymous"
        local_uri = str(NameAddr(SipUri("sip", own.host, user=from_user), from_.display_name))
        remote_uri = f"<{binding.aor}>"
        if request.method == "INVITE":
            self._invite(request, origin, now, flow, target, local_uri, remote_uri, to_user=True)
        else:
            self._relay_out_of_dialog(request, origin, now, flow, target, local_uri, remote_uri)

    def _invite_to_trunk(
        self, invite: Request, origin: Origin, now: float, number: str, route: TrunkRoute
    ) -> None:
        peer = route.peer
        own = self.settings.own(EXTERNAL, peer.transport)
        from_ = invite.from_
        from_user = _user(from_.uri) or "anonymous"
        local_uri = str(NameAddr(SipUri("sip", own.host, user=from_user), from_.display_name))
        host = _uri_host(peer.host)
        remote_uri = str(NameAddr(SipUri("sip", host, user=number)))
        ruri = SipUri("sip", host, user=number, port=peer.port)
        self._count(f"routed.{route.name}")
        self._invite(invite, origin, now, peer, ruri, local_uri, remote_uri,
                     trunk_srtp=route.srtp, trunk=route.name)

    def _invite(
        self, invite: Request, origin: Origin, now: float, peer: Origin, ruri: SipUri,
        local_uri: str, remote_uri: str, *, to_user: bool = False,
        trunk_srtp: str | None = None, trunk: str | None = None,
    ) -> None:
        if not isinstance(invite.uri, SipUri | TelUri):
            raise SipParseError("unroutable Request-URI", 416)
        contacts = invite.contacts
        if not isinstance(contacts, list) or len(contacts) != 1 or not isinstance(
            contacts[0].uri, SipUri
        ):
            raise SipParseError("INVITE without one Contact (RFC 3261 8.1.1.8)", 400)
        # RFC 3261 16.6 step 3: the forwarded request carries Max-Forwards minus one; 0 was
        # answered 483 by check_request (16.3 step 3).
        max_forwards = invite.max_forwards
        max_forwards = 70 if max_forwards is None else max_forwards
        offer = None
        if invite.body and invite.content_type == "application/sdp":
            offer = parse_sdp(invite.body)  # an offer we cannot read is refused (488) first
        media = None
        if self.media is not None:
            # Before any transaction exists: a refused offer is answered like a parse error.
            try:
                media = self.media.create(None, self._leg_policy(origin),
                                          self._leg_policy(peer, trunk_srtp), now)
                if offer is not None:
                    offer = self.media.offer(media, "a", offer, invite.body, now)
            except MediaRefused as e:
                if media is not None:
                    self.media.close(media)
                raise self._media_refused(e, origin, now) from None
        a_txn = self.layers[origin.interface].create_server(invite, now, reliable=origin.reliable)
        a_tag = self.ids.tag()
        own = self.settings.own(peer.interface, peer.transport)
        b_invite = initial_request(
            self.ids, "INVITE", ruri, local_uri=local_uri, remote_uri=remote_uri,
            local_contact=own.contact(), headers=self._crossing(invite.headers),
        )
        b_invite.headers.set("Max-Forwards", str(max_forwards - 1))
        call = Call(invite, origin, a_txn, a_tag, b_invite, peer, to_user=to_user,
                    media=media, offer_in_invite=offer is not None, created_at=now,
                    account=_user(invite.from_.uri), destination=_user(invite.uri),
                    trunk=trunk or self._trunk_of(origin))
        if media is not None:
            media.key = call
        b_invite.body = self._cross_sdp(call, invite, peer.interface, offer, now=now)
        if not b_invite.body:
            b_invite.headers.remove("content-type")
        self._routes[a_txn] = _Route(origin, call, "a-invite")
        self.calls[call.a_key] = call
        self.calls[call.b_key] = call
        self._live[id(call)] = call
        self._pump(a_txn, now)  # the 100 Trying
        call.b_txn = self._start(b_invite, peer, call, "b-invite", now)
        if call.state is CallState.CALLING and self.settings.ring_timeout > 0:
            call.ring_deadline = now + self.settings.ring_timeout
            self._ring_seq += 1
            heapq.heappush(self._ring_heap, (call.ring_deadline, self._ring_seq, call))

    def _ring_timeout(self, call: Call, now: float) -> None:
        """Timer C fired: the callee rang too long without a final.  CANCEL the B-leg and
        answer the caller 408 (RFC 3261 16.6 step 11, 16.7 step 2)."""
        if call.state is not CallState.CALLING or call.a_final_sent:
            return
        self._count("timeout.ringing")
        if call.provisional and not call.cancel_pending:
            call.cancel_pending = True
            self._send_cancel(call, now)
        self._fail_a_leg(call, 408, now)

    def _cancel(self, cancel: Request, origin: Origin, now: float) -> None:
        layer = self.layers[origin.interface]
        invite_txn = layer.find_invite_for_cancel(cancel)
        route = None if invite_txn is None else self._routes.get(invite_txn)
        if route is not None and route.role == "relay-in" and route.relay is not None:
            self._cancel_relay(cancel, origin, route.relay, now)
            return
        call = None if route is None else route.call
        if call is None or route is None or route.role != "a-invite":
            self._reject(cancel, origin, now, 481)  # RFC 3261 9.2
            return
        self._reject(cancel, origin, now, 200, to_tag=call.a_tag)  # RFC 3261 9.2: same To tag
        if call.state is not CallState.CALLING or call.cancel_pending:
            return  # already answered or already cancelled: the 200 is all (RFC 3261 9.2)
        call.cancel_pending = True
        if call.provisional:
            self._send_cancel(call, now)

    def _send_cancel(self, call: Call, now: float) -> None:
        """The CANCEL of the B-leg INVITE (RFC 3261 9.1)."""
        self._start(_cancel_for(call.b_invite), call.b_peer, call, "b-cancel", now, via=False)
        self._set_cancel_deadline(call, now + self.settings.timers.timeout)

    def _cancel_relay(self, cancel: Request, origin: Origin, relay: _Relay, now: float) -> None:
        """CANCEL of a relayed re-INVITE: 200, and a CANCEL of the other leg's re-INVITE, held
        until that one has a provisional response (RFC 3261 9.1)."""
        self._reject(cancel, origin, now, 200, to_tag=relay.to_tag)
        if relay.final_sent or relay.cancelled:
            return
        relay.cancelled = True
        if relay.provisional:
            self._send_relay_cancel(relay, now)

    def _send_relay_cancel(self, relay: _Relay, now: float) -> None:
        self._start(_cancel_for(relay.out), relay.target, relay.call, "b-cancel", now, via=False)

    # -- inside a call ---------------------------------------------------------------------

    def _find_call(self, request: Request, origin: Origin) -> tuple[Call, bool] | None:
        """The call ``request`` (with a To tag) belongs to and whether it came from the A-leg
        peer; ``None`` when it matches no call, or comes from another address than the leg's
        peer on an unreliable transport (a spoofed in-dialog request)."""
        key = (origin.interface, request.call_id, request.to.tag or "")
        call = self.calls.get(key)
        if call is None:
            return None
        from_a = key == call.a_key
        dialog = _leg_dialog(call, from_a)
        if dialog is None or dialog.remote_tag != (request.from_.tag or ""):
            return None
        peer = call.a_peer if from_a else call.b_peer
        if peer.interface == EXTERNAL and peer.host != origin.host:
            return None  # a request for a dialog must come from that dialog's peer
        return call, from_a

    def _in_dialog(self, request: Request, origin: Origin, now: float) -> None:
        found = self._find_call(request, origin)
        if found is None:
            self._reject(request, origin, now, 481)
            return
        call, from_a = found
        dialog = _leg_dialog(call, from_a)
        assert dialog is not None
        if dialog.state is DialogState.EARLY and request.method not in RELAYED_IN_EARLY_DIALOG:
            # The call rings: only UPDATE and INFO cross; a re-INVITE gets 491 (14.2); the rest
            # (a BYE of the early dialog, PRACK) is not relayed before the answer.
            dialog.receive_request(request)  # CSeq order (500) first
            self._reject(request, origin, now, 491 if request.method == "INVITE" else 481)
            return
        if request.method == "INVITE" and (
            call.reinvite is not None or call.state is not CallState.CONFIRMED
        ):
            dialog.receive_request(request)  # CSeq order (500) first
            self._reject(request, origin, now, 491)  # RFC 3261 14.2
            return
        dialog.receive_request(request)  # CSeq order (500) and state (481) first
        if request.method == "BYE":
            self._reject(request, origin, now, 200)
            self._bye_other_leg(call, request, from_a, now)
            return
        if request.method == "PRACK":  # reliable provisionals are not offered (100rel removed)
            self._reject(request, origin, now, 481)
            return
        if request.method in NOT_RELAYED_IN_DIALOG:
            self._reject(request, origin, now, 405, [("Allow", ALLOW)])
            return
        self._relay_in_dialog(call, from_a, request, origin, now)

    def _relay_in_dialog(
        self, call: Call, from_a: bool, request: Request, origin: Origin, now: float
    ) -> None:
        other = _leg_dialog(call, not from_a)
        target = call.b_peer if from_a else call.a_peer
        if other is None:  # the other leg's early dialog ended (a final crossed this request)
            self._reject(request, origin, now, 481)
            return
        offer = bool(request.body) and request.method in ("INVITE", "UPDATE") and (
            request.content_type == "application/sdp"
        )
        unsettled = call.media.unsettled_from if call.media is not None else None
        if offer and unsettled is not None:
            # RFC 3311 5.2 (and RFC 6337 3.1 for a re-INVITE): an offer while one is unanswered.
            # The sender's own earlier offer is still unanswered: 500 with a Retry-After of 0-10
            # seconds; the other side's offer to it is (glare, both sides offered): 491.
            self._count("refused.offer_pending")
            if unsettled == ("a" if from_a else "b"):
                self._reject(request, origin, now, 500,
                             [("Retry-After", str(self.ids.below(11)))])
            else:
                self._reject(request, origin, now, 491)
            return
        try:
            body, headers = self._crossing_body(
                call, request, target.interface, now=now,
                role=("offer-a" if from_a else "offer-b") if offer else None,
            )
        except MediaRefused as e:
            raise self._media_refused(e, origin, now, call) from None
        try:
            out = other.create_request(request.method, body=body, headers=headers)
        except DialogError:
            self._reject(request, origin, now, 491 if request.method == "INVITE" else 481)
            return
        if request.max_forwards is not None:
            out.headers.set("Max-Forwards", str(max(request.max_forwards - 1, 0)))
        server = self.layers[origin.interface].create_server(
            request, now, reliable=origin.reliable, trying=request.method == "INVITE"
        )
        relay = _Relay(origin, request, server, target, out, call=call, from_a=from_a,
                       to_user=target.interface == EXTERNAL, offer=offer)
        self._routes[server] = _Route(origin, call, "relay-in", relay)
        call.relays[id(relay)] = relay
        if request.method == "INVITE":
            call.reinvite = relay
        self._pump(server, now)
        relay.client = self._start(out, target, call, "relay-out", now, relay=relay)

    def _bye_other_leg(self, call: Call, bye: Request, from_a: bool, now: float) -> None:
        headers = crossing_headers(bye.headers)
        call.state = CallState.ENDING
        for relay in list(call.relays.values()):  # RFC 3261 15.1.2: pending requests get 487
            if not relay.final_sent:
                self._answer_relay(relay, build_response(relay.request, 487), now)
        if from_a:
            assert call.b_dialog is not None
            if call.b_ack is None:  # a BYE before the caller's ACK: ACK the callee's 2xx first
                self._ack_b(call)
            request = call.b_dialog.create_request("BYE", headers=headers)
            self._start(request, call.b_peer, call, "bye", now)
        else:
            assert call.a_dialog is not None
            request = call.a_dialog.create_request("BYE", headers=headers)
            self._start(request, call.a_peer, call, "bye", now)

    def _ack(self, ack: Request, origin: Origin, now: float) -> None:
        """An ACK that matched no transaction: the ACK of a 2xx (RFC 3261 13.2.2.4), of the
        call's INVITE or of a relayed re-INVITE; anything else is dropped."""
        if ack.to.tag is None:
            return
        found = self._find_call(ack, origin)
        if found is None:
            return
        call, from_a = found
        if from_a and ack.cseq.seq == call.a_invite.cseq.seq:
            if call.b_dialog is not None:
                self._ack_received(call, ack, now)
            return
        relay = call.reinvite
        if relay is not None and relay.from_a == from_a and (
            ack.cseq.seq == relay.request.cseq.seq
        ):
            self._relay_ack(relay, ack, now)

    def _relay_ack(self, relay: _Relay, ack: Request, now: float) -> None:
        call = relay.call
        assert call is not None
        self._stop_relay_2xx(relay)
        if relay.ack is None:
            role = None
            if not relay.offer:  # the 2xx offered: the ACK answers (RFC 3264)
                role = "answer-a" if relay.from_a else "answer-b"
            try:
                body, headers = self._crossing_body(call, ack, relay.target.interface, now=now,
                                                    role=role)
            except (SdpError, MediaRefused):
                body, headers = b"", []
            self._ack_other_side(relay, body, headers)
        assert relay.ack is not None
        self._send(relay.target, relay.ack)

    def _ack_other_side(self, relay: _Relay, body: bytes = b"",
                        headers: Iterable[tuple[str, str]] = ()) -> None:
        """Build the ACK of the other side's 2xx to a relayed re-INVITE (``relay.ack``, sent
        again for each retransmitted 2xx); an offer in that 2xx left without an answer here
        failed, and the re-INVITE is over."""
        call = relay.call
        assert call is not None
        other = call.b_dialog if relay.from_a else call.a_dialog
        assert other is not None
        if relay.answer_due:  # an ACK without a usable answer: the 2xx's offer failed
            relay.answer_due = False
            self._offer_ended(call, "b" if relay.from_a else "a")
        relay.ack = other.create_ack(relay.out.cseq.seq, body=body, headers=headers)
        own = self.settings.own(relay.target.interface, relay.target.transport)
        relay.ack.headers.prepend("Via", own.via(self.ids.branch()))
        if call.reinvite is relay:
            call.reinvite = None

    def _ack_received(self, call: Call, ack: Request, now: float) -> None:
        if call.b_ack is None:
            assert call.b_dialog is not None
            refused = False
            try:
                body = self._cross_sdp(call, ack, call.b_peer.interface, now=now,
                                       role=None if call.offer_in_invite else "answer-a")
            except (SdpError, MediaRefused):
                body = b""  # an ACK cannot be refused; the callee gets no answer (13.3.1.4)
                refused = call.media is not None
            headers = self._crossing(ack.headers) if body else []
            b_ack = call.b_dialog.create_ack(call.b_invite.cseq.seq, body=body, headers=headers)
            b_ack.headers.prepend("Via", self._own(call.b_peer).via(self.ids.branch()))
            call.b_ack = b_ack
            if call.state is CallState.ANSWERED:
                call.state = CallState.CONFIRMED
            self._stop_2xx(call)
            self._send_b_ack(call)
            if refused:  # the caller's answer broke the media policy: end the call
                self._hangup(call, now, "unacceptable SDP answer",
                             'SIP;cause=488;text="Not Acceptable Here"')
            return
        self._send_b_ack(call)

    def _send_b_ack(self, call: Call) -> None:
        assert call.b_ack is not None
        self._send(call.b_peer, call.b_ack)

    def _stray_2xx(self, response: Response, origin: Origin, now: float) -> None:
        """A 2xx retransmission after the B-leg INVITE transaction ended (Timer M): re-ACK it
        if it belongs to a call whose ACK was sent (RFC 3261 13.2.2.4)."""
        key = (origin.interface, response.call_id, response.from_.tag or "")
        call = self.calls.get(key)
        if call is not None and key == call.b_key and call.b_ack is not None and (
            response.cseq.seq == call.b_invite.cseq.seq
        ):
            self._send_b_ack(call)

    # -- registration relay ----------------------------------------------------------------

    def _register(self, request: Request, origin: Origin, now: float) -> None:
        own = self._own(self.pbx)
        prepared = self.registrar.prepare_register(
            request, origin, origin.address, now, (own.host, own.port), own.transport
        )
        if isinstance(prepared, RegisterRejected):
            extra = [] if prepared.min_expires is None else [
                ("Min-Expires", str(prepared.min_expires))
            ]
            self._reject(request, origin, now, prepared.status, extra)
            return
        server = self.layers[EXTERNAL].create_server(
            request, now, reliable=origin.reliable, trying=False
        )
        if self._sweep_at is None:
            self._sweep_at = now + SWEEP_INTERVAL
        to_tag = self.ids.tag()
        if not prepared.relay:
            outcome = self.registrar.answer_locally(prepared.handle, now)
            self._count("register.local")
            self._routes[server] = _Route(origin, None, "local")
            server.send_response(self._register_answer(request, outcome, to_tag, []), now)
            self._pump(server, now)
            return
        h = Headers()
        max_forwards = request.max_forwards
        h.add("Max-Forwards", str(69 if max_forwards is None else max(max_forwards - 1, 0)))
        h.add("From", request.headers.get("from") or "")
        h.add("To", request.headers.get("to") or "")
        h.add("Call-ID", self._register_call_id(request.call_id))
        h.add("CSeq", f"{request.cseq.seq} REGISTER")
        for contact in prepared.contacts:
            h.add("Contact", contact)
        if prepared.expires is not None:
            h.add("Expires", str(prepared.expires))
        for name, value in self._crossing(request.headers):
            if canonical_name(name) not in ("expires", "content-type"):
                h.add(name, value)
        out = Request("REGISTER", request.uri, h)
        relay = _Relay(origin, request, server, self.pbx, out, handle=prepared.handle,
                       to_tag=to_tag)
        self._routes[server] = _Route(origin, None, "relay-in", relay)
        relay.client = self._start(out, self.pbx, None, "relay-out", now, relay=relay)

    def _register_call_id(self, call_id: str) -> str:
        if self._call_id_key is None:
            self._call_id_key = self.ids.token(16).encode()
        digest = hashlib.blake2b(call_id.encode(), key=self._call_id_key, digest_size=16)
        return digest.hexdigest()

    def _register_answer(
        self, request: Request, outcome: RegisterOutcome, to_tag: str | None,
        extra: list[tuple[str, str]],
    ) -> Response:
        status = outcome.status
        if 200 <= status < 300:
            extra = [(n, v) for n, v in extra if canonical_name(n) != "expires"]
            extra += [("Contact", c) for c in outcome.client_contacts]
            if outcome.client_expires is not None:
                extra.append(("Expires", str(outcome.client_expires)))
        return build_response(request, status, to_tag=to_tag, extra=extra)

    # -- requests relayed outside a call (OPTIONS to a registered user) ---------------------

    def _relay_out_of_dialog(
        self, request: Request, origin: Origin, now: float, target: Origin, ruri: SipUri,
        local_uri: str, remote_uri: str,
    ) -> None:
        out = initial_request(
            self.ids, request.method, ruri, local_uri=local_uri, remote_uri=remote_uri,
            headers=self._crossing(request.headers),
        )
        server = self.layers[origin.interface].create_server(
            request, now, reliable=origin.reliable, trying=False
        )
        relay = _Relay(origin, request, server, target, out, to_tag=self.ids.tag(), to_user=True)
        self._routes[server] = _Route(origin, None, "relay-in", relay)
        relay.client = self._start(out, target, None, "relay-out", now, relay=relay)

    # -- transaction events ----------------------------------------------------------------

    def _pump(self, txn: Transaction, now: float) -> None:
        """Turn a transaction's outgoing messages into commands and handle its events."""
        route = self._routes.get(txn)
        while True:
            answered = txn.request if isinstance(txn, ServerTransaction) else None
            for message in txn.messages_to_send():
                if route is not None:
                    self._send(route.peer, message, answered)
            event = txn.next_event()
            if event is None:
                break
            if route is not None:
                self._event(txn, route, event, now)
        if txn.terminated:
            self._routes.pop(txn, None)

    def _event(self, txn: Transaction, route: _Route, event: Event, now: float) -> None:
        if route.role == "relay-out" and route.relay is not None:
            self._relay_event(route.relay, event, now)
            return
        if route.role == "relay-in" and route.relay is not None:
            if isinstance(event, AckReceived) and route.relay.call is not None:
                if route.relay.call.reinvite is route.relay or route.relay.ack is not None:
                    self._relay_ack(route.relay, event.request, now)  # it reused the branch
            elif isinstance(event, Terminated):
                relay = route.relay
                if (relay.call is not None and relay.call.state is CallState.CONFIRMED
                        and relay.request.method == "INVITE"
                        and relay.ack is None and relay.status is not None
                        and 200 <= relay.status < 300):
                    self._reinvite_unacked(relay, now)
                self._forget_relay(relay)
            return
        call = route.call
        if call is None:
            return
        if isinstance(event, Terminated):
            if route.role == "a-invite" and call.state is CallState.ANSWERED:
                self._no_ack(call, now)
            return
        if route.role == "b-invite":
            if isinstance(event, ResponseReceived):
                self._b_invite_response(call, event.response, now)
            elif isinstance(event, TimedOut):
                self._fail_a_leg(call, 408, now)  # Timer B (RFC 3261 17.1.1.2)
            elif isinstance(event, TransportFailed):  # RFC 3261 8.1.3.1; RFC 5626 5.3
                self._fail_a_leg(call, 480 if call.to_user else 503, now)
        elif route.role == "a-invite":
            if isinstance(event, AckReceived):  # a 2xx ACK that reused the INVITE's branch
                if call.a_dialog is not None and call.b_dialog is not None:
                    self._ack_received(call, event.request, now)
            elif isinstance(event, TimedOut):  # Timer H: the caller never ACKed our non-2xx
                self._end(call)
        elif route.role == "bye":
            final = isinstance(event, ResponseReceived) and event.response.status >= 200
            if final or isinstance(event, TimedOut | TransportFailed):
                self._end(call)
        # "b-cancel": the 200 to our CANCEL changes nothing; the INVITE's final does.

    def _relay_event(self, relay: _Relay, event: Event, now: float) -> None:
        if isinstance(event, ResponseReceived):
            self._relay_response_back(relay, event.response, now)
        elif isinstance(event, TimedOut):
            self._relay_failed(relay, 408, now)
        elif isinstance(event, TransportFailed):
            self._relay_failed(relay, 480 if relay.to_user else 503, now)
        elif isinstance(event, Terminated) and relay.final_sent:
            self._forget_relay(relay)

    def _relay_failed(self, relay: _Relay, status: int, now: float) -> None:
        if relay.handle is not None:
            self.registrar.on_pbx_response(relay.handle, build_response(relay.out, status), now)
        self._answer_relay(relay, build_response(relay.request, status, to_tag=relay.to_tag),
                           now)

    def _relay_response_back(self, relay: _Relay, response: Response, now: float) -> None:
        status = response.status
        method = relay.request.method
        if status < 200 and not relay.provisional:
            relay.provisional = True
            if relay.cancelled and not relay.final_sent:
                self._send_relay_cancel(relay, now)  # the CANCEL that waited for it
        if status == 100:
            return
        call = relay.call
        if relay.final_sent:
            # A retransmitted 2xx of a relayed re-INVITE: ACK it again (RFC 3261 13.2.2.4).
            if relay.ack is not None and 200 <= status < 300:
                self._send(relay.target, relay.ack)
            return
        if status < 200 and method != "INVITE":
            return  # provisionals of a non-INVITE carry nothing worth relaying
        other = None
        if call is not None:
            other = _leg_dialog(call, not relay.from_a)
            if other is not None:
                with contextlib.suppress(SipParseError):
                    other.receive_response(response)
        extra: list[tuple[str, str]]
        if relay.handle is not None:
            outcome = self.registrar.on_pbx_response(relay.handle, response, now)
            if outcome.auth_failure:
                self._count("register.auth_failure")
                self._auth_failed(relay.request, relay.source, response.status)
            answer = self._register_answer(
                relay.request, outcome, relay.to_tag, self._crossing(response.headers)
            )
            self._answer_relay(relay, answer, now)
            return
        role = None
        responder = "b" if relay.from_a else "a"
        if method in ("INVITE", "UPDATE") and status < 300:
            if relay.offer:
                role = "answer-" + responder
            elif method == "INVITE" and status >= 200:
                role = "offer-" + responder
        try:
            body, extra = (
                self._crossing_body(call, response, relay.source.interface, now=now, role=role)
                if call is not None else (b"", self._crossing(response.headers))
            )
        except (SdpError, MediaRefused) as e:
            if status < 200:
                return
            body, extra = b"", []
            status = e.status if isinstance(e, MediaRefused) else 502
        if role is not None and role.startswith("offer-") and body:
            relay.answer_due = True
        if not body:
            extra = [(n, v) for n, v in extra if canonical_name(n) != "content-type"]
        if 200 <= status < 300 and method in ("INVITE", "UPDATE"):
            extra.insert(0, ("Contact", self._own(relay.source).contact()))
        answer = build_response(relay.request, status, REASON_PHRASES.get(status, "Unknown"),
                                to_tag=relay.to_tag, extra=extra, body=body)
        self._answer_relay(relay, answer, now)
        if status >= 300 and call is not None and call.reinvite is relay:
            call.reinvite = None  # a non-2xx to a re-INVITE: its transaction ACKs it

    def _answer_relay(self, relay: _Relay, response: Response, now: float) -> None:
        if relay.final_sent:
            return
        if response.status >= 200:
            relay.final_sent = True
            relay.status = response.status
            if relay.offer and relay.call is not None:
                # Whatever the final: a 2xx whose answer was accepted settled the offer already.
                self._offer_ended(relay.call, "a" if relay.from_a else "b")
        relay.server.send_response(response, now)
        self._pump(relay.server, now)
        if (200 <= response.status < 300 and relay.request.method == "INVITE"
                and relay.call is not None and not relay.source.reliable
                and relay.ack is None and not relay.server.terminated):
            # RFC 3261 13.3.1.4: the UAS core retransmits its 2xx until the ACK; the other
            # side's retransmissions are not relayed (and a reliable one sends none).
            relay.ok = response
            relay.ok_every = self.settings.timers.t1
            relay.ok_at = now + relay.ok_every
            self._relay_2xx[id(relay)] = relay

    def _reinvite_unacked(self, relay: _Relay, now: float) -> None:
        """Timer L ended a re-INVITE's server transaction with its 2xx never ACKed: the other
        side's 2xx is ACKed (without a body) and the call ended with a BYE on both legs (RFC
        3261 13.3.1.4)."""
        call = relay.call
        assert call is not None
        self._count("reinvite.no_ack")
        self._stop_relay_2xx(relay)
        self._ack_other_side(relay)
        assert relay.ack is not None
        self._send(relay.target, relay.ack)
        self._hangup(call, now, "no ACK", 'SIP;cause=408;text="No ACK for the 2xx"')

    def _retransmit_relay_2xx(self, relay: _Relay, now: float) -> None:
        """Send a re-INVITE's 2xx to its sender again: T1, 2*T1, ... at most T2 apart, until
        its ACK, the end of its server transaction (64*T1, Timer L) or of the call."""
        call = relay.call
        if (relay.ok is None or relay.ack is not None or relay.server.terminated
                or call is None or call.state is CallState.ENDED):
            self._stop_relay_2xx(relay)
            return
        self._send(relay.source, relay.ok)
        relay.ok_every = min(2 * relay.ok_every, self.settings.timers.t2)
        relay.ok_at = now + relay.ok_every

    def _stop_relay_2xx(self, relay: _Relay) -> None:
        relay.ok = None
        relay.ok_at = None
        self._relay_2xx.pop(id(relay), None)

    def _forget_relay(self, relay: _Relay) -> None:
        call = relay.call
        if call is None:
            return
        if relay.server.terminated:
            self._stop_relay_2xx(relay)
        if relay.server.terminated and (relay.client is None or relay.client.terminated):
            call.relays.pop(id(relay), None)
            if relay.answer_due and relay.ack is None:  # the 2xx offered; no ACK came (Timer L)
                relay.answer_due = False
                self._offer_ended(call, "b" if relay.from_a else "a")
            if call.reinvite is relay and relay.ack is None and relay.final_sent:
                call.reinvite = None

    def _b_invite_response(self, call: Call, response: Response, now: float) -> None:
        status = response.status
        if status >= 200:
            call.ring_deadline = None
        if status in (401, 407) and not call.a_final_sent:
            self._auth_failed(call.a_invite, call.a_peer, status)
        if status == 100:
            call.provisional = True  # hop by hop: the A-leg had its own 100 Trying
        elif status < 200:
            call.provisional = True
            if call.state is CallState.CALLING and not call.a_final_sent:
                if call.b_early is None and response.to.tag is not None:
                    with contextlib.suppress(DialogError, SipParseError):
                        call.b_early = Dialog.uac(call.b_invite, response)
                # A provisional is optional: one with a broken body is not relayed.
                with contextlib.suppress(SdpError, MediaRefused):
                    a_provisional = self._relay_response(call, response, now)
                    if call.a_early is None and call.b_early is not None:
                        with contextlib.suppress(DialogError, SipParseError):
                            call.a_early = Dialog.uas(call.a_invite, a_provisional)
        elif status < 300:
            self._b_2xx(call, response, now)
            return
        else:
            self._set_cancel_deadline(call, None)
            if not call.a_final_sent:
                self._relay_response(call, response, now)
            self._end_after_final(call)
            return
        if call.cancel_pending and call.provisional and call.cancel_deadline is None:
            self._send_cancel(call, now)

    def _b_2xx(self, call: Call, response: Response, now: float) -> None:
        if call.b_dialog is not None:
            # RFC 6026: every 2xx reaches the TU.  A retransmission (or a fork, which this slice
            # does not tell apart) is relayed again before the A-leg ACK, re-ACKed after it.
            if call.b_ack is not None:
                self._send_b_ack(call)
            elif call.state is CallState.ANSWERED:
                self._relay_response(call, response, now)
            return
        try:
            call.b_dialog = Dialog.uac(call.b_invite, response)
        except SipParseError:
            return  # a 2xx without a usable Contact cannot be ACKed: drop (RFC 3261 12.1.2)
        if call.b_early is not None and call.b_early.remote_tag == call.b_dialog.remote_tag:
            _carry_sequence(call.b_dialog, call.b_early)
        self._set_cancel_deadline(call, None)
        call.cancel_pending = False
        if call.state is not CallState.CALLING or call.a_final_sent:
            # The A-leg already has its final (a 487 after our own timeout): hang up the B-leg.
            self._ack_and_bye_b(call, now)
            return
        try:
            a_response = self._relay_response(call, response, now)
        except (SdpError, MediaRefused) as e:  # an answer the caller could not use: refuse
            if isinstance(e, MediaRefused):  # the call on both legs
                self._media_refused(e, call.b_peer, now, call)
            self._fail_a_leg(call, e.status if isinstance(e, MediaRefused) else 502, now)
            self._ack_and_bye_b(call, now)
            return
        call.a_dialog = Dialog.uas(call.a_invite, a_response)
        if call.a_early is not None:
            _carry_sequence(call.a_dialog, call.a_early)
            call.a_dialog.remote_target = call.a_early.remote_target  # an UPDATE's Contact
        call.a_early = call.b_early = None
        call.state = CallState.ANSWERED
        call.answered_at = now
        if call.media is not None and self.media is not None:
            self.media.answered(call.media, now)
        if not call.a_peer.reliable and call.b_peer.reliable:
            call.a_2xx = a_response
            call.a_2xx_every = self.settings.timers.t1
            call.a_2xx_at = now + call.a_2xx_every
            self._retransmitting[id(call)] = call

    def _retransmit_2xx(self, call: Call, now: float) -> None:
        """Send the A-leg 2xx again until the ACK comes: T1, 2*T1, ... at most T2 apart; the
        A-leg transaction ends the wait after 64*T1 (Timer L, then :meth:`_no_ack`)."""
        if call.state is not CallState.ANSWERED or call.a_2xx is None:
            self._stop_2xx(call)
            return
        self._send(call.a_peer, call.a_2xx)
        call.a_2xx_every = min(2 * call.a_2xx_every, self.settings.timers.t2)
        call.a_2xx_at = now + call.a_2xx_every

    def _stop_2xx(self, call: Call) -> None:
        call.a_2xx = None
        call.a_2xx_at = None
        self._retransmitting.pop(id(call), None)

    def _no_ack(self, call: Call, now: float) -> None:
        """Timer L ended the A-leg INVITE transaction with our 2xx never ACKed: the dialog is
        confirmed but the session is ended with a BYE on both legs (RFC 3261 13.3.1.4)."""
        assert call.a_dialog is not None
        self._ack_and_bye_b(call, now)
        bye = call.a_dialog.create_request("BYE")
        self._start(bye, call.a_peer, call, "bye", now)

    def _ack_b(self, call: Call) -> None:
        """ACK the callee's 2xx without waiting for the caller's ACK (no body)."""
        assert call.b_dialog is not None
        b_ack = call.b_dialog.create_ack(call.b_invite.cseq.seq)
        b_ack.headers.prepend("Via", self._own(call.b_peer).via(self.ids.branch()))
        call.b_ack = b_ack
        self._send_b_ack(call)

    def _ack_and_bye_b(self, call: Call, now: float) -> None:
        assert call.b_dialog is not None
        if call.b_ack is None:
            self._ack_b(call)
        bye = call.b_dialog.create_request("BYE")
        call.state = CallState.ENDING
        self._start(bye, call.b_peer, call, "bye", now)

    def _relay_response(self, call: Call, response: Response, now: float) -> Response:
        """The A-leg copy of a B-leg response to the INVITE: built from the A-leg INVITE, the
        SBC's To tag and Contact, the crossing headers and the SDP with the SBC's origin."""
        status = response.status
        extra = self._crossing(response.headers)
        role = None
        if call.offer_in_invite:
            role = "answer-b"
        elif 200 <= status < 300:
            role = "offer-b"  # RFC 3264: an INVITE without a body gets the offer in the 2xx
        body = (self._cross_sdp(call, response, call.a_peer.interface, now=now, role=role)
                if status < 300 else b"")
        if not body:
            extra = [(n, v) for n, v in extra if canonical_name(n) != "content-type"]
        if status < 300:
            extra.insert(0, ("Contact", self._own(call.a_peer).contact()))
        a_response = build_response(
            call.a_invite, status, REASON_PHRASES.get(status, "Unknown"),
            to_tag=call.a_tag, extra=extra, body=body,
        )
        if status >= 200:
            call.a_final_sent = True
            call.a_status = status
        call.a_txn.send_response(a_response, now)
        self._pump(call.a_txn, now)
        return a_response

    def _fail_a_leg(self, call: Call, status: int, now: float) -> None:
        if not call.a_final_sent:
            call.a_final_sent = True
            call.a_status = status
            response = build_response(call.a_invite, status, to_tag=call.a_tag)
            call.a_txn.send_response(response, now)
            self._pump(call.a_txn, now)
        if call.b_dialog is None:
            self._end_after_final(call)

    def _end_after_final(self, call: Call) -> None:
        """The INVITE failed: no dialog exists on either leg; the transactions finish alone."""
        call.state = CallState.ENDED
        self._end(call)

    def _end(self, call: Call) -> None:
        if not call.recorded:
            call.recorded = True
            self._record(call)
        call.state = CallState.ENDED
        call.ring_deadline = None
        self._set_cancel_deadline(call, None)
        self._stop_2xx(call)
        for key in (call.a_key, call.b_key):
            if self.calls.get(key) is call:
                del self.calls[key]
        self._live.pop(id(call), None)
        call.reinvite = None

    # -- media -----------------------------------------------------------------------------

    def _trunk_of(self, origin: Origin) -> str | None:
        """The configured trunk an outside ``origin`` is, by source network."""
        if origin.interface != EXTERNAL:
            return None
        return next((t.name for t in self.settings.trunks if t.matches(origin)), None)

    def _leg_policy(self, peer: Origin, trunk_srtp: str | None = None) -> LegPolicy:
        """How ``peer``'s leg may carry media: the PBX's policy inside; outside, the trunk's
        (the route's, or the trunk the caller matched), else the external default."""
        s = self.settings
        if peer.interface == INTERNAL:
            policy = s.srtp_internal
        else:
            policy = trunk_srtp or next(
                (t.srtp for t in s.trunks if t.srtp is not None and t.matches(peer)), None
            ) or s.srtp_external
        return LegPolicy(peer.interface, policy,  # type: ignore[arg-type]
                         peer.transport.lower() == "tls", peer.host)

    def _offer_ended(self, call: Call, leg: str) -> None:
        """An offer ``leg`` made inside the call ended without an accepted answer (a non-2xx
        final, an answer refused by the media policy, a CANCEL, a timeout, a 2xx or an ACK
        without the answer): its media goes back to what it was before (RFC 3261 14.1, RFC
        3264 8).  Nothing happens when a final answer settled it."""
        if self.media is not None and call.media is not None:
            self.media.offer_failed(call.media, leg)

    def _media_refused(self, error: MediaRefused, origin: Origin, now: float,
                       call: Call | None = None) -> SipParseError:
        """A refused offer as the error that answers it (488 or 503 with a Warning, RFC 3261
        20.43); a refusal by the encryption policy is a security event."""
        self._count(f"refused.media.{error.status}")
        if error.security:
            self._security("media.refused", call, now, source=origin.host,
                           interface=origin.interface, transport=origin.transport,
                           reason=error.reason)
        own = self._own(origin)
        warning = '399 {} "{}"'.format(own.host, error.reason.replace('"', "'"))
        return SipParseError(error.reason, error.status, headers=(("Warning", warning),))

    def _security(self, kind: str, call: Call | None, now: float, **detail: object) -> None:
        event: dict[str, object] = {"type": kind, "time": now, **detail}
        if call is not None:
            event["call"] = call.a_invite.call_id
            event.setdefault("source", call.a_peer.host)
        self.events.append(event)
        self._count(f"security.{kind}")

    def _hangup(self, call: Call, now: float, why: str, reason: str) -> None:
        """The SBC ends a confirmed call itself (media timeout, maximum duration, a media
        policy failure): a BYE with a Reason (RFC 3326) on both legs."""
        if call.state is not CallState.CONFIRMED:
            return
        call.end_reason = why
        call.state = CallState.ENDING
        for relay in list(call.relays.values()):
            if not relay.final_sent:
                self._answer_relay(relay, build_response(relay.request, 487), now)
        for dialog, peer in ((call.b_dialog, call.b_peer), (call.a_dialog, call.a_peer)):
            if dialog is not None:
                bye = dialog.create_request("BYE", headers=[("Reason", reason)])
                self._start(bye, peer, call, "bye", now)

    def _record(self, call: Call) -> None:
        """The call record (CDR) of a call that ends, with its media statistics."""
        media = None
        if call.media is not None and self.media is not None:
            media = self.media.close(call.media)
        a, b = call.a_peer, call.b_peer
        answered = call.answered_at
        self.policy_events.append(CallEnded(
            source_ip=a.host, interface=a.interface,
            transport=a.transport.lower(), call_id=call.a_invite.call_id,
            duration=max(0.0, self._now - answered) if answered is not None else 0.0,
            status=call.a_status, account=call.account, destination=call.destination,
            trunk=call.trunk,
        ))
        self.records.append({
            "type": "call",
            "call_id": call.a_invite.call_id,
            "a": f"{a.transport}:{a.host}:{a.port}",
            "b": f"{b.transport}:{b.host}:{b.port}",
            "from": _user(call.a_invite.from_.uri),
            "to": _user(call.a_invite.uri),
            "trunk": call.trunk,
            "status": call.a_status,
            "created": call.created_at,
            "answered": call.answered_at,
            "end_reason": call.end_reason,
            "media": media,
        })

    # -- the rule engine's hooks -------------------------------------------------------------

    def _auth_failed(self, request: Request, source: Origin, status: int) -> None:
        """The PBX refused the credentials ``request`` carried (RFC 3261 22.2/22.3)."""
        if source.interface != EXTERNAL:
            return
        username = _digest_username(request)
        if username is None:
            return
        self.policy_events.append(AuthFailed(
            source_ip=source.host, interface=source.interface,
            transport=source.transport.lower(), method=request.method,
            username=username, account=username, status=status, ruri_user=_user(request.uri),
            from_user=_user(request.from_.uri),
            from_domain=getattr(request.from_.uri, "host", None),
            user_agent=request.headers.get("user-agent"),
        ))

    def call_ticks(self, now: float, interval: float) -> list[CallTick]:
        """A ``call_tick`` for every answered call (maximum duration enforced during the call)."""
        self._now = now
        out = []
        for call in self._live.values():
            if call.answered_at is None or call.state is CallState.ENDED:
                continue
            a = call.a_peer
            out.append(CallTick(source_ip=a.host, interface=a.interface,
                                transport=a.transport.lower(), call_id=call.a_invite.call_id,
                                duration=now - call.answered_at, interval=interval,
                                account=call.account, destination=call.destination,
                                trunk=call.trunk))
        return out

    def end_calls(self, key: str, value: str, now: float) -> int:
        """End the live calls whose ``key`` (``account``, ``call``, ``trunk``, ``source_ip``) is
        ``value``, for the rule engine: BYE on both legs of a confirmed call, CANCEL and 403 for
        one still ringing.  Returns how many."""
        self._now = now
        ended = 0
        for call in list(self._live.values()):
            if key == "account":
                hit = call.account == value
            elif key == "call":
                hit = call.a_invite.call_id == value
            elif key == "trunk":
                hit = call.trunk == value
            elif key == "source_ip":
                hit = call.a_peer.host == value
            else:
                hit = False
            if not hit:
                continue
            if call.state is CallState.CONFIRMED:
                self._hangup(call, now, "ended by policy",
                             'SIP;cause=403;text="Ended by policy"')
                ended += 1
            elif call.state is CallState.CALLING and not call.a_final_sent:
                call.end_reason = "ended by policy"
                if call.provisional and not call.cancel_pending:
                    call.cancel_pending = True
                    self._send_cancel(call, now)
                elif not call.provisional:
                    call.cancel_pending = True  # sent when the provisional comes
                self._fail_a_leg(call, 403, now)
                ended += 1
        return ended

    # -- helpers ---------------------------------------------------------------------------

    def _own(self, peer: Origin) -> SipAddress:
        return self.settings.own(peer.interface, peer.transport)

    def _send(self, peer: Origin, message: Request | Response,
              answered: Request | None = None) -> None:
        """Send ``message`` to ``peer``; ``answered`` is the request a response answers, when
        known (its Request-URI user and User-Agent go into the rule engine's event)."""
        self._commands.append(Send(peer.interface, peer.transport, peer.address, message))
        if (isinstance(message, Response) and message.status in POLICY_STATUSES
                and peer.interface == EXTERNAL):
            # What a scanner learns from: an answer outside that no user / wrong password.
            self.policy_events.append(ResponseSent(
                source_ip=peer.host, interface=peer.interface,
                transport=peer.transport.lower(),
                method=message.cseq.method, status=message.status,
                to_user=_user(message.to.uri), from_user=_user(message.from_.uri),
                ruri_user=_user(answered.uri) if answered is not None else None,
                user_agent=answered.headers.get("user-agent") if answered is not None else None,
            ))

    def _start(
        self, request: Request, peer: Origin, call: Call | None, role: str, now: float, *,
        via: bool = True, relay: _Relay | None = None,
    ) -> ClientTransaction:
        if via:
            request.headers.prepend("Via", self._own(peer).via(self.ids.branch()))
        txn = self.layers[peer.interface].start_client(request, now, reliable=peer.reliable)
        self._routes[txn] = _Route(peer, call, role, relay)
        self._pump(txn, now)
        return txn

    def _reject(
        self, request: Request, origin: Origin, now: float, status: int,
        extra: list[tuple[str, str]] | None = None, *, to_tag: str | None = None,
    ) -> None:
        """Answer ``request`` with ``status`` through a server transaction of its own (so a
        retransmission gets the same answer); statelessly when none can be made."""
        if request.method == "ACK":
            return
        if to_tag is None and request.to.tag is None:
            to_tag = self.ids.tag()
        response = build_response(request, status, to_tag=to_tag, extra=extra)
        layer = self.layers[origin.interface]
        try:
            txn = layer.create_server(request, now, reliable=origin.reliable, trying=False)
        except SipParseError:  # an RFC 2543 branch: answer statelessly
            self._send(origin, response, request)
            return
        self._routes[txn] = _Route(origin, None, "local")
        txn.send_response(response, now)
        self._pump(txn, now)

    def _crossing(self, headers: Headers) -> list[tuple[str, str]]:
        """The headers that cross to the other leg, with leg-bound option tags removed."""
        out = []
        for name, value in crossing_headers(headers):
            if canonical_name(name) in ("supported", "require"):
                tags = [t.strip() for t in value.split(",")]
                kept = [t for t in tags if t and t.lower() not in LEG_BOUND_OPTION_TAGS]
                if not kept:
                    continue
                value = ", ".join(kept)
            out.append((name, value))
        return out

    def _crossing_body(
        self, call: Call | None, source: Request | Response, to_side: str, *,
        now: float = 0.0, role: str | None = None,
    ) -> tuple[bytes, list[tuple[str, str]]]:
        """The body and headers of ``source`` as they may appear on ``to_side`` inside a call:
        SDP through :meth:`_cross_sdp`, a few address-free types as they are, nothing else."""
        headers = self._crossing(source.headers)
        content_type = source.content_type
        if not source.body:
            body = b""
        elif content_type == "application/sdp" and call is not None:
            body = self._cross_sdp(call, source, to_side, now=now, role=role)
        elif content_type in CROSSING_BODY_TYPES:
            body = source.body
        else:
            body = b""
        if not body:
            headers = [(n, v) for n, v in headers
                       if canonical_name(n) not in ("content-type", "content-disposition",
                                                    "content-encoding", "content-language")]
        return body, headers

    def _cross_sdp(self, call: Call, source: Request | Response, to_side: str,
                   parsed: SessionDescription | None = None, *, now: float = 0.0,
                   role: str | None = None) -> bytes:
        """The body of ``source`` as it may appear on ``to_side``: only SDP crosses, with the
        ``o=`` line the SBC's own (its address on that side, a session id per leg, a version
        bumped whenever the other side's SDP changed, RFC 3264 8).  ``parsed`` is the body
        already parsed (and, with a media relay, already rewritten) by the caller.  With a
        media relay, ``role`` (``"offer-a"``, ``"answer-b"``...: what the body is and which leg
        sent it) has the relay rewrite it; an SDP that is neither offer nor answer does not
        cross.  Raises :class:`SdpError` or :class:`MediaRefused`."""
        if not source.body or source.content_type != "application/sdp":
            return b""
        media = call.media
        if self.media is not None and media is not None and parsed is None:
            if role is None:
                return b""  # e.g. a body in the ACK of an INVITE that offered
            kind, leg = role.split("-")
            sdp = parse_sdp(source.body)
            if kind == "offer":
                sdp = self.media.offer(media, leg, sdp, source.body, now)
            else:  # an answer in an (unreliable) 18x does not settle the offer: its final does
                provisional = isinstance(source, Response) and source.status < 200
                sdp = self.media.answer(media, leg, sdp, source.body, now,
                                        provisional=provisional)
        else:
            sdp = parsed if parsed is not None else parse_sdp(source.body)
        origin = call.sdp.get(to_side)
        if origin is None:
            origin = call.sdp[to_side] = _SdpOrigin(_numeric_id(self.ids.token()))
        if origin.last != source.body:
            origin.version += 1
            origin.last = source.body
        own = self.settings.external if to_side == EXTERNAL else self.settings.internal
        return hide_sdp_body(sdp, address=own.host, sess_id=origin.sess_id,
                             sess_version=origin.version, username=SDP_USERNAME)


def _cancel_for(invite: Request) -> Request:
    """The CANCEL of ``invite`` (RFC 3261 9.1): its Request-URI, Call-ID, From, To, CSeq number
    and top Via (same branch), its Route, Max-Forwards 70."""
    h = Headers()
    h.add("Via", invite.headers.values("via")[0])
    h.add("Max-Forwards", "70")
    for route in invite.headers.get_all("route"):
        h.add("Route", route)
    h.add("From", invite.headers.get("from") or "")
    h.add("To", invite.headers.get("to") or "")
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return Request("CANCEL", invite.uri, h)


def _stamp_received(request: Request, origin: Origin) -> None:
    """Stamp ``received`` and ``rport`` on the top Via (RFC 3261 18.2.1, RFC 3581 4), so the
    responses, which copy it, tell a NATed client where they came from."""
    top = request.headers.pop_first_value("via")
    if top is not None:
        request.headers.prepend("Via", stamp_received(top, origin.host, origin.port))


_DIGEST_USERNAME = re.compile(r'(?i)\busername\s*=\s*"([^"]{1,128})"')


def _digest_username(request: Request) -> str | None:
    """The digest ``username`` of a request's Authorization or Proxy-Authorization."""
    for name in ("authorization", "proxy-authorization"):
        value = request.headers.get(name)
        if value:
            m = _DIGEST_USERNAME.search(value)
            if m:
                return m.group(1)
    return None


def _leg_dialog(call: Call, a: bool) -> Dialog | None:
    """A leg's dialog: the confirmed one, or while the call rings its early one."""
    confirmed = call.a_dialog if a else call.b_dialog
    if confirmed is not None or call.state is not CallState.CALLING:
        return confirmed
    return call.a_early if a else call.b_early


def _carry_sequence(dialog: Dialog, early: Dialog) -> None:
    """The CSeq numbers an early dialog used (UPDATE, INFO before the answer) go on in the
    confirmed dialog that replaces it (RFC 3261 12.2.1.1: they only increase)."""
    if early.local_seq is not None and (dialog.local_seq is None
                                         or early.local_seq > dialog.local_seq):
        dialog.local_seq = early.local_seq
    if early.remote_seq is not None and (dialog.remote_seq is None
                                          or early.remote_seq > dialog.remote_seq):
        dialog.remote_seq = early.remote_seq


def _user(uri: object) -> str | None:
    if isinstance(uri, SipUri):
        return uri.user
    if isinstance(uri, TelUri):
        return uri.number
    return None


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _numeric_id(token: str) -> str:
    """An SDP sess-id (digits, RFC 8866 5.2) derived from an opaque token of the IdSource."""
    return str(int.from_bytes(hashlib.sha256(token.encode()).digest()[:6], "big"))


__all__ = [
    "ALLOW",
    "EXTERNAL",
    "INTERNAL",
    "B2BUA",
    "B2buaSettings",
    "Call",
    "CallState",
    "Command",
    "Origin",
    "Send",
    "SipAddress",
    "Trunk",
    "TrunkRoute",
]


# Public names of the two request helpers, for the edge's rule-engine events.
uri_user = _user
digest_username = _digest_username
