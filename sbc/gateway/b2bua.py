"""The B2BUA call core, first slice: calls from the external side to the PBX, sans-I/O.

Theory of operation
-------------------
A :class:`B2BUA` is the SBC's transaction user (RFC 3261 6: a back-to-back user agent).  It
owns two :class:`~sbc.sip.transaction.TransactionLayer` objects, one per interface
(``"external"``: the internet, ``"internal"``: the PBX), and a table of :class:`Call` objects,
each made of an A-leg (the external caller, for which the SBC is the UAS) and a B-leg (the PBX,
for which the SBC is the UAC).  Inputs are :meth:`B2BUA.receive` (a parsed message, the
:class:`Origin` it came from, ``now``) and :meth:`B2BUA.handle_timer`; outputs are
:class:`Send` commands, pulled with :meth:`B2BUA.commands`, and one deadline,
:meth:`B2BUA.get_timer`.  Nothing here reads a clock, opens a socket or draws randomness: the
:class:`~sbc.ids.IdSource` is injected.

Every message a leg carries is built here for that leg.  What crosses from the other leg goes
through :mod:`sbc.gateway.topology` only: the end-to-end headers of
:func:`~sbc.gateway.topology.crossing_headers` and the SDP body with its ``o=`` line replaced by
the SBC's own (:func:`~sbc.gateway.topology.hide_sdp_session`), ``s=`` set to ``-`` and the
session-level ``i=``, ``u=``, ``e=``, ``p=`` lines dropped (they name the far side's product or
operator).  Reason phrases are not copied (the standard phrase for the status is written), nor
are Via, Contact, Record-Route, Call-ID, tags, CSeq, Server or User-Agent.  The ``c=`` and
``m=`` lines of the SDP are **not** rewritten yet: until media anchoring exists, media flows
directly between the phone and the PBX's media address, which therefore still shows in the SDP.

The slice covers:

* an INVITE from the external side: :func:`~sbc.sip.message.check_request` (416, 420, 483),
  482 for a merged request (RFC 3261 8.2.2.2), 400 without exactly one SIP Contact, 488 for an
  SDP offer that does not parse, 100 Trying, and a fresh B-leg INVITE towards the
  PBX (new Call-ID, From tag and branch; Max-Forwards decremented per RFC 3261 16.6 step 3, so a
  request arriving with 1 is forwarded with 0 and only 0 is answered 483, RFC 3261 16.3 step 3);
* the B-leg's responses relayed on the A-leg with the SBC's own To tag (one per call) and
  Contact; a non-2xx final is ACKed by the B-leg transaction and its A-leg copy's ACK absorbed
  by the A-leg transaction; a 2xx confirms both dialogs, and the B-leg 2xx is ACKed end to end
  **when the A-leg ACK arrives** (so an SDP answer in the ACK can be relayed in the B-leg ACK).
  A retransmitted B-leg 2xx is relayed again on the A-leg before that ACK (that is how the A-leg
  2xx is retransmitted, RFC 3261 13.3.1.4, when the B-leg is unreliable) and answered with the
  same B-leg ACK after it.  (When the B-leg is reliable the PBX does not retransmit, and the
  A-leg 2xx is then not retransmitted either: a TU timer for it is still to come.)  If the
  phone never ACKs (Timer L), the B-leg is ACKed and both legs get a BYE (RFC 3261 13.3.1.4);
  a BYE from the phone before its ACK ACKs the B-leg first.  A 2xx whose SDP does not parse
  is refused with 502 on the A-leg, ACKed and hung up on the B-leg;
* CANCEL of a pending INVITE: 200 to the CANCEL, a CANCEL on the B-leg built from the B-leg
  INVITE (RFC 3261 9.1; held until the B-leg has a provisional response), and the B-leg's final
  (normally 487) relayed.  If the PBX sends no final within 64*T1 of the CANCEL, the A-leg gets
  487 anyway (RFC 3261 9.1);
* BYE from either side of a confirmed call: 200 to it, a BYE on the other leg from that leg's
  :class:`~sbc.sip.dialog.Dialog`, the call forgotten once that BYE has its final response or
  times out;
* 481 for a request with a To tag that matches no call (an ACK is dropped), 408 on the A-leg
  when the B-leg INVITE times out (Timer B), 503 when its transport fails, 501 for requests
  inside a call other than BYE (re-INVITE, UPDATE, INFO... are the next slice), 404 for an
  INVITE from the PBX side (calls to registered users are the next slice), 405 for any other
  request outside a call.

Every received request gets ``received``/``rport`` on its top Via (RFC 3261 18.2.1, RFC 3581).
Responses to the A-leg go to the address the request came from (RFC 3581 symmetric response);
requests on the A-leg go to the address the call's INVITE came from, not to its Contact, so a
phone behind NAT is reached.  Everything towards the PBX goes to the configured PBX address.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
from dataclasses import dataclass, field

from sbc.errors import SdpError, SipParseError
from sbc.gateway.stateless import stamp_received
from sbc.gateway.topology import crossing_headers, hide_sdp_session
from sbc.ids import IdSource
from sbc.media.sdp import parse_sdp
from sbc.sip.dialog import Dialog, initial_request
from sbc.sip.headers import Headers, NameAddr
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
from sbc.sip.uri import SipUri, TelUri

EXTERNAL = "external"
INTERNAL = "internal"
RELIABLE_TRANSPORTS = frozenset({"tcp", "tls", "sctp", "ws", "wss"})  # RFC 3261 18: no retransmits
ALLOW = "INVITE, ACK, CANCEL, BYE"
SDP_USERNAME = "-"  # RFC 8866 5.2: "-" when the host does not support user ids

Address = tuple[str, int]


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
        return f"SIP/2.0/{self.transport.upper()} {self.host}:{self.port};branch={branch}"

    def contact(self) -> str:
        """A Contact value pointing at this address."""
        transport = "" if self.transport.lower() == "udp" else f";transport={self.transport}"
        return f"<sip:{self.host}:{self.port}{transport}>"


@dataclass(frozen=True, slots=True)
class B2buaSettings:
    """The SBC's addresses on each side (written into its Via and Contact), the PBX to send
    calls to, the domain of the From towards the PBX, the transaction timers and the option
    tags the SBC supports (a Require naming anything else is answered 420)."""

    external: SipAddress
    internal: SipAddress
    pbx: SipAddress
    domain: str
    timers: TimerSettings = DEFAULT_TIMERS
    supported: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a received message came from: the interface, the transport and the source
    address (host, port)."""

    interface: str
    transport: str
    host: str
    port: int

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    @property
    def reliable(self) -> bool:
        return self.transport.lower() in RELIABLE_TRANSPORTS


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
    """One call: the A-leg (external caller, SBC as UAS) and the B-leg (PBX, SBC as UAC)."""

    a_invite: Request
    a_origin: Origin
    a_txn: ServerTransaction
    a_tag: str
    b_invite: Request
    b_txn: ClientTransaction | None = None
    a_dialog: Dialog | None = None
    b_dialog: Dialog | None = None
    b_ack: Request | None = None
    state: CallState = CallState.CALLING
    provisional: bool = False  # the B-leg INVITE has had a provisional (RFC 3261 9.1)
    cancel_pending: bool = False
    cancel_deadline: float | None = None
    a_final_sent: bool = False
    # SDP origin per leg: session id, version, and the last body that crossed to that leg.
    sdp: dict[str, _SdpOrigin] = field(default_factory=dict)

    @property
    def a_key(self) -> tuple[str, str, str]:
        return (EXTERNAL, self.a_invite.call_id, self.a_tag)

    @property
    def b_key(self) -> tuple[str, str, str]:
        return (INTERNAL, self.b_invite.call_id, self.b_invite.from_.tag or "")


