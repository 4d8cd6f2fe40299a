"""A process for the durability tests: publishes into a durable Flock, or restarts one. Killed by the tests.

usage: durable_worker.py DB publish FIRST COUNT [--timeout S] [--engine-delay S] [--hold]
       durable_worker.py DB recover [--timeout S] [--engine-delay S] [--wait S]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec


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


def build(db: str, timeout: float, delay: float) -> Flock:
    flock = Flock(store=f"sqlite:///{db}", env={})
    (
        flock.agent("payments")
        .consumes(DurableTxn, batch=BatchSpec(size=25, timeout=timedelta(seconds=timeout)))
        .publishes(DurableReport)
        .with_engines(SlowEngine(delay))
    )
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
    args = parser.parse_args()
    flock = build(args.db, args.timeout, args.engine_delay)
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
