"""The four RFC 3261 17 transaction machines (with RFC 6026) and the transaction table: exact
deadlines, exact bytes, every state transition on reliable and unreliable transports."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sbc.errors import SipParseError
from sbc.sip.message import Request, Response, build_response, parse_message
from sbc.sip.transaction import (
    ACCEPTED,
    CALLING,
    COMPLETED,
    CONFIRMED,
    DEFAULT_TIMERS,
    PROCEEDING,
    TERMINATED,
    TRYING,
    AckReceived,
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ResponseReceived,
    ServerTransaction,
    Terminated,
    TimedOut,
    TimerSettings,
    Transaction,
    TransactionError,
    TransactionLayer,
    TransportFailed,
    build_ack,
    build_trying,
)

UNRELIABLE_AND_RELIABLE = pytest.mark.parametrize("reliable", [False, True], ids=["udp", "tcp"])


def request(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bKc1",
    sent_by: str = "client.example.com:5060",
    cseq: int = 1,
    to_tag: str | None = None,
    from_tag: str = "f1",
    call_id: str = "call1@client.example.com",
    extra: str = "",
) -> Request:
    to = "<sip:bob@example.net>" + (f";tag={to_tag}" if to_tag else "")
    msg = parse_message(
        f"{method} sip:bob@example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sent_by};branch={branch}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag={from_tag}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n{extra}"
        f"Content-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(msg, Request)
    return msg


def response(
    status: int,
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bKc1",
    cseq: int = 1,
    to_tag: str = "t1",
) -> Response:
    tag = f";tag={to_tag}" if status > 100 else ""
    msg = parse_message(
        f"SIP/2.0 {status} Whatever\r\n"
        f"Via: SIP/2.0/UDP client.example.com:5060;branch={branch}\r\n"
        f"From: <sip:alice@example.com>;tag=f1\r\n"
        f"To: <sip:bob@example.net>{tag}\r\n"
        f"Call-ID: call1@client.example.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Content-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(msg, Response)
    return msg


def events(txn: Transaction) -> list[object]:
    out = []
    while (e := txn.next_event()) is not None:
        out.append(e)
    return out


def fire_all(txn: Transaction, timer: str) -> list[float]:
    """Run the clock from deadline to deadline; the instants at which ``timer`` fired."""
    fired = []
    while (when := txn.get_timer()) is not None:
        due = txn.deadlines
        txn.handle_timer(when)
        if due.get(timer) == when:
            fired.append(when)
    return fired


def client(
    method: str = "INVITE",
    reliable: bool = False,
    now: float = 0.0,
    timers: TimerSettings = DEFAULT_TIMERS,
) -> ClientTransaction:
    txn = ClientTransaction.create(request(method), reliable=reliable, timers=timers)
    txn.start(now)
    return txn


def server(
    method: str = "INVITE", reliable: bool = False, now: float = 0.0, trying: bool = True
) -> ServerTransaction:
    return ServerTransaction.create(request(method), now, reliable=reliable, trying=trying)


# ---------------------------------------------------------------------------------------------
# Timer settings


def test_timer_settings_default_to_rfc_values():
    """T1, T2, T4 default to 0.5, 4 and 5 s; 64*T1 is 32 s and Timer D 32 s (RFC 3261 table 4)."""
    t = TimerSettings()
    assert (t.t1, t.t2, t.t4, t.timeout, t.timer_d) == (0.5, 4.0, 5.0, 32.0, 32.0)


def test_timer_d_grows_with_t1():
    """Timer D covers the server's 64*T1 window when T1 is raised above 0.5 s."""
    assert TimerSettings(t1=1.0).timer_d == 64.0
    assert TimerSettings(t1=0.25).timer_d == 32.0


@pytest.mark.parametrize("kw", [{"t1": 0.0}, {"t1": 5.0}, {"t4": 0.0}, {"t2": -1.0}])
def test_timer_settings_reject_nonsense(kw):
    """T1 must be positive and at most T2, and T4 positive."""
    with pytest.raises(ValueError):
        TimerSettings(**kw)


# ---------------------------------------------------------------------------------------------
# Client INVITE (RFC 3261 17.1.1, RFC 6026)


def test_invite_client_timer_a_doubles_until_timer_b_times_out():
    """Over UDP the INVITE is resent at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 and Timer B fires at 32."""
    txn = client("INVITE")
    assert txn.state is CALLING
    assert txn.messages_to_send() == [txn.request]
    assert txn.deadlines == {"A": 0.5, "B": 32.0}
    assert fire_all(txn, "A") == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert txn.messages_to_send() == [txn.request] * 6
    assert events(txn) == [TimedOut("B"), Terminated()]
    assert txn.state is TERMINATED and txn.get_timer() is None


def test_invite_client_reliable_has_no_timer_a():
    """Over TCP the INVITE is sent once and only Timer B runs (RFC 3261 17.1.1.2)."""
    txn = client("INVITE", reliable=True, now=10.0)
    assert txn.deadlines == {"B": 42.0}
    txn.handle_timer(41.9)
    assert txn.messages_to_send() == [txn.request] and events(txn) == []
    txn.handle_timer(42.0)
    assert events(txn) == [TimedOut("B"), Terminated()]
    assert txn.messages_to_send() == []


def test_invite_client_timers_follow_t1():
    """With T1 = 1 s Timer A starts at 1 s and Timer B is 64 s."""
    txn = client("INVITE", timers=TimerSettings(t1=1.0, t2=4.0))
    assert txn.deadlines == {"A": 1.0, "B": 64.0}
    assert fire_all(txn, "A") == [1.0, 3.0, 7.0, 15.0, 31.0, 63.0]


