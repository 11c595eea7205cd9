"""The relay's sockets: pairs bound on demand, forwarding through the inner poll set, and a
released pair reused for a later call without delivering what came for the previous one."""

from __future__ import annotations

import socket
import struct
from collections import Counter

from twisted.internet.testing import MemoryReactorClock

from sbc.media.relay import Endpoint, PortPool
from sbc.net.media import MediaLoop, MediaPorts
from tests.ports import free_range

HOST = "127.0.0.1"


def rtp(seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xABCDEF) + payload


def peer() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(1.0)
    return s


def setup(pairs: int = 2):  # type: ignore[no-untyped-def]
    reactor = MemoryReactorClock()
    counters: Counter[str] = Counter()
    loop = MediaLoop(reactor, counters, clock=lambda: 100.0)
    base = free_range(2 * pairs)
    pool = PortPool(base, base + 2 * pairs - 1, [HOST], quarantine=0.0)
    ports = MediaPorts(loop, pool, {"external": HOST, "internal": HOST}, clock=lambda: 100.0)
    return reactor, loop, ports, counters


def pair(ports: MediaPorts) -> tuple[Endpoint, Endpoint]:
    a, b = Endpoint("external"), Endpoint("internal")
    a.other, b.other = b, a
    a.max_pps = b.max_pps = 1000
    for ep in (a, b):
        port = ports.allocate(ep.interface, ep)
        assert port is not None
        ep.port = port  # what the media manager does with the answer
    return a, b


def drain_loop(loop: MediaLoop) -> None:
    for _ in range(5):
        loop.doRead()


def test_a_packet_crosses_from_one_leg_to_the_other() -> None:
    """A phone's RTP to the external port leaves the internal port towards the PBX, and the
    relay registered its poll set with the reactor."""
    reactor, loop, ports, counters = setup()
    phone, pbx = peer(), peer()
    a, b = pair(ports)
    assert loop in reactor.readers
    a.signal(phone.getsockname(), None, False)
    b.signal(pbx.getsockname(), None, False)
    phone.sendto(rtp(1, b"hello" * 32), (HOST, a.port))
    drain_loop(loop)
    data, source = pbx.recvfrom(2048)
    assert data == rtp(1, b"hello" * 32) and source == (HOST, b.port)
    assert counters["media.forwarded"] == 1 and a.packets == 1 and a.rtp_latched


def test_a_reused_pair_delivers_nothing_of_the_previous_call() -> None:
    """After a call ends its pair stays bound but out of the poll set; what arrives meanwhile
    is discarded when the pair is given to the next call, which hears only its own peer."""
    _reactor, loop, ports, _counters = setup(pairs=2)
    phone, pbx, late = peer(), peer(), peer()
    a, b = pair(ports)
    old_port, old_sock = a.port, a.rtp_sock
    ports.release(a)
    ports.release(b)
    assert len(ports.idle) == 2
    late.sendto(rtp(7, b"stale" * 32), (HOST, old_port))  # for the call that ended
    drain_loop(loop)  # not polled: nothing is forwarded
    c, d = pair(ports)
    assert {c.port, d.port} == {old_port, b.port} and not ports.idle
    reused = c if c.port == old_port else d
    assert reused.rtp_sock is old_sock  # the same socket, not bound again
    other = d if reused is c else c
    reused.signal(phone.getsockname(), None, False)
    other.signal(pbx.getsockname(), None, False)
    phone.sendto(rtp(8, b"fresh" * 32), (HOST, reused.port))
    drain_loop(loop)
    data, _ = pbx.recvfrom(2048)
    assert data == rtp(8, b"fresh" * 32)  # the stale packet was drained, not relayed
    pbx.settimeout(0.2)
    try:
        extra = pbx.recv(2048)
    except TimeoutError:
        extra = None
    assert extra is None
    ports.close()


def test_idle_pairs_are_bounded() -> None:
    """Beyond ``max_idle`` released pairs are closed, not kept."""
    reactor = MemoryReactorClock()
    loop = MediaLoop(reactor, Counter(), clock=lambda: 1.0)
    base = free_range(8)
    pool = PortPool(base, base + 7, [HOST], quarantine=0.0)
    ports = MediaPorts(loop, pool, {"external": HOST, "internal": HOST}, clock=lambda: 1.0,
                       max_idle=1)
    a, b = pair(ports)
    sock = b.rtp_sock
    ports.release(a)
    ports.release(b)
    assert len(ports.idle) == 1 and sock.fileno() == -1  # the second pair was closed
    ports.close()


def test_media_on_ipv6_crosses_between_legs_and_latches() -> None:
    """A media address of ::1: pairs are bound on IPv6, packets cross both ways, the source is
    latched from the 4-tuple address IPv6 sockets report, and a third party is dropped."""
    reactor = MemoryReactorClock()
    counters: Counter[str] = Counter()
    loop = MediaLoop(reactor, counters, clock=lambda: 100.0)
    base = free_range(4, "::1")
    pool = PortPool(base, base + 3, ["::1"], quarantine=0.0)
    ports = MediaPorts(loop, pool, {"external": "::1", "internal": "::1"}, clock=lambda: 100.0)
    a, b = pair(ports)

    def peer6() -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
        s.settimeout(1.0)
        return s

    phone, pbx, intruder = peer6(), peer6(), peer6()
    a.signal(phone.getsockname()[:2], None, False)
    b.signal(pbx.getsockname()[:2], None, False)
    phone.sendto(rtp(1, b"six" * 50), ("::1", a.port))
    drain_loop(loop)
    data, source = pbx.recvfrom(2048)
    assert data == rtp(1, b"six" * 50) and source[:2] == ("::1", b.port)
    pbx.sendto(rtp(2, b"back" * 40), ("::1", b.port))
    drain_loop(loop)
    data, source = phone.recvfrom(2048)
    assert data == rtp(2, b"back" * 40) and source[:2] == ("::1", a.port)
    assert a.rtp_latched and a.remote_rtp is not None and a.remote_rtp[:2] == \
        phone.getsockname()[:2]
    intruder.sendto(rtp(3, b"evil" * 40), ("::1", a.port))
    drain_loop(loop)
    assert a.drop_source == 1 and counters["media.forwarded"] == 2
    ports.release(a)
    ports.release(b)
    ports.close()
