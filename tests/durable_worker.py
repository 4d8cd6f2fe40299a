"""A process for the durability tests: publishes into a durable Flock, or restarts one. Killed by the tests.

usage: durable_worker.py DB publish FIRST COUNT [--timeout S] [--engine-delay S] [--hold] [--sets]
       durable_worker.py DB recover [--timeout S] [--engine-delay S] [--wait S] [--sets]

With --sets, an AND gate (DurableTxn + DurableHalf) and a join of two DurableTxn by txn_id // 2 run too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec, JoinSpec


@flock_type
class DurableTxn(BaseModel):
    txn_id: int


@flock_type
class DurableReport(BaseModel):
    txn_ids: list[int]
    flush_reason: str


class SlowEngine(Engine):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        print(f"engine started {len(inputs)}", flush=True)
        await asyncio.sleep(self.delay)
        return EvalResult.from_object(
            DurableReport(txn_ids=[t.txn_id for t in inputs.all_as(DurableTxn)], flush_reason=ctx.flush_reason or "")
        )


@flock_type
class DurableHalf(BaseModel):
    txn_id: int


@flock_type
class DurableSet(BaseModel):
    members: list[str]


class SetEngine(Engine):
    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        members = [f"{type(a.payload).__name__}:{a.payload.txn_id}" for a in inputs.artifacts]  # type: ignore[attr-defined]
        return EvalResult.from_object(DurableSet(members=members))


def build(db: str, timeout: float, delay: float, *, sets: bool = False) -> Flock:
    flock = Flock(store=f"sqlite:///{db}", env={})
    (
        flock.agent("payments")
        .consumes(DurableTxn, batch=BatchSpec(size=25, timeout=timedelta(seconds=timeout)))
        .publishes(DurableReport)
        .with_engines(SlowEngine(delay))
    )
    if sets:
        flock.agent("gate").consumes(DurableTxn, DurableHalf).publishes(DurableSet).with_engines(SetEngine())
        join = JoinSpec(by=lambda t: t.txn_id // 2, within=timedelta(minutes=5))
        flock.agent("pairs").consumes(DurableTxn, DurableTxn, join=join).publishes(DurableSet).with_engines(SetEngine())
    return flock


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("mode", choices=["publish", "recover"])
    parser.add_argument("first", type=int, nargs="?", default=0)
    parser.add_argument("count", type=int, nargs="?", default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--engine-delay", type=float, default=0.0)
    parser.add_argument("--hold", action="store_true", help="after publishing, wait to be killed")
    parser.add_argument("--wait", type=float, default=0.0, help="recover: seconds to run before shutting down")
    parser.add_argument("--sets", action="store_true", help="also run a gate and a join")
    args = parser.parse_args()
    flock = build(args.db, args.timeout, args.engine_delay, sets=args.sets)
    await flock.start()
    print(f"restored {flock.metrics().count('restored_deliveries')}", flush=True)
    if args.mode == "publish":
        for start in range(args.first, args.first + args.count, 100):
            await flock.publish_many(
                DurableTxn(txn_id=i) for i in range(start, min(start + 100, args.first + args.count))
            )
        print("published", flush=True)
        if args.hold:
            await asyncio.sleep(3600)
    await flock.run_until_idle()
    if args.wait:
        await asyncio.sleep(args.wait)
        await flock.run_until_idle()
    await flock.shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
