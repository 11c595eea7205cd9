"""Media worker processes: the worker's command loop driven over a real control socket pair
with real relay sockets, the port range's split, the placement of calls on workers, and call
records held for the workers' final statistics.  (A real ``sbc run`` with workers, a worker
killed and restarted: tests/e2e/test_media_workers.py.)"""

from __future__ import annotations

import base64
import contextlib
import marshal
import math
import os
import socket
import struct
from collections import Counter

import pytest
from twisted.internet.testing import MemoryReactorClock

from sbc.media.relay import LegPolicy, MediaSession, PortPool
from sbc.media.sdes import parse_crypto
from sbc.net.media import MediaPorts
from sbc.net.media_worker import Worker
from sbc.net.media_workers import (
    LegStats,
    RecordHold,
    RemoteEndpoint,
    WorkerLink,
    WorkerPorts,
    split_range,
)
from tests.e2e.media_peers import srtp_session
from tests.ports import free_range

HOST = "127.0.0.1"
SUITE = "AES_CM_128_HMAC_SHA1_80"


def rtp(seq: int, payload: bytes, ssrc: int = 0xABCDEF) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + payload


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(1.0)
    return s


class Main:
    """The main process's end of the control pair, speaking the worker's protocol."""

    def __init__(self) -> None:
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child.setblocking(False)
        self.worker = Worker(child, clock=lambda: 50.0)

    def send(self, *command: object, fds: list[int] | None = None) -> None:
        if fds:
            socket.send_fds(self.sock, [marshal.dumps(command)], fds)
        else:
            self.sock.send(marshal.dumps(command))

    def run(self) -> None:
        """What the worker's loop does on a wake-up (bounded: no waiting)."""
        for _ in range(3):
            if self.worker.relay.drain(0.05):
                self.worker.handle_control()

    def received(self) -> list[tuple]:
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(marshal.loads(self.sock.recv(65536)))
            except BlockingIOError:
                return out


def add_pair(main: Main) -> tuple[list[socket.socket], list[socket.socket]]:
    """Endpoints 1 (external) and 2 (internal), each with a bound RTP and RTCP socket."""
    a, b = [udp(), udp()], [udp(), udp()]
    main.send("add", 1, None, "external", a[0].getsockname()[1], 1000, None, 0.0,
              fds=[s.fileno() for s in a])
    main.send("add", 2, 1, "internal", b[0].getsockname()[1], 1000, HOST, 0.0,
              fds=[s.fileno() for s in b])
    main.run()
    return a, b


def test_the_worker_relays_plain_rtp_between_the_endpoints_it_was_given() -> None:
    main = Main()
    a, b = add_pair(main)
    phone, pbx = udp(), udp()
    main.send("signal", 1, phone.getsockname(), None, False)
    main.send("signal", 2, pbx.getsockname(), None, False)
    main.run()
    phone.sendto(rtp(7, b"\x01" * 160), a[0].getsockname())
    main.run()
    data, source = pbx.recvfrom(2048)
    assert data == rtp(7, b"\x01" * 160) and source == b[0].getsockname()
    pbx.sendto(rtp(9, b"\x02" * 160), b[0].getsockname())
    main.run()
    assert phone.recvfrom(2048) == (rtp(9, b"\x02" * 160), a[0].getsockname())

    main.worker.report()
    (report,) = main.received()
    kind, counters, items = report
    assert kind == "report" and counters == {"media.forwarded": 2}
    stats = {eid: s for eid, _, s in items}
    assert stats[1]["packets"] == 1 and stats[1]["sent"] == 1 and stats[1]["srtp"] is False
    assert stats[2]["packets"] == 1 and stats[2]["latched"] is True
    main.worker.report()  # nothing moved since: nothing sent
    assert main.received() == []


