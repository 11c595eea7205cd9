"""An in-memory wire between a scripted phone (external), the B2BUA and a scripted PBX (internal).

Every command the B2BUA emits is serialized to bytes (what the edge would write) and parsed back
(what the peer would read), so tests see the wire, and every byte sent on each interface is kept
for the topology-hiding assertion.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from sbc.gateway.b2bua import B2BUA, EXTERNAL, INTERNAL, Origin, Send
from sbc.sip.message import Request, Response, build_response, parse_message

PHONE = Origin(EXTERNAL, "udp", "192.0.2.101", 5060)
PBX = Origin(INTERNAL, "udp", "10.0.0.5", 5060)


@dataclass
class Pump:
    """Feeds the B2BUA and collects what it sends, per interface, as wire bytes and as parsed
    messages the test can take in order."""

    b2bua: B2BUA
    wire: list[tuple[str, tuple[str, int], bytes]] = field(default_factory=list)
    inbox: dict[str, deque[Request | Response]] = field(
        default_factory=lambda: {EXTERNAL: deque(), INTERNAL: deque()}
    )

    def phone(self, message: bytes | Request | Response, now: float) -> None:
        self._feed(message, PHONE, now)

    def pbx(self, message: bytes | Request | Response, now: float) -> None:
        self._feed(message, PBX, now)

    def tick(self, now: float) -> None:
        self.b2bua.handle_timer(now)
        self._collect()

    def run_until(self, now: float) -> None:
        """Fire every timer due up to ``now``, in deadline order."""
        while (when := self.b2bua.get_timer()) is not None and when <= now:
            self.tick(when)

    def _feed(self, message: bytes | Request | Response, origin: Origin, now: float) -> None:
        data = message if isinstance(message, bytes) else message.to_bytes()
        self.b2bua.receive(parse_message(data), origin, now)
        self._collect()

    def _collect(self) -> None:
        for command in self.b2bua.commands():
            assert isinstance(command, Send)
            data = command.message.to_bytes()
            self.wire.append((command.interface, command.destination, data))
            self.inbox[command.interface].append(parse_message(data))

    # -- what the peers read ---------------------------------------------------------------

    def to_phone(self) -> list[Request | Response]:
        return self._take(EXTERNAL)

    def to_pbx(self) -> list[Request | Response]:
        return self._take(INTERNAL)

    def _take(self, interface: str) -> list[Request | Response]:
        box = self.inbox[interface]
        out = list(box)
        box.clear()
        return out

    def sent(self, interface: str) -> list[bytes]:
        return [data for iface, _, data in self.wire if iface == interface]

    def assert_hidden(self, internal: Iterable[str], external: Iterable[str]) -> None:
        """Nothing of the internal side in the bytes sent outside, and vice versa."""
        for interface, markers in ((EXTERNAL, internal), (INTERNAL, external)):
            for data in self.sent(interface):
                for marker in markers:
                    assert marker.encode() not in data, (interface, marker, data.decode())


def respond(
    request: Request,
    status: int,
    *,
    tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A scripted peer's response to ``request`` (RFC 3261 8.2.6)."""
    return build_response(request, status, to_tag=tag, extra=list(extra), body=body)
