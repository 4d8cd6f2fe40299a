"""Filter, then batch: only orders above $1,000 enter the VIP batch of 10.

Run: python examples/vip_orders.py
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
class Order(BaseModel):
    order_id: str
    amount: float


@flock_type
class VIPBatchReport(BaseModel):
    order_ids: list[str]
    total: float
    flush_reason: str


class VIPEngine(Engine):
    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        orders = inputs.all_as(Order)
        return EvalResult.from_object(
            VIPBatchReport(
                order_ids=[o.order_id for o in orders],
                total=sum(o.amount for o in orders),
                flush_reason=ctx.flush_reason or "",
            )
        )


async def main() -> None:
    async with Flock() as flock:
        (
            flock.agent("vip_batch")
            .consumes(
                Order,
                where=lambda o: o.amount > 1000,  # Filter first!
                batch=BatchSpec(size=10, timeout=scaled(timedelta(minutes=5))),  # Then batch!
            )
            .publishes(VIPBatchReport)
            .with_engines(VIPEngine())
        )
        amounts = [250, 1200, 80, 5400, 999, 1001, 15000, 40, 2300, 1750] * 3
        await flock.publish_many(Order(order_id=f"o{i}", amount=a) for i, a in enumerate(amounts))
        await flock.run_until_idle()
    for r in await flock.store.get_by_type(VIPBatchReport):
        print(
            f"VIP batch ({r.flush_reason}) of {len(r.order_ids)} orders, total ${r.total:,.0f}: "
            f"{', '.join(r.order_ids)}"
        )
    print(f"{len(amounts)} orders published, {sum(a > 1000 for a in amounts)} VIP")


if __name__ == "__main__":
    asyncio.run(main())