def test_keys_arrive_as_sdp_and_the_worker_decrypts_with_them() -> None:
    """The inbound key comes as its a=crypto value; a forged packet is dropped and counted,
    a genuine one leaves in plain RTP; the final statistics follow the removal."""
    main = Main()
    a, b = add_pair(main)
    phone, pbx = udp(), udp()
    key = bytes(range(30))
    crypto = parse_crypto(f"1 {SUITE} inline:{base64.b64encode(key).decode()}")
    main.send("signal", 1, phone.getsockname(), None, False)
    main.send("signal", 2, pbx.getsockname(), None, False)
    main.send("rx", 1, crypto.to_str(), math.inf)
    main.run()
    packet = rtp(1, b"\x05" * 160)
    protected = srtp_session(SUITE, key, outbound=True).protect(packet)  # the test's own
    forged = bytearray(protected)
    forged[-1] ^= 0xFF
    phone.sendto(bytes(forged), a[0].getsockname())
    phone.sendto(protected, a[0].getsockname())
    main.run()
    assert pbx.recvfrom(2048)[0] == packet
    main.send("remove", 1)
    main.run()
    finals = [m for m in main.received() if m[0] == "final"]
    assert len(finals) == 1
    _, eid, stats = finals[0]
    assert eid == 1 and stats["srtp"] is True and stats["packets"] == 1
    assert stats["drops"] == {"auth": 1}
    assert stats["auth_failure_sources"] == {HOST: 1}
    assert 1 not in main.worker.endpoints and main.worker.endpoints[2].other is \
        main.worker.endpoints[2]


def test_a_bad_command_is_counted_and_the_worker_goes_on() -> None:
    main = Main()
    add_pair(main)
    main.sock.send(b"\x00not marshal")
    main.send("signal", 99, None, None, False)  # an endpoint it never had
    main.send("rx", 1, "1 AES_CM_128_HMAC_SHA1_80 inline:short", 0.0)
    main.run()
    assert main.worker.running
    assert main.worker.counters["media.worker.bad_command"] == 2
    assert main.worker.counters["media.worker.unknown_endpoint"] == 1


def test_the_worker_stops_when_the_main_process_closes_its_end() -> None:
    main = Main()
    add_pair(main)
    main.sock.close()
    main.run()
    assert not main.worker.running


def test_the_port_range_splits_into_whole_pairs() -> None:
    assert split_range(30000, 30011, 2) == [(30000, 30005), (30006, 30011)]
    assert split_range(30000, 30013, 3) == [(30000, 30005), (30006, 30009), (30010, 30013)]
    shares = split_range(10000, 20000, 4)
    ports = [p for lo, hi in shares for p in range(lo, hi, 2)]
    assert ports == list(range(10000, 20000, 2))  # each pair once, in order
    with pytest.raises(ValueError):
        split_range(10000, 10003, 3)


