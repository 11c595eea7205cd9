"""Shared test configuration.

* Hypothesis profiles: ``fast`` (default, for CI) and ``deep`` (100k+ examples, on demand):
  ``HYPOTHESIS_PROFILE=deep make test``.
* External tools (redis-server, sipp, ...): a test that needs one calls :func:`require_tool`.
  Locally a missing tool skips the test with the reason; with ``SBC_REQUIRE_TOOLS=1`` (set by
  ``.ci/run``) it fails instead, so CI never skips silently.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "fast",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deep",
    max_examples=100_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

REQUIRE_TOOLS = os.environ.get("SBC_REQUIRE_TOOLS") == "1"


def require_tool(name: str) -> str:
    """The path of executable ``name``; skip, or fail under SBC_REQUIRE_TOOLS=1, if absent."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (run `make deps`)"
        if REQUIRE_TOOLS:
            pytest.fail(reason + "; SBC_REQUIRE_TOOLS=1 forbids skipping", pytrace=False)
        pytest.skip(reason)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)
