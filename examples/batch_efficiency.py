"""Monitor batch efficiency: flush reasons, batch sizes and efficiency, to tune BatchSpec.

Run: python examples/batch_efficiency.py
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from _timescale import scaled
from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec


@flock_type
class Payment(BaseModel):
    payment_id: int


@flock_type
class BatchMetrics(BaseModel):
    batch_size: int  # Actual items in batch
    flush_reason: str  # "size" or "timeout"
    efficiency: float  # batch_size / configured_size


class MetricsEngine(Engine):
    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return EvalResult.from_object(
            BatchMetrics(
                batch_size=ctx.batch_size, flush_reason=ctx.flush_reason or "", efficiency=ctx.efficiency or 0.0
            )
        )


async def main() -> None:
    async with Flock() as flock:
        (
            flock.agent("payments")
            .consumes(Payment, batch=BatchSpec(size=25, timeout=scaled(timedelta(seconds=30))))
            .publishes(BatchMetrics)
            .with_engines(MetricsEngine())
        )
        # a burst (full batches), then a trickle (timeout flushes)
        await flock.publish_many(Payment(payment_id=i) for i in range(60))
        for i in range(60, 66):
            await asyncio.sleep(scaled(timedelta(seconds=12)).total_seconds())
            await flock.publish(Payment(payment_id=i))
        print("pending now:", [(s.agent, s.pending, round(s.oldest_age_s, 3)) for s in flock.batch_stats()])
        await asyncio.sleep(scaled(timedelta(seconds=31)).total_seconds())
        await flock.run_until_idle()
    for m in await flock.store.get_by_type(BatchMetrics):
        print(f"flush: {m.batch_size:>2} items, reason {m.flush_reason:<8} efficiency {m.efficiency:.0%}")
    metrics = flock.metrics()
    mean = sum(f.efficiency or 0 for f in metrics.flushes) / len(metrics.flushes)
    print(
        f"flushes by reason: {dict(metrics.flush_counts)}; mean efficiency {mean:.0%}; "
        f"mean wait {sum(f.waited_s for f in metrics.flushes) / len(metrics.flushes):.3f} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
