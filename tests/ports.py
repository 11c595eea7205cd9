"""Free port ranges for tests that bind media pairs on real sockets.

A fixed range inside the kernel's ephemeral range (32768-60999 on Linux) can be taken at any
moment by another test's client socket, so a pool built on it fails to allocate now and then.
:func:`free_range` looks below the ephemeral range and checks that every port of the range can
be bound right now, for UDP on ``host``.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 22000, 29998  # below the ephemeral range; e2e media uses 30000-31999


def free_range(count: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """The first port of ``count`` consecutive ports, starting on an even one, all bindable."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(LOW, HIGH - count, 2)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket(family, socket.SOCK_DGRAM)
                held.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return base
    raise RuntimeError(f"no {count} consecutive free UDP ports on {host} in {LOW}-{HIGH}")