@dataclass(slots=True)
class _SdpOrigin:
    sess_id: str
    version: int = 0
    last: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a transaction's messages go, and what it is for."""

    interface: str
    transport: str
    destination: Address
    call: Call | None
    role: str  # "a-invite", "b-invite", "b-cancel", "bye", "local"


class B2BUA:
    """The pure B2BUA: messages in with their :class:`Origin` and ``now``, :class:`Send`
    commands out, one deadline (see the module docstring for what this slice does)."""

    def __init__(self, settings: B2buaSettings, ids: IdSource) -> None:
        self.settings = settings
        self.ids = ids
        self.layers = {
            EXTERNAL: TransactionLayer(settings.timers),
            INTERNAL: TransactionLayer(settings.timers),
        }
        self.calls: dict[tuple[str, str, str], Call] = {}
        # Per-event work must not grow with the number of calls: live calls and the calls with
        # a CANCEL give-up timer are kept apart, by identity, so neither needs a scan of calls.
        self._live: dict[int, Call] = {}
        self._cancelling: dict[int, Call] = {}
        self._routes: dict[Transaction, _Route] = {}
        self._commands: list[Command] = []

    # -- outputs ---------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        """The commands produced since the last call, in order (and forget them)."""
        out, self._commands = self._commands, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction or call, or ``None``."""
        deadlines = [layer.get_timer() for layer in self.layers.values()]
        deadlines.extend(call.cancel_deadline for call in self._cancelling.values())
        return min((d for d in deadlines if d is not None), default=None)

    def __len__(self) -> int:
        """The number of calls in progress."""
        return len(self._live)

    def _set_cancel_deadline(self, call: Call, deadline: float | None) -> None:
        call.cancel_deadline = deadline
        if deadline is None:
            self._cancelling.pop(id(call), None)
        else:
            self._cancelling[id(call)] = call

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, message: Request | Response, origin: Origin, now: float) -> None:
        """Handle one parsed message from ``origin``."""
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
            self._request(message, origin, now)
        except SipParseError as e:
            if e.status is not None:
                self._reject(message, origin, now, e.status, list(e.headers))
        except SdpError as e:
            self._reject(message, origin, now, e.status)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        for layer in self.layers.values():
            for txn in layer.handle_timer(now):
                self._pump(txn, now)
        for call in list(self._cancelling.values()):
            if call.cancel_deadline is not None and call.cancel_deadline <= now:
                self._set_cancel_deadline(call, None)
                self._fail_a_leg(call, 487, now)  # RFC 3261 9.1: give up waiting after 64*T1

    # -- requests --------------------------------------------------------------------------

    def _request(self, request: Request, origin: Origin, now: float) -> None:
        layer = self.layers[origin.interface]
        if request.method == "CANCEL":
            self._cancel(request, origin, now)
            return
        check_request(request, self.settings.supported)
        if layer.is_merged(request):
            self._reject(request, origin, now, 482)
            return
        if request.to.tag is not None:
            self._in_dialog(request, origin, now)
        elif request.method == "INVITE" and origin.interface == EXTERNAL:
            self._invite(request, origin, now)
        elif request.method == "INVITE":
            self._reject(request, origin, now, 404)  # no routing to registered users yet
        else:
            self._reject(request, origin, now, 405, [("Allow", ALLOW)])

    def _invite(self, invite: Request, origin: Origin, now: float) -> None:
        s = self.settings
        if not isinstance(invite.uri, SipUri | TelUri):
            raise SipParseError("unroutable Request-URI", 416)
        contacts = invite.contacts
        if not isinstance(contacts, list) or len(contacts) != 1 or not isinstance(
            contacts[0].uri, SipUri
        ):
            raise SipParseError("INVITE without one Contact (RFC 3261 8.1.1.8)", 400)
        user = _user(invite.uri)
        if not user:
            raise SipParseError("Request-URI without a user", 404)
        # RFC 3261 16.6 step 3: the forwarded request carries Max-Forwards minus one; 0 was
        # answered 483 by check_request (16.3 step 3).
        max_forwards = invite.max_forwards
        max_forwards = 70 if max_forwards is None else max_forwards
        if invite.body and invite.content_type == "application/sdp":
            parse_sdp(invite.body)  # an offer we cannot read is refused (488) before any state
        a_txn = self.layers[EXTERNAL].create_server(invite, now, reliable=origin.reliable)
        self._routes[a_txn] = _Route(EXTERNAL, origin.transport, origin.address, None, "a-invite")
        a_tag = self.ids.tag()

        from_ = invite.from_
        from_user = _user(from_.uri) or "anonymous"
        local_uri = str(NameAddr(SipUri("sip", s.domain, user=from_user), from_.display_name))
        remote_uri = str(NameAddr(SipUri("sip", s.pbx.host, user=user)))
        ruri = SipUri("sip", s.pbx.host, user=user, port=s.pbx.port)
        headers = crossing_headers(invite.headers)
        b_invite = initial_request(
            self.ids, "INVITE", ruri, local_uri=local_uri, remote_uri=remote_uri,
            local_contact=s.internal.contact(), headers=headers,
        )
        b_invite.headers.set("Max-Forwards", str(max_forwards - 1))
        call = Call(invite, origin, a_txn, a_tag, b_invite)
        b_invite.body = self._cross_sdp(call, invite, INTERNAL)
        if not b_invite.body:
            b_invite.headers.remove("content-type")
        self._routes[a_txn] = _Route(EXTERNAL, origin.transport, origin.address, call, "a-invite")
        self.calls[call.a_key] = call
        self.calls[call.b_key] = call
        self._live[id(call)] = call
        self._pump(a_txn, now)  # the 100 Trying
        call.b_txn = self._start(b_invite, INTERNAL, s.pbx.transport, s.pbx.address, call,
                                 "b-invite", now)

    def _cancel(self, cancel: Request, origin: Origin, now: float) -> None:
        layer = self.layers[origin.interface]
        invite_txn = layer.find_invite_for_cancel(cancel)
        route = None if invite_txn is None else self._routes.get(invite_txn)
        call = None if route is None else route.call
        if call is None or origin.interface != EXTERNAL:
            self._reject(cancel, origin, now, 481)  # RFC 3261 9.2
            return
        self._reject(cancel, origin, now, 200, to_tag=call.a_tag)  # RFC 3261 9.2: same To tag
        if call.state is not CallState.CALLING or call.cancel_pending:
            return  # already answered or already cancelled: the 200 is all (RFC 3261 9.2)
        call.cancel_pending = True
        if call.provisional:
            self._send_cancel(call, now)

    def _send_cancel(self, call: Call, now: float) -> None:
        """The CANCEL of the B-leg INVITE (RFC 3261 9.1): its Request-URI, Call-ID, From, To,
        CSeq number and top Via (same branch), its Route, Max-Forwards 70."""
        invite = call.b_invite
        h = Headers()
        h.add("Via", invite.headers.values("via")[0])
        h.add("Max-Forwards", "70")
        for route in invite.headers.get_all("route"):
            h.add("Route", route)
        h.add("From", invite.headers.get("from") or "")
        h.add("To", invite.headers.get("to") or "")
        h.add("Call-ID", invite.call_id)
        h.add("CSeq", f"{invite.cseq.seq} CANCEL")
        cancel = Request("CANCEL", invite.uri, h)
        pbx = self.settings.pbx
        self._start(cancel, INTERNAL, pbx.transport, pbx.address, call, "b-cancel", now,
                    via=False)
        self._set_cancel_deadline(call, now + self.settings.timers.timeout)

    def _in_dialog(self, request: Request, origin: Origin, now: float) -> None:
        call = self.calls.get((origin.interface, request.call_id, request.to.tag or ""))
        dialog = None
        if call is not None:
            dialog = call.a_dialog if origin.interface == EXTERNAL else call.b_dialog
        if call is None or dialog is None or dialog.remote_tag != (request.from_.tag or ""):
            self._reject(request, origin, now, 481)
            return
        if request.method != "BYE":
            dialog.receive_request(request)  # CSeq order (500) and state (481) first
            self._reject(request, origin, now, 501)
            return
        dialog.receive_request(request)
        self._reject(request, origin, now, 200)
        self._bye_other_leg(call, request, origin.interface, now)

    def _bye_other_leg(self, call: Call, bye: Request, from_side: str, now: float) -> None:
        headers = crossing_headers(bye.headers)
        call.state = CallState.ENDING
        if from_side == EXTERNAL:
            assert call.b_dialog is not None
            if call.b_ack is None:  # a BYE before the phone's ACK: ACK the PBX's 2xx first
                self._ack_b(call)
            request = call.b_dialog.create_request("BYE", headers=headers)
            pbx = self.settings.pbx
            self._start(request, INTERNAL, pbx.transport, pbx.address, call, "bye", now)
        else:
            assert call.a_dialog is not None
            request = call.a_dialog.create_request("BYE", headers=headers)
            a = call.a_origin
            self._start(request, EXTERNAL, a.transport, a.address, call, "bye", now)

    def _ack(self, ack: Request, origin: Origin, now: float) -> None:
        """An ACK that matched no transaction: the ACK of a 2xx (RFC 3261 13.2.2.4), which the
        SBC answers with its own ACK on the B-leg; anything else is dropped."""
        if origin.interface != EXTERNAL or ack.to.tag is None:
            return
        call = self.calls.get((EXTERNAL, ack.call_id, ack.to.tag))
        if call is None or call.a_dialog is None or call.b_dialog is None:
            return
        if call.a_dialog.remote_tag != (ack.from_.tag or "") or ack.cseq.seq != (
            call.a_invite.cseq.seq
        ):
            return
        self._ack_received(call, ack, now)

    def _ack_received(self, call: Call, ack: Request, now: float) -> None:
        if call.b_ack is None:
            assert call.b_dialog is not None
            try:
                body = self._cross_sdp(call, ack, INTERNAL)
            except SdpError:
                body = b""  # an ACK cannot be refused; the PBX gets no answer (RFC 3261 13.3.1.4)
            headers = crossing_headers(ack.headers) if body else []
            b_ack = call.b_dialog.create_ack(call.b_invite.cseq.seq, body=body, headers=headers)
            b_ack.headers.prepend("Via", self.settings.internal.via(self.ids.branch()))
            call.b_ack = b_ack
            if call.state is CallState.ANSWERED:
                call.state = CallState.CONFIRMED
        self._send_b_ack(call)

    def _send_b_ack(self, call: Call) -> None:
        assert call.b_ack is not None
        pbx = self.settings.pbx
        self._commands.append(Send(INTERNAL, pbx.transport, pbx.address, call.b_ack))

    def _stray_2xx(self, response: Response, origin: Origin, now: float) -> None:
        """A 2xx retransmission after the B-leg INVITE transaction ended (Timer M): re-ACK it
        if it belongs to a call whose ACK was sent (RFC 3261 13.2.2.4)."""
        if origin.interface != INTERNAL:
            return
        call = self.calls.get((INTERNAL, response.call_id, response.from_.tag or ""))
        if call is not None and call.b_ack is not None and response.cseq.seq == (
            call.b_invite.cseq.seq
        ):
            self._send_b_ack(call)

    # -- transaction events ----------------------------------------------------------------

    def _pump(self, txn: Transaction, now: float) -> None:
        """Turn a transaction's outgoing messages into commands and handle its events."""
        route = self._routes.get(txn)
        while True:
            for message in txn.messages_to_send():
                if route is not None:
                    self._commands.append(
                        Send(route.interface, route.transport, route.destination, message)
                    )
            event = txn.next_event()
            if event is None:
                break
            if route is not None:
                self._event(txn, route, event, now)
        if txn.terminated:
            self._routes.pop(txn, None)

    def _event(self, txn: Transaction, route: _Route, event: Event, now: float) -> None:
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
            elif isinstance(event, TransportFailed):
                self._fail_a_leg(call, 503, now)  # RFC 3261 8.1.3.1
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

    def _b_invite_response(self, call: Call, response: Response, now: float) -> None:
        status = response.status
        if status == 100:
            call.provisional = True  # hop by hop: the A-leg had its own 100 Trying
        elif status < 200:
            call.provisional = True
            if call.state is CallState.CALLING and not call.a_final_sent:
                # A provisional is optional: one with a broken body is not relayed.
                with contextlib.suppress(SdpError):
                    self._relay_response(call, response, now)
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
        self._set_cancel_deadline(call, None)
        call.cancel_pending = False
        if call.state is not CallState.CALLING or call.a_final_sent:
            # The A-leg already has its final (a 487 after our own timeout): hang up the B-leg.
            self._ack_and_bye_b(call, now)
            return
        try:
            a_response = self._relay_response(call, response, now)
        except SdpError:  # an answer the phone could not use: refuse the call on both legs
            self._fail_a_leg(call, 502, now)
            self._ack_and_bye_b(call, now)
            return
        call.a_dialog = Dialog.uas(call.a_invite, a_response)
        call.state = CallState.ANSWERED

    def _no_ack(self, call: Call, now: float) -> None:
        """Timer L ended the A-leg INVITE transaction with our 2xx never ACKed: the dialog is
        confirmed but the session is ended with a BYE on both legs (RFC 3261 13.3.1.4)."""
        assert call.a_dialog is not None
        self._ack_and_bye_b(call, now)
        bye = call.a_dialog.create_request("BYE")
        a = call.a_origin
        self._start(bye, EXTERNAL, a.transport, a.address, call, "bye", now)

    def _ack_b(self, call: Call) -> None:
        """ACK the PBX's 2xx without waiting for the phone's ACK (no body)."""
        assert call.b_dialog is not None
        b_ack = call.b_dialog.create_ack(call.b_invite.cseq.seq)
        b_ack.headers.prepend("Via", self.settings.internal.via(self.ids.branch()))
        call.b_ack = b_ack
        self._send_b_ack(call)

    def _ack_and_bye_b(self, call: Call, now: float) -> None:
        assert call.b_dialog is not None
        if call.b_ack is None:
            self._ack_b(call)
        bye = call.b_dialog.create_request("BYE")
        pbx = self.settings.pbx
        call.state = CallState.ENDING
        self._start(bye, INTERNAL, pbx.transport, pbx.address, call, "bye", now)

    def _relay_response(self, call: Call, response: Response, now: float) -> Response:
        """The A-leg copy of a B-leg response to the INVITE: built from the A-leg INVITE, the
        SBC's To tag and Contact, the crossing headers and the SDP with the SBC's origin."""
        status = response.status
        extra = crossing_headers(response.headers)
        body = self._cross_sdp(call, response, EXTERNAL) if status < 300 else b""
        if not body:
            extra = [(n, v) for n, v in extra if n.lower() not in ("content-type", "c")]
        if status < 300:
            extra.insert(0, ("Contact", self.settings.external.contact()))
        a_response = build_response(
            call.a_invite, status, REASON_PHRASES.get(status, "Unknown"),
            to_tag=call.a_tag, extra=extra, body=body,
        )
        if status >= 200:
            call.a_final_sent = True
        call.a_txn.send_response(a_response, now)
        self._pump(call.a_txn, now)
        return a_response

    def _fail_a_leg(self, call: Call, status: int, now: float) -> None:
        if not call.a_final_sent:
            call.a_final_sent = True
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
        call.state = CallState.ENDED
        self._set_cancel_deadline(call, None)
        for key in (call.a_key, call.b_key):
            if self.calls.get(key) is call:
                del self.calls[key]
        self._live.pop(id(call), None)

    # -- helpers ---------------------------------------------------------------------------

    def _start(
        self, request: Request, interface: str, transport: str, destination: Address,
        call: Call, role: str, now: float, *, via: bool = True,
    ) -> ClientTransaction:
        if via:
            own = self.settings.external if interface == EXTERNAL else self.settings.internal
            request.headers.prepend("Via", own.via(self.ids.branch()))
        reliable = transport.lower() in RELIABLE_TRANSPORTS
        txn = self.layers[interface].start_client(request, now, reliable=reliable)
        self._routes[txn] = _Route(interface, transport, destination, call, role)
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
            self._commands.append(Send(origin.interface, origin.transport, origin.address,
                                       response))
            return
        self._routes[txn] = _Route(origin.interface, origin.transport, origin.address, None,
                                   "local")
        txn.send_response(response, now)
        self._pump(txn, now)

    def _cross_sdp(self, call: Call, source: Request | Response, to_side: str) -> bytes:
        """The body of ``source`` as it may appear on ``to_side``: only SDP crosses, with the
        ``o=`` line the SBC's own (its address on that side, a session id per leg, a version
        bumped whenever the other side's SDP changed, RFC 3264 8).  Raises :class:`SdpError`."""
        if not source.body or source.content_type != "application/sdp":
            return b""
        sdp = parse_sdp(source.body)
        origin = call.sdp.get(to_side)
        if origin is None:
            origin = call.sdp[to_side] = _SdpOrigin(_numeric_id(self.ids.token()))
        if origin.last != source.body:
            origin.version += 1
            origin.last = source.body
        own = self.settings.external if to_side == EXTERNAL else self.settings.internal
        return hide_sdp_session(sdp, address=own.host, sess_id=origin.sess_id,
                                sess_version=origin.version, username=SDP_USERNAME).to_bytes()


def _stamp_received(request: Request, origin: Origin) -> None:
    """Stamp ``received`` and ``rport`` on the top Via (RFC 3261 18.2.1, RFC 3581 4), so the
    responses, which copy it, tell a NATed client where they came from."""
    top = request.headers.pop_first_value("via")
    if top is not None:
        request.headers.prepend("Via", stamp_received(top, origin.host, origin.port))


def _user(uri: object) -> str | None:
    if isinstance(uri, SipUri):
        return uri.user
    if isinstance(uri, TelUri):
        return uri.number
    return None


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
]
