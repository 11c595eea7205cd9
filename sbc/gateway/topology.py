"""Topology hiding: what of one leg's message may appear on the other leg.

A B2BUA builds every message of a leg itself; only end-to-end content crosses from the other
leg, and only through this module.  The rule is an allow-list, not a deny-list: a header crosses
only if it is known to carry end-to-end meaning and no addresses of the side it comes from.
Everything that routes or identifies a hop (Via, Route, Record-Route, Contact, Call-ID, tags,
CSeq, Max-Forwards, Content-Length) is the receiving leg's own, and banners (Server,
User-Agent), Warning, Error-Info, Alert-Info, Call-Info, P-headers that leak the inside, and
unknown headers stay behind unless the operator allows them.

SDP is rewritten in :func:`hide_sdp_session`: the ``o=`` line gets the SBC's username, address
and its own session id/version so nothing of the far side's origin leaks (RFC 8866 5.2: the pair
(sess-id, sess-version) must still change when the session changes, which the caller tracks);
the session name becomes ``-`` (it often names the product, ``s=Asterisk``) and the session-level
``i=``, ``u=``, ``e=`` and ``p=`` lines, which describe the far side's operator, are dropped.
Media addresses and ports are the media relay's business (the media issue), not this module's.
"""

from __future__ import annotations

from collections.abc import Iterable

from sbc.media.sdp import Line, SessionDescription
from sbc.sip.headers import Headers, canonical_name

# End-to-end headers that describe the session or the request's meaning, never a hop
# (RFC 3261 20; RFC 3262, 3311, 3515, 3891, 3892, 4028, 6665).  Keys are canonical (lower case).
END_TO_END = frozenset({
    "accept", "accept-encoding", "accept-language", "allow", "allow-events", "content-disposition",
    "content-encoding", "content-language", "content-type", "date", "event", "expires",
    "in-reply-to", "mime-version", "min-expires", "min-se", "organization", "priority",
    "rack", "reason", "replaces", "require", "retry-after", "rseq", "session-expires",
    "subject", "subscription-state", "supported", "timestamp", "unsupported",
    "www-authenticate", "authorization", "proxy-authenticate", "proxy-authorization",
    "authentication-info", "sip-etag", "sip-if-match", "refer-sub",
})

# Never copied whatever the operator says: they route, identify the hop, or frame the message.
HOP_BY_HOP = frozenset({
    "via", "route", "record-route", "contact", "call-id", "from", "to", "cseq", "max-forwards",
    "content-length", "path", "service-route", "proxy-require",
})
assert not END_TO_END & HOP_BY_HOP  # crossing_headers relies on it


def crossing_headers(
    source: Headers,
    *,
    extra_allowed: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """The header lines of ``source`` that may be copied to the other leg, in order.

    ``extra_allowed`` names more headers the operator lets through (e.g. ``P-Asserted-Identity``
    towards a trusted PBX); hop-by-hop headers are refused even if listed there.
    """
    allowed = END_TO_END
    if extra_allowed:
        allowed = (END_TO_END | {canonical_name(n) for n in extra_allowed}) - HOP_BY_HOP
    # Every entry carries its canonical key already (END_TO_END and HOP_BY_HOP are disjoint).
    return [(name, value) for key, name, value in source._entries if key in allowed]


def hide_sdp_origin(sdp: SessionDescription, *, address: str, sess_id: str,
                    sess_version: int, username: str = "-") -> None:
    """Replace every field of the ``o=`` line with the SBC's own (RFC 8866 5.2); the address
    type follows ``address``."""
    sdp.set_origin(username=username, sess_id=sess_id, sess_version=sess_version,
                   unicast_address=address)


# Session-level lines that describe the far side (RFC 8866 5.4-5.6) and never cross.
SESSION_LINES_DROPPED = frozenset("iuep")


def hide_sdp_session(sdp: SessionDescription, *, address: str, sess_id: str,
                     sess_version: int, username: str = "-") -> SessionDescription:
    """A copy of ``sdp`` with nothing of the far side's session identity: the SBC's own ``o=``
    line (:func:`hide_sdp_origin`), ``s=-`` (RFC 8866 5.3) and no session-level i/u/e/p lines.
    Media sections are left to the media relay."""
    hide_sdp_origin(sdp, address=address, sess_id=sess_id, sess_version=sess_version,
                    username=username)
    lines = [
        Line("s", "-") if line.type == "s" else line
        for line in sdp.lines
        if line.type not in SESSION_LINES_DROPPED
    ]
    return SessionDescription(lines, sdp.media)


def hide_sdp_body(sdp: SessionDescription, *, address: str, sess_id: str,
                  sess_version: int, username: str = "-") -> bytes:
    """``hide_sdp_session(sdp, ...).to_bytes()`` for a description the caller is done with.

    A description and its media sections refer to each other (``MediaDescription.session``),
    so a dropped one is a reference cycle that only the cyclic garbage collector frees.  This
    unlinks the media sections once the body is written (their ``session`` becomes ``None``),
    so ``sdp`` and the hidden copy go the moment the caller drops them.  SDP is the only
    reference cycle a call makes; without it the process can run the cyclic collector rarely
    (its full passes walk every live transaction).  ``sdp`` is consumed: do not read it
    afterwards.
    """
    hidden = hide_sdp_session(sdp, address=address, sess_id=sess_id,
                              sess_version=sess_version, username=username)
    body = hidden.to_bytes()
    for section in hidden.media:  # the same sections as sdp.media, now pointing at hidden
        section.session = None
    return body
