"""The deferred tier against the standard one, on the fake OpenAI-compatible server (Batch API included):

1,000 reviews, one label per review (per-item), BatchSpec(size=25), model openai/gpt-4.1-mini (litellm's prices:
standard $0.40/$1.60, batch $0.20/$0.80 per million input/output tokens), both runs in one process:
  standard  LLMEngine(per_item=True)                      one synchronous call per batch
  batch     LLMEngine(per_item=True, tier="batch")         the 40 requests go into provider batch jobs (jobs close
            at 20 requests or 2 s); the server fails 3% of the lines and lets the first job expire, so lines
            come back and are asked again (once in a later job, then synchronously)
Prints cost per review, jobs submitted, lines failed and how they were recovered, and wall time.

Run: python benchmarks/deferred.py [--n 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from flock_llm import FailureRecord, Flock, flock_type
from flock_llm.engines._limits import RetryPolicy
from flock_llm.engines.llm import DeferredPolicy, LLMEngine
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer

MODEL = "openai/gpt-4.1-mini"


@flock_type(name="DeferredReview")
class Review(BaseModel):
    review_id: str
    rating: int
    text: str


@flock_type(name="DeferredLabel")
class Label(BaseModel):
    review_id: str
    label: str
    reason: str


async def run(server: FakeOpenAIServer, n: int, **tier: Any) -> dict[str, float]:
    engine = LLMEngine(
        MODEL,
        per_item=True,
        api_base=server.api_base,
        api_key="sk-local-fake",
        structured_output=True,
        retry=RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.5),
        **tier,
    )
    flock = Flock(env={})
    (
        flock.agent("labels")
        .consumes(Review, batch=BatchSpec(size=25, timeout=timedelta(seconds=5)))
        .publishes(Label)
        .with_engines(engine)
        .max_concurrency(40)
    )
    reviews = [
        Review(review_id=f"r{i}", rating=1 + i % 5, text=f"Review {i}: the kettle boils fast, the lid rattles a bit.")
        for i in range(n)
    ]
    before = server.requests
    started = time.perf_counter()
    await flock.publish_many(reviews)
    await flock.run_until_idle()
    await flock.shutdown()
    usage = flock.metrics().usage["labels"]
    failures = await flock.store.get_by_type(FailureRecord)
    queue = engine.deferred_queue() if tier else None
    return {
        "wall": time.perf_counter() - started,
        "cost": float(usage["cost_usd"] or 0.0),
        "labels": len(await flock.store.get_by_type(Label)),
        "failed_items": sum(len(f.input_ids) for f in failures),
        "sync_requests": server.requests - before,
        "jobs": queue.jobs_submitted if queue else 0,
        "failed_lines": float(usage.get("deferred_failed_lines", 0)),
        "fallbacks": float(usage.get("deferred_fallbacks", 0)),
        "deferred": float(usage.get("deferred_requests", 0)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000)
    args = parser.parse_args()
    with FakeOpenAIServer(latency_s=0.1, per_item_latency_s=0.002) as server:
        standard = await run(server, args.n)
        server.batches.completion_delay_s = 1.0
        server.batches.failed_line_rate = 0.03
        server.batches.expire_next = 1
        policy = DeferredPolicy(job_size=20, job_wait=2.0, poll_interval=0.2, max_poll_interval=1.0)
        deferred = await run(server, args.n, tier="batch", deferred=policy)
        expired, failed = server.batches.lines_expired, server.batches.lines_failed
    print(f"{args.n:,} reviews, per-item, BatchSpec(size=25), {MODEL} prices, fake server:")
    print(f"  {'tier':<10}{'cost/review':>14}{'labelled':>10}{'failed':>8}{'sync calls':>12}{'jobs':>6}{'wall s':>8}")
    for name, r in (("standard", standard), ("batch", deferred)):
        print(f"  {name:<10}{'$' + format(r['cost'] / args.n, '.7f'):>14}{r['labels']:>10.0f}{r['failed_items']:>8.0f}"
              f"{r['sync_requests']:>12.0f}{r['jobs']:>6.0f}{r['wall']:>8.2f}")  # fmt: skip
    print(f"  batch tier cost: {deferred['cost'] / standard['cost']:.1%} of standard (goal: at most 52%)")
    print(
        f"  lines: {deferred['deferred']:.0f} deferred requests; {expired} lines expired (one job) and {failed} "
        f"failed at the server; {deferred['failed_lines']:.0f} came back without an answer, "
        f"{deferred['failed_lines'] - deferred['fallbacks']:.0f} recovered in a later job, "
        f"{deferred['fallbacks']:.0f} went synchronous; nothing lost: {deferred['labels']:.0f}/{args.n} labelled"
    )


if __name__ == "__main__":
    asyncio.run(main())
