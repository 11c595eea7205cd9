"""SIP transactions (RFC 3261 17, updated by RFC 6026): the four state machines and the table
that matches messages to them, sans-I/O.

Theory of operation
-------------------
A transaction is one request and the responses to it (RFC 3261 17).  Each of the four machines
(INVITE and non-INVITE, client and server) is a plain object driven by three kinds of input, each
stamped with ``now`` (float seconds from any monotonic origin the driver likes):

* a message: :meth:`ClientTransaction.receive_response`, :meth:`ServerTransaction.receive_request`
  (a retransmission or an ACK) and, from the transaction user (TU), :meth:`ClientTransaction.start`
  and :meth:`ServerTransaction.send_response`;
* the clock: :meth:`Transaction.handle_timer` fires every timer whose deadline is ``<= now``;
* the transport: :meth:`Transaction.transport_error` when a send failed or a connection died.

Outputs are pulled, as in aioquic and h11:

* :meth:`Transaction.messages_to_send` -- the :class:`~sbc.sip.message.Request` or
  :class:`~sbc.sip.message.Response` objects to write, in order, on the transaction's own
  transport towards its own destination (which the driver keeps; a transaction knows no
  addresses).  Objects, not bytes, so the driver can route a response by its top Via; a
  retransmission is the very same object, so nobody may mutate a message once it is handed over;
* :meth:`Transaction.next_event` -- past-tense events for the TU (:class:`ResponseReceived`,
  :class:`AckReceived`, :class:`TimedOut`, :class:`TransportFailed`, :class:`Terminated`), or
  ``None``;
* :meth:`Transaction.get_timer` -- the earliest absolute deadline, or ``None``.  The driver arms
  one timer for it and calls :meth:`~Transaction.handle_timer` when it expires.

Timers A-M are deadlines in a small dict (:attr:`Transaction.deadlines`, keyed by the RFC's
letters).  Every input first fires the timers due at its ``now``, so a late driver cannot leave a
deadline in the past, and ``now`` never goes backwards (an earlier value is taken as the latest
seen).  A retransmission timer is re-armed from the moment it fired, so a late tick delays the
next retransmission instead of bursting.  When a timeout and a retransmission fall due at the
same instant the timeout wins.

Reliable transports (``reliable=True``: TCP, TLS, SCTP) never retransmit: timers A, E and G are
not armed (RFC 3261 17.1.1.2, 17.1.2.2, 17.2.1, 17.2.2), and timers D, I, J and K are zero, so the
transaction passes through Completed (or Confirmed) straight to Terminated in the same call.

INVITE 2xx handling follows RFC 6026, not RFC 3261 alone: a 2xx takes either INVITE machine to
**Accepted**.  The client stays there for Timer M (64*T1), passing every further 2xx (a
retransmission, or another fork) to the TU and never ACKing it: the ACK for a 2xx is end to end,
the TU's job (RFC 3261 13.2.2.4).  The server stays there for Timer L (64*T1), sending the 2xx
retransmissions the TU makes (RFC 3261 13.3.1.4), absorbing INVITE retransmissions, and passing a
matching ACK up as :class:`AckReceived`.  The ACK for a non-2xx final is hop by hop: the client
builds it (:func:`build_ack`, RFC 3261 17.1.1.3) and re-sends it for every retransmitted final;
the server absorbs it (Completed -> Confirmed) without telling the TU.

A transport error on a client transaction terminates it (with :class:`TransportFailed`) in the
states where RFC 3261 figures 5 and 6 draw that transition (INVITE: Calling and Completed;
non-INVITE: Trying and Proceeding); elsewhere nothing of the transaction's is in flight and the
report is ignored.  A server transaction tells the TU and stays in its state (RFC 6026 8.8, which
updates RFC 3261 17.2.4), so a retransmitted request is still absorbed, not taken for a new one;
its own timers end it.  Trying the next address of an RFC 3263 list before reporting is the
driver's business (RFC 3261 17.2.4).

Responses the RFC says to discard (a final from the TU after the final, anything after
Terminated) are discarded: :meth:`ServerTransaction.send_response` returns whether it took the
response.  Misuse by the local TU (starting twice, a status outside 100-699, a transaction for an
ACK) raises :class:`TransactionError`, like h11's ``LocalProtocolError``.

:class:`TransactionLayer` holds the transactions of one SIP element.  It matches responses to
client transactions by top Via branch and CSeq method (RFC 3261 17.1.3) and requests to server
transactions by branch, sent-by and method, an ACK matching its INVITE (RFC 3261 17.2.3).  It
finds the INVITE a CANCEL targets (RFC 3261 9.2), detects merged requests (RFC 3261 8.2.2.2; the
caller answers 482), keeps one heap of deadlines so :meth:`TransactionLayer.get_timer` is cheap,
and forgets a transaction the moment it terminates.  Requests whose top Via branch lacks the
RFC 3261 magic cookie (RFC 2543 peers) are not matched by the 17.2.3 fallback: creating a server
transaction for one raises :class:`~sbc.errors.SipParseError` with status 400.  A gateway on the
internet meets RFC 2543 only in scanners, and the fallback (Request-URI, tags, Call-ID, CSeq and
the whole top Via compared) would cost an index per field for nothing.  The table is not bounded
in size: admission control (rate limits per source) belongs to the policy layer in front of it.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from dataclasses import dataclass

from sbc.errors import SbcError, SipParseError
from sbc.sip.headers import Headers
from sbc.sip.message import Request, Response, build_response

T1 = 0.5  # seconds, RFC 3261 17.1.1.1: RTT estimate, initial retransmission interval
T2 = 4.0  # seconds, RFC 3261 17.1.2.2: cap on non-INVITE request and INVITE response intervals
T4 = 5.0  # seconds, RFC 3261 17.1.2.2: how long a message may linger in the network
TIMER_D_MIN = 32.0  # seconds, RFC 3261 17.1.1.2: Timer D is at least 32 s on unreliable ones


class TransactionError(SbcError):
    """The local TU misused a transaction (our fault, not the peer's): started it twice, passed a
    status outside 100-699, asked for a transaction for an ACK, or registered a duplicate."""


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """T1, T2 and T4 (RFC 3261 17.1.1.1, table 4), from which every timer A-M is derived.

    T1 may be raised on high-latency links; T2 and T4 "may" be changed too (RFC 3261 17.1.2.2).
    """

    t1: float = T1
    t2: float = T2
    t4: float = T4

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 > 0):
            raise ValueError("timer settings need 0 < T1 <= T2 and T4 > 0")

    @property
    def timeout(self) -> float:
        """Timers B, F, H, J (unreliable), L and M: 64*T1 (RFC 3261 table 4, RFC 6026)."""
        return 64 * self.t1

    @property
    def timer_d(self) -> float:
        """Timer D on unreliable transports: at least 32 s, and never shorter than the server's
        Timer H window it must cover (64*T1) when T1 is raised."""
        return max(TIMER_D_MIN, 64 * self.t1)


DEFAULT_TIMERS = TimerSettings()


class State(enum.Enum):
    """Transaction states, named as in RFC 3261 17 (and Accepted from RFC 6026)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


CALLING = State.CALLING
TRYING = State.TRYING
PROCEEDING = State.PROCEEDING
COMPLETED = State.COMPLETED
CONFIRMED = State.CONFIRMED
ACCEPTED = State.ACCEPTED
TERMINATED = State.TERMINATED


# ---------------------------------------------------------------------------------------------
# Events for the TU (past tense)


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response the TU must see: every provisional, the first final, and (RFC 6026) every
    2xx received in Accepted."""

    response: Response


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK matched an INVITE server transaction in Accepted: an ACK for a 2xx that reused the
    INVITE's branch, which is the TU's to handle (RFC 3261 13.3.1.4).  ACKs for non-2xx finals are
    absorbed and produce no event (RFC 3261 17.2.1)."""

    request: Request


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Timer B, F or H fired: no final response, or no ACK, arrived in time (RFC 3261 17)."""

    timer: str


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport reported a failure to send (RFC 3261 17.1.4; RFC 6026 8.8 for servers)."""


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction reached Terminated; it will send nothing more and can be forgotten."""


Event = ResponseReceived | AckReceived | TimedOut | TransportFailed | Terminated
_TERMINATED = Terminated()  # immutable and without fields: one instance serves every machine
SipMessage = Request | Response
_TIMEOUT_TIMERS = frozenset("BFH")  # at a tie with a retransmission timer, these fire first


# ---------------------------------------------------------------------------------------------
# Messages the transaction layer builds itself


def build_trying(request: Request) -> Response:
    """``100 Trying`` for ``request`` (RFC 3261 8.2.6.1): Via, From, To (no tag), Call-ID, CSeq
    and any Timestamp copied, no body."""
    timestamp = request.headers.get("timestamp")
    extra = [("Timestamp", timestamp)] if timestamp is not None else None
    return build_response(request, 100, extra=extra)


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 response (RFC 3261 17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE, CSeq method ACK, the To of the
    response (with its tag), only the top Via of the INVITE, the INVITE's Route header fields, and
    its Max-Forwards (70 if it had none, RFC 3261 8.1.1.6).  No body.
    """
    h = Headers()
    h.add("Via", invite.headers.values("via")[0])
    h.add("Max-Forwards", invite.headers.get("max-forwards") or "70")
    for route in invite.headers.get_all("route"):
        h.add("Route", route)
    h.add("From", invite.headers.get("from") or "")
    h.add("To", response.headers.get("to") or "")
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq.seq} ACK")
    return Request("ACK", invite.uri, h)