class FakeLink:
    """The relay of one share, recording what the worker would be told."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.attached: list[tuple[RemoteEndpoint, int]] = []

    def attach(self, endpoint, rtp, rtcp, port):  # type: ignore[no-untyped-def]
        endpoint.rtp_sock, endpoint.rtcp_sock = rtp, rtcp
        self.attached.append((endpoint, port))

    def detach(self, endpoint):  # type: ignore[no-untyped-def]
        endpoint.rtp_sock = endpoint.rtcp_sock = None


def test_a_call_goes_to_the_least_loaded_worker_and_its_streams_stay_there() -> None:
    base = free_range(16)
    links = [FakeLink(), FakeLink()]
    shards = [MediaPorts(link, PortPool(lo, hi, [HOST], quarantine=0.0),
                         {"external": HOST, "internal": HOST}, clock=lambda: 1.0)
              for link, (lo, hi) in zip(links, split_range(base, base + 15, 2), strict=True)]
    ports = WorkerPorts(shards)
    policy = LegPolicy("external", "require")
    first = MediaSession("c1", {"a": policy, "b": policy}, 0.0)
    second = MediaSession("c2", {"a": policy, "b": policy}, 0.0)
    eps = [RemoteEndpoint("external", s) for s in (first, first, second, first)]
    got = [ports.allocate("external", ep) for ep in eps]
    assert first.shard == 0 and second.shard == 1
    assert got[0] is not None and base <= got[0] < base + 8  # share 0
    assert got[2] is not None and got[2] >= base + 8  # share 1
    assert got[3] is not None and got[3] < base + 8  # a later stream of call 1 stays on 0
    for ep in eps:
        ports.release(ep)
    ports.close()
    assert all(not s.taken for s in shards)


def test_a_call_record_waits_for_the_final_statistics_in_order() -> None:
    reactor = MemoryReactorClock()
    written: list[str] = []
    hold = RecordHold(reactor, lambda r: written.append(r["call_id"]), reactor.seconds)
    pending = LegStats(packets=1)
    done = LegStats(packets=2)
    done.final = True
    hold({"call_id": "1", "media": {"streams": [{"a": pending, "b": done}]}})
    hold({"call_id": "2", "media": None})
    assert written == []  # 2 waits behind 1: records stay in order
    pending.update(packets=5)
    pending.final = True
    hold.flush()
    assert written == ["1", "2"]
    late = LegStats()
    hold({"call_id": "3", "media": {"streams": [{"a": late, "b": done}]}})
    reactor.advance(0.9)
    assert written == ["1", "2"]
    reactor.advance(0.2)  # the worker never answered: written with the last report
    assert written == ["1", "2", "3"]


def test_a_link_without_its_worker_loses_commands_but_not_the_call() -> None:
    """Between a worker's death and its restart, set-up is counted as lost, and a released
    endpoint's last report is final at once."""
    link = WorkerLink(0, MemoryReactorClock(), Counter())
    ep = RemoteEndpoint("external")
    rtp_sock, rtcp_sock = udp(), udp()
    link.attach(ep, rtp_sock, rtcp_sock, 4000)
    assert link.counters["media.worker.command_lost"] == 1 and ep.link is None
    ep.signal((HOST, 5000), None, False)  # no link: nothing sent, no error
    stats = ep.stats()
    link.detach(ep)
    assert isinstance(stats, LegStats) and stats.final
    rtp_sock.close()
    rtcp_sock.close()


