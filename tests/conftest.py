from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from flock_llm import Flock
from flock_llm.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def flock(clock: ManualClock) -> AsyncIterator[Flock]:
    """A fresh Flock on a hand-moved clock; the test env sets no FLOCK_LLM_MODEL."""
    f = Flock(clock=clock, env={})
    yield f
    await f.shutdown()


async def references(flock: Flock, agent: str) -> dict[str, int]:
    """How many outputs/failure records of `agent` reference each input id."""
    counts: dict[str, int] = {}
    for artifact in await flock.store.list():
        if artifact.produced_by == agent:
            for source in artifact.derived_from:
                counts[source] = counts.get(source, 0) + 1
    return counts


REDIS_URL = os.environ.get("FLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6390/0")


def redis_or_skip() -> None:
    """The test Redis (tests/start_redis.sh, which `make test` runs) must answer; in CI its absence fails."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        message = f"no Redis at {REDIS_URL}: run tests/start_redis.sh (`make test` does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis, in a namespace of its own (deleted afterwards), with short claim and sweep times."""
    import redis

    redis_or_skip()
    namespace = "test-" + uuid.uuid4().hex[:10]
    yield f"{REDIS_URL}?namespace={namespace}&claim_timeout=1&sweep_interval=0.2"
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match="{" + namespace + "}:*", count=1000))
    if keys:
        client.delete(*keys)


class PrivateRedis:
    """A redis-server of a test's own (AOF on, fsync always), to stop, kill and restart."""

    def __init__(self, directory: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis_or_skip()  # the same installation (tests/start_redis.sh) provides the binary
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()
