"""Keeping secrets out of error messages, reprs and log lines."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pass", "token", "secret"})
_USERINFO_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^@\s/]*@")


def mask_url(url: str) -> str:
    """``url`` with the password in its userinfo and in password-like query values masked.

    >>> mask_url("redis://:hunter2@cache:6379/0")
    'redis://:***@cache:6379/0'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub_urls(url)
    netloc = parts.netloc
    if "@" not in netloc and "=" not in parts.query:
        return url
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        # A lone userinfo may well be a password (``redis://hunter2@host``): mask it too.
        netloc = f"{user}{sep}{MASK}@{hostport}" if sep else f"{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode(
                [(k, MASK if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
                safe="*",
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_urls(text: str) -> str:
    """Mask ``scheme://user:password@`` passwords anywhere in free text."""
    return _USERINFO_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
