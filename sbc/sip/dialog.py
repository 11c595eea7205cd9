"""SIP dialogs (RFC 3261 12): the state one UA keeps for one peer-to-peer relationship.

Theory of operation
-------------------
A :class:`Dialog` is one UA's side of one dialog.  The B2BUA keeps two per call, one per leg,
and they share nothing: each has its own Call-ID, tags, CSeq space, route set and remote target.
Everything here is pure: messages in, state changes and :class:`~sbc.sip.message.Request`
objects out, no clock and no I/O.

Creation (RFC 3261 12.1).  A dialog is created by a non-failure response to an INVITE that
carries a To tag: a 101-199 makes it *early*, a 2xx *confirmed*.

* UAC side, :meth:`Dialog.uac` (12.1.2): from the INVITE we sent and the response we received.
  Route set = the response's Record-Route reversed; remote target = its Contact; remote tag =
  its To tag; local/remote URI = From/To of the INVITE; local sequence = the INVITE's CSeq.
* UAS side, :meth:`Dialog.uas` (12.1.1): from the INVITE we received and the response we send.
  Route set = the request's Record-Route in order; remote target = its Contact; remote tag =
  its From tag; local tag = the To tag we put in the response; remote sequence = its CSeq.

Forking (12.1, 13.2.2.4).  Each 1xx/2xx with a new To tag makes another dialog; dialogs are
keyed by ``(call_id, local_tag, remote_tag)`` in a :class:`DialogTable`, which tells a response
that would create a new (forked) dialog from one that belongs to an existing one.

Early to confirmed (13.2.2.4).  When the 2xx arrives for an early dialog, the dialog becomes
confirmed and *both* its route set and its remote target are recomputed from the 2xx: 13.2.2.4
says the route set "MUST be recomputed based on the 2xx response" (12.1.2 adds that the
dialog-creating response's route set "overrides any pre-existing route set").  Once confirmed
the route set never changes (12.2); later provisional responses change nothing.  A target
refresh (re-INVITE or UPDATE, RFC 3311) changes the remote target only: on a received request
with a Contact (12.2.2) and on a 2xx to one we sent (12.2.1.2).  A non-2xx final response to the
initial INVITE ends the early dialog (12.3); a 481 or 408 to any in-dialog request ends the
dialog (12.2.1.2); a BYE sent or received ends it (15).

Requests we send (12.2.1.1): :meth:`Dialog.create_request` numbers them from the local sequence
and applies the route set (loose routing when the first route has ``lr``, else the RFC 2543
strict-routing form); :meth:`Dialog.create_ack` builds the ACK for a 2xx, which reuses the
INVITE's CSeq number (13.2.2.4).  CANCEL is not a dialog request: the transaction layer builds
it from the INVITE it cancels (9.1).  Requests carry no Via: the transaction and transport
layers add the top Via with its branch and sent-by (8.1.1.7, 18.1.1).  There is no ``now``
argument: dialogs have no timers of their own.

Requests we receive (12.2.2): :meth:`Dialog.receive_request` enforces the CSeq order (a number
not above the remote sequence is out of order: :class:`~sbc.errors.SipParseError` with 500),
records the new remote sequence, applies target refreshes and ends the dialog on BYE.  ACK and
CANCEL are outside that check: they carry the number of the INVITE they belong to.

Topology hiding.  A request built here contains only what the dialog computed (its URIs, tags,
Call-ID, CSeq, route set, local Contact) plus the headers the caller passes explicitly.  Nothing
is copied from a message of another leg, and the local URI and Contact are whatever the caller
put in the messages that created the dialog (or sets on the dialog).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sbc.errors import SbcError, SipParseError
from sbc.ids import IdSource
from sbc.sip.grammar import Params
from sbc.sip.headers import CSEQ_MAX, Headers, NameAddr, canonical_name
from sbc.sip.message import Message, Request, Response
from sbc.sip.uri import SipUri, TelUri, Uri, parse_uri

MAX_FORWARDS = 70  # RFC 3261 8.1.1.6: SHOULD be 70
_MAX_FORWARDS_TEXT = str(MAX_FORWARDS)
# Methods that may change the remote target (RFC 3261 12.2: re-INVITE; RFC 3311 5: UPDATE).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})
# Requests that carry the CSeq number of an INVITE rather than a new one (RFC 3261 9.1, 13.2.2.4).
_SAME_CSEQ_METHODS = frozenset({"ACK", "CANCEL"})


class DialogError(SbcError):
    """Our own misuse of a dialog (h11's ``LocalProtocolError``): a request the dialog may not
    send in its state, a response that creates no dialog, a CSeq space exhausted.  Never the
    peer's fault, so it carries no status code."""


class DialogState(enum.Enum):
    """RFC 3261 12.1: early (a 1xx with a To tag), confirmed (a 2xx), and terminated."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Role(enum.Enum):
    """The part this UA played in the INVITE transaction that created the dialog."""

    UAC = "uac"
    UAS = "uas"


@dataclass(frozen=True, slots=True)
class DialogId:
    """The dialog identifier of RFC 3261 12: Call-ID, local tag, remote tag.

    A missing tag (an RFC 2543 peer's From) is the empty string (12.1.1: "null")."""

    call_id: str
    local_tag: str
    remote_tag: str


@dataclass(eq=False, slots=True)
class Dialog:
    """The dialog state of one UA (RFC 3261 12): identifier, URIs, sequence numbers, remote
    target, route set, secure flag, local Contact and :class:`DialogState`.

    Build one with :meth:`uac` or :meth:`uas`; then feed it what arrives
    (:meth:`receive_request`, :meth:`receive_response`) and what this UA answers
    (:meth:`send_response`), and ask it for requests (:meth:`create_request`,
    :meth:`create_ack`).  ``local_uri`` and ``remote_uri`` are the From/To name-addr text without
    tag; ``local_seq`` is ``None`` until this UA sends a request in the dialog (a UAS's, 12.1.1)
    and ``remote_seq`` until the peer does (a UAC's, 12.1.2).

    ``remote_target`` and the ``route_set`` entries are the typed views of the Contact and
    Record-Route they were taken from (not copies: a dialog lives as long as its call, and a
    busy gateway keeps many): read-only, like every typed view.  The dialog itself only ever
    replaces them, and copies a URI before changing it for a request (:func:`route_request`).
    """

    role: Role
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: SipUri
    route_set: list[Uri] = field(default_factory=list)
    local_seq: int | None = None
    remote_seq: int | None = None
    secure: bool = False
    local_contact: str | None = None
    state: DialogState = DialogState.EARLY

    # -- creation (RFC 3261 12.1) -----------------------------------------------------------

    @classmethod
    def uac(cls, invite: Request, response: Response, *, tls: bool = False) -> Dialog:
        """The UAC's dialog (RFC 3261 12.1.2) from the INVITE we sent and a 101-299 response
        with a To tag that we received.

        ``tls``: the INVITE was sent over TLS (with a SIPS Request-URI, the dialog is secure).
        The local Contact is the INVITE's.  A 2xx without exactly one SIP/SIPS Contact raises
        :class:`SipParseError` with ``status=None`` (drop it); a 1xx without Contact is accepted,
        the Request-URI standing in for the remote target until the 2xx brings one.
        """
        remote_tag = response.to.tag
        if remote_tag is None or not 101 <= response.status <= 299:
            raise DialogError("only a 101-299 response with a To tag creates a dialog (12.1)")
        target = _contact_target(response, None)
        if target is None:
            if response.status >= 200:
                raise SipParseError("2xx creating a dialog without Contact (12.1.1)", None)
            stand_in = _request_uri(invite.uri)
            if not isinstance(stand_in, SipUri):  # a tel: Request-URI cannot be a target
                raise SipParseError("1xx without Contact to a non-SIP Request-URI", None)
            target = stand_in
        return cls(
            role=Role.UAC,
            call_id=invite.call_id,
            local_tag=invite.from_.tag or "",
            remote_tag=remote_tag,
            local_uri=_without_tag(invite.from_),
            remote_uri=_without_tag(invite.to),
            remote_target=target,
            route_set=[na.uri for na in reversed(response.record_routes)],
            local_seq=invite.cseq.seq,
            remote_seq=None,
            secure=tls and invite.uri.scheme.lower() == "sips",
            local_contact=_local_contact(invite),
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
        )

    @classmethod
    def uas(cls, invite: Request, response: Response, *, tls: bool = False) -> Dialog:
        """The UAS's dialog (RFC 3261 12.1.1) from the INVITE we received and the 101-299
        response with a To tag that we send.

        ``tls``: the INVITE arrived over TLS (with a SIPS Request-URI, the dialog is secure).
        The local Contact is the response's.  An INVITE without exactly one SIP/SIPS Contact
        raises :class:`SipParseError` with 400 (RFC 3261 8.1.1.8).
        """
        local_tag = response.to.tag
        if local_tag is None or not 101 <= response.status <= 299:
            raise DialogError("only a 101-299 response with a To tag creates a dialog (12.1)")
        target = _contact_target(invite, 400)
        if target is None:
            raise SipParseError("dialog-creating request without Contact (8.1.1.8)", 400)
        return cls(
            role=Role.UAS,
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_.tag or "",
            local_uri=_without_tag(invite.to),
            remote_uri=_without_tag(invite.from_),
            remote_target=target,
            route_set=[na.uri for na in invite.record_routes],
            local_seq=None,
            remote_seq=invite.cseq.seq,
            secure=tls and invite.uri.scheme.lower() == "sips",
            local_contact=_local_contact(response),
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
        )

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    # -- requests we send (RFC 3261 12.2.1.1) ------------------------------------------------

    def create_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """A request within the dialog (RFC 3261 12.2.1.1), numbered ``local_seq + 1``.

        Request-URI and Route follow the route set (loose or strict routing); target refresh
        requests (INVITE, UPDATE) carry the local Contact.  ``headers`` (e.g. Content-Type) are
        appended as given: the caller answers for what it adds.  No Via: the transaction layer
        adds it.  A BYE terminates the dialog at once (15.1.1); in that state only a BYE may
        still be built (a retry with credentials, 22.2).  Raises :class:`DialogError` for ACK
        and CANCEL (see :meth:`create_ack`; CANCEL belongs to the transaction layer, 9.1), a
        re-INVITE in an early dialog (14.1), a BYE from the callee in an early dialog (15), and
        any other request in a terminated dialog.
        """
        if method in _SAME_CSEQ_METHODS:
            raise DialogError(f"{method} reuses the INVITE's CSeq: not built by create_request")
        if self.state is DialogState.TERMINATED and method != "BYE":
            raise DialogError(f"{method} in a terminated dialog")
        if self.state is DialogState.EARLY:
            if method == "INVITE":
                raise DialogError("re-INVITE while the initial INVITE is pending (14.1)")
            if method == "BYE" and self.role is Role.UAS:
                raise DialogError("the callee may not send BYE in an early dialog (15)")
        # RFC 3261 12.2.1.1 / 8.1.1.5: a UAS's first request picks an initial number (1).
        seq = 1 if self.local_seq is None else self.local_seq + 1
        if seq > CSEQ_MAX:
            raise DialogError("local CSeq space exhausted (8.1.1.5: below 2**31)")
        if method in TARGET_REFRESH_METHODS and self.local_contact is None:
            raise DialogError(f"{method} is a target refresh and needs a local Contact")
        self.local_seq = seq
        request = self._build(method, seq, body, headers)
        if method == "BYE":
            self.state = DialogState.TERMINATED
        return request

    def create_ack(
        self,
        invite_cseq: int,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """The ACK for a 2xx to the INVITE numbered ``invite_cseq`` (RFC 3261 13.2.2.4).

        Built like any in-dialog request but with the INVITE's CSeq number and method ACK;
        ``local_seq`` does not move.  It is sent end to end, outside any transaction, so the
        caller adds a Via with a fresh branch.  The dialog must be confirmed.
        """
        if self.state is not DialogState.CONFIRMED:
            raise DialogError(f"ACK for a 2xx in a {self.state.value} dialog")
        if not 0 <= invite_cseq <= CSEQ_MAX:
            raise DialogError("CSeq number out of range")
        return self._build("ACK", invite_cseq, body, headers)

    def _build(
        self, method: str, seq: int, body: bytes, extra: Iterable[tuple[str, str]]
    ) -> Request:
        uri, routes = route_request(self.remote_target, self.route_set)
        # The header lines as Headers.add would file them, built in one go.
        entries = [("max-forwards", "Max-Forwards", _MAX_FORWARDS_TEXT)]
        # One line per Route value: no line grows with the route set.
        entries.extend(("route", "Route", route) for route in routes)
        entries.append(("from", "From", _with_tag(self.local_uri, self.local_tag)))
        entries.append(("to", "To", _with_tag(self.remote_uri, self.remote_tag)))
        entries.append(("call-id", "Call-ID", self.call_id))
        entries.append(("cseq", "CSeq", f"{seq} {method}"))
        if method in TARGET_REFRESH_METHODS and self.local_contact is not None:
            # RFC 3261 12.2.1.1, RFC 3311 5.1
            entries.append(("contact", "Contact", self.local_contact))
        entries.extend((canonical_name(name), name, value) for name, value in extra)
        return Request(method, uri, Headers._from_entries(entries), body)

    # -- requests we receive (RFC 3261 12.2.2) -----------------------------------------------

    def receive_request(self, request: Request) -> None:
        """Apply a request that matched this dialog (RFC 3261 12.2.2).

        Raises :class:`SipParseError` with 500 when its CSeq number is not above the remote
        sequence number (out of order; a retransmission never gets here, the transaction layer
        absorbs it), with 481 when the dialog is terminated, and with 400 for a target refresh
        whose Contact is not one SIP/SIPS URI; the dialog is unchanged then.  Otherwise the
        remote sequence number is updated, a target refresh with a Contact replaces the remote
        target, and a BYE terminates the dialog.  ACK and CANCEL carry their INVITE's number
        and are not checked against, nor recorded in, the remote sequence.
        """
        method = request.method
        if self.state is DialogState.TERMINATED:
            raise SipParseError("dialog terminated", None if method == "ACK" else 481)
        seq = request.cseq.seq
        last = self.remote_seq
        if method not in _SAME_CSEQ_METHODS and last is not None and seq <= last:
            raise SipParseError(f"CSeq {seq} out of order (last {last})", 500)
        target = _contact_target(request, 400) if method in TARGET_REFRESH_METHODS else None
        if method not in _SAME_CSEQ_METHODS:
            self.remote_seq = seq
        if target is not None:
            self.remote_target = target
        if method == "BYE":
            self.state = DialogState.TERMINATED

    # -- responses ---------------------------------------------------------------------------

    def receive_response(self, response: Response) -> None:
        """Apply a response (to a request this UA sent) that matched this dialog.

        For the initial INVITE of an early UAC dialog: a 2xx confirms it and recomputes route
        set and remote target from the 2xx (RFC 3261 13.2.2.4); a 300-699 terminates it (12.3);
        a 1xx changes nothing.  Otherwise a 2xx to a target refresh replaces the remote target
        with its Contact, if any (12.2.1.2); a 481 or 408 terminates the dialog (12.2.1.2).
        A malformed Contact raises :class:`SipParseError` with ``status=None`` (drop it) and
        leaves the dialog unchanged.
        """
        status = response.status
        method = response.cseq.method
        if self.state is DialogState.EARLY and self.role is Role.UAC and method == "INVITE":
            if 200 <= status <= 299:
                target = _contact_target(response, None)
                if target is None:
                    raise SipParseError("2xx confirming a dialog without Contact", None)
                self.remote_target = target
                self.route_set = [na.uri for na in reversed(response.record_routes)]
                self.state = DialogState.CONFIRMED
            elif status >= 300:
                self.state = DialogState.TERMINATED
            return
        if 200 <= status <= 299 and method in TARGET_REFRESH_METHODS:
            target = _contact_target(response, None)
            if target is not None:
                self.remote_target = target
        elif status in (408, 481):
            self.state = DialogState.TERMINATED

    def send_response(self, response: Response) -> None:
        """Record a response this UA sends in the dialog: for the initial INVITE of an early
        UAS dialog, a 2xx confirms it and a 300-699 terminates it (RFC 3261 12.1, 12.3)."""
        if (
            self.state is DialogState.EARLY
            and self.role is Role.UAS
            and response.cseq.method == "INVITE"
        ):
            if 200 <= response.status <= 299:
                self.state = DialogState.CONFIRMED
            elif response.status >= 300:
                self.state = DialogState.TERMINATED


# ---------------------------------------------------------------------------------------------
# Requests outside a dialog (RFC 3261 8.1.1)


def initial_request(
    ids: IdSource,
    method: str,
    request_uri: SipUri,
    *,
    local_uri: str,
    remote_uri: str,
    local_contact: str | None = None,
    route_set: Sequence[Uri] = (),
    cseq: int = 1,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
) -> Request:
    """A request outside any dialog (RFC 3261 8.1.1), e.g. the INVITE of the B leg.

    A new Call-ID and From tag come from ``ids``; ``local_uri`` and ``remote_uri`` are the
    From and To name-addr text (no tag); a preloaded ``route_set`` (an outbound proxy) is
    applied as in a dialog (8.1.2, 12.2.1.1).  The Contact is added when given.  No Via: the
    transaction layer adds it.  Pair the result with the response through :meth:`Dialog.uac`.
    """
    uri, routes = route_request(request_uri, list(route_set))
    # The header lines as Headers.add would file them, built in one go.
    entries = [("max-forwards", "Max-Forwards", _MAX_FORWARDS_TEXT)]
    entries.extend(("route", "Route", route) for route in routes)
    entries.append(("from", "From", _with_tag(local_uri, ids.tag())))
    entries.append(("to", "To", remote_uri))
    entries.append(("call-id", "Call-ID", ids.call_id()))
    entries.append(("cseq", "CSeq", f"{cseq} {method}"))
    if local_contact is not None:
        entries.append(("contact", "Contact", local_contact))
    entries.extend((canonical_name(name), name, value) for name, value in headers)
    return Request(method, uri, Headers._from_entries(entries), body)


def route_request(target: Uri, route_set: Sequence[Uri]) -> tuple[Uri, list[str]]:
    """The Request-URI and Route values for ``target`` through ``route_set`` (RFC 3261
    12.2.1.1).

    Loose routing (the first route has ``lr``): the target is the Request-URI and the route set
    the Route.  Strict routing (RFC 2543): the first route is the Request-URI, the rest of the
    route set then the target are the Route.  Parameters and headers a Request-URI may not
    carry (19.1.1: ``method``, ``?headers``) are stripped from whatever becomes one, and
    headers (not allowed in a Route either) from every Route value.
    """
    if not route_set:
        return _request_uri(target), []
    first = route_set[0]
    loose = isinstance(first, SipUri | TelUri) and "lr" in first.params
    if loose:
        return _request_uri(target), [_route_value(u) for u in route_set]
    rest = [_route_value(u) for u in route_set[1:]]
    return _request_uri(first), [*rest, f"<{_request_uri(target)}>"]


# ---------------------------------------------------------------------------------------------
# The dialog table (RFC 3261 12.2.2, 13.2.2.4)


@dataclass(frozen=True, slots=True)
class NewDialog:
    """A 101-299 response to an INVITE whose To tag no dialog has yet: it creates dialog
    ``id`` (RFC 3261 12.1.2), a fork of the call when ``siblings`` (the dialogs already made by
    the same INVITE, same Call-ID and local tag) is not empty (13.2.2.4)."""

    id: DialogId
    siblings: tuple[Dialog, ...]


class DialogTable:
    """The dialogs of one UA, keyed by :class:`DialogId`, with the matching rules of RFC 3261
    12.2.2 (a request: Call-ID, To tag = local tag, From tag = remote tag) and 12.2.1.2 / 13.2.2.4
    (a response: Call-ID, From tag = local tag, To tag = remote tag).

    A request with a To tag that matches nothing raises :class:`SipParseError` with 481 (no
    status for an ACK, which cannot be answered); a request without a To tag is outside any
    dialog and matches ``None``.  A response matches its dialog, a :class:`NewDialog` when its
    To tag would create one (forking), or ``None``.  Terminated dialogs stay until removed, so
    the responses to a BYE still match; the dialog itself refuses further requests.
    """

    def __init__(self) -> None:
        self._dialogs: dict[DialogId, Dialog] = {}
        # (call_id, local_tag) -> remote tags: the early dialogs of a forked INVITE.
        self._by_local: dict[tuple[str, str], list[str]] = {}

    def __len__(self) -> int:
        return len(self._dialogs)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._dialogs.values()))

    def __contains__(self, dialog_id: object) -> bool:
        return dialog_id in self._dialogs

    def get(self, dialog_id: DialogId) -> Dialog | None:
        return self._dialogs.get(dialog_id)

    def add(self, dialog: Dialog) -> None:
        """Add ``dialog``; raises :class:`DialogError` if its identifier is taken."""
        did = dialog.id
        if did in self._dialogs:
            raise DialogError(f"dialog {did} already exists")
        self._dialogs[did] = dialog
        self._by_local.setdefault((did.call_id, did.local_tag), []).append(did.remote_tag)

    def remove(self, dialog: Dialog) -> None:
        """Forget ``dialog`` (no error if it is not there)."""
        did = dialog.id
        if self._dialogs.get(did) is not dialog:
            return
        del self._dialogs[did]
        key = (did.call_id, did.local_tag)
        tags = self._by_local[key]
        tags.remove(did.remote_tag)
        if not tags:
            del self._by_local[key]

    def siblings(self, call_id: str, local_tag: str) -> list[Dialog]:
        """The dialogs sharing a Call-ID and local tag: those one INVITE created by forking."""
        tags = self._by_local.get((call_id, local_tag), [])
        return [self._dialogs[DialogId(call_id, local_tag, t)] for t in tags]

    def match_request(self, request: Request) -> Dialog | None:
        """The dialog of a received request (RFC 3261 12.2.2), ``None`` if it has no To tag."""
        to_tag = request.to.tag
        if to_tag is None:
            return None
        did = DialogId(request.call_id, to_tag, request.from_.tag or "")
        dialog = self._dialogs.get(did)
        if dialog is None:
            raise SipParseError("no such dialog", None if request.method == "ACK" else 481)
        return dialog

    def match_response(self, response: Response) -> Dialog | NewDialog | None:
        """The dialog of a received response, or the dialog it would create (12.1.2)."""
        to_tag = response.to.tag
        if to_tag is None:
            return None
        did = DialogId(response.call_id, response.from_.tag or "", to_tag)
        dialog = self._dialogs.get(did)
        if dialog is not None:
            return dialog
        if response.cseq.method == "INVITE" and 101 <= response.status <= 299:
            return NewDialog(did, tuple(self.siblings(did.call_id, did.local_tag)))
        return None


# ---------------------------------------------------------------------------------------------
# Helpers


def _contact_target(msg: Message, status: int | None) -> SipUri | None:
    """The URI of the message's single Contact, ``None`` without one; ``status`` is what to
    answer when there are several or it is not SIP/SIPS (RFC 3261 8.1.1.8)."""
    contacts = msg.contacts
    if not isinstance(contacts, list):
        raise SipParseError("Contact: * in a dialog", status)
    if not contacts:
        return None
    uri = contacts[0].uri
    if len(contacts) != 1 or not isinstance(uri, SipUri):
        raise SipParseError("Contact must be exactly one SIP or SIPS URI (8.1.1.8)", status)
    return uri  # the message's typed view: read-only, like the dialog's own copy of it


def _local_contact(msg: Message) -> str | None:
    """The Contact this UA wrote in a message it built, as text (in brackets, parameters kept)."""
    contacts = msg.contacts
    if not isinstance(contacts, list) or not contacts:
        return None
    na = contacts[0]
    # str(NameAddr(na.uri, na.display_name, na.params, angle=True)), without building one
    dn = "" if na.display_name is None else f"{na.display_name} "
    return f"{dn}<{na.uri}>{na.params.to_str()}"


def _request_uri(uri: Uri) -> Uri:
    """``uri`` as a Request-URI may carry it: no ``method`` parameter, no headers (19.1.1)."""
    if not isinstance(uri, SipUri):
        return parse_uri(str(uri))
    # uri.copy() without its "method" parameter and headers, built in one go
    params = Params(item for item in uri.params if item[0].lower() != "method")
    return SipUri(uri.scheme, uri.host, uri.user, uri.password, uri.port, params, [])


def _route_value(uri: Uri) -> str:
    if isinstance(uri, SipUri) and uri.headers:
        uri = uri.copy()
        uri.headers = []
    return f"<{uri}>"


def _without_tag(na: NameAddr) -> str:
    """From/To text for the dialog: display name and URI, in brackets; header params dropped
    (the tag is written from the dialog state)."""
    # str(NameAddr(na.uri, na.display_name, Params(), angle=True)), without building one
    dn = "" if na.display_name is None else f"{na.display_name} "
    return f"{dn}<{na.uri}>"


def _with_tag(name_addr: str, tag: str) -> str:
    return f"{name_addr};tag={tag}" if tag else name_addr


__all__ = [
    "MAX_FORWARDS",
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogError",
    "DialogId",
    "DialogState",
    "DialogTable",
    "NewDialog",
    "Role",
    "initial_request",
    "route_request",
]
