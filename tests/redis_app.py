"""A process for the Redis tests and the benchmark: a worker, or a producer, on a shared blackboard.

usage: redis_app.py URL worker [--size N] [--timeout-ms MS] [--delay-ms MS] [--concurrency N] [--sets]
       redis_app.py URL produce FIRST COUNT [--origin NAME] [--chunk N] [--sets]

With --sets, workers run an AND gate (Job + JobHalf) and a join of the two by `n`, each batched by 25 sets,
and the producer publishes a Job and a JobHalf for each n.

A worker prints "ready" once its loops run and stops gracefully on SIGTERM ("stopped").
A producer prints "published N" after each acknowledged publish call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from datetime import timedelta

from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec, JoinSpec


@flock_type
class Job(BaseModel):
    n: int
    origin: str = ""


@flock_type
class JobBatchDone(BaseModel):
    batch_id: str
    flush_reason: str
    worker_pid: int
    ns: list[int]
    origins: list[str]


class WaitingEngine(Engine):
    """Waits `delay` seconds per batch (an I/O-bound stand-in for an LLM call), then reports the batch."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        jobs = inputs.all_as(Job)
        return EvalResult.from_object(
            JobBatchDone(
                batch_id=ctx.batch_id or "",
                flush_reason=ctx.flush_reason or "",
                worker_pid=os.getpid(),
                ns=[j.n for j in jobs],
                origins=sorted({j.origin for j in jobs}),
            )
        )


@flock_type
class JobHalf(BaseModel):
    n: int


@flock_type
class SetsDone(BaseModel):
    agent: str
    sets: list[list[str]]
    worker_pid: int


class SetsEngine(Engine):
    """Reports each set of a flushed batch as the types and numbers of its artifacts."""

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        sets = [[f"{type(a.payload).__name__}:{a.payload.n}" for a in group] for group in inputs.items]
        return EvalResult.from_object(SetsDone(agent=ctx.agent_name, sets=sets, worker_pid=os.getpid()))


def build_sets(url: str, *, size: int, timeout_ms: int, concurrency: int) -> Flock:
    flock = Flock(store=url, env={})
    batch = BatchSpec(size=size, timeout=timedelta(milliseconds=timeout_ms))
    flock.agent("gate").consumes(Job, JobHalf, batch=batch).publishes(SetsDone).with_engines(
        SetsEngine()
    ).max_concurrency(concurrency)
    flock.agent("pairs").consumes(
        Job, JobHalf, join=JoinSpec(by=lambda x: x.n, within=timedelta(minutes=5)), batch=batch
    ).publishes(SetsDone).with_engines(SetsEngine()).max_concurrency(concurrency)
    return flock


def build(url: str, *, size: int, timeout_ms: int, delay_ms: int, concurrency: int) -> Flock:
    flock = Flock(store=url, env={})
    timeout = timedelta(milliseconds=timeout_ms) if timeout_ms else None
    (
        flock.agent("jobs")
        .consumes(Job, batch=BatchSpec(size=size, timeout=timeout))
        .publishes(JobBatchDone)
        .with_engines(WaitingEngine(delay_ms / 1000))
        .max_concurrency(concurrency)
    )
    return flock


async def work(flock: Flock) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await flock.start()
    print("ready", flush=True)
    await stop.wait()
    await flock.shutdown()
    print("stopped", flush=True)


async def produce(url: str, first: int, count: int, origin: str, chunk: int, sets: bool) -> None:
    flock = Flock(store=url, env={})
    async with flock:
        for start in range(first, first + count, chunk):
            end = min(start + chunk, first + count)
            jobs: list[BaseModel] = [Job(n=n, origin=origin) for n in range(start, end)]
            if sets:  # a Job and a JobHalf per n, the halves a little behind
                jobs = [x for n in range(start, end) for x in (Job(n=n, origin=origin), JobHalf(n=n))]
            await flock.publish_many(jobs)
            print(f"published {end - first}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("role", choices=["worker", "produce"])
    parser.add_argument("first", type=int, nargs="?", default=0)
    parser.add_argument("count", type=int, nargs="?", default=0)
    parser.add_argument("--size", type=int, default=25)
    parser.add_argument("--timeout-ms", type=int, default=30_000)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--origin", default="")
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--sets", action="store_true")
    args = parser.parse_args()
    if args.role == "worker" and args.sets:
        asyncio.run(
            work(build_sets(args.url, size=args.size, timeout_ms=args.timeout_ms, concurrency=args.concurrency))
        )
    elif args.role == "worker":
        flock = build(
            args.url, size=args.size, timeout_ms=args.timeout_ms, delay_ms=args.delay_ms, concurrency=args.concurrency
        )
        asyncio.run(work(flock))
    else:
        asyncio.run(produce(args.url, args.first, args.count, args.origin or str(os.getpid()), args.chunk, args.sets))


if __name__ == "__main__":
    main()