def test_commands_wait_in_order_while_the_worker_is_busy() -> None:
    """When the control socket is full (the worker is busy relaying), commands wait in order,
    an add's sockets are duplicated for the wait, and they go once the socket has room."""
    reactor = MemoryReactorClock()
    link = WorkerLink(0, reactor, Counter())
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    parent.setblocking(False)
    link.sock = parent
    n = 0
    while not link.pending:
        link.send(("signal", n, None, None, False))
        n += 1
        assert n < 10_000
    rtp_sock, rtcp_sock = udp(), udp()
    link.send(("add", n, None, "external", 4000, 100, None, 0.0),
              (rtp_sock.fileno(), rtcp_sock.fileno()))
    assert link in reactor.getWriters() and link.counters["media.worker.command_waited"] == 2
    rtp_sock.close()  # released meanwhile: the waiting command holds its own descriptors
    rtcp_sock.close()
    child.setblocking(False)
    got: list[tuple] = []
    for _ in range(100):
        try:
            data, fds, _flags, _addr = socket.recv_fds(child, 65536, 2)
        except BlockingIOError:
            link.doWrite()
            if not link.pending:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        data, fds, _flags, _addr = socket.recv_fds(child, 65536, 2)
                        got.append((marshal.loads(data), len(fds)))
                        _close(fds)
                break
            continue
        got.append((marshal.loads(data), len(fds)))
        _close(fds)
    assert [c[1] for c, _ in got] == list(range(n + 1))  # every command, in order
    assert got[-1] == (("add", n, None, "external", 4000, 100, None, 0.0), 2)
    assert not link.pending and link not in reactor.getWriters()
    assert link.counters["media.worker.command_lost"] == 0
    child.close()
    parent.close()


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def test_mark_and_rollback_restore_the_worker_endpoint() -> None:
    """A re-offer's checkpoint over the real control socket: after ``mark`` the endpoint moves
    to a new address and key; ``rollback`` brings back the latched phone and its old key (the
    new key and the new address are refused then); ``commit`` keeps what came after ``mark``."""
    main = Main()
    a, b = add_pair(main)
    phone, moved, pbx = udp(), udp(), udp()
    old_key, new_key = bytes(range(30)), bytes(range(100, 130))
    crypto = {k: parse_crypto(f"1 {SUITE} inline:{base64.b64encode(k).decode()}").to_str()
              for k in (old_key, new_key)}
    old_tx = srtp_session(SUITE, old_key, outbound=True)
    main.send("signal", 1, phone.getsockname(), None, False)
    main.send("signal", 2, pbx.getsockname(), None, False)
    main.send("rx", 1, crypto[old_key], math.inf)
    main.run()
    phone.sendto(old_tx.protect(rtp(1, b"\x01" * 160)), a[0].getsockname())
    main.run()
    assert pbx.recvfrom(2048)[0] == rtp(1, b"\x01" * 160)  # the phone is latched

    main.send("mark", 1)
    main.send("signal", 1, moved.getsockname(), None, False)
    main.send("rx", 1, crypto[new_key], math.inf)
    main.run()
    pbx.sendto(rtp(50, b"\x02" * 160), b[0].getsockname())
    main.run()
    assert moved.recvfrom(2048)[0] == rtp(50, b"\x02" * 160)  # unlatched: the new address

    main.send("rollback", 1)
    main.run()
    ep = main.worker.endpoints[1]
    assert (ep.signalled_rtp, ep.remote_rtp, ep.rtp_latched, ep.saved) == (
        phone.getsockname(), phone.getsockname(), True, None)
    pbx.sendto(rtp(51, b"\x03" * 160), b[0].getsockname())
    moved.sendto(old_tx.protect(rtp(2, b"\x04" * 160)), a[0].getsockname())
    phone.sendto(srtp_session(SUITE, new_key, outbound=True).protect(rtp(3, b"\x05" * 160)),
                 a[0].getsockname())
    phone.sendto(old_tx.protect(rtp(4, b"\x06" * 160)), a[0].getsockname())
    main.run()
    assert phone.recvfrom(2048) == (rtp(51, b"\x03" * 160), a[0].getsockname())
    assert pbx.recvfrom(2048)[0] == rtp(4, b"\x06" * 160)
    assert ep.stats()["drops"] == {"auth": 1, "source": 1}

    main.send("mark", 1)
    main.send("signal", 1, moved.getsockname(), None, False)
    main.send("commit", 1)
    main.send("rollback", 1)  # nothing marked any more: nothing to undo
    main.run()
    assert (ep.signalled_rtp, ep.saved) == (moved.getsockname(), None)
    assert main.worker.counters["media.worker.bad_command"] == 0
    for s in (*a, *b, phone, moved, pbx):
        s.close()


class _Recorder:
    def __init__(self) -> None:
        self.commands: list[tuple] = []

    def send(self, command: tuple, fds: tuple = ()) -> None:
        self.commands.append(command)


def test_a_remote_endpoint_mirrors_the_checkpoint_to_its_worker() -> None:
    """The main process's endpoint sends ``mark``, ``rollback`` and ``commit`` in order with
    the set-up they frame, restores its own copy too, and sends nothing when not marked."""
    ep = RemoteEndpoint("external")
    ep.eid = 7
    link = _Recorder()
    ep.link = link  # type: ignore[assignment]
    crypto = parse_crypto(f"1 {SUITE} inline:{base64.b64encode(bytes(30)).decode()}")
    ep.signal(("192.0.2.1", 4000), None, False)
    ep.mark()
    ep.signal(("192.0.2.2", 4000), None, False)
    ep.install_rx(crypto, math.inf)
    ep.rollback()
    ep.rollback()
    assert (ep.signalled_rtp, ep.rx) == (("192.0.2.1", 4000), None)
    ep.mark()
    ep.commit()
    ep.commit()
    assert link.commands == [
        ("signal", 7, ("192.0.2.1", 4000), None, False),
        ("mark", 7),
        ("signal", 7, ("192.0.2.2", 4000), None, False),
        ("rx", 7, crypto.to_str(), math.inf),
        ("rollback", 7),
        ("mark", 7),
        ("commit", 7),
    ]