def test_late_timer_tick_rearms_from_the_tick():
    """A timer handled late fires once and is re-armed from the late instant, not in the past."""
    txn = client("INVITE")
    txn.handle_timer(2.0)
    assert txn.messages_to_send() == [txn.request, txn.request]
    assert txn.deadlines == {"A": 3.0, "B": 32.0}


def test_time_never_goes_backwards():
    """An input stamped earlier than one already seen is taken at the latest time seen."""
    txn = client("INVITE")
    txn.handle_timer(0.5)
    txn.receive_response(response(180), now=0.2)
    txn.receive_response(response(486), now=0.1)
    assert txn.deadlines == {"D": 32.5}


@UNRELIABLE_AND_RELIABLE
def test_invite_client_provisional_moves_to_proceeding(reliable):
    """A 1xx stops Timers A and B; it and every later 1xx reach the TU (RFC 3261 17.1.1.2)."""
    txn = client("INVITE", reliable=reliable)
    txn.messages_to_send()
    r100, r180 = response(100), response(180)
    txn.receive_response(r100, now=0.1)
    assert txn.state is PROCEEDING and txn.deadlines == {}
    txn.receive_response(r180, now=0.2)
    txn.receive_response(r180, now=0.3)
    assert events(txn) == [ResponseReceived(r100), ResponseReceived(r180), ResponseReceived(r180)]
    assert txn.state is PROCEEDING and txn.messages_to_send() == []


ACK_INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP sbc.example.net:5060;branch=z9hG4bKc1, "
    b"SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKa1;received=192.0.2.1\r\n"
    b"Max-Forwards: 69\r\n"
    b"Route: <sip:p1.example.com;lr>\r\n"
    b"Route: <sip:p2.example.com;lr>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)
