"""Worker processes sharing one Redis blackboard (tests/redis_app.py): the issue's scenarios, for real.

Processes are started with the same Python; the test Redis comes from tests/start_redis.sh, and the
restart test runs a redis-server of its own so it can kill it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from conftest import PrivateRedis

APP = Path(__file__).resolve().parents[1] / "redis_app.py"


class Proc:
    def __init__(self, url: str, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(APP), url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Read stdout until a line starting with `text`."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.popen.stdout], [], [], 0.1)
            if ready:
                line = self.popen.stdout.readline()
                if not line:
                    break
                self.lines.append(line.strip())
                if line.startswith(text):
                    return
        raise AssertionError(f"no {text!r} from {self.popen.args}: {self.lines}; stderr: {self.stderr()}")

    def stderr(self) -> str:
        if self.popen.poll() is None or self.popen.stderr is None:
            return "(running)"
        return self.popen.stderr.read()[-3000:]

    def stop(self) -> int:
        """SIGTERM: a worker finishes what it took and exits."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=30)
        finally:
            self.close()

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()
        self.close()

    def close(self) -> None:
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


def start_workers(url: str, n: int, *args: str) -> list[Proc]:
    workers = [Proc(url, "worker", "--size", "25", *args) for _ in range(n)]
    for w in workers:
        w.wait_for("ready")
    return workers


def namespace_of(url: str) -> str:
    return url.split("namespace=")[1].split("&")[0]


def batches(client: redis.Redis, url: str) -> list[dict[str, Any]]:
    """Every JobBatchDone published, as dicts."""
    stream = "{" + namespace_of(url) + "}:t:JobBatchDone"
    return [json.loads(json.loads(fields[b"a"])[2]) for _, fields in client.xrange(stream)]


def wait_for_batches(client: redis.Redis, url: str, n: int, timeout: float = 60.0) -> None:
    stream = "{" + namespace_of(url) + "}:t:JobBatchDone"
    deadline = time.monotonic() + timeout
    while client.xlen(stream) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{client.xlen(stream)} of {n} batches after {timeout} s")
        time.sleep(0.05)
    time.sleep(0.5)  # anything extra (a duplicate) would arrive now


def assert_each_item_once(done: list[dict[str, Any]], count: int) -> None:
    seen = Counter(n for batch in done for n in batch["ns"])
    assert sorted(seen) == list(range(count)), "items missing"
    assert max(seen.values()) == 1, f"items in two batches: {[n for n, c in seen.items() if c > 1][:10]}"
    assert len({b["batch_id"] for b in done}) == len(done), "a batch published twice"


def test_three_workers_and_a_producer_make_exactly_400_batches_of_10000_items(redis_single_url: str) -> None:
    client = redis.Redis.from_url(redis_single_url.split("?")[0])
    workers = start_workers(redis_single_url, 3)
    try:
        producer = Proc(redis_single_url, "produce", "0", "10000")
        assert producer.popen.wait(timeout=60) == 0, producer.stderr()
        producer.close()
        wait_for_batches(client, redis_single_url, 400)
        done = batches(client, redis_single_url)
        assert (
            len(done) == 400 and {len(b["ns"]) for b in done} == {25} and {b["flush_reason"] for b in done} == {"size"}
        )
        assert_each_item_once(done, 10_000)
        assert len({b["worker_pid"] for b in done}) >= 2  # the work was shared
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0, 0]  # SIGTERM: each finished what it took and exited cleanly


def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(redis_single_url: str) -> None:
    client = redis.Redis.from_url(redis_single_url.split("?")[0])
    workers = start_workers(redis_single_url, 3, "--delay-ms", "20")
    try:
        producer = Proc(redis_single_url, "produce", "0", "10000")
        victim = workers[0]
        ready = "{" + namespace_of(redis_single_url) + '}:r:["jobs", 0]'
        deadline = time.monotonic() + 30
        held = 0
        while not held and time.monotonic() < deadline:  # kill it while it holds a batch it has not finished
            consumers = client.xinfo_consumers(ready, "workers") if client.exists(ready) else []
            held = sum(c["pending"] for c in consumers if f"-{victim.popen.pid}-" in c["name"].decode())
        assert held, "the victim never held a batch"
        victim.kill()
        assert producer.popen.wait(timeout=60) == 0, producer.stderr()
        producer.close()
        wait_for_batches(client, redis_single_url, 400)
        done = batches(client, redis_single_url)
        assert len(done) == 400 and {len(b["ns"]) for b in done} == {25}
        assert_each_item_once(done, 10_000)
    finally:
        for w in workers[1:]:
            w.stop()


