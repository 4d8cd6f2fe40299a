"""Quick start: batch 25 payment transactions (or flush every 30 s) to get the bulk fee.

Individual: $0.30 per transaction. Batch (25+): $0.10 per transaction.
Run: python examples/quickstart_payments.py
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from _timescale import scaled
from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec

INDIVIDUAL_FEE = 0.30
BULK_FEE = 0.10
BULK_MINIMUM = 25


@flock_type
class Transaction(BaseModel):
    transaction_id: str
    customer_id: str
    amount: float
    payment_method: str


@flock_type
class PaymentBatchReport(BaseModel):
    batch_id: str
    transaction_count: int
    total_amount: float
    batch_fee: float
    savings: float
    flush_reason: str


class BulkPaymentEngine(Engine):
    """Submits a whole batch to the (simulated) bulk payment API and reports the fees."""

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        batch = inputs.all_as(Transaction)
        fee = BULK_FEE if len(batch) >= BULK_MINIMUM else INDIVIDUAL_FEE
        return EvalResult.from_object(
            PaymentBatchReport(
                batch_id=ctx.batch_id or uuid.uuid4().hex,
                transaction_count=len(batch),
                total_amount=round(sum(t.amount for t in batch), 2),
                batch_fee=round(fee * len(batch), 2),
                savings=round((INDIVIDUAL_FEE - fee) * len(batch), 2),
                flush_reason=ctx.flush_reason or "",
            )
        )


async def main() -> None:
    async with Flock() as flock:
        (
            flock.agent("payment_processor")
            .description("Batches 25 transactions to get the bulk fee")
            .consumes(
                Transaction,
                batch=BatchSpec(
                    size=25,  # Flush when 25 transactions collected
                    timeout=scaled(timedelta(seconds=30)),  # OR flush every 30 seconds
                ),
            )
            .publishes(PaymentBatchReport)
            .with_engines(BulkPaymentEngine())
        )
        for i in range(60):
            await flock.publish(
                Transaction(
                    transaction_id=f"txn-{i:03d}", customer_id=f"cust-{i % 7}", amount=10 + i, payment_method="card"
                )
            )
        await flock.run_until_idle()
        await asyncio.sleep(scaled(timedelta(seconds=31)).total_seconds())  # the last 10 flush on timeout
        await flock.run_until_idle()
        reports = await flock.store.get_by_type(PaymentBatchReport)
    for r in reports:
        print(
            f"batch of {r.transaction_count} ({r.flush_reason}): total ${r.total_amount:.2f}, "
            f"fee ${r.batch_fee:.2f}, saved ${r.savings:.2f}"
        )
    print(
        f"total saved: ${sum(r.savings for r in reports):.2f} on {sum(r.transaction_count for r in reports)} "
        f"transactions in {len(reports)} batches"
    )


if __name__ == "__main__":
    asyncio.run(main())
