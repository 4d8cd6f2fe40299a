"""The deferred tier against the standard one, on the fake OpenAI-compatible server (Batch API included):

1,000 reviews, one label per review (per-item), BatchSpec(size=25), model openai/gpt-4.1-mini (litellm's prices:
standard $0.40/$1.60, batch $0.20/$0.80 per million input/output tokens), both runs in one process:
  standard  LLMEngine(per_item=True)                      one synchronous call per batch
  batch     LLMEngine(per_item=True, tier="batch")         the 40 requests go into provider batch jobs (jobs close
            at 20 requests or 2 s); the server fails 3% of the lines and lets the first job expire, so lines
            come back and are asked again (once in a later job, then synchronously)
Prints cost per review, jobs submitted, lines failed and how they were recovered, and wall time.

Then the memory of reading one large output file (--output-mb, default 100: 20,000 lines of 5 KB): the peak of
traced Python allocations (tracemalloc) while DeferredQueue streams it and answers every request, against the
same file read whole the way the tier read it before (content, its lines, every parsed line at once).

Run: python benchmarks/deferred.py [--n 1000] [--output-mb 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import tracemalloc
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from flock_llm import FailureRecord, Flock, flock_type
from flock_llm.engines import RetryPolicy, load_litellm
from flock_llm.engines._tiers.jobs import DeferredQueue
from flock_llm.engines._tiers.journal import MemoryJournal
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


async def output_memory(server: FakeOpenAIServer, megabytes: int) -> tuple[float, float, float]:
    """(file MB, peak MB streaming it through DeferredQueue, peak MB reading it whole) for one job's output."""
    n, padding = megabytes * 200, 5_000
    server.batches.output_padding, server.batches.completion_delay_s = padding, 3600.0
    settings = {"api_base": server.api_base, "api_key": "sk-local-fake"}
    policy = DeferredPolicy(job_size=n, job_wait=60.0, poll_interval=0.5, max_poll_interval=0.5)
    queue = DeferredQueue(policy, load_litellm(), settings)
    journal = MemoryJournal()
    answered = 0

    async def ask(i: int) -> None:
        nonlocal answered
        result = await queue.ask(
            journal, f"line-{i}", {"model": "fake", "messages": [{"role": "user", "content": f"{i}"}]}
        )
        answered += result.body is not None

    jobs_before = server.batches.jobs_created
    asking = [asyncio.create_task(ask(i)) for i in range(n)]
    while server.batches.jobs_created == jobs_before:
        await asyncio.sleep(0.05)
    batch_id = max(server.batches._jobs, key=lambda j: int(j.split("_")[1]))  # noqa: SLF001 - the fake's own record
    server.batches.completion_delay_s = 0.0
    _, job, _ = server.batches.get(f"/v1/batches/{batch_id}")  # the fake writes the output file now, untraced
    size = len(server.batches.get(f"/v1/files/{job['output_file_id']}/content")[1]) / 1e6
    tracemalloc.start()
    await asyncio.gather(*asking)
    streamed = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    assert answered == n, f"{answered} of {n} answered"
    litellm = load_litellm()
    tracemalloc.start()
    content = await litellm.afile_content(file_id=job["output_file_id"], custom_llm_provider="openai", **settings)
    lines = {str(line.get("custom_id")): line for line in map(json.loads, content.content.splitlines())}
    whole = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    del lines, content
    return size, streamed, whole


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000)
    parser.add_argument("--output-mb", type=int, default=100)
    args = parser.parse_args()
    with FakeOpenAIServer(latency_s=0.1, per_item_latency_s=0.002) as server:
        standard = await run(server, args.n)
        server.batches.completion_delay_s = 1.0
        server.batches.failed_line_rate = 0.03
        server.batches.expire_next = 1
        policy = DeferredPolicy(job_size=20, job_wait=2.0, poll_interval=0.2, max_poll_interval=1.0)
        deferred = await run(server, args.n, tier="batch", deferred=policy)
        expired, failed = server.batches.lines_expired, server.batches.lines_failed
        server.batches.failed_line_rate = 0.0
        size, streamed, whole = await output_memory(server, args.output_mb)
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
    print(
        f"  a {size:.0f} MB output file ({args.output_mb * 200:,} lines): streamed and answered at a {streamed:.1f} MB "
        f"traced peak; read whole (content, lines, parsed) {whole:.0f} MB ({whole / streamed:.0f}x)"
    )


if __name__ == "__main__":
    asyncio.run(main())