def test_a_partial_batch_fed_by_two_processes_flushes_once_at_its_timeout(redis_single_url: str) -> None:
    client = redis.Redis.from_url(redis_single_url.split("?")[0])
    workers = start_workers(redis_single_url, 2, "--timeout-ms", "500")
    try:
        started = time.monotonic()
        producers = [
            Proc(redis_single_url, "produce", "0", "3", "--origin", "first"),
            Proc(redis_single_url, "produce", "3", "4", "--origin", "second"),
        ]
        for p in producers:
            assert p.popen.wait(timeout=30) == 0, p.stderr()
            p.close()
        wait_for_batches(client, redis_single_url, 1, timeout=10)
        elapsed = time.monotonic() - started
        (done,) = batches(client, redis_single_url)
        assert sorted(done["ns"]) == list(range(7)) and done["flush_reason"] == "timeout"
        assert done["origins"] == ["first", "second"]
        assert elapsed >= 0.5
    finally:
        for w in workers:
            w.stop()


def test_redis_restarted_mid_run_loses_nothing_acknowledged(private_redis: PrivateRedis) -> None:
    url = private_redis.url + "?namespace=restart&claim_timeout=1&sweep_interval=0.2"
    client = redis.Redis(port=private_redis.port)
    workers = start_workers(url, 2)
    try:
        producer = Proc(url, "produce", "0", "5000", "--chunk", "50")
        producer.wait_for("published 1500")
        private_redis.kill()  # SIGKILL: only what was fsynced to the append-only file survives
        time.sleep(0.3)
        private_redis.start()
        assert producer.popen.wait(timeout=90) == 0, producer.stderr()
        producer.close()
        client = redis.Redis(port=private_redis.port)
        wait_for_batches(client, url, 200, timeout=90)
        done = batches(client, url)
        assert len(done) == 200
        assert_each_item_once(done, 5000)
    finally:
        for w in workers:
            w.stop()


def test_three_workers_run_every_gate_set_and_join_group_exactly_once(redis_single_url: str) -> None:
    """10,000 artifacts (a Job and a JobHalf per n) through an AND gate and a join by n, both batched by 25,
    on three worker processes: every artifact lands in exactly one set of each, and every set is whole."""
    client = redis.Redis.from_url(redis_single_url.split("?")[0])
    workers = start_workers(redis_single_url, 3, "--sets")
    stream = "{" + namespace_of(redis_single_url) + "}:t:SetsDone"
    try:
        producer = Proc(redis_single_url, "produce", "0", "5000", "--sets")
        assert producer.popen.wait(timeout=120) == 0, producer.stderr()
        producer.close()
        deadline = time.monotonic() + 120
        while client.xlen(stream) < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # anything extra (a duplicate) would arrive now
        done = [json.loads(json.loads(fields[b"a"])[2]) for _, fields in client.xrange(stream)]
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0, 0]
    for agent in ("gate", "pairs"):
        sets = [s for d in done if d["agent"] == agent for s in d["sets"]]
        assert len(sets) == 5000, (agent, len(sets))
        members = Counter(m for s in sets for m in s)
        assert len(members) == 10_000 and max(members.values()) == 1, agent  # each artifact in one set, once
        assert all(sorted(m.split(":")[0] for m in s) == ["Job", "JobHalf"] for s in sets), agent
        if agent == "pairs":
            assert all(len({m.split(":")[1] for m in s}) == 1 for s in sets)  # a join group shares its key
    assert len({d["worker_pid"] for d in done}) >= 2  # the work was shared
