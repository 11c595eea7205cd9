"""Fixtures of the store tests.

* ``store``: the contract fixture, parametrised over ``memory`` and ``redis`` (the ``limits``
  project's style).  The Redis store talks to the shared server (``SBC_TEST_REDIS_URL``, default
  ``redis://127.0.0.1:6379/0``, started by ``tests/tools/ensure-deps.sh``) under a key prefix of
  its own, and deletes its keys afterwards.  When no server answers the Redis variants skip, or
  fail under ``SBC_REQUIRE_TOOLS=1``.
* ``redis_server``: a factory of private ``redis-server`` processes on free ports (for the tests
  that kill, restart or flush a server), each killed at the end of the test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sbc.state.base import Store
from sbc.state.memory import MemoryStore
from sbc.state.redis_store import RedisStore
from tests.conftest import REQUIRE_TOOLS, require_tool

REDIS_URL = os.environ.get("SBC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shared_redis_answers() -> bool:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def shared_redis_url() -> str:
    """The URL of the shared Redis; skip (fail under SBC_REQUIRE_TOOLS=1) if none answers."""
    if not _shared_redis_answers():
        reason = f"no Redis answers at {REDIS_URL} (run tests/tools/ensure-deps.sh)"
        if REQUIRE_TOOLS:
            pytest.fail(reason + "; SBC_REQUIRE_TOOLS=1 forbids skipping", pytrace=False)
        pytest.skip(reason)
    return REDIS_URL


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"sbctest:{uuid.uuid4().hex}:"


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2.0)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_store_factory(shared_redis_url: str) -> Iterator[Callable[..., RedisStore]]:
    """Builds RedisStores (the "nodes" of one test) sharing a fresh key prefix."""
    prefix = new_prefix()
    prefixes = {prefix}
    stores: list[RedisStore] = []

    def make(**kwargs: Any) -> RedisStore:
        kwargs.setdefault("prefix", prefix)
        prefixes.add(kwargs["prefix"])
        store = RedisStore.from_url(shared_redis_url, clock=time.monotonic, **kwargs)
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            store.close()
        for used in prefixes:
            delete_prefix(shared_redis_url, used)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Store:
    """Each backend in turn, empty."""
    if request.param == "memory":
        return MemoryStore()
    factory: Callable[..., RedisStore] = request.getfixturevalue("redis_store_factory")
    return factory()


class RedisServer:
    """A private redis-server process on 127.0.0.1:``port`` (no persistence)."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        assert self.proc is None or self.proc.poll() is not None
        log = self.workdir / "redis.log"
        with log.open("ab") as output:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir), *extra],
                stdout=output, stderr=subprocess.STDOUT)
        if not wait_until(self.answers, timeout=10.0, interval=0.02):
            self.kill()
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")

    def answers(self) -> bool:
        try:
            client = redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2.0, decode_responses=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts private redis-servers (``start(*extra_args)``); all are killed afterwards."""
    binary = require_tool("redis-server")
    servers: list[RedisServer] = []

    def start(*extra: str, port: int | None = None) -> RedisServer:
        workdir = tmp_path / f"redis-{len(servers)}"
        workdir.mkdir()
        server = RedisServer(binary, port or free_port(), workdir)
        servers.append(server)
        server.start(*extra)
        return server

    try:
        yield start
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.kill()

