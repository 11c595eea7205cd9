"""Identifiers and random material, injected into the core so tests can make them repeatable.

The core never calls ``secrets`` or ``uuid`` itself: it is handed an :class:`IdSource`.  The
production source draws from the operating system's CSPRNG; :class:`CountingIdSource` gives
predictable values for tests that assert exact bytes.
"""

from __future__ import annotations

import secrets


class IdSource:
    """Tags, branches, Call-IDs and opaque tokens from the OS CSPRNG (RFC 3261 19.3 wants
    tags and Call-IDs globally unique and unguessable)."""

    def token(self, nbytes: int = 8) -> str:
        """A URL- and SIP-token-safe random string carrying ``nbytes`` of entropy."""
        return secrets.token_hex(nbytes)

    def tag(self) -> str:
        return self.token(8)

    def branch(self) -> str:
        return "z9hG4bK" + self.token(10)  # RFC 3261 8.1.1.7 magic cookie

    def call_id(self) -> str:
        return self.token(16)

    def below(self, n: int) -> int:
        """A random integer in ``[0, n)`` (a Retry-After to spread retries, RFC 3311 5.2)."""
        return secrets.randbelow(n)


class CountingIdSource(IdSource):
    """Deterministic ids for tests: ``<prefix><n>`` with ``n`` counting up from 1."""

    def __init__(self, prefix: str = "id") -> None:
        self.prefix = prefix
        self.n = 0

    def token(self, nbytes: int = 8) -> str:
        self.n += 1
        return f"{self.prefix}{self.n}"

    def below(self, n: int) -> int:
        self.n += 1
        return self.n % n
