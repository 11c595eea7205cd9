#!/usr/bin/env python3
"""Benchmark of the SIP core: parse + serialize, and parse + B2BUA-style rewrite + serialize.

Reports messages per second and microseconds per message for a typical INVITE with SDP (as a
softphone sends it) and for a 200 OK with SDP, plus, measured in the same run as a baseline, the
standard library's RFC 5322 header parser (``email.parser.BytesParser`` with the compat32 policy,
headers only) on the same bytes.  The ratio says how much a full SIP parse with validation costs
relative to a plain header split.  Figures only, never a pass/fail.

    python bench/bench_sip_parse.py [--seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from email.parser import BytesParser
from email.policy import compat32

from sbc.sip.message import parse_message

INVITE = (
    b"INVITE sip:2001@pbx.example.com;transport=tls SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 198.51.100.23:49822;rport;branch=z9hG4bKPj8c0f7f2b1e6a4a7c9e3b\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:1001@pbx.example.com>;tag=3a5f1c9e2d7b4c1a\r\n'
    b"To: <sip:2001@pbx.example.com>\r\n"
    b"Contact: <sip:1001@198.51.100.23:49822;transport=tls;ob>;+sip.instance=\"<urn:uuid:"
    b"0b8c3a4e-7f0d-4f8e-9c1b-2f6c0e1a9d33>\"\r\n"
    b"Call-ID: 5f2b9e1c-8d3a-4e7f-b6c2-1a9d0e3f7c4b\r\n"
    b"CSeq: 21871 INVITE\r\n"
    b"Route: <sip:sbc.example.net:5061;transport=tls;lr>\r\n"
    b"Allow: PRACK, INVITE, ACK, BYE, CANCEL, UPDATE, INFO, SUBSCRIBE, NOTIFY, REFER, MESSAGE, "
    b"OPTIONS\r\n"
    b"Supported: replaces, 100rel, timer, norefersub\r\n"
    b"Session-Expires: 1800\r\n"
    b"Min-SE: 90\r\n"
    b"User-Agent: Linphone-Desktop/5.2.4 (belle-sip/5.2.94)\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 436\r\n"
    b"\r\n"
)
SDP = (
    b"v=0\r\n"
    b"o=1001 3724 1254 IN IP4 198.51.100.23\r\n"
    b"s=Talk\r\n"
    b"c=IN IP4 198.51.100.23\r\n"
    b"t=0 0\r\n"
    b"a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r\n"
    b"m=audio 7078 RTP/SAVP 96 0 8 101\r\n"
    b"a=rtpmap:96 opus/48000/2\r\n"
    b"a=fmtp:96 useinbandfec=1\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
    b"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n"
    b"a=rtcp-fb:* trr-int 1000\r\n"
    b"a=rtcp-fb:* ccm tmmbr\r\n"
)
OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5080;branch=z9hG4bK-b2b-7f3c1a;received=192.0.2.10\r\n"
    b"From: <sip:1001@192.0.2.20>;tag=b2b-a91c\r\n"
    b"To: <sip:2001@192.0.2.20>;tag=as6d1e5f0a\r\n"
    b"Call-ID: b2b-4f1e9c7a2d3b@192.0.2.10\r\n"
    b"CSeq: 102 INVITE\r\n"
    b"Server: Asterisk PBX 20.5.0\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH, "
    b"MESSAGE\r\n"
    b"Supported: replaces, timer\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"Contact: <sip:192.0.2.20:5060>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 222\r\n"
    b"\r\n"
)
SDP_200 = (
    b"v=0\r\n"
    b"o=- 1254 1256 IN IP4 192.0.2.20\r\n"
    b"s=Asterisk\r\n"
    b"c=IN IP4 192.0.2.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 14560 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=maxptime:150\r\n"
    b"a=sendrecv\r\n"
)
MESSAGES = {
    "INVITE+SDP": INVITE.replace(b"Content-Length: 436", b"Content-Length: %d" % len(SDP)) + SDP,
    "200 OK+SDP": OK_200.replace(b"Content-Length: 222", b"Content-Length: %d" % len(SDP_200))
    + SDP_200,
}


def parse_serialize(data: bytes) -> bytes:
    return parse_message(data).to_bytes()


def parse_rewrite_serialize(data: bytes) -> bytes:
    """What a B2BUA leg does to every message: read the routing headers, replace Via, Contact,
    Call-ID and tags, drop banners, serialize."""
    msg = parse_message(data)
    _ = (msg.top_via, msg.cseq, msg.from_.tag, msg.to.tag, msg.call_id)
    h = msg.headers
    h.replace_all("Via", ["SIP/2.0/UDP 192.0.2.1:5080;branch=z9hG4bK-sbc-0001;rport"])
    h.set("Contact", "<sip:sbc-4f2a@192.0.2.1:5080;transport=udp>")
    h.set("Call-ID", "sbc-9c2e1f7a3b")
    h.remove("User-Agent")
    h.remove("Server")
    h.remove("Route")
    return msg.to_bytes()


def baseline(data: bytes) -> object:
    return BytesParser(policy=compat32).parsebytes(data.split(b"\r\n", 1)[1], headersonly=True)


def measure(fn, data: bytes, seconds: float) -> tuple[float, int]:
    """Best per-call time (µs) over repeated batches for ``seconds``; returns (µs, calls)."""
    fn(data)  # warm up, and fail fast if it raises
    batch = 200
    best = float("inf")
    calls = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn(data)
        dt = (time.perf_counter() - t0) / batch
        best = min(best, dt)
        calls += batch
    return best * 1e6, calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    results = []
    for name, data in MESSAGES.items():
        assert parse_serialize(data) == data, "round trip changed the message"
        base_us, _ = measure(baseline, data, args.seconds)
        for label, fn in (("parse+serialize", parse_serialize),
                          ("parse+rewrite+serialize", parse_rewrite_serialize)):
            us, calls = measure(fn, data, args.seconds)
            results.append({
                "message": name, "bytes": len(data), "operation": label,
                "us_per_message": round(us, 2), "messages_per_second": round(1e6 / us),
                "baseline_email_parser_us": round(base_us, 2),
                "ratio_vs_baseline": round(us / base_us, 2), "calls": calls,
            })
    if args.json:
        print(json.dumps({"python": platform.python_version(), "results": results}, indent=2))
        return 0
    print(f"sbc SIP core benchmark -- Python {platform.python_version()} on {platform.machine()}")
    print(f"{'message':12} {'bytes':>5} {'operation':26} {'µs/msg':>8} {'msg/s':>9} "
          f"{'baseline µs':>11} {'ratio':>6}")
    for r in results:
        print(f"{r['message']:12} {r['bytes']:>5} {r['operation']:26} {r['us_per_message']:>8} "
              f"{r['messages_per_second']:>9} {r['baseline_email_parser_us']:>11} "
              f"{r['ratio_vs_baseline']:>6}")
    print("baseline: stdlib email.parser (compat32) splitting the same header section, same run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
