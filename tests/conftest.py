from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import respx

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
REDIS_CLUSTER_URL = os.environ.get("FLOCK_TEST_REDIS_CLUSTER_URL", "redis://127.0.0.1:6391/0")
"""A node of a 3-node Redis Cluster (ports 6391-6393), also started by tests/start_redis.sh."""


def redis_or_skip(url: str = REDIS_URL, *, cluster: bool = False) -> None:
    """The test Redis (tests/start_redis.sh, which `make test` runs) must answer; in CI its absence fails."""
    import redis
    from redis.cluster import RedisCluster

    try:
        client = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
        if cluster:
            client.disconnect_connection_pools()
    except (redis.ConnectionError, redis.exceptions.RedisClusterException):
        message = f"no Redis{' Cluster' if cluster else ''} at {url}: run tests/start_redis.sh (`make test` does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _redis_namespace(url: str, *, cluster: bool) -> Iterator[str]:
    import redis
    from redis.cluster import RedisCluster

    redis_or_skip(url, cluster=cluster)
    namespace = "test-" + uuid.uuid4().hex[:10]
    yield f"{url}?namespace={namespace}&claim_timeout=1&sweep_interval=0.2" + ("&cluster=1" if cluster else "")
    client = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    keys = list(client.scan_iter(match="{" + namespace + "}:*", count=1000))
    if keys:  # one hash tag: one slot, so one DEL also works on a cluster
        client.delete(*keys)
    client.close()
    if cluster:  # a sync cluster's close() gives its nodes' connections back to their pools, open
        client.disconnect_connection_pools()


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test Redis — a single server, then a Redis Cluster — in a namespace of its own (deleted
    afterwards), with short claim and sweep times."""
    cluster = request.param == "cluster"
    yield from _redis_namespace(REDIS_CLUSTER_URL if cluster else REDIS_URL, cluster=cluster)


@pytest.fixture
def redis_single_url() -> Iterator[str]:
    """Like `redis_url`, on the single server only (the multi-process tests)."""
    yield from _redis_namespace(REDIS_URL, cluster=False)


def _port_outside_the_ephemeral_range() -> int:
    """A free loopback port below the range the kernel hands out to `bind(0)` and to outgoing connections: the server
    that binds it after this returns, or binds it again after a kill, finds it free (a port from that range could
    be taken meanwhile by any connection's local end on a busy machine)."""
    import random
    import socket

    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    for _ in range(100 if first > 20_000 else 0):
        port = random.SystemRandom().randrange(10_000, first)  # (not the global generator a test may have seeded)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
            return port
    with socket.socket() as s:  # (an unusual port range: any free port)
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of a test's own (AOF on, fsync always), to stop, kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.port = _port_outside_the_ephemeral_range()
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


@pytest.fixture
def openai(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[respx.MockRouter]:
    """The OpenAI endpoint, mocked with respx; any other request fails the test. (litellm's aiohttp transport is
    switched off so respx sees the requests; DSPy's cache directory is the test's own.)"""
    from flock_llm.engines._calls.models import load_litellm

    monkeypatch.setenv("DISABLE_AIOHTTP_TRANSPORT", "True")
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "dspy-cache"))
    monkeypatch.setattr(load_litellm(), "disable_aiohttp_transport", True)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def litellm_clients_closed() -> AsyncIterator[None]:
    """Sweep up this test's litellm HTTP clients inside the test's own event loop.

    litellm caches completion clients across loops, its files and batches calls build a new OpenAI client per call
    that nobody closes, and httpx leaves a socket to the garbage collector when a request is cancelled (a flex
    attempt, a provider that is down). Whatever is left would be collected during a later test, whose loop cannot
    close it: an unraisable ResourceWarning there, failing a test that did nothing wrong. So at the end of each
    test that talks to a local fake provider: close the cached clients, collect this test's garbage now and wait
    for the closes the collected clients scheduled, while this loop still runs (see also the warning filters in
    pyproject.toml)."""
    yield
    await close_litellm_clients()


async def close_litellm_clients() -> None:
    """Close litellm's cached clients and wait for the closes they schedule, in the running loop (see above)."""
    from flock_llm.engines._calls.models import load_litellm

    litellm = load_litellm()
    await litellm.close_litellm_async_clients()
    litellm.in_memory_llm_clients_cache.flush_cache()
    gc.collect()
    me = asyncio.current_task()
    closing = [t for t in asyncio.all_tasks() if t is not me and t.get_coro().__qualname__.endswith("aclose")]
    if closing:
        await asyncio.wait(closing, timeout=5)


@pytest.fixture
def cli_in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For a test that runs `flock_llm.cli.main.main()` in its own process: each run's event loop closes
    litellm's clients before it ends (see `litellm_clients_closed`), and what the CLI froze for the garbage
    collector is unfrozen afterwards."""
    run = asyncio.run

    def run_then_close(main: Any) -> Any:
        async def both() -> Any:
            try:
                return await main
            finally:
                await close_litellm_clients()

        return run(both())

    monkeypatch.setattr(asyncio, "run", run_then_close)  # a sync test: nothing else runs a loop meanwhile
    try:
        yield
    finally:
        gc.unfreeze()
