"""Redis workers benchmark: throughput with 1, 2 and 4 worker processes sharing one Redis blackboard.

Each worker process runs tests/redis_app.py: batches of 25 and an engine that waits 50 ms per batch (an
I/O-bound stand-in for an LLM call), at the agent's default max_concurrency (2 runs at a time per process).
For each worker count, in one run: start the workers, wait until they are ready, then publish N items from
this process and time until the last batch's output is in Redis. The counts are interleaved over rounds and
the median is reported, because this machine is noisy.

Needs a Redis on 127.0.0.1 (tests/start_redis.sh starts one on port 6390; `make bench` runs it).
Run: python benchmarks/redis_workers.py [--n 4000] [--rounds 3] [--delay-ms 50] [--url redis://127.0.0.1:6390/0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from redis_app import Job, JobBatchDone  # noqa: E402 - the worker app lives with the tests

from flock_llm import Flock  # noqa: E402
from flock_llm.stores import RedisStore  # noqa: E402


def start_workers(url: str, count: int, delay_ms: int, concurrency: int) -> list[subprocess.Popen[str]]:
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "redis_app.py"), url, "worker", "--size", "25",
             "--delay-ms", str(delay_ms), "--concurrency", str(concurrency)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for _ in range(count)
    ]  # fmt: skip
    for worker in workers:
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise SystemExit(f"a worker did not start (exit code {worker.poll()})")
    return workers


async def one_run(base_url: str, workers: int, n: int, delay_ms: int, concurrency: int) -> float:
    """Items per second through `workers` processes."""
    url = f"{base_url}?namespace=bench-{uuid.uuid4().hex[:8]}"
    processes = start_workers(url, workers, delay_ms, concurrency)
    store = RedisStore.from_url(url)
    try:
        async with Flock(store=store, env={}) as producer:
            started = time.perf_counter()
            await producer.publish_many([Job(n=i) for i in range(n)])
            while await store.count(JobBatchDone) < n // 25:
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()
    await clear(url)
    return n / elapsed


async def clear(url: str) -> None:
    store = RedisStore.from_url(url)
    await store.connect()
    keys = [key async for key in store.client.scan_iter(match="{" + store.namespace + "}:*")]
    if keys:
        await store.client.delete(*keys)
    await store.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--url", default=os.environ.get("FLOCK_BENCH_REDIS_URL", "redis://127.0.0.1:6390/0"))
    args = parser.parse_args()
    counts = (1, 2, 4)
    results: dict[int, list[float]] = {c: [] for c in counts}
    for _ in range(args.rounds):
        for count in counts:
            results[count].append(await one_run(args.url, count, args.n, args.delay_ms, args.concurrency))
    print(
        f"{args.n} items, batches of 25, engine waits {args.delay_ms} ms per batch, "
        f"max_concurrency {args.concurrency} per worker; median of {args.rounds} interleaved rounds"
    )
    one = statistics.median(results[1])
    ideal = 25 * args.concurrency / (args.delay_ms / 1000)
    for count in counts:
        rate = statistics.median(results[count])
        runs = ", ".join(f"{r:,.0f}" for r in results[count])
        print(
            f"  {count} worker(s): {rate:8,.0f} items/s  = {rate / one:.2f}x one worker  "
            f"({rate / (ideal * count):.0%} of the engine-bound ceiling; runs: {runs})"
        )
    print(f"4 workers vs 1: {statistics.median(results[4]) / one:.2f}x (target >= 3x)")


if __name__ == "__main__":
    asyncio.run(main())
