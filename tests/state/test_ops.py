"""Store ops validate their parameters when built, before any backend sees them."""

from __future__ import annotations

import math

import pytest

from sbc.errors import SbcError
from sbc.state.base import (
    MAX_DISTINCT_LIMIT,
    MAX_KEY_LENGTH,
    AppendEvent,
    BindingDelete,
    BindingPut,
    DistinctHit,
    FixedWindowHit,
    LeaseAcquire,
    RecentEvents,
    SetBan,
    SetTrust,
    SlidingWindowHit,
    StatIncr,
    StoreError,
    TokenBucketTake,
)

BAD = [
    lambda: FixedWindowHit("", 10.0, 1),
    lambda: FixedWindowHit("k" * (MAX_KEY_LENGTH + 1), 10.0, 1),
    lambda: FixedWindowHit("k", 0.0, 1),
    lambda: FixedWindowHit("k", math.inf, 1),
    lambda: FixedWindowHit("k", 10.0, -1),
    lambda: FixedWindowHit("k", 10.0, 1, cost=-1),
    lambda: FixedWindowHit("k", 10.0, True),
    lambda: SlidingWindowHit("k", -1.0, 1),
    lambda: SlidingWindowHit("k", 10.0, 1.5),
    lambda: DistinctHit("k", "", 10.0, 1),
    lambda: DistinctHit("k", "m" * (MAX_KEY_LENGTH + 1), 10.0, 1),
    lambda: DistinctHit("k", None, 10.0, 1),  # type: ignore[arg-type]
    lambda: DistinctHit("k", "m", 0.0, 1),
    lambda: DistinctHit("k", "m", 10.0, -1),
    lambda: DistinctHit("k", "m", 10.0, MAX_DISTINCT_LIMIT + 1),
    lambda: TokenBucketTake("k", 0.0, 1.0),
    lambda: TokenBucketTake("k", 1.0, math.nan),
    lambda: SetBan("k", 0.0, "r"),
    lambda: SetBan("k", 10.0, "r", factor=0.5),
    lambda: SetBan("k", 10.0, "r", max_duration=-1.0),
    lambda: SetBan("k", 10.0, "r", decay=math.inf),
    lambda: SetTrust("k", 0.0),
    lambda: LeaseAcquire("k", "", 1, 10.0),
    lambda: LeaseAcquire("k", "id", 1, 0.0),
    lambda: StatIncr("k", "", 1),
    lambda: StatIncr("k", "f", 1.5),  # type: ignore[arg-type]
    lambda: BindingPut("aor", "id", None, 10.0),  # type: ignore[arg-type]
    lambda: BindingDelete("aor", ""),
    lambda: AppendEvent("s", "d", cap=0),
    lambda: RecentEvents("s", 0),
]


@pytest.mark.parametrize("build", BAD, ids=range(len(BAD)))
def test_invalid_op_parameters_raise_value_error(build):
    """An op with a parameter out of range cannot be built."""
    with pytest.raises(ValueError):
        build()


def test_ops_are_frozen_values():
    """Ops are immutable and compare by value (they can be planned, kept and compared)."""
    op = FixedWindowHit("k", 10.0, 5)
    assert op == FixedWindowHit("k", 10.0, 5)
    with pytest.raises(AttributeError):
        op.limit = 6  # type: ignore[misc]


def test_store_error_is_an_sbc_error():
    """StoreError belongs to the sbc error family and says whether the backend was reachable."""
    error = StoreError("down")
    assert isinstance(error, SbcError)
    assert error.unavailable
    assert not StoreError("WRONGTYPE", unavailable=False).unavailable
