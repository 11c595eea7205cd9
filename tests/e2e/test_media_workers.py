"""End to end: a real ``sbc run`` with ``media.workers: 2``.

Calls are spread over the two worker processes (each owns half of the port range), the media of
each call is carried by its worker, a worker that is killed is started again and carries the
next call, and the workers leave with the SBC."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, launched_sbc, wait_until
from tests.e2e.media_peers import new_sip, rtp_packet
from tests.e2e.test_media import CONFIG, INACTIVITY, _call, _hang_up, _records

pytestmark = pytest.mark.e2e

PORTS = (31000, 31999)  # as test_media; share 0: 31000-31499, share 1: 31500-31999


def _events(log: Path, namespace: str) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("namespace") == namespace:
            out.append(event)
    return out


def _worker_pids(log: Path) -> list[tuple[int, int]]:
    """(worker index, pid) of every "media worker started" line, in order."""
    return [(int(e["index"]), int(e["pid"])) for e in _events(log, "sbc.media")
            if e["message"].startswith("media worker") and "started" in e["message"]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def _media_both_ways(phone_media, pbx_media, seq: int) -> None:
    payload = bytes([seq % 251]) * 160
    phone_media.send(rtp_packet(seq, 0x1111, payload))
    got = pbx_media.receive(2.0)
    assert got is not None and got[12:] == payload
    pbx_media.send(rtp_packet(seq, 0x2222, payload))
    back = phone_media.receive(2.0)  # decrypted with the key the SBC answered
    assert back is not None and back[12:] == payload


def test_calls_spread_over_workers_survive_a_worker_crash(tmp_path: Path) -> None:
    pbx = new_sip()
    ports = dict(sip=free_port(socket.SOCK_DGRAM), tls=0,
                 internal=free_port(socket.SOCK_DGRAM), pbx=pbx.address[1])
    text = CONFIG.format(start=PORTS[0], end=PORTS[1], inactivity=INACTIVITY, workers=2,
                         **ports)
    with launched_sbc(tmp_path, text, tmp_path, ports) as sbc:
        assert wait_until(lambda: len(_worker_pids(sbc.log)) == 2)
        pids = dict(_worker_pids(sbc.log))
        assert sorted(pids) == [0, 1] and all(_alive(p) for p in pids.values())

        # Two calls at once: one per worker, each in its worker's half of the range.
        phone1, ok1, phone1_media, pbx1_media, _ = _call(sbc, pbx, "w1")
        phone2, ok2, phone2_media, pbx2_media, _ = _call(sbc, pbx, "w2")
        assert phone1_media.remote[1] < 31500 <= phone2_media.remote[1]
        assert pbx1_media.remote[1] < 31500 <= pbx2_media.remote[1]
        for seq in range(10, 13):
            _media_both_ways(phone1_media, pbx1_media, seq)
            _media_both_ways(phone2_media, pbx2_media, seq)

        # Worker 1 dies: call 2 loses its media, call 1 does not notice; worker 1 comes back.
        os.kill(pids[1], 9)
        assert wait_until(lambda: len(_worker_pids(sbc.log)) == 3, attempts=100)
        index, new_pid = _worker_pids(sbc.log)[-1]
        assert index == 1 and new_pid != pids[1] and _alive(new_pid)
        _media_both_ways(phone1_media, pbx1_media, 20)
        phone2_media.send(rtp_packet(20, 0x1111, b"\x09" * 160))
        assert pbx2_media.drain(0.5) == []
        assert any(e["message"].startswith("media worker 1 ended") and e["level"] == "error"
                   for e in _events(sbc.log, "sbc.media"))

        # The call record of call 1 carries its worker's final counts, exactly.
        _hang_up(sbc, pbx, phone1, ok1, "w1")
        assert wait_until(lambda: any(r.get("call_id") == "w1" for r in _records(sbc.log)))
        (record,) = [r for r in _records(sbc.log) if r.get("call_id") == "w1"]
        (stream,) = record["media"]["streams"]
        assert stream["a"]["packets"] == 4 and stream["b"]["packets"] == 4
        assert stream["a"]["sent"] == 4 and stream["b"]["sent"] == 4

        # A new call lands on the restarted worker (the least loaded) and carries media.
        phone3, ok3, phone3_media, pbx3_media, _ = _call(sbc, pbx, "w3")
        _media_both_ways(phone3_media, pbx3_media, 30)
        _hang_up(sbc, pbx, phone3, ok3, "w3")
        _hang_up(sbc, pbx, phone2, ok2, "w2")
        worker_pids = [pid for _, pid in _worker_pids(sbc.log)]

    # The SBC stopped: its workers left with it.
    assert wait_until(lambda: not any(_alive(pid) for pid in worker_pids), attempts=100)
