"""Registration relay: the SBC's view of who is registered through it, and on which flow.

Theory of operation
-------------------
The SBC is not the registrar; the PBX is.  A REGISTER from the outside is relayed to the PBX
with each of the client's Contacts replaced by an SBC address whose user part is an opaque,
unguessable token (``<sip:{token}@{sbc}:{port};transport={t}>``).  The PBX then routes calls for
the user to the SBC, and the token tells the SBC which binding, and so which connection
(flow), to deliver them on (RFC 5626 4.3: requests to a UA behind NAT go back over the flow its
REGISTER came on).  The client's real Contact stays inside the SBC and never reaches the PBX;
the PBX's tokens and hosts never reach the client (topology hiding).

Digest authentication stays the PBX's: its 401/407 challenge and the client's answer pass
through unchanged (RFC 3261 22.4).  The registrar only watches the outcome: a challenge to a
request that already carried credentials, or a 403, is an authentication failure, counted per
source IP and per username in :class:`AuthFailures` for the rule engine.

One REGISTER goes through two calls.  :meth:`Registrar.prepare_register` reads the client's
request and says what the PBX-side REGISTER must carry (token Contacts, Expires) plus a handle;
new bindings are created *pending* so that the token survives the challenge round trip.
:meth:`Registrar.on_pbx_response` applies the PBX's final answer: 2xx activates, refreshes or
removes bindings and says what to tell the client; 401/407 leave things as they are; other
failures drop the bindings the request was creating.

Expiries are split (registration caching).  The client is told at most
``client_max_expires`` so that it refreshes often enough to keep its NAT binding and connection
alive; the PBX is asked for at least ``pbx_min_expires`` so that it is not flooded with
refreshes.  Because the client then refreshes far more often than the PBX needs, the B2BUA may
answer a refresh locally (:meth:`Registrar.answer_locally`) when nothing changed and the PBX-side
registration is not near its end (:meth:`Registrar.needs_pbx_refresh`).

Deliverability is :meth:`Registrar.lookup`: an active binding on a live flow is delivered to;
an unknown token is 404; a binding whose flow closed, whose registration expired, or that is
still pending is 480, and the call is never sent anywhere else (RFC 5626 5.3).  Time is always
passed in as ``now`` (seconds); the registrar reads no clock and does no I/O.

Other SBC nodes learn who is registered here through :attr:`Registrar.changes`: a
:class:`BindingChange` is appended whenever a binding becomes live (the PBX's 2xx), is refreshed
(relayed or answered locally: its client-side deadline moves), or stops being live (unregistered
or superseded by a REGISTER, swept at expiry, its flow closed).  The edge drains them and writes
them to the shared store; the registrar itself never does.  A binding counts as live from its
activation until its removal, expiry or flow death, whichever comes first, and each of those is
reported once.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from sbc.ids import IdSource
from sbc.sip.headers import NameAddr, _Star
from sbc.sip.message import Request, Response
from sbc.sip.uri import SipUri

Flow = Hashable  # opaque identity of a connection/flow, given by the transport layer
Address = tuple[str, int]  # (ip, port)

DEFAULT_EXPIRES = 3600  # seconds, asked for when the client gives none (RFC 3261 10.2.1.1)
PENDING_TIMEOUT = 32.0  # seconds, 64*T1: a REGISTER transaction's life (RFC 3261 17.1.2.2)
TOKEN_BYTES = 16  # entropy of a token: it is the only thing that routes a call to a user
REFRESH_FRACTION = 0.1  # refresh the PBX side when this much of its granted time is left

_DELTA_RE = re.compile(r"[0-9]{1,10}\Z")
_USERNAME_RE = re.compile(r'(?:^|[\s,])username\s*=\s*"((?:[^"\\]|\\.)*)"', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RegistrationPolicy:
    """Bounds on registration lifetimes, per side, in seconds (RFC 3261 10.2.1.1, 10.3 step 7).

    ``client_max_expires`` (120): the most the client is told, so it re-registers often enough
    to keep its NAT binding and its connection (flow) alive, and so a vanished client is noticed
    within two minutes.  ``client_min_expires`` (60): a client asking for less is answered 423
    with Min-Expires (RFC 3261 10.3 step 7), so a broken phone cannot make the SBC work for every
    second.  ``pbx_min_expires`` (600): the least the PBX is asked for, so it is not refreshed at
    the client's pace (registration caching).  ``pbx_max_expires`` (3600): the most the PBX is
    asked for, so a binding the SBC lost track of does not linger there for days.
    """

    client_max_expires: int = 120
    client_min_expires: int = 60
    pbx_min_expires: int = 600
    pbx_max_expires: int = 3600

    def __post_init__(self) -> None:
        if not 0 < self.client_min_expires <= self.client_max_expires:
            raise ValueError("need 0 < client_min_expires <= client_max_expires")
        if not 0 < self.pbx_min_expires <= self.pbx_max_expires:
            raise ValueError("need 0 < pbx_min_expires <= pbx_max_expires")

    def pbx_ask(self, requested: int) -> int:
        """What to ask of the PBX for a client request of ``requested`` seconds."""
        return min(max(requested, self.pbx_min_expires), self.pbx_max_expires)

    def client_grant(self, requested: int, pbx_granted: int) -> int:
        """What to tell the client: never more than it asked (RFC 3261 10.3 step 7), than the
        PBX granted, or than ``client_max_expires``."""
        return min(requested, pbx_granted, self.client_max_expires)


class BindingState(Enum):
    PENDING = "pending"  # created by a REGISTER the PBX has not accepted yet
    ACTIVE = "active"  # accepted by the PBX: calls to its token are delivered


@dataclass(slots=True, eq=False)
class Binding:
    """One contact of one AOR, as relayed through the SBC (RFC 3261 10, RFC 5626 4.2).

    ``aor`` is the To URI normalised (``sip:user@host``: escapes resolved, host lower-case, no
    port or parameters); ``contact`` the client's Contact URI text, kept here and never sent to
    the PBX; ``token`` the user part of the SBC Contact the PBX holds instead; ``flow`` and
    ``source`` where the REGISTER came from; ``instance`` and ``reg_id`` the client's RFC 5626
    ``+sip.instance`` and ``reg-id``.  Deadlines are absolute ``now`` values.  Callers read a
    binding; only the registrar changes it.
    """

    aor: str
    contact: str
    token: str
    flow: Flow
    source: Address
    instance: str | None
    reg_id: str | None
    client_expires_at: float
    pbx_expires_at: float
    state: BindingState = BindingState.PENDING
    flow_alive: bool = True
    requested: int = 0  # the expiry the client last asked for (to notice a change)
    pbx_granted: int = 0  # what the PBX last granted, in seconds

    @property
    def key(self) -> tuple[str, str, Flow]:
        return (self.aor, self.instance or self.contact, self.flow)


@dataclass(frozen=True, slots=True)
class PreparedRegister:
    """What the B2BUA puts in the PBX-side REGISTER, and how to match the answer.

    ``contacts`` replace the client's Contact header (empty: a query, send no Contact);
    ``expires`` is the Expires header to send (``None``: send none).  ``relay`` is False when
    nothing changed and the PBX-side registration is fresh: the B2BUA may then call
    :meth:`Registrar.answer_locally` instead of relaying.  ``handle`` goes back with the answer.
    """

    handle: int
    aor: str
    contacts: list[str]
    expires: int | None
    relay: bool


@dataclass(frozen=True, slots=True)
class RegisterRejected:
    """The REGISTER is answered by the SBC itself with ``status`` (400 or 423); for 423 the
    response carries ``Min-Expires: min_expires`` (RFC 3261 10.3 steps 6 and 7)."""

    status: int
    reason: str
    min_expires: int | None = None


@dataclass(frozen=True, slots=True)
class RegisterOutcome:
    """What a PBX answer (or a local answer) means for the client side.

    ``status`` is the status to relay.  For 2xx, ``client_contacts`` are the Contact values to
    send back (the AOR's own client contacts with their ``expires``; never a token or anything
    of the PBX) and ``client_expires`` the Expires header value (``None``: send none).
    ``auth_failure`` says whether the answer was counted in :class:`AuthFailures`; ``removed``
    lists the tokens whose bindings went away.
    """

    status: int
    client_contacts: list[str] = field(default_factory=list)
    client_expires: int | None = None
    auth_failure: bool = False
    removed: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A call to the token goes to ``binding`` over its flow."""

    binding: Binding
    status: None = None


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A call to the token is answered ``status`` (404 unknown, 480 not reachable now)."""

    status: int
    reason: str


LookupResult = Delivery | Undeliverable


@dataclass(frozen=True, slots=True)
class BindingChange:
    """A binding became live, was refreshed, or stopped being live (see the module docstring).

    ``reason`` is ``registered`` (now live), ``refreshed`` (still live, new deadline),
    ``unregistered`` (removed by a REGISTER: expires 0, ``*``, superseded, or granted 0 by the
    PBX), ``expired`` (swept after its client-side deadline) or ``flow_closed``.
    ``expires_at`` is the client-side deadline (absolute ``now`` value) while live, ``None``
    once gone: a record published with that lifetime lapses by itself if this node stops
    refreshing it.  ``flow`` is the transport's flow identity, as given to the registrar.
    """

    reason: str
    token: str
    aor: str
    source: Address
    flow: Flow
    expires_at: float | None

    @property
    def live(self) -> bool:
        return self.expires_at is not None


@dataclass(slots=True)
class _Item:
    """One contact of a pending REGISTER that adds or refreshes a binding."""

    token: str
    new: bool
    contact: str
    instance: str | None
    reg_id: str | None
    requested: int
    asked: int


@dataclass(slots=True)
class _Pending:
    aor: str
    flow: Flow
    source: Address
    username: str
    credentials: bool
    deadline: float
    items: list[_Item]
    removals: list[str]


class AuthFailures:
    """Times of recent authentication failures per source IP and per username, bounded.

    A plain structure for the rule engine: :meth:`record` adds one failure, :meth:`by_ip` and
    :meth:`by_user` count those within a window.  At most ``max_keys`` IPs and ``max_keys``
    usernames are tracked (the least recently failed is evicted first) and at most
    ``max_events`` times per key are kept, so a flood of made-up usernames costs bounded memory.
    """

    def __init__(self, max_keys: int = 10_000, max_events: int = 64) -> None:
        self.max_keys = max_keys
        self.max_events = max_events
        self._ip: OrderedDict[str, deque[float]] = OrderedDict()
        self._user: OrderedDict[str, deque[float]] = OrderedDict()

    def record(self, ip: str, username: str, now: float) -> None:
        self._add(self._ip, ip, now)
        self._add(self._user, username, now)

    def _add(self, table: OrderedDict[str, deque[float]], key: str, now: float) -> None:
        times = table.get(key)
        if times is None:
            times = table[key] = deque(maxlen=self.max_events)
            while len(table) > self.max_keys:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        times.append(now)

    @staticmethod
    def _count(times: deque[float] | None, window: float, now: float) -> int:
        if times is None:
            return 0
        return sum(1 for t in times if now - t < window)

    def by_ip(self, ip: str, window: float, now: float) -> int:
        return self._count(self._ip.get(ip), window, now)

    def by_user(self, username: str, window: float, now: float) -> int:
        return self._count(self._user.get(username), window, now)

    def ips(self) -> list[str]:
        return list(self._ip)

    def users(self) -> list[str]:
        return list(self._user)


def normalise_aor(uri: SipUri) -> str:
    """The AOR index of RFC 3261 10.3 step 5: scheme, unescaped user, lower-case host; no port,
    parameters or headers (the port is dropped too: phones disagree about writing :5060)."""
    user = uri.user_unescaped
    host = uri.host_address
    if uri.host.startswith("["):
        host = f"[{host}]"
    at = "" if user is None else f"{user}@"
    return f"{uri.scheme.lower()}:{at}{host}"


def _live(b: Binding) -> bool:
    """Whether ``b`` has been reported live and not yet reported gone."""
    return b.state is BindingState.ACTIVE and b.flow_alive


def _delta(value: str | None) -> int | None:
    if value is None or not _DELTA_RE.match(value.strip()):
        return None
    return int(value.strip())


def _username(request: Request) -> str:
    for name in ("authorization", "proxy-authorization"):
        value = request.headers.get(name)
        if value is not None and (m := _USERNAME_RE.search(value)):
            return m.group(1)
    to = request.to.uri
    if isinstance(to, SipUri) and to.user is not None:
        return to.user_unescaped or ""
    return ""


class Registrar:
    """The registration-relay state: bindings by token, key, AOR and flow, plus pending
    REGISTERs awaiting the PBX (RFC 3261 10, RFC 5626).  Pure: ``now`` is passed in, tokens
    come from the injected :class:`~sbc.ids.IdSource`."""

    def __init__(
        self,
        ids: IdSource,
        policy: RegistrationPolicy | None = None,
        auth_failures: AuthFailures | None = None,
    ) -> None:
        self.ids = ids
        self.policy = policy or RegistrationPolicy()
        self.auth_failures = auth_failures if auth_failures is not None else AuthFailures()
        self._by_token: dict[str, Binding] = {}
        self._by_key: dict[tuple[str, str, Flow], str] = {}
        self._by_aor: dict[str, dict[str, None]] = {}  # ordered sets of tokens
        self._by_flow: dict[Flow, set[str]] = {}
        self._pending: dict[int, _Pending] = {}
        self._tombstones: dict[str, float] = {}  # expired token -> PBX-side deadline (480)
        self._next_handle = 0
        # Bindings that became live, were refreshed or went away, for the edge to publish
        # (drained after every input; bounded like the B2BUA's other outputs).
        self.changes: deque[BindingChange] = deque(maxlen=10000)

    # -- queries ---------------------------------------------------------------------------

    def binding(self, token: str) -> Binding | None:
        return self._by_token.get(token)

    def bindings(self, aor: str) -> list[Binding]:
        return [self._by_token[t] for t in self._by_aor.get(aor, {})]

    def __len__(self) -> int:
        return len(self._by_token)

    # -- client REGISTER -> PBX REGISTER ---------------------------------------------------

    def prepare_register(
        self,
        request: Request,
        flow: Flow,
        source: Address,
        now: float,
        sbc_contact_host_port: tuple[str, int],
        transport: str,
    ) -> PreparedRegister | RegisterRejected:
        """Read a client REGISTER and say what the PBX-side REGISTER carries.

        Each Contact that adds or refreshes a binding becomes ``<sip:{token}@{host}:{port};
        transport={t}>;expires={ask}``, the token reused for the same (AOR, instance-id or
        contact, flow); a Contact with expires 0, or ``Contact: *`` with ``Expires: 0``, becomes
        the SBC's token Contacts for that AOR with ``expires=0`` (RFC 3261 10.2.2).  No Contact
        is a query (RFC 3261 10.2.3): passed through, no binding changes.  A binding for the
        same instance and reg-id on another flow is superseded (RFC 5626 6): its token is
        removed in the same request.
        """
        to = request.to.uri
        if not isinstance(to, SipUri):
            return RegisterRejected(400, "To is not a SIP URI")
        aor = normalise_aor(to)
        contacts = request.contacts
        header_expires = request.expires
        handle = self._new_handle()
        pending = _Pending(
            aor=aor,
            flow=flow,
            source=source,
            username=_username(request),
            credentials="authorization" in request.headers
            or "proxy-authorization" in request.headers,
            deadline=now + PENDING_TIMEOUT,
            items=[],
            removals=[],
        )
        if isinstance(contacts, _Star):
            if header_expires != 0:  # RFC 3261 10.3 step 6
                return RegisterRejected(400, "Contact * needs Expires: 0")
            pending.removals = list(self._by_aor.get(aor, {}))
        else:
            for na in contacts:
                rejected = self._prepare_contact(na, header_expires, pending, now)
                if rejected is not None:
                    self._abandon_items(pending)
                    return rejected
        self._pending[handle] = pending
        host, port = sbc_contact_host_port
        t = transport.lower()
        out = [
            f"<sip:{i.token}@{host}:{port};transport={t}>;expires={i.asked}" for i in pending.items
        ]
        out += [f"<sip:{tok}@{host}:{port};transport={t}>;expires=0" for tok in pending.removals]
        if pending.items:
            expires: int | None = pending.items[0].asked
        elif pending.removals or isinstance(contacts, _Star):
            expires = 0
        else:
            expires = None
        relay = (
            bool(pending.removals)
            or not pending.items
            or any(self._item_changes(i, pending, now) for i in pending.items)
        )
        return PreparedRegister(handle, aor, out, expires, relay)

    def _new_handle(self) -> int:
        self._next_handle += 1
        return self._next_handle

    def _prepare_contact(
        self, na: NameAddr, header_expires: int | None, pending: _Pending, now: float
    ) -> RegisterRejected | None:
        if not isinstance(na.uri, SipUri):
            return RegisterRejected(400, "Contact is not a SIP URI")
        contact = str(na.uri)
        instance = na.params.get("+sip.instance")
        reg_id = na.params.get("reg-id")
        param = na.params.get("expires")
        requested = _delta(param) if param is not None else None
        if requested is None:
            requested = header_expires if header_expires is not None else DEFAULT_EXPIRES
        key = (pending.aor, instance or contact, pending.flow)
        token = self._by_key.get(key)
        if requested == 0:
            if token is not None and token not in pending.removals:
                pending.removals.append(token)
            return None
        if requested < self.policy.client_min_expires:
            return RegisterRejected(423, "Interval Too Brief", self.policy.client_min_expires)
        if instance is not None and reg_id is not None:  # RFC 5626 6: a new flow replaces
            for tok in self._by_aor.get(pending.aor, {}):
                b = self._by_token[tok]
                if (
                    b.instance == instance
                    and b.reg_id == reg_id
                    and b.flow != pending.flow
                    and tok not in pending.removals
                ):
                    pending.removals.append(tok)
        new = token is None
        if token is None:
            token = self.ids.token(TOKEN_BYTES)
            b = Binding(
                pending.aor,
                contact,
                token,
                pending.flow,
                pending.source,
                instance,
                reg_id,
                now + PENDING_TIMEOUT,
                now + PENDING_TIMEOUT,
            )
            self._index(b)
        else:
            b = self._by_token[token]
            new = b.state is BindingState.PENDING
            if new:  # still waiting for the PBX: keep it alive through the challenge
                b.client_expires_at = b.pbx_expires_at = now + PENDING_TIMEOUT
        pending.items.append(
            _Item(token, new, contact, instance, reg_id, requested, self.policy.pbx_ask(requested))
        )
        return None

    def _item_changes(self, item: _Item, pending: _Pending, now: float) -> bool:
        b = self._by_token[item.token]
        return (
            item.new
            or b.contact != item.contact
            or b.reg_id != item.reg_id
            or b.source != pending.source
            or b.requested != item.requested
            or self.needs_pbx_refresh(b, now)
        )

    def _abandon_items(self, pending: _Pending) -> None:
        for item in pending.items:
            b = self._by_token.get(item.token)
            if item.new and b is not None and b.state is BindingState.PENDING:
                self._drop(item.token)

    # -- PBX answer -> client answer -------------------------------------------------------

    def on_pbx_response(self, handle: int, response: Response, now: float) -> RegisterOutcome:
        """Apply the PBX's final answer to the REGISTER behind ``handle``.

        2xx: the request's bindings become active with the PBX's grant (our token's Contact
        ``expires``, else the Expires header, else what was asked) and the client is told
        :meth:`RegistrationPolicy.client_grant`; removals take effect.  401/407: nothing changes,
        but a challenge to a request with credentials is an auth failure.  403: an auth failure,
        and bindings the request was creating are dropped, as for any other failure.  An unknown
        handle (answered twice, or timed out) gives the status and no change.
        """
        pending = self._pending.pop(handle, None)
        status = response.status
        if pending is None:
            return RegisterOutcome(status)
        if 200 <= status < 300:
            return self._accept(pending, self._granted(response), now, status=status)
        failed = status == 403 or (status in (401, 407) and pending.credentials)
        if failed:
            self.auth_failures.record(pending.source[0], pending.username, now)
        if status not in (401, 407):
            self._abandon_items(pending)
        return RegisterOutcome(status, auth_failure=failed)

    def answer_locally(self, handle: int, now: float) -> RegisterOutcome:
        """Answer a refresh that needs no PBX round trip (``PreparedRegister.relay`` False):
        as a 200 from the PBX granting what is left of the PBX-side registration."""
        pending = self._pending.pop(handle)
        granted: dict[str, int] = {}
        for item in pending.items:
            b = self._by_token[item.token]
            granted[item.token] = max(0, int(b.pbx_expires_at - now))
        return self._accept(pending, granted, now, refresh_pbx=False)

    def _granted(self, response: Response) -> dict[str, int]:
        header = response.expires
        out: dict[str, int] = {}
        contacts = response.contacts
        for na in [] if isinstance(contacts, _Star) else contacts:
            uri = na.uri
            if isinstance(uri, SipUri) and (user := uri.user_unescaped) in self._by_token:
                g = _delta(na.params.get("expires"))
                if g is None:
                    g = header
                if g is not None and user is not None:
                    out[user] = g
        if header is not None:
            out[""] = header  # fallback for a token the PBX did not list
        return out

    def _accept(
        self,
        pending: _Pending,
        granted: dict[str, int],
        now: float,
        refresh_pbx: bool = True,
        status: int = 200,
    ) -> RegisterOutcome:
        removed: list[str] = []
        for tok in pending.removals:
            if tok in self._by_token:
                self._drop(tok, "unregistered")
                removed.append(tok)
        told_first: int | None = None
        told: dict[str, int] = {}
        for item in pending.items:
            b = self._by_token.get(item.token)
            if b is None:  # removed meanwhile (expired or superseded)
                continue
            g = granted.get(item.token, granted.get("", item.asked))
            if g <= 0:
                self._drop(item.token, "unregistered")
                removed.append(item.token)
                continue
            t = self.policy.client_grant(item.requested, g)
            was_live = _live(b)
            b.source = pending.source  # same flow (it is part of the key); NAT may rebind
            b.contact, b.instance, b.reg_id = item.contact, item.instance, item.reg_id
            b.requested = item.requested
            b.state = BindingState.ACTIVE
            b.flow_alive = True
            b.client_expires_at = now + t
            if refresh_pbx:
                b.pbx_granted = g
                b.pbx_expires_at = now + g
            self._tombstones.pop(item.token, None)
            self._changed("refreshed" if was_live else "registered", b, b.client_expires_at)
            told[item.token] = t
            if told_first is None:
                told_first = t
        contacts: list[str] = []
        for b in self.bindings(pending.aor):
            if b.state is not BindingState.ACTIVE:
                continue
            left = told.get(b.token)
            if left is None:
                left = math.floor(b.client_expires_at - now)
            if left <= 0:
                continue
            text = f"<{b.contact}>;expires={left}"
            if b.instance is not None:
                text += f";+sip.instance={b.instance}"
                if b.reg_id is not None:
                    text += f";reg-id={b.reg_id}"
            contacts.append(text)
        if told_first is None and (pending.removals or not pending.items) and removed:
            told_first = 0
        return RegisterOutcome(status, contacts, told_first, removed=removed)

    # -- calls from the PBX ----------------------------------------------------------------

    def lookup(self, token: str, now: float) -> LookupResult:
        """Where a call from the PBX to ``sip:{token}@sbc`` goes: the binding, or 404 for a
        token the SBC never issued (or forgot), or 480 when the user cannot be reached now:
        pending, expired, or its flow closed (RFC 5626 5.3: never another connection)."""
        b = self._by_token.get(token)
        if b is None:
            if token in self._tombstones:
                return Undeliverable(480, "registration expired")
            return Undeliverable(404, "unknown token")
        if b.state is not BindingState.ACTIVE:
            return Undeliverable(480, "registration pending")
        if now >= b.client_expires_at:
            return Undeliverable(480, "registration expired")
        if not b.flow_alive:
            return Undeliverable(480, "flow closed")
        return Delivery(b)

    def registered_flow(self, flow: Flow, now: float) -> bool:
        """True when ``flow`` carries a live registration: an active binding, not expired, its
        connection still up.  The B2BUA admits calls from such a flow."""
        for tok in self._by_flow.get(flow, ()):
            b = self._by_token[tok]
            if b.state is BindingState.ACTIVE and b.flow_alive and now < b.client_expires_at:
                return True
        return False

    def flow_closed(self, flow: Flow, now: float) -> list[str]:
        """The connection ``flow`` is gone: its bindings answer 480 from now on, but are kept
        until they expire so the PBX-side registration can still be refreshed or removed.
        Returns the affected tokens."""
        tokens = sorted(self._by_flow.get(flow, ()))
        for tok in tokens:
            b = self._by_token[tok]
            if _live(b):
                self._changed("flow_closed", b, None)
            b.flow_alive = False
        return tokens

    # -- time ------------------------------------------------------------------------------

    def needs_pbx_refresh(self, binding: Binding, now: float) -> bool:
        """True when the PBX-side registration must be renewed at the client's next refresh:
        it is pending, or less than ``max(10% of the grant, client_max_expires)`` is left, so
        the refresh after this one still arrives before the PBX forgets the binding."""
        if binding.state is not BindingState.ACTIVE:
            return True
        margin = max(REFRESH_FRACTION * binding.pbx_granted, self.policy.client_max_expires)
        return binding.pbx_expires_at - now <= margin

    def expire(self, now: float) -> list[Binding]:
        """Remove bindings past their client deadline and REGISTERs the PBX never answered.
        The removed bindings are returned so the B2BUA can un-register their tokens at the
        PBX; until the PBX-side deadline their tokens answer 480, not 404."""
        gone = [b for b in self._by_token.values() if b.client_expires_at <= now]
        for b in gone:
            self._drop(b.token, "expired")
            if b.state is BindingState.ACTIVE and b.pbx_expires_at > now:
                self._tombstones[b.token] = b.pbx_expires_at
        for tok in [t for t, d in self._tombstones.items() if d <= now]:
            del self._tombstones[tok]
        for h in [h for h, p in self._pending.items() if p.deadline <= now]:
            del self._pending[h]
        return gone

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`expire` has something to do, or None."""
        times: Iterable[float] = (
            *(b.client_expires_at for b in self._by_token.values()),
            *self._tombstones.values(),
            *(p.deadline for p in self._pending.values()),
        )
        return min(times, default=None)

    # -- indexes ---------------------------------------------------------------------------

    def _index(self, b: Binding) -> None:
        self._by_token[b.token] = b
        self._by_key[b.key] = b.token
        self._by_aor.setdefault(b.aor, {})[b.token] = None
        self._by_flow.setdefault(b.flow, set()).add(b.token)

    def _changed(self, reason: str, b: Binding, expires_at: float | None) -> None:
        self.changes.append(BindingChange(reason, b.token, b.aor, b.source, b.flow, expires_at))

    def _drop(self, token: str, reason: str | None = None) -> None:
        """Forget ``token``; a live binding is reported gone for ``reason`` (a pending one,
        or one whose flow closed, was never or is no longer published)."""
        b = self._by_token.pop(token)
        if reason is not None and _live(b):
            self._changed(reason, b, None)
        if self._by_key.get(b.key) == token:
            del self._by_key[b.key]
        tokens = self._by_aor.get(b.aor)
        if tokens is not None:
            tokens.pop(token, None)
            if not tokens:
                del self._by_aor[b.aor]
        self._unflow(b)

    def _unflow(self, b: Binding) -> None:
        flows = self._by_flow.get(b.flow)
        if flows is not None:
            flows.discard(b.token)
            if not flows:
                del self._by_flow[b.flow]
