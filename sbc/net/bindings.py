"""Registrations shared between SBC nodes through the store: the records and the look-up cache.

Each node's registrar knows only the phones that registered through it.  So that several nodes
on one store act as one, the policy gate publishes every binding that becomes live, is refreshed
or goes away (:class:`~sbc.gateway.registrar.BindingChange`) as two store bindings with the same
id, ``{node}:{token}``:

* under the AOR (``sip:1001@example.com``): an operator can list who is registered, and where;
* under the source address (``src:{ip}``): what the other nodes look up.

Both carry the same compact JSON value (:func:`binding_value`) and live for the client's
remaining registration time, so the records of a node that dies lapse by themselves within
``registration.client_max_expires``.  A removal deletes both.

The look-up is per source IP, not per flow: one live registration from an address makes every
request from that address "registered elsewhere", as a registered-IP allow list would (a NATed
office: one registered phone admits its neighbours).  :class:`SourceCache` keeps the answers so
that a flood from an unregistered address costs one store round trip per
:data:`NEGATIVE_TTL`, not one per request.  A positive answer is kept at most
:data:`POSITIVE_TTL` (and never past the binding's expiry): that bounds how long another node's
unregistration goes unnoticed here, since nothing pushes removals to the other nodes.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from sbc.gateway.registrar import BindingChange
from sbc.state.base import BindingDelete, BindingPut, BindingsResult, Op

POSITIVE_TTL = 5.0  # seconds a "registered elsewhere" answer is trusted before asking again
NEGATIVE_TTL = 3.0  # seconds a "not registered elsewhere" (or a failed look-up) is kept
CACHE_SIZE = 4096  # source addresses remembered; the least recently used is forgotten first


def source_key(ip: str) -> str:
    """The store AOR under which the bindings from ``ip`` are kept (AORs start ``sip:``)."""
    return f"src:{ip}"


def binding_id(node: str, token: str) -> str:
    return f"{node}:{token}"


def binding_value(change: BindingChange, node: str) -> str:
    """The JSON kept with a live binding: who holds it (node), for which AOR, from where
    (source address, transport, interface) and until when (seconds since the epoch)."""
    flow = change.flow
    return json.dumps({
        "node": node,
        "aor": change.aor,
        "ip": change.source[0],
        "port": change.source[1],
        "transport": str(getattr(flow, "transport", "")).lower(),
        "interface": str(getattr(flow, "interface", "")),
        "expires": round(change.expires_at or 0.0, 3),
    }, separators=(",", ":"), sort_keys=True)


def binding_ops(change: BindingChange, node: str, now: float) -> list[Op]:
    """The store ops publishing ``change``: two puts for a live binding (by AOR and by source
    address, for its remaining lifetime), two deletes for one that went away.  None for a live
    binding already past its deadline (its records lapse by themselves)."""
    ident = binding_id(node, change.token)
    by_source = source_key(change.source[0])
    if change.expires_at is None:
        return [BindingDelete(change.aor, ident), BindingDelete(by_source, ident)]
    ttl = change.expires_at - now
    if ttl <= 0:
        return []
    value = binding_value(change, node)
    return [BindingPut(change.aor, ident, value, ttl), BindingPut(by_source, ident, value, ttl)]


def registered_until(result: BindingsResult, now: float) -> float | None:
    """Until when a source is registered according to a ``BindingGet`` of its
    :func:`source_key`: the latest live binding's expiry, or ``None`` when it has none."""
    ends = [b.expires_at for b in result.bindings if b.expires_at > now]
    return max(ends, default=None)


class SourceCache:
    """Bounded memory of "is this source address registered in the store?" answers.

    Each entry is an answer and the time it stops being trusted; :meth:`get` forgets expired
    entries and refreshes the recency of live ones, :meth:`put` evicts the least recently used
    entry past ``size``.  Pure: ``now`` is passed in.
    """

    def __init__(self, size: int = CACHE_SIZE, positive_ttl: float = POSITIVE_TTL,
                 negative_ttl: float = NEGATIVE_TTL) -> None:
        self.size = size
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self._entries: OrderedDict[str, tuple[bool, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ip: str, now: float) -> bool | None:
        """The cached answer for ``ip``, or ``None`` when there is none (or it is stale)."""
        entry = self._entries.get(ip)
        if entry is None:
            return None
        registered, until = entry
        if until <= now:
            del self._entries[ip]
            return None
        self._entries.move_to_end(ip)
        return registered

    def put(self, ip: str, until: float | None, now: float) -> None:
        """Remember the answer of a look-up at ``now``: registered until ``until`` (kept at
        most ``positive_ttl``), or not registered (``None``: kept ``negative_ttl``)."""
        if until is not None and until > now:
            entry = (True, min(until, now + self.positive_ttl))
        else:
            entry = (False, now + self.negative_ttl)
        self._entries[ip] = entry
        self._entries.move_to_end(ip)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, ip: str) -> None:
        self._entries.pop(ip, None)
