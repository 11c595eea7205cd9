"""The driver on a fake clock: routing between the cores, writes per socket, one timer."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.task import Clock

from sbc.config.model import (
    Config,
    InterfacesConfig,
    PbxConfig,
    TimersConfig,
    TransportConfig,
    default_external,
    default_internal,
)
from sbc.errors import ConfigError
from sbc.gateway.b2bua import B2BUA, EXTERNAL, INTERNAL, B2buaSettings, Origin, SipAddress
from sbc.gateway.stateless import StatelessCore
from sbc.ids import CountingIdSource
from sbc.net.driver import Driver, b2bua_settings_from
from sbc.sip.message import Request, Response, build_response, parse_message

SETTINGS = B2buaSettings(
    external=SipAddress("203.0.113.10", 5060, "udp"),
    internal=SipAddress("10.0.0.1", 5060, "udp"),
    pbx=SipAddress("10.0.0.5", 5060, "udp"),
    domain="10.0.0.5",
    unknown_source="allow",
)
PHONE = ("192.0.2.101", 5060)
PBX = ("10.0.0.5", 5060)


def request(method: str, transport: str = "UDP") -> Request:
    body = b"v=0\r\no=a 1 1 IN IP4 192.0.2.101\r\ns=-\r\nc=IN IP4 192.0.2.101\r\nt=0 0\r\n" \
           b"m=audio 4000 RTP/AVP 0\r\n" if method == "INVITE" else b""
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    msg = parse_message((
        f"{method} sip:2001@203.0.113.10 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 192.0.2.101:5060;branch=z9hG4bK{method}1;rport\r\n"
        f"From: <sip:1001@192.0.2.101>;tag=a1\r\nTo: <sip:2001@203.0.113.10>\r\n"
        f"Call-ID: phone-call-1\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:1001@192.0.2.101:5060>\r\n{ctype}"
        f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    assert isinstance(msg, Request)
    return msg


class Udp:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))


class Stream:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.written.append(data)


def make() -> tuple[Driver, Clock, Udp, Udp]:
    clock = Clock()
    clock.advance(1000)
    ids = CountingIdSource("t")
    driver = Driver(B2BUA(SETTINGS, ids), StatelessCore(new_tag=ids.tag), clock)
    ext, internal = Udp(), Udp()
    driver.add_udp(EXTERNAL, ext)
    driver.add_udp(INTERNAL, internal)
    return driver, clock, ext, internal


def test_every_request_goes_to_the_b2bua() -> None:
    driver, clock, ext, internal = make()
    assert driver.receive(request("INVITE"), EXTERNAL, "udp", PHONE) is None
    assert [parse_message(d).status for d, _ in ext.written] == [100]  # type: ignore[union-attr]
    assert [addr for _, addr in internal.written] == [PBX]
    b_invite = parse_message(internal.written[0][0])
    assert isinstance(b_invite, Request) and b_invite.method == "INVITE"
    assert b"phone-call-1" not in internal.written[0][0]

    # OPTIONS to the SBC is answered by it; REGISTER is relayed to the PBX.
    assert driver.receive(request("OPTIONS"), EXTERNAL, "udp", PHONE) is None
    options = parse_message(ext.written[-1][0])
    assert isinstance(options, Response) and options.status == 200
    assert driver.receive(request("REGISTER"), EXTERNAL, "udp", PHONE) is None
    register = parse_message(internal.written[-1][0])
    assert isinstance(register, Request) and register.method == "REGISTER"
    assert internal.written[-1][1] == PBX

    # The PBX answers; the 200 goes back to the phone over UDP.
    ok = build_response(b_invite, 200, to_tag="pbx1", extra=[("Contact", "<sip:2001@10.0.0.5>")],
                        body=b_invite.body)
    ok.headers.set("Content-Type", "application/sdp")
    driver.receive(ok, INTERNAL, "udp", PBX)
    relayed = parse_message(ext.written[-1][0])
    assert isinstance(relayed, Response) and relayed.status == 200
    assert ext.written[-1][1] == PHONE


def test_one_timer_follows_the_b2bua_deadline() -> None:
    driver, clock, ext, internal = make()
    driver.receive(request("INVITE"), EXTERNAL, "udp", PHONE)
    calls = clock.getDelayedCalls()
    assert len(calls) == 1
    assert calls[0].getTime() == driver.b2bua.get_timer()
    clock.advance(0.5)  # Timer A: the B-leg INVITE is retransmitted
    assert len(internal.written) == 2 and internal.written[1][0] == internal.written[0][0]
    assert len(clock.getDelayedCalls()) == 1
    clock.pump([1.0] * 40)  # Timer B: 408 to the phone, then nothing left to time
    statuses = [parse_message(d).status for d, _ in ext.written]  # type: ignore[union-attr]
    assert 408 in statuses


def test_stream_answers_go_back_over_the_connection_or_are_counted() -> None:
    driver, clock, ext, internal = make()
    stream = Stream()
    driver.stream_made(EXTERNAL, PHONE, stream)
    driver.receive(request("INVITE", "TCP"), EXTERNAL, "tcp", PHONE)
    assert [parse_message(d).status for d in stream.written] == [100]  # type: ignore[union-attr]
    assert ext.written == []
    driver.stream_lost(EXTERNAL, PHONE, stream)
    b_invite = parse_message(internal.written[0][0])
    assert isinstance(b_invite, Request)
    driver.receive(build_response(b_invite, 180, to_tag="pbx1"), INTERNAL, "udp", PBX)
    assert len(stream.written) == 1
    assert driver.counters["driver.no_connection"] == 1


def test_core_failure_is_counted_and_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    driver, clock, ext, internal = make()

    def boom(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(driver.b2bua, "receive", boom)
    assert driver.receive(request("INVITE"), EXTERNAL, "udp", PHONE) is None
    assert driver.counters["internal.error"] == 1


def test_settings_need_an_internal_listener_for_the_pbx_transport() -> None:
    with pytest.raises(ConfigError, match="internal interface needs a TCP listener"):
        b2bua_settings_from(Config(pbx=PbxConfig(transport="tcp")))
    internal = replace(default_internal(), tls=TransportConfig(True, 5081))
    s = b2bua_settings_from(Config(interfaces=InterfacesConfig(internal=internal),
                                   pbx=PbxConfig(transport="tls", port=5061)))
    assert s.pbx == SipAddress("127.0.0.1", 5061, "tls")
    assert s.internal.transport == "tls" and s.internal.port == 5081
    assert s.own(INTERNAL, "udp").port == default_internal().udp.port
    internal = replace(default_internal(), udp=TransportConfig(False, 5080))
    with pytest.raises(ConfigError, match="UDP"):
        b2bua_settings_from(Config(interfaces=InterfacesConfig(internal=internal)))


def test_settings_from_config() -> None:
    external = replace(default_external(), address="127.0.0.1",
                       advertised_address="198.51.100.7", udp=TransportConfig(False, 5060),
                       tcp=TransportConfig(True, 5070))
    config = Config(interfaces=InterfacesConfig(external=external),
                    pbx=PbxConfig(address="10.1.1.1", port=5062),
                    timers=TimersConfig(t1=0.25))
    s = b2bua_settings_from(config, resolve=lambda host, port: "10.1.1.1")
    assert s.external == SipAddress("198.51.100.7", 5070, "tcp")
    assert s.pbx == SipAddress("10.1.1.1", 5062, "udp")
    assert s.domain == "10.1.1.1"
    assert s.timers.t1 == 0.25


def test_a_request_that_cannot_be_delivered_fails_its_transaction() -> None:
    """A user registered over TCP whose connection is gone from the driver's table: the
    B-leg INVITE cannot be written, the B2BUA is told, and the PBX gets 480 at once."""
    driver, clock, ext, internal = make()
    stream = Stream()
    driver.stream_made(EXTERNAL, PHONE, stream)
    driver.receive(request("REGISTER", "TCP"), EXTERNAL, "tcp", PHONE)
    register = parse_message(internal.written[-1][0])
    assert isinstance(register, Request)
    token_contact = register.headers.get("contact") or ""
    ok = build_response(register, 200, to_tag="pbx9", extra=[("Contact", token_contact)])
    driver.receive(ok, INTERNAL, "udp", PBX)
    assert parse_message(stream.written[-1]).status == 200  # type: ignore[union-attr]
    token = token_contact.split("sip:", 1)[1].split("@", 1)[0]

    del driver.streams[(EXTERNAL, PHONE[0], PHONE[1])]  # gone without a close reported
    invite = parse_message((
        f"INVITE sip:{token}@10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKpbx1\r\n"
        "From: <sip:2001@10.0.0.5>;tag=p1\r\nTo: <sip:1001@10.0.0.1>\r\n"
        "Call-ID: pbx-call-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:2001@10.0.0.5:5060>\r\nContent-Length: 0\r\n\r\n").encode())
    driver.receive(invite, INTERNAL, "udp", PBX)
    statuses = [parse_message(d).status for d, _ in internal.written[-2:]]  # type: ignore[union-attr]
    assert statuses == [100, 480]
    assert driver.counters["driver.no_connection"] == 1
    assert len(driver.b2bua) == 0


def test_a_closed_connection_closes_the_flow() -> None:
    """When the connection a user registered over closes, calls to it get 480 without any
    attempt to send."""
    driver, clock, ext, internal = make()
    stream = Stream()
    stream.tls = True  # type: ignore[attr-defined]
    driver.stream_made(EXTERNAL, PHONE, stream)
    driver.receive(request("REGISTER", "TLS"), EXTERNAL, "tls", PHONE)
    register = parse_message(internal.written[-1][0])
    assert isinstance(register, Request)
    token_contact = register.headers.get("contact") or ""
    driver.receive(build_response(register, 200, to_tag="pbx9",
                                  extra=[("Contact", token_contact)]), INTERNAL, "udp", PBX)
    token = token_contact.split("sip:", 1)[1].split("@", 1)[0]
    driver.stream_lost(EXTERNAL, PHONE, stream)
    invite = parse_message((
        f"INVITE sip:{token}@10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKpbx2\r\n"
        "From: <sip:2001@10.0.0.5>;tag=p2\r\nTo: <sip:1001@10.0.0.1>\r\n"
        "Call-ID: pbx-call-2\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:2001@10.0.0.5:5060>\r\nContent-Length: 0\r\n\r\n").encode())
    driver.receive(invite, INTERNAL, "udp", PBX)
    assert parse_message(internal.written[-1][0]).status == 480  # type: ignore[union-attr]
    assert driver.counters["driver.no_connection"] == 0


class Gate:
    """Records what the driver hands the policy gate after each input."""

    def __init__(self) -> None:
        self.changes: list[Any] = []

    def binding_changed(self, change: Any) -> None:
        self.changes.append(change)

    def event(self, fact: Any) -> None:
        pass


def test_binding_changes_go_to_the_gate_and_the_flag_to_the_b2bua() -> None:
    """A registration the PBX accepts, and its connection closing, reach the gate as binding
    changes right after the input that made them; without a gate they are dropped, not kept.
    A request the gate delivers as registered elsewhere is admitted by a strict B2BUA."""
    driver, clock, ext, internal = make()
    gate = Gate()
    driver.gate = gate  # type: ignore[assignment]
    stream = Stream()
    stream.tls = True  # type: ignore[attr-defined]
    driver.stream_made(EXTERNAL, PHONE, stream)
    driver.deliver(request("REGISTER", "TLS"), Origin(EXTERNAL, "tls", *PHONE))
    register = parse_message(internal.written[-1][0])
    assert isinstance(register, Request) and gate.changes == []
    driver.receive(build_response(register, 200, to_tag="pbx9", extra=[
        ("Contact", register.headers.get("contact") or "")]), INTERNAL, "udp", PBX)
    assert [(c.reason, c.source) for c in gate.changes] == [("registered", PHONE)]
    driver.stream_lost(EXTERNAL, PHONE, stream)
    assert [c.reason for c in gate.changes] == ["registered", "flow_closed"]
    assert not driver.b2bua.binding_changes

    driver.gate = None
    driver.receive(request("REGISTER"), EXTERNAL, "udp", PHONE)
    register = parse_message(internal.written[-1][0])
    assert isinstance(register, Request)
    driver.receive(build_response(register, 200, to_tag="pbx8", extra=[
        ("Contact", register.headers.get("contact") or "")]), INTERNAL, "udp", PBX)
    assert not driver.b2bua.binding_changes and len(gate.changes) == 2

    strict = replace(SETTINGS, unknown_source="reject")
    ids = CountingIdSource("s")
    driver = Driver(B2BUA(strict, ids), StatelessCore(new_tag=ids.tag), clock)
    ext = Udp()
    driver.add_udp(EXTERNAL, ext)
    driver.add_udp(INTERNAL, Udp())
    driver.deliver(request("INVITE"), Origin(EXTERNAL, "udp", *PHONE))
    assert parse_message(ext.written[-1][0]).status == 403  # type: ignore[union-attr]
    again = parse_message(request("INVITE").to_bytes().replace(b"INVITE1", b"INVITE2")
                          .replace(b"phone-call-1", b"phone-call-2"))
    assert isinstance(again, Request)
    driver.deliver(again, Origin(EXTERNAL, "udp", *PHONE), registered_elsewhere=True)
    assert parse_message(ext.written[-1][0]).status == 100  # type: ignore[union-attr]
