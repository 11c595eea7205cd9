"""Registration relay: token Contacts toward the PBX, bindings per flow, split expiries."""

from pathlib import Path

import pytest

from sbc.gateway.registrar import (
    AuthFailures,
    BindingChange,
    BindingState,
    Delivery,
    PreparedRegister,
    RegisterRejected,
    Registrar,
    RegistrationPolicy,
    Undeliverable,
)
from sbc.ids import CountingIdSource, IdSource
from sbc.sip.message import Request, Response, parse_message

CORPUS = Path(__file__).parent.parent / "fixtures" / "sip-corpus"
SBC = ("203.0.113.10", 5060)
PHONE = ("192.0.2.101", 5060)
FLOW = ("udp", 5060, "192.0.2.101", 5060, 0)
T0 = 1000.0


def corpus(name: str) -> Request | Response:
    return parse_message((CORPUS / name).read_bytes())


def request(name: str) -> Request:
    msg = corpus(name)
    assert isinstance(msg, Request)
    return msg


def register(
    user: str = "1001",
    contacts: tuple[str, ...] = ("<sip:1001@192.0.2.101:5060>",),
    expires: int | None = 3600,
    extra: str = "",
    domain: str = "pbx.example.com",
) -> Request:
    lines = [
        "REGISTER sip:pbx.example.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK77",
        f"From: <sip:{user}@{domain}>;tag=1",
        f"To: <sip:{user}@{domain}>",
        "Call-ID: reg1@192.0.2.101",
        "CSeq: 7 REGISTER",
        *(f"Contact: {c}" for c in contacts),
        *([f"Expires: {expires}"] if expires is not None else []),
        *([extra] if extra else []),
        "Content-Length: 0",
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def pbx_response(
    status: int, contacts: tuple[str, ...] = (), expires: int | None = None, reason: str = "OK"
) -> Response:
    lines = [
        f"SIP/2.0 {status} {reason}",
        "Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK1",
        "From: <sip:1001@pbx.example.com>;tag=1",
        "To: <sip:1001@pbx.example.com>;tag=pbx",
        "Call-ID: b2b1",
        "CSeq: 7 REGISTER",
        *(f"Contact: {c}" for c in contacts),
        *([f"Expires: {expires}"] if expires is not None else []),
        "Server: Asterisk PBX 20.5.2",
        "Content-Length: 0",
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Response)
    return msg


def tok(token: str, expires: int) -> str:
    return f"<sip:{token}@203.0.113.10:5060;transport=udp>;expires={expires}"


def prepare(
    reg: Registrar,
    req: Request,
    now: float = T0,
    flow: object = FLOW,
    source: tuple[str, int] = PHONE,
    transport: str = "UDP",
) -> PreparedRegister:
    out = reg.prepare_register(req, flow, source, now, SBC, transport)
    assert isinstance(out, PreparedRegister)
    return out


def registered(reg: Registrar | None = None, now: float = T0) -> Registrar:
    """A registrar where Yealink 1001 is registered as tok1 (PBX granted 3599 s)."""
    reg = reg or Registrar(CountingIdSource("tok"))
    p = prepare(reg, request("yealink-register-auth.sip"), now)
    reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok1", 3599),), 3600), now)
    return reg


def test_first_registration_challenge_credentials_then_200():
    """A REGISTER is relayed with a token Contact, survives the 401 pending, and is active
    after the 200 with the client told 120 s and the PBX grant recorded."""
    reg = Registrar(CountingIdSource("tok"))
    p1 = prepare(reg, request("yealink-register.sip"))
    assert p1.contacts == ["<sip:tok1@203.0.113.10:5060;transport=udp>;expires=3600"]
    assert (p1.expires, p1.aor, p1.relay) == (3600, "sip:1001@pbx.example.com", True)
    out = reg.on_pbx_response(p1.handle, corpus("asterisk-register-401.sip"), T0 + 0.05)
    assert (out.status, out.client_contacts, out.auth_failure) == (401, [], False)
    assert reg.binding("tok1").state is BindingState.PENDING
    assert reg.lookup("tok1", T0 + 0.05) == Undeliverable(480, "registration pending")

    p2 = prepare(reg, request("yealink-register-auth.sip"), T0 + 0.1)
    assert p2.contacts == p1.contacts and p2.handle != p1.handle
    ok = pbx_response(200, ("<sip:tok1@203.0.113.10:5060;transport=udp>;expires=3599",), 3600)
    out = reg.on_pbx_response(p2.handle, ok, T0 + 0.2)
    assert out.status == 200
    assert out.client_contacts == ["<sip:1001@192.0.2.101:5060>;expires=120"]
    assert out.client_expires == 120
    b = reg.binding("tok1")
    assert b.state is BindingState.ACTIVE
    assert (b.contact, b.flow, b.source) == ("sip:1001@192.0.2.101:5060", FLOW, PHONE)
    assert (b.client_expires_at, b.pbx_expires_at, b.pbx_granted) == (T0 + 120.2, T0 + 3599.2, 3599)
    assert reg.auth_failures.ips() == []


def test_reregistration_reuses_token_and_may_be_answered_locally():
    """A refresh on the same flow reuses the token; while the PBX side is fresh it needs no
    relay and the local answer extends only the client deadline."""
    reg = registered()
    p = prepare(reg, request("yealink-register-auth.sip"), T0 + 100)
    assert p.contacts == [tok("tok1", 3600)]
    assert p.relay is False
    out = reg.answer_locally(p.handle, T0 + 100)
    assert out.client_contacts == ["<sip:1001@192.0.2.101:5060>;expires=120"]
    b = reg.binding("tok1")
    assert (b.client_expires_at, b.pbx_expires_at) == (T0 + 220, T0 + 3599)
    assert len(reg) == 1


@pytest.mark.parametrize(
    ("now", "relay"),
    [
        (T0 + 3599 - 360.5, False),  # 10% of 3599 = 359.9 s left is the margin
        (T0 + 3599 - 359.9, True),
        (T0 + 3599 - 100, True),
    ],
)
def test_refresh_relayed_when_pbx_side_nears_its_end(now, relay):
    """needs_pbx_refresh turns True within max(10% of the grant, client_max_expires)."""
    reg = registered()
    assert reg.needs_pbx_refresh(reg.binding("tok1"), now) is relay
    assert prepare(reg, request("yealink-register-auth.sip"), now).relay is relay


def test_changed_expiry_or_source_is_relayed():
    """A refresh that asks a different expiry or comes from another address is relayed."""
    reg = registered()
    assert prepare(reg, register(expires=1800), T0 + 60).relay is True
    assert prepare(reg, register(expires=3600), T0 + 60, source=("192.0.2.101", 5070)).relay


@pytest.mark.parametrize(
    ("asked", "to_pbx", "granted", "told"),
    [
        (60, 600, 600, 60),
        (300, 600, 600, 120),
        (3600, 3600, 3600, 120),
        (7200, 3600, 3600, 120),
        (3600, 3600, 90, 90),  # the PBX granted less than client_max: never tell more
    ],
)
def test_expiry_shortened_toward_client_lengthened_toward_pbx(asked, to_pbx, granted, told):
    """The PBX is asked max(asked, 600) capped at 3600; the client is told min(asked, granted,
    120)."""
    reg = Registrar(CountingIdSource("tok"))
    p = prepare(reg, register(expires=asked))
    assert p.contacts == [tok("tok1", to_pbx)] and p.expires == to_pbx
    out = reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok1", granted),)), T0)
    assert out.client_contacts == [f"<sip:1001@192.0.2.101:5060>;expires={told}"]
    assert reg.binding("tok1").client_expires_at == T0 + told
    assert reg.binding("tok1").pbx_expires_at == T0 + granted


def test_contact_expires_param_wins_and_header_is_the_fallback_grant():
    """A per-contact expires is what is asked; the PBX's Expires header is the grant when its
    Contact list omits our token."""
    reg = Registrar(CountingIdSource("tok"))
    p = prepare(reg, register(contacts=("<sip:1001@192.0.2.101:5060>;expires=900",), expires=60))
    assert p.contacts == [tok("tok1", 900)]
    out = reg.on_pbx_response(p.handle, pbx_response(200, (), expires=1200), T0)
    assert out.client_expires == 120
    assert reg.binding("tok1").pbx_expires_at == T0 + 1200


def test_too_brief_expiry_is_answered_423():
    """A client asking less than client_min_expires gets 423 with Min-Expires 60 and nothing
    is created (RFC 3261 10.3 step 7)."""
    reg = Registrar(CountingIdSource("tok"))
    out = reg.prepare_register(register(expires=30), FLOW, PHONE, T0, SBC, "udp")
    assert out == RegisterRejected(423, "Interval Too Brief", 60)
    assert len(reg) == 0


def test_unregister_one_contact():
    """A Contact with expires=0 becomes our token with expires=0; the 200 removes it."""
    reg = registered()
    p = prepare(reg, register(contacts=("<sip:1001@192.0.2.101:5060>;expires=0",)), T0 + 10)
    assert (p.contacts, p.expires, p.relay) == ([tok("tok1", 0)], 0, True)
    assert reg.lookup("tok1", T0 + 10).status is None  # still deliverable until the PBX agrees
    out = reg.on_pbx_response(p.handle, pbx_response(200), T0 + 11)
    assert (out.client_contacts, out.client_expires, out.removed) == ([], 0, ["tok1"])
    assert reg.lookup("tok1", T0 + 11) == Undeliverable(404, "unknown token")
    assert len(reg) == 0


def test_unregister_all_removes_only_our_tokens_for_the_aor():
    """Contact: * with Expires: 0 lists every SBC token of the AOR with expires=0, not '*'."""
    reg = Registrar(CountingIdSource("tok"))
    for i, contact in enumerate(("<sip:6001@192.0.2.160:5062>", "<sip:6001@192.0.2.161:5062>")):
        flow = ("udp", 5060, f"192.0.2.16{i}", 5062, 0)
        p = prepare(reg, register("6001", (contact,)), flow=flow)
        reg.on_pbx_response(p.handle, pbx_response(200, (tok(f"tok{i + 1}", 3600),)), T0)
    other = prepare(reg, register())
    reg.on_pbx_response(other.handle, pbx_response(200, (tok("tok3", 3600),)), T0)

    p = prepare(reg, request("grandstream-unregister-all.sip"), T0 + 5)
    assert p.contacts == [tok("tok1", 0), tok("tok2", 0)]
    assert p.expires == 0
    out = reg.on_pbx_response(p.handle, pbx_response(200), T0 + 6)
    assert out.removed == ["tok1", "tok2"] and out.client_contacts == []
    assert [b.token for b in reg.bindings("sip:1001@pbx.example.com")] == ["tok3"]


def test_star_with_nonzero_expires_is_rejected():
    """Contact: * needs Expires: 0 (RFC 3261 10.3 step 6)."""
    reg = Registrar(CountingIdSource("tok"))
    out = reg.prepare_register(register(contacts=("*",), expires=3600), FLOW, PHONE, T0, SBC, "udp")
    assert out == RegisterRejected(400, "Contact * needs Expires: 0")


def test_query_register_passes_through_and_lists_client_contacts():
    """A REGISTER without Contact is relayed without Contact, changes nothing, and the 200's
    token list becomes the client's own contacts."""
    reg = registered()
    p = prepare(reg, register(contacts=(), expires=None), T0 + 30)
    assert (p.contacts, p.expires, p.relay) == ([], None, True)
    out = reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok1", 3569),)), T0 + 30)
    assert out.client_contacts == ["<sip:1001@192.0.2.101:5060>;expires=90"]
    assert out.client_expires is None
    b = reg.binding("tok1")
    assert (b.client_expires_at, b.pbx_expires_at) == (T0 + 120, T0 + 3599)


def test_lookup_ok_unknown_expired_flow_closed():
    """lookup delivers an active binding; unknown is 404; expired or flow gone is 480."""
    reg = registered()
    found = reg.lookup("tok1", T0 + 119)
    assert isinstance(found, Delivery) and found.binding.flow == FLOW
    assert reg.lookup("nope", T0) == Undeliverable(404, "unknown token")
    assert reg.lookup("tok1", T0 + 120) == Undeliverable(480, "registration expired")
    assert reg.flow_closed(FLOW, T0 + 50) == ["tok1"]
    assert reg.lookup("tok1", T0 + 50) == Undeliverable(480, "flow closed")
    assert reg.binding("tok1") is not None  # kept so the PBX side can be refreshed/removed
    assert reg.flow_closed(("tcp", 5061, "198.51.100.1", 40000, 9), T0) == []


def test_reregistration_on_a_new_flow_gets_a_new_token():
    """After the connection closed, a REGISTER on the new flow gets its own token; the old
    one keeps answering 480, never the new connection."""
    reg = registered()
    reg.flow_closed(FLOW, T0 + 50)
    new_flow = ("udp", 5060, "192.0.2.101", 5060, 1)
    p = prepare(reg, request("yealink-register-auth.sip"), T0 + 51, flow=new_flow)
    assert p.contacts == [tok("tok2", 3600)]
    reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok2", 3600),)), T0 + 51)
    assert reg.lookup("tok1", T0 + 52) == Undeliverable(480, "flow closed")
    found = reg.lookup("tok2", T0 + 52)
    assert isinstance(found, Delivery) and found.binding.flow == new_flow


def test_expire_and_next_deadline():
    """expire() removes bindings at their client deadline; the token then answers 480 until
    the PBX-side deadline, then 404; next_deadline follows."""
    reg = Registrar(CountingIdSource("tok"))
    assert reg.next_deadline() is None
    p = prepare(reg, register())
    assert reg.next_deadline() == T0 + 32  # pending: a REGISTER transaction's life
    reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok1", 3600),)), T0)
    assert reg.next_deadline() == T0 + 120
    assert reg.expire(T0 + 119.9) == []
    gone = reg.expire(T0 + 120)
    assert [b.token for b in gone] == ["tok1"] and len(reg) == 0
    assert reg.lookup("tok1", T0 + 121) == Undeliverable(480, "registration expired")
    assert reg.next_deadline() == T0 + 3600
    reg.expire(T0 + 3600)
    assert reg.lookup("tok1", T0 + 3600) == Undeliverable(404, "unknown token")
    assert reg.next_deadline() is None


def test_unanswered_register_is_forgotten_after_64_t1():
    """A pending binding and its handle go after 32 s without a PBX answer."""
    reg = Registrar(CountingIdSource("tok"))
    p = prepare(reg, register())
    gone = reg.expire(T0 + 32)
    assert [b.token for b in gone] == ["tok1"] and reg.next_deadline() is None
    assert reg.on_pbx_response(p.handle, pbx_response(200), T0 + 33).client_contacts == []
    assert reg.lookup("tok1", T0 + 33) == Undeliverable(404, "unknown token")


def test_two_devices_for_one_aor_get_two_tokens():
    """Two devices of one AOR get two tokens; the 200 lists both client contacts, the RFC 5626
    instance and reg-id echoed, and nothing of the PBX."""
    reg = Registrar(CountingIdSource("tok"))
    tls_flow = ("tls", 5061, "192.0.2.160", 43219, 7)
    p1 = prepare(
        reg,
        request("baresip-register-tls.sip"),
        flow=tls_flow,
        source=("192.0.2.160", 43219),
        transport="tls",
    )
    assert p1.contacts == ["<sip:tok1@203.0.113.10:5060;transport=tls>;expires=3600"]
    r1 = pbx_response(200, ("<sip:tok1@203.0.113.10:5060;transport=tls>;expires=3600",))
    reg.on_pbx_response(p1.handle, r1, T0)
    p2 = prepare(
        reg,
        register("alice", ("<sip:alice@192.0.2.161:5060>",), domain="sip.example.com"),
        T0 + 1,
        flow=("udp", 5060, "192.0.2.161", 5060, 0),
        source=("192.0.2.161", 5060),
    )
    assert p2.contacts == [tok("tok2", 3600)] and p2.aor == "sip:alice@sip.example.com"
    both = pbx_response(
        200, ("<sip:tok1@203.0.113.10:5060;transport=tls>;expires=3599", tok("tok2", 3600))
    )
    out = reg.on_pbx_response(p2.handle, both, T0 + 1)
    assert out.client_contacts == [
        "<sip:alice-0x55a8c3b2e2f0@192.0.2.160:43219;transport=tls>;expires=119"
        ';+sip.instance="<urn:uuid:2b6e4d8a-9c1f-4e3b-a5d7-0f8e6c4a2b19>";reg-id=1',
        "<sip:alice@192.0.2.161:5060>;expires=120",
    ]
    assert reg.binding("tok1").instance == '"<urn:uuid:2b6e4d8a-9c1f-4e3b-a5d7-0f8e6c4a2b19>"'
    assert reg.binding("tok1").reg_id == "1"


def test_same_instance_and_reg_id_on_a_new_flow_supersedes_the_old():
    """RFC 5626 6: the same instance and reg-id on a new flow replaces the old flow, whose
    token is removed in the same PBX-side REGISTER."""
    reg = Registrar(CountingIdSource("tok"))
    req = request("baresip-register-tls.sip")
    old = ("tls", 5061, "192.0.2.160", 43219, 7)
    p = prepare(reg, req, flow=old, transport="tls")
    reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok1", 3600),)), T0)
    p = prepare(reg, req, T0 + 30, flow=("tls", 5061, "192.0.2.160", 43220, 8), transport="tls")
    assert p.contacts == [
        "<sip:tok2@203.0.113.10:5060;transport=tls>;expires=3600",
        "<sip:tok1@203.0.113.10:5060;transport=tls>;expires=0",
    ]
    out = reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok2", 3600),)), T0 + 30)
    assert out.removed == ["tok1"] and [b.token for b in reg.bindings(p.aor)] == ["tok2"]


# -- binding changes (what the edge publishes to the shared store) -----------------------------

AOR = "sip:1001@pbx.example.com"


def drained(reg: Registrar) -> list[BindingChange]:
    out = list(reg.changes)
    reg.changes.clear()
    return out


def test_changes_for_registration_refreshes_and_unregistration():
    """The PBX's 200 makes a binding live (client deadline, not the PBX's), a relayed or a
    local refresh moves its deadline, and a Contact with expires=0 removes it; the challenge
    and the pending REGISTER report nothing."""
    reg = Registrar(CountingIdSource("tok"))
    p = prepare(reg, request("yealink-register.sip"))
    reg.on_pbx_response(p.handle, corpus("asterisk-register-401.sip"), T0 + 0.05)
    assert drained(reg) == []
    p = prepare(reg, request("yealink-register-auth.sip"), T0 + 0.1)
    assert drained(reg) == []
    reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok1", 3599),)), T0 + 0.2)
    assert drained(reg) == [BindingChange("registered", "tok1", AOR, PHONE, FLOW, T0 + 120.2)]

    p = prepare(reg, request("yealink-register-auth.sip"), T0 + 60)
    assert p.relay is False
    reg.answer_locally(p.handle, T0 + 60)
    assert drained(reg) == [BindingChange("refreshed", "tok1", AOR, PHONE, FLOW, T0 + 180)]
    p = prepare(reg, register(contacts=("<sip:1001@192.0.2.101:5060>",), expires=1800), T0 + 90)
    assert p.relay is True  # the expiry asked for changed
    reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok1", 1800),)), T0 + 91)
    assert drained(reg) == [BindingChange("refreshed", "tok1", AOR, PHONE, FLOW, T0 + 211)]

    p = prepare(reg, register(contacts=("<sip:1001@192.0.2.101:5060>;expires=0",)), T0 + 100)
    assert drained(reg) == []  # removed only when the PBX agrees
    reg.on_pbx_response(p.handle, pbx_response(200), T0 + 101)
    assert drained(reg) == [BindingChange("unregistered", "tok1", AOR, PHONE, FLOW, None)]


def test_changes_at_expiry_and_flow_death_are_reported_once():
    """A binding swept at its client deadline is reported expired; one whose connection
    closed is reported at once and not again when it is swept or unregistered later."""
    reg = registered()
    drained(reg)
    assert reg.expire(T0 + 119) == [] and drained(reg) == []
    reg.expire(T0 + 120)
    assert drained(reg) == [BindingChange("expired", "tok1", AOR, PHONE, FLOW, None)]

    reg = registered()
    drained(reg)
    reg.flow_closed(FLOW, T0 + 50)
    assert drained(reg) == [BindingChange("flow_closed", "tok1", AOR, PHONE, FLOW, None)]
    reg.flow_closed(FLOW, T0 + 51)
    reg.expire(T0 + 120)
    assert drained(reg) == []


def test_pending_and_refused_bindings_are_never_reported():
    """A new binding the PBX refuses, or never answers, was never live: nothing to report."""
    reg = Registrar(CountingIdSource("tok"))
    p = prepare(reg, register())
    reg.on_pbx_response(p.handle, pbx_response(403, reason="Forbidden"), T0 + 1)
    prepare(reg, register("1002"), T0 + 2)
    reg.expire(T0 + 40)
    assert len(reg) == 0 and drained(reg) == []


def test_a_superseded_flow_is_reported_gone_and_the_new_one_live():
    """RFC 5626 6: the old flow's binding goes (unregistered) in the same answer that makes
    the new flow's binding live, in that order."""
    reg = Registrar(CountingIdSource("tok"))
    req = request("baresip-register-tls.sip")
    old = ("tls", 5061, "192.0.2.160", 43219, 7)
    new = ("tls", 5061, "192.0.2.160", 43220, 8)
    p = prepare(reg, req, flow=old, source=("192.0.2.160", 43219), transport="tls")
    reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok1", 3600),)), T0)
    p = prepare(reg, req, T0 + 30, flow=new, source=("192.0.2.160", 43220), transport="tls")
    reg.on_pbx_response(p.handle, pbx_response(200, (tok("tok2", 3600),)), T0 + 30)
    aor = "sip:alice@sip.example.com"
    assert drained(reg) == [
        BindingChange("registered", "tok1", aor, ("192.0.2.160", 43219), old, T0 + 120),
        BindingChange("unregistered", "tok1", aor, ("192.0.2.160", 43219), old, None),
        BindingChange("registered", "tok2", aor, ("192.0.2.160", 43220), new, T0 + 150),
    ]


def test_client_never_sees_the_pbx_or_our_tokens():
    """Whatever the PBX's 200 lists (its own contacts, other hosts, Server banner), the client
    gets only its own contact."""
    reg = Registrar(CountingIdSource("tok"))
    p = prepare(reg, request("yealink-register.sip"))
    ok = pbx_response(
        200,
        (
            tok("tok1", 3599),
            "<sip:1001@10.0.0.5:5060>;expires=300",
            "<sip:1001@pbx-internal.corp.local>;expires=600",
        ),
        3600,
    )
    out = reg.on_pbx_response(p.handle, ok, T0)
    assert out.client_contacts == ["<sip:1001@192.0.2.101:5060>;expires=120"]
    seen = " ".join(out.client_contacts) + repr(out)
    for secret in ("tok1", "203.0.113.10", "10.0.0.5", "corp.local", "Asterisk"):
        assert secret not in seen


def test_failure_drops_new_binding_but_keeps_an_active_one():
    """A 404 or 500 drops the binding the REGISTER was creating; a failed refresh keeps the
    active one."""
    reg = Registrar(CountingIdSource("tok"))
    p = prepare(reg, register())
    out = reg.on_pbx_response(p.handle, pbx_response(404, reason="Not Found"), T0)
    assert (out.status, out.auth_failure, len(reg)) == (404, False, 0)
    reg = registered()
    p = prepare(reg, register(expires=1800), T0 + 60)
    reg.on_pbx_response(p.handle, pbx_response(500, reason="Server Internal Error"), T0 + 60)
    assert reg.binding("tok1").state is BindingState.ACTIVE


def test_auth_failures_counted_for_challenge_after_credentials_and_403():
    """A 401 to a request with credentials and a 403 count per IP and username; the first 401
    to a request without credentials does not."""
    reg = Registrar(CountingIdSource("tok"))
    p = prepare(reg, request("yealink-register.sip"))
    assert not reg.on_pbx_response(p.handle, corpus("asterisk-register-401.sip"), T0).auth_failure
    assert reg.auth_failures.by_ip("192.0.2.101", 60, T0) == 0
    p = prepare(reg, request("yealink-register-auth.sip"), T0 + 1)
    out = reg.on_pbx_response(p.handle, corpus("asterisk-register-401.sip"), T0 + 1)
    assert (out.status, out.auth_failure) == (401, True)
    assert reg.binding("tok1").state is BindingState.PENDING
    p = prepare(reg, request("yealink-register-auth.sip"), T0 + 2)
    out = reg.on_pbx_response(p.handle, pbx_response(403, reason="Forbidden"), T0 + 2)
    assert (out.status, out.auth_failure) == (403, True)
    assert reg.binding("tok1") is None
    assert reg.auth_failures.by_ip("192.0.2.101", 60, T0 + 2) == 2
    assert reg.auth_failures.by_user("1001", 60, T0 + 2) == 2
    assert reg.auth_failures.by_user("1001", 0.5, T0 + 2) == 1
    p = prepare(reg, register(expires=600, extra='Proxy-Authorization: Digest username="x"'))
    reg.on_pbx_response(p.handle, pbx_response(407, reason="Proxy Authentication Required"), T0)
    assert reg.auth_failures.by_user("x", 60, T0) == 1


def test_auth_failure_username_from_authorization_else_to_user():
    """The username counted is the Authorization username when present, else the To user."""
    reg = Registrar(CountingIdSource("tok"))
    creds = 'Authorization: Digest realm="asterisk", username="alice", nonce="n"'
    p = prepare(reg, register(extra=creds), source=("198.51.100.7", 5060))
    reg.on_pbx_response(p.handle, pbx_response(403, reason="Forbidden"), T0)
    p = prepare(reg, register("1%30%30"), source=("198.51.100.7", 5060))
    reg.on_pbx_response(p.handle, pbx_response(403, reason="Forbidden"), T0)
    assert reg.auth_failures.users() == ["alice", "100"]
    assert reg.auth_failures.by_ip("198.51.100.7", 10, T0) == 2


def test_auth_failures_memory_is_bounded():
    """At most max_keys keys per kind (least recently failed evicted) and max_events times."""
    af = AuthFailures(max_keys=2, max_events=3)
    af.record("198.51.100.1", "a", 1.0)
    af.record("198.51.100.2", "b", 2.0)
    af.record("198.51.100.1", "a", 3.0)
    af.record("198.51.100.3", "c", 4.0)
    assert af.ips() == ["198.51.100.1", "198.51.100.3"] and af.users() == ["a", "c"]
    assert af.by_ip("198.51.100.2", 100, 5.0) == 0
    for t in range(10):
        af.record("198.51.100.3", "c", 10.0 + t)
    assert af.by_ip("198.51.100.3", 100, 20.0) == 3


def test_tokens_are_random_and_long_with_the_real_id_source():
    """With the production IdSource a token carries 16 bytes of entropy (32 hex digits)."""
    reg = Registrar(IdSource())
    p = prepare(reg, register())
    token = p.contacts[0][len("<sip:") : p.contacts[0].index("@")]
    assert len(token) == 32 and int(token, 16) >= 0
    assert prepare(reg, register()).contacts == p.contacts  # same key: same token


def test_aor_normalisation():
    """The AOR is scheme, unescaped user and lower-case host; port and parameters dropped."""
    reg = Registrar(CountingIdSource("tok"))
    req = register("%31001")
    req.headers.set("To", "<sip:%31001@PBX.Example.COM:5060;user=phone>")
    assert prepare(reg, req).aor == "sip:1001@pbx.example.com"


def test_policy_bounds_are_checked():
    """A policy with min above max is refused at construction."""
    with pytest.raises(ValueError):
        RegistrationPolicy(client_min_expires=200)
    with pytest.raises(ValueError):
        RegistrationPolicy(pbx_min_expires=7200)
