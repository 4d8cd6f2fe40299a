"""Core runtime benchmark: throughput, timeout-flush lateness, memory per pending artifact.

Each figure is printed next to a naive baseline measured in the same run:
- throughput vs a hand-rolled asyncio.Queue batcher (the usual DIY approach);
- lateness vs a polling checker that wakes every 100 ms;
- memory vs the bare payload objects in a list.

Run: python benchmarks/core_throughput.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.stores import ArtifactStore
from flock_llm.subscription import BatchSpec, JoinSpec
from flock_llm.tracing import TracingConfig


@flock_type(name="BenchTxn")
class Txn(BaseModel):
    txn_id: str
    amount: float
    note: str = ""


@flock_type(name="BenchReport")
class Report(BaseModel):
    count: int


class NoOpEngine(Engine):
    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return EvalResult.from_object(Report(count=len(inputs)))


def _payloads(n: int, note: str = "") -> list[Txn]:
    # a distinct note string per payload, so each really holds its own ~1 KB
    return [Txn(txn_id=f"t{i}", amount=float(i), note=f"{i:08d}{note[8:]}" if note else "") for i in range(n)]


async def flock_throughput(
    n: int, *, tracing: TracingConfig | None = None, chunk: int = 1, store: ArtifactStore | None = None
) -> float:
    """Artifacts/s from the first publish until the last report is published (chunk > 1: publish_many)."""
    payloads = _payloads(n)
    gc.collect()  # start each run with the garbage of the previous one gone
    flock = Flock(env={}, tracing=tracing or False, store=store)
    agent = flock.agent("bench").consumes(Txn, batch=BatchSpec(size=25, timeout=timedelta(seconds=30)))
    agent.publishes(Report).with_engines(NoOpEngine())
    start = time.perf_counter()
    if chunk == 1:
        for p in payloads:
            await flock.publish(p)
    else:
        for i in range(0, n, chunk):
            await flock.publish_many(payloads[i : i + chunk])
    await flock.run_until_idle()
    elapsed = time.perf_counter() - start
    assert len(await flock.store.get_by_type(Report)) == n // 25
    await flock.shutdown()  # with tracing: writes the remaining spans (not timed)
    return n / elapsed


async def queue_batcher_throughput(n: int) -> float:
    """The hand-rolled way: an asyncio.Queue and a consumer task with wait_for timeouts."""
    payloads = _payloads(n)
    queue: asyncio.Queue[Txn | None] = asyncio.Queue()
    reports: list[Report] = []

    async def consumer() -> None:
        batch: list[Txn] = []
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=30)
            except TimeoutError:
                item = None if not batch else batch[-1]
            if item is None:
                break
            batch.append(item)
            if len(batch) == 25:
                reports.append(Report(count=len(batch)))
                batch = []

    task = asyncio.create_task(consumer())
    start = time.perf_counter()
    for p in payloads:
        await queue.put(p)
    await queue.put(None)
    await task
    elapsed = time.perf_counter() - start
    assert len(reports) == n // 25
    return n / elapsed


class _StampEngine(Engine):
    def __init__(self, arrivals: dict[object, float], timeout: float, lateness: list[float]) -> None:
        self.arrivals, self.timeout, self.lateness = arrivals, timeout, lateness

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        now = asyncio.get_running_loop().time()
        key = inputs.all_as(Txn)[0].txn_id
        self.lateness.append((now - self.arrivals[key] - self.timeout) * 1000)
        return EvalResult.empty()


async def flock_lateness(flushes: int, timeout: float) -> list[float]:
    arrivals: dict[object, float] = {}
    lateness: list[float] = []
    flock = Flock(env={})
    flock.agent("late").consumes(
        Txn, batch=BatchSpec(size=1000, timeout=timedelta(seconds=timeout), by=lambda t: t.txn_id)
    ).with_engines(_StampEngine(arrivals, timeout, lateness))
    loop = asyncio.get_running_loop()
    for i in range(flushes):
        arrivals[f"k{i}"] = loop.time()
        await flock.publish(Txn(txn_id=f"k{i}", amount=1))
        await asyncio.sleep(0.007)
    while len(lateness) < flushes:
        await asyncio.sleep(0.01)
    await flock.shutdown()
    return lateness


async def polling_lateness(flushes: int, timeout: float, interval: float = 0.1) -> list[float]:
    """The naive way: a task that wakes every `interval` and flushes what has expired."""
    loop = asyncio.get_running_loop()
    pending: dict[str, float] = {}
    lateness: list[float] = []

    async def poller() -> None:
        while len(lateness) < flushes:
            await asyncio.sleep(interval)
            now = loop.time()
            for key, first in list(pending.items()):
                if now >= first + timeout:
                    del pending[key]
                    lateness.append((now - first - timeout) * 1000)

    task = asyncio.create_task(poller())
    for i in range(flushes):
        pending[f"k{i}"] = loop.time()
        await asyncio.sleep(0.007)
    await task
    return lateness


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def memory_per_pending(n: int) -> tuple[float, float]:
    """Bytes held per pending artifact (payload + artifact + store + batch slot), and the payload alone."""
    note = "x" * 1000
    flock = Flock(env={})
    flock.agent("hold").consumes(Txn, batch=BatchSpec(size=10 * n, timeout=timedelta(hours=1))).with_engines(
        NoOpEngine()
    )
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    bare = _payloads(n, note)
    bare_bytes = (tracemalloc.get_traced_memory()[0] - start) / n
    del bare
    gc.collect()
    start = tracemalloc.get_traced_memory()[0]
    for p in _payloads(n, note):
        await flock.publish(p)
    gc.collect()
    held = (tracemalloc.get_traced_memory()[0] - start) / n
    tracemalloc.stop()
    assert sum(len(b.artifacts) for b in flock._batch_engine.batches.values()) == n
    return held, bare_bytes


@flock_type(name="BenchHalf")
class Half(BaseModel):
    pair: int
    side: str


async def group_throughput(n_sets: int, *, join: bool) -> float:
    """Complete sets/s through a two-slot AND gate (or a join by key), 25 sets per batch."""
    flock = Flock(env={})
    done = asyncio.Event()
    reported = 0

    class Count(Engine):
        async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
            nonlocal reported
            reported += len(inputs.items)
            if reported >= n_sets:
                done.set()
            return EvalResult.from_object(Report(count=len(inputs.items)))

    spec = JoinSpec(by=lambda h: h.pair, within=timedelta(minutes=5)) if join else None
    flock.agent("sets").consumes(
        Half, Half, join=spec, batch=BatchSpec(size=25, timeout=timedelta(seconds=30))
    ).publishes(Report).with_engines(Count())
    halves = [Half(pair=i, side=s) for i in range(n_sets) for s in ("a", "b")]
    started = time.perf_counter()
    for half in halves:
        await flock.publish(half)
    await done.wait()
    elapsed = time.perf_counter() - started
    await flock.shutdown()
    return n_sets / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()

    ours = max([await flock_throughput(args.n) for _ in range(3)])
    diy = max([await queue_batcher_throughput(args.n) for _ in range(3)])
    print(
        f"throughput publish->batch(25)->engine->publish, N={args.n}: "
        f"{ours:,.0f} artifacts/s (hand-rolled asyncio.Queue batcher, no store/routing: {diy:,.0f}/s; "
        f"ratio {ours / diy:.2f})"
    )

    gates = max([await group_throughput(args.n // 2, join=False) for _ in range(3)])
    joins = max([await group_throughput(args.n // 2, join=True) for _ in range(3)])
    print(
        f"sets publish->slots(2)->batch(25)->engine, {args.n // 2:,} sets ({args.n:,} artifacts): AND gate "
        f"{gates:,.0f} sets/s, join by key {joins:,.0f} sets/s"
    )

    ours_late = await flock_lateness(30, 0.2)
    poll_late = await polling_lateness(30, 0.2)
    print(
        f"timeout-flush lateness, timeout 200 ms, 30 flushes: p50 {statistics.median(ours_late):.2f} ms, "
        f"p99 {p99(ours_late):.2f} ms, max {max(ours_late):.2f} ms "
        f"(100 ms polling checker: p50 {statistics.median(poll_late):.1f} ms, p99 {p99(poll_late):.1f} ms)"
    )

    with tempfile.TemporaryDirectory() as folder:
        for chunk, label in ((1, "publish() per artifact"), (500, "publish_many() of 500")):
            ratios, plain, traced = [], [], []
            for i in range(7):  # interleaved pairs; this machine is noisy, so report the median pair
                plain.append(await flock_throughput(args.n, chunk=chunk))
                config = TracingConfig(duckdb_path=str(Path(folder) / f"t{chunk}-{i}.duckdb"))
                traced.append(await flock_throughput(args.n, tracing=config, chunk=chunk))
                ratios.append(traced[-1] / plain[-1])
            print(
                f"tracing on vs off ({label}, spans to DuckDB), 7 interleaved pairs: median slowdown "
                f"{100 * (1 - statistics.median(ratios)):.0f}% (range {100 * (1 - max(ratios)):.0f}%.."
                f"{100 * (1 - min(ratios)):.0f}%); best {max(traced):,.0f} vs {max(plain):,.0f} artifacts/s"
            )

    held, bare = await memory_per_pending(5_000)
    print(
        f"memory per pending ~1 KB artifact: {held / 1024:.2f} KB held "
        f"(the bare payload object alone: {bare / 1024:.2f} KB; overhead {(held - bare) / 1024:.2f} KB)"
    )


if __name__ == "__main__":
    asyncio.run(main())
