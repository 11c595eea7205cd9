"""The sans-I/O rule: the core packages never import I/O, Twisted, Redis or the edge packages."""

import ast
from pathlib import Path

import pytest

SBC = Path(__file__).parent.parent / "sbc"
CORE = ["sip", "media", "gateway", "policy", "state", "errors.py", "ids.py"]
FORBIDDEN = {"twisted", "redis", "socket", "asyncio", "selectors", "ssl", "OpenSSL",
             "sbc.net", "sbc.app", "time", "datetime"}
# The Redis store is the state layer's adapter to a server (house style: "state/ ... memory and
# redis"): it alone may use the Redis client (its clock is passed in).  It still
# never imports Twisted or the edge packages.
ADAPTERS = {
    "state/redis_store.py": {"redis"},
    "policy/tz.py": {"datetime"},  # converts the caller's instant with zoneinfo; no clock read
}


def _core_files():
    for entry in CORE:
        path = SBC / entry
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("path", list(_core_files()), ids=lambda p: str(p.relative_to(SBC)))
def test_core_module_has_no_io_imports(path):
    """A core module imports nothing that does I/O or reads the clock."""
    allowed = ADAPTERS.get(str(path.relative_to(SBC)), set())
    bad = [m for m in _imports(path)
           if any(m == f or m.startswith(f + ".") for f in FORBIDDEN - allowed)]
    assert bad == []