def _check_status(response: Response) -> int:
    if not 100 <= response.status <= 699:
        raise TransactionError(f"status {response.status} outside 100-699")
    return response.status


# ---------------------------------------------------------------------------------------------
# The machines


class Transaction:
    """What the four machines share: the request, the transport kind, the state, deadlines and
    the queues of messages to send and events for the TU."""

    _TRANSITIONS: frozenset[tuple[State, State]] = frozenset()

    def __init__(
        self, request: Request, *, reliable: bool, timers: TimerSettings, state: State
    ) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.state = state
        self._deadlines: dict[str, float] = {}
        # Both queues exist only while they hold something: most of a transaction's life is
        # spent lingering with nothing queued, and a busy gateway keeps tens of thousands of
        # lingering transactions, so two empty containers each are memory (and garbage-
        # collector work) for nothing.  A transaction queues one to three events: a list.
        self._outgoing: list[SipMessage] | None = None
        self._events: list[Event] | None = None
        self._now = float("-inf")
        # Set by TransactionLayer: told after every input so it can re-file the deadline (the
        # layer itself rather than a bound method: one object less per live transaction).
        self._layer: TransactionLayer | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state.value}>"

    # Outputs ---------------------------------------------------------------------------------

    def messages_to_send(self) -> list[SipMessage]:
        """The messages to write since the last call, in order (and forget them)."""
        out = self._outgoing
        if out is None:
            return []
        self._outgoing = None
        return out

    def next_event(self) -> Event | None:
        """The next event for the TU, or ``None`` when there is none."""
        events = self._events
        if events is None:
            return None
        event = events.pop(0)
        if not events:
            self._events = None
        return event

    def get_timer(self) -> float | None:
        """The earliest absolute deadline, or ``None`` when no timer is armed."""
        return min(self._deadlines.values()) if self._deadlines else None

    @property
    def deadlines(self) -> dict[str, float]:
        """The armed timers by RFC letter (``{"A": 1.5, "B": 32.0}``), a copy."""
        return dict(self._deadlines)

    @property
    def terminated(self) -> bool:
        return self.state is TERMINATED

    # Inputs shared by all machines -----------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is ``<= now``."""
        self._advance(now)
        self._notify()

    def transport_error(self, now: float) -> None:
        """The transport failed to send this transaction's last message (RFC 3261 17.1.4,
        RFC 6026 8.8); see the module docstring for what each side does with it."""
        now = self._advance(now)
        self._on_transport_error(now)
        self._notify()

    def abandon(self) -> None:
        """The TU gives up on this transaction (the connection it used is gone, or it waited
        too long): it ends at once, without sending anything more."""
        if self.state is not TERMINATED:
            self.state = TERMINATED
            self._deadlines.clear()
            self._queue(_TERMINATED)
            self._notify()

    # Machinery -------------------------------------------------------------------------------

    def _advance(self, now: float) -> float:
        """Clamp ``now`` to be monotonic and fire the timers due by then, earliest first."""
        if now > self._now:
            self._now = now
        now = self._now
        deadlines = self._deadlines
        while deadlines and self.state is not TERMINATED:
            if min(deadlines.values()) > now:
                break  # nothing due: the usual case, decided without the tie-break below
            name = min(deadlines, key=lambda n: (deadlines[n], n not in _TIMEOUT_TIMERS))
            del deadlines[name]
            self._on_timer(name, now)
        return now

    def _notify(self) -> None:
        if self._layer is not None:
            self._layer._changed(self)

    def _enter(self, state: State) -> None:
        assert (self.state, state) in self._TRANSITIONS, (self.state, state)
        self.state = state
        if state is TERMINATED:
            self._deadlines.clear()
            self._queue(_TERMINATED)

    def _arm(self, name: str, now: float, duration: float) -> None:
        self._deadlines[name] = now + duration

    def _cancel(self, *names: str) -> None:
        for name in names:
            self._deadlines.pop(name, None)

    def _linger(self, state: State, timer: str, now: float, duration: float) -> None:
        """Enter ``state`` (Completed or Confirmed) and wait ``duration`` there, or pass
        straight through to Terminated when it is zero (reliable transports)."""
        self._enter(state)
        if self.reliable:
            self._enter(TERMINATED)
        else:
            self._arm(timer, now, duration)

    def _send(self, message: SipMessage) -> None:
        if self._outgoing is None:
            self._outgoing = [message]
        else:
            self._outgoing.append(message)

    def _queue(self, event: Event) -> None:
        """Queue ``event`` for the TU (see :meth:`next_event`)."""
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def _on_timer(self, name: str, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_transport_error(self, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class ClientTransaction(Transaction):
    """The client side: sends a request, retransmits it on unreliable transports, and hands the
    responses to the TU.  Build one with :meth:`create` and send with :meth:`start`; the top Via
    of the request must carry the branch that identifies it (RFC 3261 8.1.1.7)."""

    def __init__(
        self, request: Request, *, reliable: bool, timers: TimerSettings, state: State
    ) -> None:
        via = request.top_via
        if via is None or via.branch is None:
            raise TransactionError("a client transaction needs a top Via with a branch")
        super().__init__(request, reliable=reliable, timers=timers, state=state)
        self.branch: str = via.branch
        self._started = False
        self._interval = timers.t1  # current Timer A / Timer E interval

    @staticmethod
    def create(
        request: Request, *, reliable: bool, timers: TimerSettings = DEFAULT_TIMERS
    ) -> ClientTransaction:
        """An INVITE or non-INVITE client transaction for ``request``, not started yet.  An ACK
        has no client transaction (RFC 3261 17.1): the TU sends the ACK for a 2xx itself."""
        if request.method == "ACK":
            raise TransactionError("ACK has no client transaction")
        if request.method == "INVITE":
            return InviteClientTransaction(request, reliable=reliable, timers=timers)
        return NonInviteClientTransaction(request, reliable=reliable, timers=timers)

    @property
    def key(self) -> tuple[str, str]:
        """What a response must carry to match (RFC 3261 17.1.3): branch and CSeq method."""
        return (self.branch.lower(), self.request.method)

    def start(self, now: float) -> None:
        """Send the request and arm the first timers (the TU initiates the transaction)."""
        if self._started:
            raise TransactionError("transaction already started")
        self._started = True
        now = self._advance(now)
        self._send(self.request)
        self._on_start(now)
        self._notify()

    def receive_response(self, response: Response, now: float) -> None:
        """A response matching this transaction arrived from the transport."""
        if not self._started:
            raise TransactionError("transaction not started")
        status = _check_status(response)
        now = self._advance(now)
        self._on_response(response, status, now)
        self._notify()

    def _on_start(self, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_response(
        self, response: Response, status: int, now: float
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.1 with RFC 6026 (figure 5 there): Calling -> Proceeding on 1xx, Completed on
    300-699 (ACK built and sent here, Timer D absorbs retransmitted finals), Accepted on 2xx
    (Timer M).  Timer A retransmits in Calling on unreliable transports, Timer B times out."""

    _TRANSITIONS = frozenset(
        {
            (CALLING, PROCEEDING),
            (CALLING, COMPLETED),
            (CALLING, ACCEPTED),
            (CALLING, TERMINATED),
            (PROCEEDING, COMPLETED),
            (PROCEEDING, ACCEPTED),
            (COMPLETED, TERMINATED),
            (ACCEPTED, TERMINATED),
        }
    )

    def __init__(
        self, request: Request, *, reliable: bool, timers: TimerSettings = DEFAULT_TIMERS
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers, state=CALLING)
        self.ack: Request | None = None  # the ACK for the non-2xx final, once built

    def _on_start(self, now: float) -> None:
        if not self.reliable:
            self._arm("A", now, self._interval)  # RFC 3261 17.1.1.2
        self._arm("B", now, self.timers.timeout)

    def _on_timer(self, name: str, now: float) -> None:
        if name == "A":  # retransmit, doubling each time (17.1.1.2)
            self._send(self.request)
            self._interval *= 2
            self._arm("A", now, self._interval)
        elif name == "B":
            self._queue(TimedOut("B"))
            self._enter(TERMINATED)
        else:  # D in Completed, M in Accepted
            self._enter(TERMINATED)

    def _on_response(self, response: Response, status: int, now: float) -> None:
        state = self.state
        if state in (CALLING, PROCEEDING):
            self._queue(ResponseReceived(response))
            self._cancel("A", "B")  # a provisional stops retransmissions (17.1.1.2)
            if status < 200:
                if state is CALLING:
                    self._enter(PROCEEDING)
            elif status < 300:
                self._enter(ACCEPTED)  # RFC 6026 8.4
                self._arm("M", now, self.timers.timeout)
            else:
                self.ack = build_ack(self.request, response)
                self._send(self.ack)
                self._linger(COMPLETED, "D", now, self.timers.timer_d)
        elif state is COMPLETED:
            if status >= 300:  # a retransmitted final: ACK again, the TU has seen it (17.1.1.2)
                assert self.ack is not None
                self._send(self.ack)
        elif state is ACCEPTED and 200 <= status < 300:
            self._queue(ResponseReceived(response))  # RFC 6026 8.4

    def _on_transport_error(self, now: float) -> None:
        if self.state in (CALLING, COMPLETED):  # RFC 3261 figure 5
            self._queue(TransportFailed())
            self._enter(TERMINATED)


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.2 (figure 6): Trying -> Proceeding on 1xx -> Completed on 200-699 (Timer K
    absorbs retransmitted finals).  Timer E retransmits, doubling up to T2 and at T2 once a
    provisional arrived; Timer F times out."""

    _TRANSITIONS = frozenset(
        {
            (TRYING, PROCEEDING),
            (TRYING, COMPLETED),
            (TRYING, TERMINATED),
            (PROCEEDING, COMPLETED),
            (PROCEEDING, TERMINATED),
            (COMPLETED, TERMINATED),
        }
    )

    def __init__(
        self, request: Request, *, reliable: bool, timers: TimerSettings = DEFAULT_TIMERS
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers, state=TRYING)

    def _on_start(self, now: float) -> None:
        if not self.reliable:
            self._arm("E", now, self._interval)  # RFC 3261 17.1.2.2
        self._arm("F", now, self.timers.timeout)

    def _on_timer(self, name: str, now: float) -> None:
        if name == "E":
            self._send(self.request)
            if self.state is TRYING:
                self._interval = min(2 * self._interval, self.timers.t2)
            else:  # Proceeding: reset to T2 (17.1.2.2)
                self._interval = self.timers.t2
            self._arm("E", now, self._interval)
        elif name == "F":
            self._queue(TimedOut("F"))
            self._enter(TERMINATED)
        else:  # K
            self._enter(TERMINATED)

    def _on_response(self, response: Response, status: int, now: float) -> None:
        if self.state not in (TRYING, PROCEEDING):
            return  # Completed absorbs retransmitted finals (17.1.2.2)
        self._queue(ResponseReceived(response))
        if status < 200:
            if self.state is TRYING:
                self._enter(PROCEEDING)
        else:
            self._cancel("E", "F")
            self._linger(COMPLETED, "K", now, self.timers.t4)

    def _on_transport_error(self, now: float) -> None:
        if self.state in (TRYING, PROCEEDING):  # RFC 3261 figure 6
            self._queue(TransportFailed())
            self._enter(TERMINATED)


class ServerTransaction(Transaction):
    """The server side: absorbs retransmitted requests (answering them with the last response),
    sends the TU's responses and retransmits an INVITE's non-2xx final on unreliable transports.
    Build one with :meth:`create` when a request matches no transaction."""

    def __init__(
        self, request: Request, *, reliable: bool, timers: TimerSettings, state: State
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers, state=state)
        self.last_response: Response | None = None
        # The keys a TransactionLayer filed this transaction under (set by create_server).
        self._keys: tuple[ServerKey, MergeKey] | None = None

    @staticmethod
    def create(
        request: Request,
        now: float,
        *,
        reliable: bool,
        timers: TimerSettings = DEFAULT_TIMERS,
        trying: bool = True,
    ) -> ServerTransaction:
        """An INVITE or non-INVITE server transaction for a new ``request``.

        For an INVITE, ``trying=True`` (the default) sends ``100 Trying`` at once: RFC 3261 17.2.1
        asks for one unless the TU answers within 200 ms, and a gateway that consults policy and a
        store before forwarding cannot promise that.  Pass ``trying=False`` when the TU answers
        at once (a stateless-looking reject) and send :func:`build_trying` later if it wants.
        """
        if request.method == "ACK":
            raise TransactionError("ACK has no server transaction of its own")
        if request.method == "INVITE":
            return InviteServerTransaction(
                request, now, reliable=reliable, timers=timers, trying=trying
            )
        return NonInviteServerTransaction(request, now, reliable=reliable, timers=timers)

    def receive_request(self, request: Request, now: float) -> None:
        """A request matching this transaction arrived: a retransmission, or (INVITE) an ACK."""
        now = self._advance(now)
        self._on_request(request, now)
        self._notify()

    def send_response(self, response: Response, now: float) -> bool:
        """Send the TU's ``response``; ``False`` when the RFC says to discard it (a response after
        the final one, or after Terminated), ``True`` when it was queued."""
        status = _check_status(response)
        now = self._advance(now)
        taken = self._on_send(response, status, now)
        self._notify()
        return taken

    def _on_transport_error(self, now: float) -> None:
        # RFC 6026 8.8 (updating RFC 3261 17.2.4): inform the TU and stay, so that a
        # retransmitted request is still absorbed rather than taken for a new one.
        if self.state is not TERMINATED:
            self._queue(TransportFailed())

    def _resend_last(self) -> None:
        if self.last_response is not None:
            self._send(self.last_response)

    def _respond(self, response: Response) -> None:
        self.last_response = response
        self._send(response)

    def _on_request(self, request: Request, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_send(
        self, response: Response, status: int, now: float
    ) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.1 with RFC 6026 (figure 7 there): Proceeding -> Completed on a 300-699 from
    the TU (Timer G retransmits it, Timer H waits for the ACK) -> Confirmed on ACK (Timer I) ->
    Terminated; Proceeding -> Accepted on a 2xx (Timer L)."""

    _TRANSITIONS = frozenset(
        {
            (PROCEEDING, COMPLETED),
            (PROCEEDING, ACCEPTED),
            (COMPLETED, CONFIRMED),
            (COMPLETED, TERMINATED),
            (CONFIRMED, TERMINATED),
            (ACCEPTED, TERMINATED),
        }
    )

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        reliable: bool,
        timers: TimerSettings = DEFAULT_TIMERS,
        trying: bool = True,
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers, state=PROCEEDING)
        self._now = now
        self._interval = timers.t1  # current Timer G interval
        if trying:
            self._respond(build_trying(request))

    def _on_request(self, request: Request, now: float) -> None:
        if request.method == "ACK":
            if self.state is COMPLETED:  # absorbed, not passed to the TU (17.2.1)
                self._cancel("G", "H")
                self._linger(CONFIRMED, "I", now, self.timers.t4)
            elif self.state is ACCEPTED:
                self._queue(AckReceived(request))  # the 2xx's ACK: the TU's
        elif request.method == "INVITE":
            if self.state in (PROCEEDING, COMPLETED):
                # Proceeding: the last provisional (if any); Completed: the final (17.2.1).
                self._resend_last()
            # Confirmed and Accepted absorb it (17.2.1; RFC 6026 7.1, 8.7).
        else:
            raise TransactionError(f"{request.method} does not belong to an INVITE transaction")

    def _on_send(self, response: Response, status: int, now: float) -> bool:
        if self.state is PROCEEDING:
            self._respond(response)
            if 200 <= status < 300:
                self._enter(ACCEPTED)  # RFC 6026 8.5
                self._arm("L", now, self.timers.timeout)
            elif status >= 300:
                self._enter(COMPLETED)
                if not self.reliable:
                    self._arm("G", now, self._interval)
                self._arm("H", now, self.timers.timeout)
            return True
        if self.state is ACCEPTED and 200 <= status < 300:
            self._respond(response)  # the TU's own 2xx retransmission (RFC 6026 8.7)
            return True
        return False

    def _on_timer(self, name: str, now: float) -> None:
        if name == "G":  # 17.2.1: doubling, capped at T2
            self._resend_last()
            self._interval = min(2 * self._interval, self.timers.t2)
            self._arm("G", now, self._interval)
        elif name == "H":
            self._queue(TimedOut("H"))
            self._enter(TERMINATED)
        else:  # I in Confirmed, L in Accepted
            self._enter(TERMINATED)


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.2 (figure 8): Trying -> Proceeding on a 1xx from the TU -> Completed on a
    200-699 (Timer J keeps answering retransmissions with it) -> Terminated."""

    _TRANSITIONS = frozenset(
        {
            (TRYING, PROCEEDING),
            (TRYING, COMPLETED),
            (PROCEEDING, COMPLETED),
            (COMPLETED, TERMINATED),
        }
    )

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        reliable: bool,
        timers: TimerSettings = DEFAULT_TIMERS,
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers, state=TRYING)
        self._now = now

    def _on_request(self, request: Request, now: float) -> None:
        if request.method != self.request.method:
            raise TransactionError(f"{request.method} does not belong to this transaction")
        if self.state in (PROCEEDING, COMPLETED):
            self._resend_last()  # Trying discards it: nothing to answer with yet (17.2.2)

    def _on_send(self, response: Response, status: int, now: float) -> bool:
        if self.state not in (TRYING, PROCEEDING):
            return False  # finals after the first are discarded (17.2.2)
        self._respond(response)
        if status < 200:
            if self.state is TRYING:
                self._enter(PROCEEDING)
        else:
            self._linger(COMPLETED, "J", now, self.timers.timeout)
        return True

    def _on_timer(self, name: str, now: float) -> None:
        self._enter(TERMINATED)  # J


# ---------------------------------------------------------------------------------------------
# The table

ClientKey = tuple[str, str]  # (branch lower-cased, method)
ServerKey = tuple[str, str, int | None, str]  # (branch lower-cased, host lower-cased, port, method)
MergeKey = tuple[str | None, str, int, str]  # (From tag, Call-ID, CSeq number, CSeq method)


def server_key(request: Request, method: str | None = None) -> ServerKey | None:
    """How a request finds its server transaction (RFC 3261 17.2.3): the top Via branch and
    sent-by, and the method, ACK counting as INVITE; ``method`` overrides it (CANCEL -> INVITE,
    RFC 3261 9.2).  ``None`` when the branch lacks the magic cookie (RFC 2543).  Branches and
    hosts compare case-insensitively (RFC 3261 7.3.1)."""
    via = request.top_via
    if via is None or not via.rfc3261_branch:
        return None
    branch = via.branch
    assert branch is not None
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    return (branch.lower(), via.host.lower(), via.port, method)


def _merge_key(request: Request) -> MergeKey:
    cseq = request.cseq
    return (request.from_.tag, request.call_id, cseq.seq, cseq.method)


class TransactionLayer:
    """Every transaction of one SIP element, matched by the RFC 3261 17.1.3 and 17.2.3 rules,
    with one earliest deadline across all of them.

    Responses go through :meth:`receive_response` and requests through :meth:`receive_request`;
    each returns the transaction that took the message, or ``None`` (a stray response; a new
    request, for which the caller checks :meth:`is_merged` and calls :meth:`create_server`; an
    ACK for a 2xx, which belongs to the dialog).  Transactions may also be driven directly (the
    TU calls ``send_response``): they tell the table, which re-files their deadline and drops
    them once Terminated.  The driver arms one timer for :meth:`get_timer` and calls
    :meth:`handle_timer`, then drains the transactions it returns.
    """

    def __init__(self, timers: TimerSettings = DEFAULT_TIMERS) -> None:
        self.timers = timers
        self._clients: dict[ClientKey, ClientTransaction] = {}
        self._servers: dict[ServerKey, ServerTransaction] = {}
        self._merge: dict[MergeKey, ServerTransaction] = {}
        # A heap of (deadline, seq, txn) with lazy deletion: an entry is live while
        # _scheduled[txn] still equals its deadline.
        self._heap: list[tuple[float, int, Transaction]] = []
        self._scheduled: dict[Transaction, float] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    # Creating ------------------------------------------------------------------------------

    def start_client(self, request: Request, now: float, *, reliable: bool) -> ClientTransaction:
        """Create, register and start the client transaction for ``request``."""
        txn = ClientTransaction.create(request, reliable=reliable, timers=self.timers)
        if txn.key in self._clients:
            raise TransactionError(f"a client transaction with branch {txn.branch} exists")
        self._clients[txn.key] = txn
        txn._layer = self
        txn.start(now)
        return txn

    def create_server(
        self, request: Request, now: float, *, reliable: bool, trying: bool = True
    ) -> ServerTransaction:
        """Create and register the server transaction for a request that matched none.

        Raises :class:`~sbc.errors.SipParseError` (400) for a top Via branch without the
        RFC 3261 magic cookie: sbc does not match RFC 2543 requests (see the module docstring).
        """
        key = server_key(request)
        if key is None:
            raise SipParseError("Via branch without the RFC 3261 magic cookie", 400)
        if key in self._servers:
            raise TransactionError("a server transaction for this request exists")
        txn = ServerTransaction.create(
            request, now, reliable=reliable, timers=self.timers, trying=trying
        )
        mkey = _merge_key(request)
        self._servers[key] = txn
        self._merge.setdefault(mkey, txn)
        txn._keys = (key, mkey)  # what _forget removes (not recomputed from the request)
        txn._layer = self
        return txn

    # Matching ------------------------------------------------------------------------------

    def match_response(self, response: Response) -> ClientTransaction | None:
        """The client transaction ``response`` belongs to (RFC 3261 17.1.3), if any."""
        via = response.top_via
        if via is None or via.branch is None:
            return None
        return self._clients.get((via.branch.lower(), response.cseq.method))

    def find_client(self, branch: str, method: str) -> ClientTransaction | None:
        """The client transaction that sent a request with top Via ``branch`` and CSeq
        ``method`` (for a transport error reported by the edge, RFC 3261 17.1.4)."""
        return self._clients.get((branch.lower(), method))

    def match_request(self, request: Request) -> ServerTransaction | None:
        """The server transaction ``request`` belongs to (RFC 3261 17.2.3), if any: the one it
        retransmits, or for an ACK the INVITE it acknowledges (ACKs for 2xx carry a new branch
        and normally match nothing: they belong to the dialog)."""
        key = server_key(request)
        return None if key is None else self._servers.get(key)

    def receive_response(self, response: Response, now: float) -> ClientTransaction | None:
        """Match ``response`` and feed it to its transaction, which is returned; ``None`` for a
        stray response (the caller drops it, RFC 3261 18.1.2 / RFC 6026 7.5)."""
        txn = self.match_response(response)
        if txn is not None:
            txn.receive_response(response, now)
        return txn

    def receive_request(self, request: Request, now: float) -> ServerTransaction | None:
        """Match ``request`` and feed it to its transaction (absorbing a retransmission or an
        ACK), which is returned; ``None`` when it starts a new transaction or is an ACK that
        matched none."""
        txn = self.match_request(request)
        if txn is not None:
            txn.receive_request(request, now)
        return txn

    def find_invite_for_cancel(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL targets (RFC 3261 9.2): the one the CANCEL would
        match with its method taken as INVITE."""
        key = server_key(cancel, "INVITE")
        txn = None if key is None else self._servers.get(key)
        return txn if isinstance(txn, InviteServerTransaction) else None

    def is_merged(self, request: Request) -> bool:
        """True when ``request`` has no To tag and the From tag, Call-ID and CSeq of an ongoing
        server transaction it does not match: a request that forked and came back by another
        path, which the caller answers with 482 (RFC 3261 8.2.2.2)."""
        if request.method == "ACK" or request.to.tag is not None:
            return False
        txn = self._merge.get(_merge_key(request))
        return txn is not None and txn is not self.match_request(request)

    # Time ----------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction, or ``None``."""
        heap = self._heap
        while heap:
            when, _, txn = heap[0]
            if self._scheduled.get(txn) == when:
                return when
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> list[Transaction]:
        """Fire the due timers of every transaction; returns the transactions that fired, in
        deadline order, for the driver to drain (terminated ones included, already forgotten)."""
        fired: dict[Transaction, None] = {}
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, txn = heapq.heappop(heap)
            if self._scheduled.get(txn) != when:
                continue
            del self._scheduled[txn]
            txn.handle_timer(now)
            fired[txn] = None
        return list(fired)

    def _changed(self, txn: Transaction) -> None:
        if txn.state is TERMINATED:
            self._forget(txn)
        else:
            when = txn.get_timer()
            if when == self._scheduled.get(txn):
                return
            if when is None:
                del self._scheduled[txn]
            else:
                self._scheduled[txn] = when
                heapq.heappush(self._heap, (when, next(self._seq), txn))
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            # Drop the stale entries, so moved deadlines cannot pile up garbage.
            self._heap = [e for e in self._heap if self._scheduled.get(e[2]) == e[0]]
            heapq.heapify(self._heap)

    def _forget(self, txn: Transaction) -> None:
        self._scheduled.pop(txn, None)
        txn._layer = None
        if isinstance(txn, ClientTransaction):
            if self._clients.get(txn.key) is txn:
                del self._clients[txn.key]
            return
        assert isinstance(txn, ServerTransaction)
        if txn._keys is None:
            return
        key, mkey = txn._keys
        if self._servers.get(key) is txn:
            del self._servers[key]
        if self._merge.get(mkey) is txn:
            del self._merge[mkey]


__all__ = [
    "ACCEPTED",
    "CALLING",
    "COMPLETED",
    "CONFIRMED",
    "DEFAULT_TIMERS",
    "PROCEEDING",
    "T1",
    "T2",
    "T4",
    "TERMINATED",
    "TIMER_D_MIN",
    "TRYING",
    "AckReceived",
    "ClientTransaction",
    "Event",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "ResponseReceived",
    "ServerTransaction",
    "SipMessage",
    "State",
    "Terminated",
    "TimedOut",
    "TimerSettings",
    "Transaction",
    "TransactionError",
    "TransactionLayer",
    "TransportFailed",
    "build_ack",
    "build_trying",
    "server_key",
]
