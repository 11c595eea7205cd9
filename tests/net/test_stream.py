"""The stream protocol's caps, timed by ``task.Clock`` over a ``StringTransport``."""

from __future__ import annotations

from collections import Counter

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sbc.gateway.stateless import StatelessCore
from sbc.ids import CountingIdSource
from sbc.net.limits import ConnectionGuard, StreamLimits
from sbc.net.transport import SipStreamFactory, SipStreamProtocol

LIMITS = StreamLimits(max_connections=10, max_connections_per_ip=2,
                      new_connections_per_second_per_ip=5, tls_handshake_timeout=3.0,
                      idle_timeout=10.0, max_buffered_bytes=2048)


def options(call_id: str) -> bytes:
    return (
        f"OPTIONS sip:sbc.example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bK{call_id}\r\n"
        f"From: <sip:a@example.net>;tag=f1\r\nTo: <sip:sbc.example.net>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Rig:
    def __init__(self, limits: StreamLimits = LIMITS, tls: bool = False) -> None:
        self.clock = Clock()
        self.core = StatelessCore(new_tag=CountingIdSource("t").tag)
        self.guard = ConnectionGuard(limits, self.core.counters)
        self.factory = SipStreamFactory(self.core, "external", self.guard, self.clock, tls=tls)

    def connect(self, ip: str = "192.0.2.9", port: int = 40000):
        proto = self.factory.buildProtocol(IPv4Address("TCP", ip, port))
        if proto is None:
            return None, None
        transport = StringTransport(peerAddress=IPv4Address("TCP", ip, port))
        proto.makeConnection(transport)
        return proto, transport


def aborted(transport: StringTransport) -> bool:
    return bool(transport.disconnected)  # what StringTransport.abortConnection sets


def lose(proto: SipStreamProtocol) -> None:
    proto.connectionLost(Failure(ConnectionDone()))


def test_options_and_crlf_ping_are_still_answered():
    """OPTIONS gets 200 and a CRLFCRLF ping gets a CRLF pong over a guarded connection."""
    rig = Rig()
    proto, t = rig.connect()
    proto.dataReceived(b"\r\n\r\n")
    assert t.value() == b"\r\n"
    t.clear()
    msg = options("c1")
    for i in range(len(msg)):  # one byte at a time
        proto.dataReceived(msg[i:i + 1])
    assert t.value().startswith(b"SIP/2.0 200 OK\r\n")
    assert not t.disconnecting


def test_refused_connection_gets_no_protocol_and_is_counted_per_address():
    """Past the per-address cap buildProtocol returns None (Twisted closes the socket)."""
    rig = Rig()
    first, _ = rig.connect()
    rig.connect()
    assert rig.connect() == (None, None)
    assert rig.core.counters["conn.refused.per_ip"] == 1
    assert rig.guard.events.get("192.0.2.9") == Counter({"refused.per_ip": 1})
    lose(first)
    lose(first)  # a second connectionLost must not free a second slot
    assert rig.guard.open_for("192.0.2.9") == 1
    assert rig.connect()[0] is not None


def test_rate_limit_uses_the_injected_clock():
    """More than new_connections_per_second_per_ip accepts within a second are refused."""
    rig = Rig(StreamLimits(max_connections_per_ip=100, new_connections_per_second_per_ip=2))
    protos = [rig.connect()[0] for _ in range(3)]
    assert [p is not None for p in protos] == [True, True, False]
    rig.clock.advance(1.0)
    assert rig.connect()[0] is not None
    assert rig.core.counters["conn.refused.rate"] == 1


def test_idle_connection_is_aborted_after_idle_timeout_and_bytes_postpone_it():
    """No byte for idle_timeout aborts the connection; each received byte restarts the wait."""
    rig = Rig()
    proto, t = rig.connect()
    rig.clock.advance(9.0)
    proto.dataReceived(b"O")  # slowloris: one header byte
    rig.clock.advance(9.0)
    assert not aborted(t)
    rig.clock.advance(1.0)
    assert aborted(t)
    assert rig.guard.events.get("192.0.2.9") == Counter({"closed.idle": 1})
    lose(proto)
    assert rig.clock.getDelayedCalls() == [] and rig.guard.open_total == 0


def test_idle_timer_is_one_delayed_call_per_connection():
    """Received bytes do not schedule timers; one delayed call covers the connection."""
    rig = Rig()
    proto, _ = rig.connect()
    for _ in range(100):
        rig.clock.advance(0.5)
        proto.dataReceived(b"\r\n")
    assert len(rig.clock.getDelayedCalls()) == 1


def test_tls_handshake_timeout_aborts_an_unfinished_handshake():
    """A TLS connection whose handshake is not done within the timeout is aborted, counted."""
    rig = Rig(tls=True)
    proto, t = rig.connect()
    rig.clock.advance(2.9)
    assert not aborted(t)
    rig.clock.advance(0.1)
    assert aborted(t) and proto.closed_by == "closed.tls_handshake_timeout"
    assert rig.core.counters["conn.closed.tls_handshake_timeout"] == 1


def test_finished_handshake_cancels_its_timeout_and_starts_the_idle_timer():
    """After the handshake the idle timeout, not the handshake timeout, applies."""
    rig = Rig(tls=True)
    proto, t = rig.connect()
    rig.clock.advance(2.0)
    proto.handshakeCompleted()  # StringTransport has no peer certificate
    assert proto.peer_identity is None
    rig.clock.advance(9.9)
    assert not aborted(t)
    rig.clock.advance(0.1)
    assert aborted(t) and proto.closed_by == "closed.idle"


def test_inbound_buffer_cap_aborts_and_counts():
    """Unparsed input past max_buffered_bytes aborts the connection."""
    rig = Rig()
    proto, t = rig.connect()
    proto.dataReceived(b"OPTIONS sip:x SIP/2.0\r\nX: " + b"a" * 3000)
    assert aborted(t)
    assert rig.guard.events.get("192.0.2.9")["closed.inbound_overflow"] == 1


def test_outbound_cap_aborts_a_peer_that_does_not_read():
    """Once the transport reports full, answers written past max_buffered_bytes abort."""
    rig = Rig()
    proto, t = rig.connect()
    assert t.producer is proto and t.streaming
    t.producer.pauseProducing()  # what Twisted does when its write buffer passes its limit
    sent = 0
    for i in range(50):  # bounded: each 200 OK is a few hundred bytes
        if aborted(t):
            break
        proto.dataReceived(options(f"c{i}"))
        sent += 1
    assert aborted(t) and proto.closed_by == "closed.outbound_overflow"
    assert 2048 - len(options("c0")) < proto.unsent < 2048 + 1000 and sent < 50
    assert rig.core.counters["conn.closed.outbound_overflow"] == 1


def test_resumed_transport_resets_the_outbound_count():
    """When the transport drains (resumeProducing) the unsent count starts again from zero."""
    rig = Rig()
    proto, t = rig.connect()
    for i in range(20):
        t.producer.pauseProducing()
        proto.dataReceived(options(f"c{i}"))
        t.producer.resumeProducing()
    assert not aborted(t) and proto.unsent == 0
