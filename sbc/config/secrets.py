"""Keeping secrets out of error messages, reprs and log lines."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

_SECRET_WORDS = ("password", "passwd", "token", "secret")
_USERINFO_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^@\s/]*@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<head>[?&][A-Za-z0-9_.-]*(?:password|passwd|token|secret)[A-Za-z0-9_.-]*=)[^&\s]*"
)


def _secret_key(key: str) -> bool:
    """A query parameter that holds a secret: ``pass``, or any name with a secret word in it
    (``password``, ``sentinel_password``, ``auth_token``...)."""
    key = key.lower()
    return key == "pass" or any(word in key for word in _SECRET_WORDS)


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
        if any(_secret_key(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _secret_key(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_urls(text: str) -> str:
    """Mask ``scheme://user:password@`` passwords and secret query values (``?password=``,
    ``&sentinel_password=``) anywhere in free text."""
    text = _USERINFO_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('head')}{MASK}", text)
