"""UTC offsets of time zones at the caller's ``now`` (:mod:`zoneinfo`), and day arithmetic.

Rules have time-of-day windows ("weekdays 08:00-18:00 Europe/Paris") and daily counters that
reset at local midnight.  :class:`Zone` wraps :class:`zoneinfo.ZoneInfo` (the system's tz
database, or the ``tzdata`` package): the instant always comes from the caller, and this module
is the one place of the policy core allowed to import ``datetime``, to convert it, never to read
the clock (tests/test_architecture.py).  A fixed offset (``UTC``, ``+02:00``, ``-05:30``) needs
no database.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo

DAY = 86400  # seconds
_FIXED = re.compile(r"(?:UTC|GMT|Z)?([+-])(\d{1,2})(?::?(\d{2}))?")
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")


class ZoneError(ValueError):
    """A time zone name that names no zone, or a zone file that cannot be read."""


# -- calendar arithmetic (proleptic Gregorian, days since 1970-01-01) -------------------------


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a date (Howard Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number (the inverse of :func:`days_from_civil`)."""
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def weekday(days: int) -> int:
    """Monday 0 .. Sunday 6 of a day number (1970-01-01 was a Thursday)."""
    return (days + 3) % 7


class Zone:
    """A time zone: :meth:`offset` gives its UTC offset in seconds at an instant."""

    __slots__ = ("name", "_info", "_fixed")

    def __init__(self, name: str, info: zoneinfo.ZoneInfo | None, fixed: int = 0) -> None:
        self.name = name
        self._info = info  # None for a fixed offset
        self._fixed = fixed

    @classmethod
    def fixed(cls, name: str, offset: int) -> Zone:
        return cls(name, None, offset)

    def offset(self, now: float) -> int:
        """Seconds to add to a UTC instant to get local wall time."""
        if self._info is None:
            return self._fixed
        # Converts the caller's instant; never reads the clock.
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC).astimezone(self._info)
        delta = moment.utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    def local(self, now: float) -> float:
        """Local wall time as seconds since the epoch (for day and weekday arithmetic)."""
        return now + self.offset(now)

    def __repr__(self) -> str:
        return f"Zone({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Zone) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


UTC = Zone.fixed("UTC", 0)


_CACHE: dict[str, Zone] = {}


def get_zone(name: str) -> Zone:
    """The zone called ``name``: ``UTC``, a fixed offset (``+02:00``, ``UTC-5``, ``-0330``), or
    an IANA name (``Europe/Paris``).  Raises :class:`ZoneError` when there is no such zone."""
    if name in ("UTC", "GMT", "Z", "Etc/UTC"):
        return UTC
    fixed = _FIXED.fullmatch(name)
    if fixed is not None:
        hours, minutes = int(fixed[2]), int(fixed[3] or 0)
        if hours > 14 or minutes > 59:
            raise ZoneError(f"offset {name!r} is out of range")
        sign = -1 if fixed[1] == "-" else 1
        return Zone.fixed(name, sign * (hours * 3600 + minutes * 60))
    zone = _CACHE.get(name)
    if zone is not None:
        return zone
    if not _ZONE_NAME.fullmatch(name) or ".." in name.split("/") or len(name) > 128:
        raise ZoneError(f"invalid time zone name {name!r}")
    try:
        info = zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ZoneError(f"unknown time zone {name!r}") from None
    zone = Zone(name, info)
    _CACHE[name] = zone
    return zone