ACK_486 = (
    b"SIP/2.0 486 Busy Here\r\n"
    b"Via: SIP/2.0/UDP sbc.example.net:5060;branch=z9hG4bKc1\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKa1;received=192.0.2.1\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
EXPECTED_ACK = (
    b"ACK sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP sbc.example.net:5060;branch=z9hG4bKc1\r\n"
    b"Max-Forwards: 69\r\n"
    b"Route: <sip:p1.example.com;lr>\r\n"
    b"Route: <sip:p2.example.com;lr>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 ACK\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_invite_client_builds_the_ack_for_a_non_2xx():
    """The ACK for a 486 has the INVITE's Request-URI, top Via only, Routes, From, Call-ID and
    CSeq number, the response's To with its tag, and no body (RFC 3261 17.1.1.3)."""
    invite, busy = parse_message(ACK_INVITE), parse_message(ACK_486)
    assert isinstance(invite, Request) and isinstance(busy, Response)
    txn = ClientTransaction.create(invite, reliable=False)
    txn.start(0.0)
    txn.messages_to_send()
    txn.receive_response(busy, now=0.4)
    sent = txn.messages_to_send()
    assert [m.to_bytes() for m in sent] == [EXPECTED_ACK]
    assert build_ack(invite, busy).to_bytes() == EXPECTED_ACK
    assert events(txn) == [ResponseReceived(busy)]
    assert txn.state is COMPLETED and txn.deadlines == {"D": 32.4}


def test_ack_without_max_forwards_in_invite_gets_70():
    """An INVITE without Max-Forwards gives an ACK with Max-Forwards: 70 (RFC 3261 8.1.1.6)."""
    invite = parse_message(ACK_INVITE.replace(b"Max-Forwards: 69\r\n", b""))
    busy = parse_message(ACK_486)
    assert isinstance(invite, Request) and isinstance(busy, Response)
    assert build_ack(invite, busy).to_bytes() == EXPECTED_ACK.replace(b": 69", b": 70")


@pytest.mark.parametrize("provisional", [False, True], ids=["calling", "proceeding"])
def test_invite_client_completed_absorbs_retransmitted_finals(provisional):
    """In Completed a retransmitted final is answered with the same ACK and not passed up; a
    1xx or 2xx there is ignored; Timer D (32 s) ends it (RFC 3261 17.1.1.2)."""
    txn = client("INVITE")
    txn.messages_to_send()
    if provisional:
        txn.receive_response(response(180), now=0.2)
    first = response(486)
    txn.receive_response(first, now=0.4)
    ack = txn.messages_to_send()
    assert [m.method for m in ack if isinstance(m, Request)] == ["ACK"] and len(ack) == 1
    assert events(txn)[-1] == ResponseReceived(first)
    txn.receive_response(response(486), now=2.0)
    txn.receive_response(response(180), now=3.0)
    txn.receive_response(response(200), now=4.0)
    assert txn.messages_to_send() == ack and events(txn) == []
    assert txn.deadlines == {"D": 32.4}
    txn.handle_timer(32.3)
    assert txn.state is COMPLETED
    txn.handle_timer(32.4)
    assert txn.state is TERMINATED and events(txn) == [Terminated()]
    txn.receive_response(response(486), now=34.0)
    assert txn.messages_to_send() == [] and events(txn) == []


def test_invite_client_reliable_non_2xx_acks_and_terminates():
    """Over TCP Timer D is 0: the ACK is sent and the transaction terminates at once."""
    txn = client("INVITE", reliable=True)
    txn.messages_to_send()
    busy = response(603)
    txn.receive_response(busy, now=1.0)
    sent = txn.messages_to_send()
    assert len(sent) == 1 and isinstance(sent[0], Request) and sent[0].method == "ACK"
    assert events(txn) == [ResponseReceived(busy), Terminated()]
    assert txn.state is TERMINATED and txn.get_timer() is None


@UNRELIABLE_AND_RELIABLE
@pytest.mark.parametrize("provisional", [False, True], ids=["calling", "proceeding"])
def test_invite_client_2xx_is_accepted_for_timer_m(reliable, provisional):
    """A 2xx goes to Accepted (RFC 6026): no ACK from the transaction, every 2xx passed up,
    other responses ignored, and Timer M (64*T1, any transport) ends it."""
    txn = client("INVITE", reliable=reliable)
    txn.messages_to_send()
    if provisional:
        txn.receive_response(response(183), now=0.1)
        events(txn)
    ok, fork = response(200), response(200, to_tag="other-fork")
    txn.receive_response(ok, now=0.4)
    assert txn.state is ACCEPTED and txn.deadlines == {"M": 32.4}
    txn.receive_response(ok, now=2.0)
    txn.receive_response(fork, now=3.0)
    txn.receive_response(response(486), now=4.0)
    txn.receive_response(response(180), now=5.0)
    assert txn.messages_to_send() == []
    assert events(txn) == [ResponseReceived(ok), ResponseReceived(ok), ResponseReceived(fork)]
    txn.handle_timer(32.4)
    assert txn.state is TERMINATED and events(txn) == [Terminated()]


@pytest.mark.parametrize("setup", ["calling", "completed"])
def test_invite_client_transport_error_terminates(setup):
    """A transport error in Calling or Completed informs the TU and terminates (figure 5)."""
    txn = client("INVITE")
    if setup == "completed":
        txn.receive_response(response(500), now=1.0)
        events(txn)
    txn.transport_error(now=1.5)
    assert events(txn) == [TransportFailed(), Terminated()]
    assert txn.state is TERMINATED and txn.get_timer() is None


@pytest.mark.parametrize("status", [180, 200])
def test_invite_client_transport_error_ignored_when_nothing_in_flight(status):
    """In Proceeding and Accepted the transaction has nothing in flight: the report is ignored."""
    txn = client("INVITE")
    txn.receive_response(response(status), now=1.0)
    events(txn)
    state = txn.state
    txn.transport_error(now=1.5)
    assert txn.state is state and events(txn) == []


def test_timeout_wins_a_tie_with_a_retransmission():
    """When Timer E and Timer F fall due together, F fires and nothing is resent."""
    txn = client("OPTIONS", timers=TimerSettings(t1=0.5, t2=0.5))
    txn.handle_timer(31.5)
    txn.messages_to_send()
    assert txn.deadlines == {"E": 32.0, "F": 32.0}
    txn.handle_timer(32.0)
    assert txn.messages_to_send() == [] and events(txn) == [TimedOut("F"), Terminated()]


def test_client_transaction_misuse_raises():
    """An ACK has no client transaction; a request needs a branch; start only once; no
    response before start; a status outside 100-699 is refused."""
    with pytest.raises(TransactionError):
        ClientTransaction.create(request("ACK"), reliable=False)
    no_branch = request("OPTIONS")
    no_branch.headers.set("Via", "SIP/2.0/UDP client.example.com")
    with pytest.raises(TransactionError):
        ClientTransaction.create(no_branch, reliable=False)
    txn = ClientTransaction.create(request("OPTIONS"), reliable=False)
    with pytest.raises(TransactionError):
        txn.receive_response(response(200, "OPTIONS"), now=0.0)
    txn.start(0.0)
    with pytest.raises(TransactionError):
        txn.start(0.0)
    with pytest.raises(TransactionError):
        txn.receive_response(Response(700, "Odd"), now=0.0)


def test_create_picks_the_machine_by_method():
    """INVITE gets the INVITE machines; anything else (CANCEL too) the non-INVITE ones."""
    assert isinstance(client("INVITE"), InviteClientTransaction)
    assert isinstance(client("CANCEL"), NonInviteClientTransaction)
    assert isinstance(server("INVITE"), InviteServerTransaction)
    assert isinstance(server("BYE"), NonInviteServerTransaction)


# ---------------------------------------------------------------------------------------------
# Client non-INVITE (RFC 3261 17.1.2)


def test_non_invite_client_timer_e_caps_at_t2_until_timer_f():
    """Timer E doubles up to T2: resends at 0.5, 1.5, 3.5, 7.5, 11.5 ... 31.5; F fires at 32."""
    txn = client("OPTIONS")
    assert txn.state is TRYING and txn.deadlines == {"E": 0.5, "F": 32.0}
    assert fire_all(txn, "E") == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert len(txn.messages_to_send()) == 11
    assert events(txn) == [TimedOut("F"), Terminated()]


def test_non_invite_client_proceeding_retransmits_at_t2():
    """After a 1xx the armed Timer E stays, and from its next firing it runs every T2."""
    txn = client("REGISTER")
    txn.handle_timer(0.5)
    trying = response(100, "REGISTER")
    txn.receive_response(trying, now=1.0)
    assert txn.state is PROCEEDING and events(txn) == [ResponseReceived(trying)]
    assert txn.deadlines == {"E": 1.5, "F": 32.0}
    txn.handle_timer(1.5)
    assert txn.deadlines == {"E": 5.5, "F": 32.0}
    txn.handle_timer(5.5)
    assert txn.deadlines == {"E": 9.5, "F": 32.0}
    assert len(txn.messages_to_send()) == 4
    assert fire_all(txn, "F") == [32.0]
    assert events(txn) == [TimedOut("F"), Terminated()]


def test_non_invite_client_reliable_has_no_timer_e():
    """Over TCP only Timer F runs (RFC 3261 17.1.2.2)."""
    txn = client("BYE", reliable=True)
    assert txn.deadlines == {"F": 32.0}


@pytest.mark.parametrize("provisional", [False, True], ids=["trying", "proceeding"])
def test_non_invite_client_final_waits_timer_k_over_udp(provisional):
    """A final goes up once; Completed absorbs retransmissions for Timer K = T4 (5 s)."""
    txn = client("BYE")
    if provisional:
        txn.receive_response(response(100, "BYE"), now=0.2)
        events(txn)
    ok = response(200, "BYE")
    txn.receive_response(ok, now=1.0)
    assert txn.state is COMPLETED and txn.deadlines == {"K": 6.0}
    assert events(txn) == [ResponseReceived(ok)]
    txn.receive_response(ok, now=2.0)
    txn.receive_response(response(100, "BYE"), now=2.0)
    assert events(txn) == []
    txn.transport_error(now=3.0)  # nothing in flight in Completed (figure 6)
    assert txn.state is COMPLETED
    txn.handle_timer(6.0)
    assert events(txn) == [Terminated()] and txn.get_timer() is None


@pytest.mark.parametrize("provisional", [False, True], ids=["trying", "proceeding"])
def test_non_invite_client_final_terminates_at_once_over_tcp(provisional):
    """Over TCP Timer K is 0: the final goes up and the transaction terminates at once."""
    txn = client("BYE", reliable=True)
    if provisional:
        txn.receive_response(response(100, "BYE"), now=0.2)
        events(txn)
    nope = response(481, "BYE")
    txn.receive_response(nope, now=1.0)
    assert events(txn) == [ResponseReceived(nope), Terminated()]
    assert txn.state is TERMINATED


@pytest.mark.parametrize("provisional", [False, True], ids=["trying", "proceeding"])
def test_non_invite_client_transport_error_terminates(provisional):
    """A transport error in Trying or Proceeding informs the TU and terminates (figure 6)."""
    txn = client("BYE")
    if provisional:
        txn.receive_response(response(100, "BYE"), now=0.2)
        events(txn)
    txn.transport_error(now=1.0)
    assert events(txn) == [TransportFailed(), Terminated()]
    assert txn.get_timer() is None


# ---------------------------------------------------------------------------------------------
# Server INVITE (RFC 3261 17.2.1, RFC 6026)

TRYING_INVITE = (
    b"INVITE sip:bob@example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP client.example.com:5060;branch=z9hG4bKc1;rport=5060;received=192.0.2.7\r\n"
    b"Via: SIP/2.0/UDP ua.example.com;branch=z9hG4bKu1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=f1\r\n"
    b"To: <sip:bob@example.net>\r\n"
    b"Call-ID: call1@client.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Timestamp: 54.2\r\n"
    b"Contact: <sip:alice@ua.example.com>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
EXPECTED_TRYING = (
    b"SIP/2.0 100 Trying\r\n"
    b"Via: SIP/2.0/UDP client.example.com:5060;branch=z9hG4bKc1;rport=5060;received=192.0.2.7\r\n"
    b"Via: SIP/2.0/UDP ua.example.com;branch=z9hG4bKu1\r\n"
    b"From: <sip:alice@example.com>;tag=f1\r\n"
    b"To: <sip:bob@example.net>\r\n"
    b"Call-ID: call1@client.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Timestamp: 54.2\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_invite_server_sends_100_trying_at_once():
    """A new INVITE server transaction sends 100 Trying with every Via, no To tag and the
    Timestamp copied (RFC 3261 8.2.6.1, 17.2.1), and waits in Proceeding with no timer."""
    invite = parse_message(TRYING_INVITE)
    assert isinstance(invite, Request)
    assert build_trying(invite).to_bytes() == EXPECTED_TRYING
    txn = ServerTransaction.create(invite, 0.0, reliable=False)
    assert [m.to_bytes() for m in txn.messages_to_send()] == [EXPECTED_TRYING]
    assert txn.state is PROCEEDING and txn.get_timer() is None and events(txn) == []


def test_invite_server_retransmission_resends_the_last_provisional():
    """In Proceeding a retransmitted INVITE gets the latest provisional again, or nothing if
    none was sent (RFC 3261 17.2.1)."""
    txn = server("INVITE", trying=False)
    txn.receive_request(request("INVITE"), now=0.5)
    assert txn.messages_to_send() == []
    txn.send_response(build_trying(txn.request), now=0.6)
    ringing = build_response(txn.request, 180, to_tag="t1")
    assert txn.send_response(ringing, now=0.7)
    txn.messages_to_send()
    txn.receive_request(request("INVITE"), now=1.0)
    assert txn.messages_to_send() == [ringing]
    txn.receive_request(request("ACK"), now=1.1)  # no final yet: ignored
    assert txn.state is PROCEEDING and txn.messages_to_send() == [] and events(txn) == []


def test_invite_server_non_2xx_retransmits_per_timer_g_until_timer_h():
    """A 486 over UDP is resent at 1.5, 2.5, 4.5, 8.5, 12.5 ... 32.5 (doubling capped at T2), and
    without an ACK Timer H fires at 33 and the TU is told (RFC 3261 17.2.1)."""
    txn = server("INVITE")
    txn.messages_to_send()
    busy = build_response(txn.request, 486, to_tag="t1")
    txn.send_response(busy, now=1.0)
    assert txn.state is COMPLETED and txn.deadlines == {"G": 1.5, "H": 33.0}
    assert fire_all(txn, "G") == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert txn.messages_to_send() == [busy] * 11
    assert events(txn) == [TimedOut("H"), Terminated()]


def test_invite_server_reliable_non_2xx_has_no_timer_g():
    """Over TCP the final is sent once and only Timer H waits for the ACK."""
    txn = server("INVITE", reliable=True)
    txn.send_response(build_response(txn.request, 404, to_tag="t1"), now=1.0)
    assert txn.deadlines == {"H": 33.0}
    txn.handle_timer(33.0)
    assert events(txn) == [TimedOut("H"), Terminated()]


def test_invite_server_completed_answers_retransmissions_with_the_final():
    """In Completed a retransmitted INVITE gets the final again; other finals are discarded."""
    txn = server("INVITE")
    busy = build_response(txn.request, 486, to_tag="t1")
    txn.send_response(busy, now=1.0)
    txn.messages_to_send()
    txn.receive_request(request("INVITE"), now=1.2)
    assert txn.messages_to_send() == [busy]
    assert not txn.send_response(build_response(txn.request, 500, to_tag="t1"), now=1.3)
    assert not txn.send_response(build_response(txn.request, 180, to_tag="t1"), now=1.3)
    assert txn.messages_to_send() == []


def test_invite_server_ack_confirms_and_timer_i_absorbs_over_udp():
    """The ACK stops G and H and is not passed up; Confirmed absorbs ACK and INVITE
    retransmissions for Timer I = T4 (RFC 3261 17.2.1)."""
    txn = server("INVITE")
    txn.send_response(build_response(txn.request, 486, to_tag="t1"), now=1.0)
    txn.messages_to_send()
    txn.receive_request(request("ACK", to_tag="t1"), now=1.2)
    assert txn.state is CONFIRMED and txn.deadlines == {"I": 6.2}
    txn.receive_request(request("ACK", to_tag="t1"), now=2.0)
    txn.receive_request(request("INVITE"), now=2.0)
    assert txn.messages_to_send() == [] and events(txn) == []
    txn.handle_timer(6.2)
    assert txn.state is TERMINATED and events(txn) == [Terminated()]


def test_invite_server_ack_terminates_at_once_over_tcp():
    """Over TCP Timer I is 0: the ACK terminates the transaction at once."""
    txn = server("INVITE", reliable=True)
    txn.send_response(build_response(txn.request, 486, to_tag="t1"), now=1.0)
    txn.receive_request(request("ACK", to_tag="t1"), now=1.2)
    assert txn.state is TERMINATED and events(txn) == [Terminated()]


@UNRELIABLE_AND_RELIABLE
def test_invite_server_2xx_is_accepted_for_timer_l(reliable):
    """A 2xx goes to Accepted (RFC 6026): INVITE retransmissions absorbed, the TU's own 2xx
    retransmissions sent, a matching ACK passed up, non-2xx discarded, Timer L = 64*T1."""
    txn = server("INVITE", reliable=reliable)
    txn.messages_to_send()
    ok = build_response(txn.request, 200, to_tag="t1")
    assert txn.send_response(ok, now=1.0)
    assert txn.state is ACCEPTED and txn.deadlines == {"L": 33.0}
    assert txn.messages_to_send() == [ok]
    txn.receive_request(request("INVITE"), now=1.5)
    assert txn.messages_to_send() == []
    assert txn.send_response(ok, now=2.0) and txn.messages_to_send() == [ok]
    assert not txn.send_response(build_response(txn.request, 486, to_tag="t1"), now=2.5)
    ack = request("ACK", to_tag="t1")
    txn.receive_request(ack, now=3.0)
    assert events(txn) == [AckReceived(ack)]
    txn.transport_error(now=4.0)
    assert txn.state is ACCEPTED and events(txn) == [TransportFailed()]
    txn.handle_timer(33.0)
    assert txn.state is TERMINATED and events(txn) == [Terminated()]
    assert not txn.send_response(ok, now=34.0) and txn.messages_to_send() == []


@pytest.mark.parametrize("setup", ["proceeding", "completed", "confirmed"])
def test_invite_server_transport_error_informs_and_stays(setup):
    """A transport error tells the TU and leaves the state and timers alone, so retransmissions
    are still absorbed (RFC 6026 8.8 updating RFC 3261 17.2.4)."""
    txn = server("INVITE")
    if setup != "proceeding":
        txn.send_response(build_response(txn.request, 486, to_tag="t1"), now=1.0)
    if setup == "confirmed":
        txn.receive_request(request("ACK", to_tag="t1"), now=1.2)
    state, deadlines = txn.state, txn.deadlines
    txn.transport_error(now=1.4)
    assert events(txn) == [TransportFailed()]
    assert txn.state is state and txn.deadlines == deadlines


def test_server_transaction_misuse_raises():
    """ACK has no server transaction; a status outside 100-699 and a foreign method are refused."""
    with pytest.raises(TransactionError):
        ServerTransaction.create(request("ACK"), 0.0, reliable=False)
    txn = server("INVITE")
    with pytest.raises(TransactionError):
        txn.send_response(Response(99, "Odd"), now=0.0)
    with pytest.raises(TransactionError):
        txn.receive_request(request("CANCEL"), now=0.0)
    with pytest.raises(TransactionError):
        server("BYE").receive_request(request("OPTIONS"), now=0.0)


# ---------------------------------------------------------------------------------------------
# Server non-INVITE (RFC 3261 17.2.2)


def test_non_invite_server_trying_discards_retransmissions():
    """In Trying there is nothing to answer a retransmission with: it is discarded."""
    txn = server("BYE")
    assert txn.state is TRYING and txn.messages_to_send() == [] and txn.get_timer() is None
    txn.receive_request(request("BYE"), now=0.5)
    assert txn.messages_to_send() == [] and events(txn) == []


def test_non_invite_server_proceeding_resends_the_last_provisional():
    """After a 1xx from the TU a retransmission gets the latest provisional again."""
    txn = server("REGISTER")
    trying = build_trying(txn.request)
    assert txn.send_response(trying, now=0.1)
    assert txn.state is PROCEEDING and txn.messages_to_send() == [trying]
    txn.receive_request(request("REGISTER"), now=0.5)
    assert txn.messages_to_send() == [trying]


@pytest.mark.parametrize("provisional", [False, True], ids=["trying", "proceeding"])
def test_non_invite_server_final_waits_timer_j_over_udp(provisional):
    """A final goes to Completed for Timer J = 64*T1, answering retransmissions with it and
    discarding later finals (RFC 3261 17.2.2)."""
    txn = server("BYE")
    if provisional:
        txn.send_response(build_trying(txn.request), now=0.1)
    ok = build_response(txn.request, 200, to_tag="t1")
    assert txn.send_response(ok, now=1.0)
    assert txn.state is COMPLETED and txn.deadlines == {"J": 33.0}
    txn.messages_to_send()
    txn.receive_request(request("BYE"), now=2.0)
    assert txn.messages_to_send() == [ok]
    assert not txn.send_response(build_response(txn.request, 500, to_tag="t1"), now=2.0)
    txn.handle_timer(33.0)
    assert txn.state is TERMINATED and events(txn) == [Terminated()]


@pytest.mark.parametrize("provisional", [False, True], ids=["trying", "proceeding"])
def test_non_invite_server_final_terminates_at_once_over_tcp(provisional):
    """Over TCP Timer J is 0: the final is sent and the transaction terminates at once."""
    txn = server("BYE", reliable=True)
    if provisional:
        txn.send_response(build_trying(txn.request), now=0.1)
    ok = build_response(txn.request, 200, to_tag="t1")
    txn.send_response(ok, now=1.0)
    assert txn.messages_to_send()[-1] is ok
    assert txn.state is TERMINATED and events(txn) == [Terminated()]


@pytest.mark.parametrize("setup", ["trying", "proceeding", "completed"])
def test_non_invite_server_transport_error_informs_and_stays(setup):
    """A transport error tells the TU and the transaction stays to absorb retransmissions
    (RFC 6026 8.8 updating RFC 3261 17.2.4); Timer J still ends it."""
    txn = server("BYE")
    if setup != "trying":
        txn.send_response(build_trying(txn.request), now=0.1)
    if setup == "completed":
        txn.send_response(build_response(txn.request, 200, to_tag="t1"), now=0.2)
    state = txn.state
    txn.transport_error(now=1.0)
    assert events(txn) == [TransportFailed()] and txn.state is state
    txn.messages_to_send()
    txn.receive_request(request("BYE"), now=1.1)
    assert txn.messages_to_send() == ([] if setup == "trying" else [txn.last_response])


# ---------------------------------------------------------------------------------------------
# The table (RFC 3261 17.1.3, 17.2.3, 9.2, 8.2.2.2)


def test_layer_matches_responses_by_branch_and_cseq_method():
    """An INVITE and its CANCEL share a branch; CSeq method tells their responses apart."""
    layer = TransactionLayer()
    invite = layer.start_client(request("INVITE"), 0.0, reliable=False)
    cancel = layer.start_client(request("CANCEL"), 0.1, reliable=False)
    assert layer.receive_response(response(200, "CANCEL"), 0.2) is cancel
    assert layer.receive_response(response(487, "INVITE"), 0.3) is invite
    assert layer.match_response(response(200, "INVITE", branch="z9hG4bKother")) is None
    assert layer.match_response(response(200, "BYE")) is None
    assert layer.match_response(response(200, "INVITE", branch="Z9HG4BKC1")) is invite


def test_layer_matches_retransmissions_and_the_ack_for_a_non_2xx():
    """A request matches by branch, sent-by and method; an ACK matches its INVITE (17.2.3)."""
    layer = TransactionLayer()
    invite = request("INVITE")
    assert layer.receive_request(invite, 0.0) is None
    txn = layer.create_server(invite, 0.0, reliable=False)
    txn.messages_to_send()
    assert layer.receive_request(request("INVITE"), 0.5) is txn
    assert txn.messages_to_send() == [txn.last_response]  # the 100 Trying again
    assert layer.match_request(request("INVITE", sent_by="other.example.com")) is None
    assert layer.match_request(request("INVITE", branch="z9hG4bKc2")) is None
    assert layer.match_request(request("OPTIONS")) is None
    txn.send_response(build_response(invite, 486, to_tag="t1"), now=1.0)
    assert layer.receive_request(request("ACK", to_tag="t1"), 1.1) is txn
    assert txn.state is CONFIRMED


def test_layer_ack_for_2xx_with_new_branch_matches_nothing():
    """The ACK for a 2xx carries a new branch: it matches no transaction (it is the dialog's)."""
    layer = TransactionLayer()
    txn = layer.create_server(request("INVITE"), 0.0, reliable=False)
    txn.send_response(build_response(txn.request, 200, to_tag="t1"), now=1.0)
    assert layer.receive_request(request("ACK", branch="z9hG4bKa2", to_tag="t1"), 1.1) is None
    assert events(txn) == []


def test_layer_finds_the_invite_a_cancel_targets():
    """A CANCEL targets the INVITE server transaction with its branch and sent-by (RFC 3261 9.2);
    it has a server transaction of its own."""
    layer = TransactionLayer()
    invite_txn = layer.create_server(request("INVITE"), 0.0, reliable=False)
    bye_txn = layer.create_server(request("BYE", branch="z9hG4bKb1"), 0.0, reliable=False)
    cancel = request("CANCEL")
    assert layer.find_invite_for_cancel(cancel) is invite_txn
    assert layer.match_request(cancel) is None
    cancel_txn = layer.create_server(cancel, 0.1, reliable=False)
    assert layer.match_request(cancel) is cancel_txn is not invite_txn
    assert layer.find_invite_for_cancel(request("CANCEL", branch="z9hG4bKzz")) is None
    assert layer.find_invite_for_cancel(request("CANCEL", sent_by="evil.example.com")) is None
    assert layer.find_invite_for_cancel(request("CANCEL", branch="z9hG4bKb1")) is None
    assert bye_txn.state is TRYING


def test_layer_detects_merged_requests():
    """Same From tag, Call-ID and CSeq, another branch and no To tag: merged, answer 482
    (RFC 3261 8.2.2.2); the retransmission itself and in-dialog requests are not."""
    layer = TransactionLayer()
    txn = layer.create_server(request("INVITE"), 0.0, reliable=True)
    forked = request("INVITE", branch="z9hG4bKfork", sent_by="proxy2.example.com")
    assert layer.match_request(forked) is None and layer.is_merged(forked)
    assert not layer.is_merged(request("INVITE"))
    assert not layer.is_merged(request("INVITE", branch="z9hG4bKfork", to_tag="t9"))
    assert not layer.is_merged(request("INVITE", branch="z9hG4bKfork", cseq=2))
    assert not layer.is_merged(request("INVITE", branch="z9hG4bKfork", from_tag="f2"))
    assert not layer.is_merged(request("ACK", branch="z9hG4bKfork"))
    txn.send_response(build_response(txn.request, 486, to_tag="t1"), now=1.0)
    txn.receive_request(request("ACK", to_tag="t1"), now=1.1)
    assert txn.state is TERMINATED and not layer.is_merged(forked)


def test_layer_refuses_rfc2543_requests_with_400():
    """A branch without the magic cookie matches nothing and creating its transaction raises
    the peer's 400 (sbc does not implement the RFC 2543 matching fallback)."""
    layer = TransactionLayer()
    old = request("INVITE", branch="1234")
    assert layer.match_request(old) is None
    with pytest.raises(SipParseError) as err:
        layer.create_server(old, 0.0, reliable=False)
    assert err.value.status == 400
    assert layer.find_invite_for_cancel(request("CANCEL", branch="1234")) is None
    assert len(layer) == 0


def test_layer_refuses_duplicates():
    """Registering a second transaction with the same key is the TU's bug."""
    layer = TransactionLayer()
    layer.start_client(request("INVITE"), 0.0, reliable=False)
    layer.create_server(request("INVITE"), 0.0, reliable=False)
    with pytest.raises(TransactionError):
        layer.start_client(request("INVITE"), 0.0, reliable=False)
    with pytest.raises(TransactionError):
        layer.create_server(request("INVITE"), 0.0, reliable=False)
    assert len(layer) == 2


def test_layer_keeps_the_earliest_deadline_across_transactions():
    """get_timer is the minimum over all transactions; handle_timer fires only the due ones,
    in deadline order, and returns them to be drained."""
    layer = TransactionLayer()
    assert layer.get_timer() is None and layer.handle_timer(100.0) == []
    a = layer.start_client(request("INVITE", branch="z9hG4bKa"), 0.0, reliable=False)
    b = layer.start_client(request("OPTIONS", branch="z9hG4bKb"), 0.2, reliable=False)
    c = layer.start_client(request("BYE", branch="z9hG4bKc"), 0.3, reliable=True)
    assert layer.get_timer() == 0.5
    assert layer.handle_timer(0.6) == [a]
    assert a.deadlines == {"A": 1.6, "B": 32.0}  # re-armed from the late tick
    assert layer.get_timer() == 0.7
    assert layer.handle_timer(1.6) == [b, a]
    assert (a.deadlines, b.deadlines) == ({"A": 3.6, "B": 32.0}, {"E": 2.6, "F": 32.2})
    a.receive_response(response(180), now=1.7)  # driven directly: the table re-files it
    assert layer.get_timer() == 2.6
    assert layer.handle_timer(2.6) == [b]
    assert layer.get_timer() == 4.6
    assert layer.receive_response(response(200, "OPTIONS", branch="z9hG4bKb"), 3.0) is b
    assert layer.get_timer() == 8.0  # b in Completed: Timer K at 3 + T4
    assert layer.handle_timer(32.3) == [b, c]
    assert events(c) == [TimedOut("F"), Terminated()]
    assert len(layer) == 1 and layer.get_timer() is None  # a waits in Proceeding, timerless


def test_layer_forgets_transactions_that_terminate():
    """A transaction that terminates, by timer or by a direct call, leaves the table."""
    layer = TransactionLayer()
    bye = layer.create_server(request("BYE"), 0.0, reliable=True)
    invite = layer.create_server(request("INVITE", branch="z9hG4bKi"), 0.0, reliable=False)
    assert len(layer) == 2
    bye.send_response(build_response(bye.request, 200, to_tag="t1"), now=1.0)
    assert len(layer) == 1 and layer.match_request(request("BYE")) is None
    invite.send_response(build_response(invite.request, 486, to_tag="t1"), now=1.0)
    assert layer.get_timer() == 1.5
    fired = layer.handle_timer(33.0)
    assert fired == [invite] and invite.state is TERMINATED
    assert len(layer) == 0 and layer.get_timer() is None
    assert TimedOut("H") in events(invite)


def test_layer_stale_heap_entries_are_compacted():
    """Deadlines that move or vanish leave at most 2 * live + 64 entries in the table's heap."""
    layer = TransactionLayer()
    txns = [
        layer.start_client(request("OPTIONS", branch=f"z9hG4bK{i}"), 0.0, reliable=True)
        for i in range(300)
    ]
    for i, txn in enumerate(txns):
        layer.receive_response(response(200, "OPTIONS", branch=f"z9hG4bK{i}"), 1.0)
        assert txn.state is TERMINATED
        assert len(layer._heap) <= 2 * len(layer._scheduled) + 64
    assert len(layer) == 0 and layer.get_timer() is None


# ---------------------------------------------------------------------------------------------
# Property: whatever happens, nothing is sent after Terminated and no deadline is in the past

ACTIONS = st.sampled_from(["timer", "retransmit", "ack", "respond", "transport_error"])
STATUSES = st.sampled_from([100, 180, 183, 200, 202, 302, 404, 486, 500, 603])


@given(
    kind=st.sampled_from(["invite-client", "client", "invite-server", "server"]),
    reliable=st.booleans(),
    steps=st.lists(st.tuples(st.floats(0, 40, allow_nan=False), ACTIONS, STATUSES), max_size=40),
)
def test_transaction_invariants_hold_for_any_event_sequence(kind, reliable, steps):
    """Random retransmissions, responses, transport errors and timer ticks at increasing times
    never raise, never send after Terminated, and never leave a deadline before ``now``."""
    method = "INVITE" if kind.startswith("invite") else "OPTIONS"
    txn: Transaction
    if kind.endswith("client"):
        txn = client(method, reliable=reliable)
    else:
        txn = server(method, reliable=reliable)
    now = 0.0
    was_terminated = False
    seen_terminated = False
    for dt, action, status in steps:
        now += dt
        if action == "timer":
            txn.handle_timer(now)
        elif action == "transport_error":
            txn.transport_error(now)
        elif isinstance(txn, ClientTransaction):
            txn.receive_response(response(status, method), now)
        elif action == "respond":
            txn.send_response(build_response(txn.request, status, to_tag="t1"), now)
        elif action == "ack" and method == "INVITE":
            txn.receive_request(request("ACK", to_tag="t1"), now)
        else:
            txn.receive_request(request(method), now)
        sent = txn.messages_to_send()
        if was_terminated:
            assert sent == []
        deadline = txn.get_timer()
        assert deadline is None or deadline > now
        for event in events(txn):
            assert not seen_terminated
            seen_terminated = isinstance(event, Terminated)
        assert seen_terminated == (txn.state is TERMINATED)
        if txn.state is TERMINATED:
            assert deadline is None
        was_terminated = txn.state is TERMINATED


@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 5), st.floats(0, 10, allow_nan=False), ACTIONS, STATUSES, st.booleans()
        ),
        max_size=60,
    ),
)
def test_layer_deadline_is_the_minimum_of_its_live_transactions(steps):
    """Whatever drives the transactions (the table or direct calls), the table's deadline is
    the earliest of its live transactions' and terminated ones are gone from it."""
    layer = TransactionLayer()
    txns: list[Transaction] = []
    for i, method in enumerate(["INVITE", "OPTIONS", "INVITE", "BYE"]):
        branch = f"z9hG4bK{i}"
        if i < 2:
            txns.append(layer.start_client(request(method, branch=branch), 0.0, reliable=i == 1))
        else:
            txns.append(layer.create_server(request(method, branch=branch), 0.0, reliable=i == 3))
    now = 0.0
    for index, dt, action, status, via_layer in steps:
        now += dt
        txn = txns[index % len(txns)]
        branch = f"z9hG4bK{index % len(txns)}"
        method = txn.request.method
        if index >= len(txns) or action == "timer":
            for fired in layer.handle_timer(now):
                fired.messages_to_send()
            assert all(t.get_timer() is None or t.get_timer() > now for t in txns)
        elif action == "transport_error":
            txn.transport_error(now)
        elif isinstance(txn, ClientTransaction):
            resp = response(status, method, branch=branch)
            if via_layer:
                assert layer.receive_response(resp, now) in (txn, None)
            else:
                txn.receive_response(resp, now)
        elif action == "respond":
            txn.send_response(build_response(txn.request, status, to_tag="t1"), now)
        else:
            ack = action == "ack" and method == "INVITE"
            req = request("ACK" if ack else method, branch=branch, to_tag="t1" if ack else None)
            if via_layer:
                assert layer.receive_request(req, now) in (txn, None)
            else:
                txn.receive_request(req, now)
        live = [t for t in txns if t.state is not TERMINATED]
        deadlines = [d for t in live if (d := t.get_timer()) is not None]
        assert layer.get_timer() == (min(deadlines) if deadlines else None)
        assert len(layer) == len(live)
