"""Time zones: offsets at given instants, fixed offsets, zone names, day arithmetic."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sbc.policy.tz import (
    UTC,
    ZoneError,
    civil_from_days,
    days_from_civil,
    get_zone,
    weekday,
)


@pytest.mark.parametrize(("name", "date", "offset"), [
    ("Asia/Kolkata", (2030, 1, 15), 19800), ("Asia/Kolkata", (2030, 7, 15), 19800),
    ("Australia/Sydney", (2030, 1, 15), 39600), ("Australia/Sydney", (2030, 7, 15), 36000),
    ("America/New_York", (2030, 1, 15), -18000), ("America/New_York", (2030, 7, 15), -14400),
    ("America/St_Johns", (2030, 1, 15), -12600),
])
def test_named_zones_at_noon_utc(name: str, date: tuple[int, int, int], offset: int) -> None:
    """Named zones give their standard or summer offset for the instant passed in."""
    assert get_zone(name).offset(days_from_civil(*date) * 86400 + 43200) == offset


def test_paris_summer_and_winter() -> None:
    """Paris is UTC+1 in winter and UTC+2 from the last Sunday of March at 01:00 UTC."""
    paris = get_zone("Europe/Paris")
    switch = days_from_civil(2031, 3, 30) * 86400 + 3600  # 2031-03-30 is the last Sunday
    assert paris.offset(switch - 1) == 3600
    assert paris.offset(switch) == 7200


@pytest.mark.parametrize(("name", "offset"), [
    ("UTC", 0), ("GMT", 0), ("Z", 0), ("+02:00", 7200), ("-05:30", -19800), ("+0930", 34200),
    ("UTC+3", 10800), ("GMT-4", -14400), ("+14", 50400),
])
def test_fixed_offsets(name: str, offset: int) -> None:
    """Fixed offsets need no zone file and never change."""
    zone = get_zone(name)
    assert zone.offset(0) == offset == zone.offset(2e9)


@pytest.mark.parametrize("name", ["Mars/Olympus", "../etc/passwd", "+15:00", "+01:61", "",
                                  "Europe/../../etc", "/etc/localtime"])
def test_unknown_zones(name: str) -> None:
    """Unknown names, path tricks and out-of-range offsets are ZoneError."""
    with pytest.raises(ZoneError):
        get_zone(name)


@given(st.integers(min_value=-719162, max_value=2932896))  # 0001-01-01 .. 9999-12-31
def test_civil_round_trip(days: int) -> None:
    """days_from_civil inverts civil_from_days, and dates and weekdays match the calendar."""
    year, month, day = civil_from_days(days)
    assert days_from_civil(year, month, day) == days
    date = datetime.date(1970, 1, 1) + datetime.timedelta(days=days)
    assert (year, month, day) == (date.year, date.month, date.day)
    assert weekday(days) == date.weekday()


def test_utc_constant() -> None:
    """UTC is the zero offset, and zones compare by name."""
    assert UTC.offset(123.0) == 0
    assert get_zone("UTC") == UTC and get_zone("Europe/Paris") == get_zone("Europe/Paris")
