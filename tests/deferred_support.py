"""Shared by the deferred-tier tests: a labelling Flock on the fake server's Batch API, reviews, and a run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

from conftest import references
from domain import CustomerReview

from flock_llm import Flock
from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.engines._tiers.jobs import DeferredQueue
from flock_llm.engines.llm import DeferredPolicy, LLMEngine
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer

PRICES = {"input": 100.0, "output": 200.0}
QUICK_JOBS = DeferredPolicy(job_size=6, job_wait=0.2, poll_interval=0.05, max_poll_interval=0.2)


def quick_batch_server() -> Iterator[FakeOpenAIServer]:
    """The fake server answering at once, its batch jobs done 0.1 s after creation (the tests' `server`)."""
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as fake:
        fake.batches.completion_delay_s = 0.1
        yield fake


def labeller(server: FakeOpenAIServer, **kwargs: object) -> Flock:
    from domain import ReviewSentiment

    engine = LLMEngine(
        "openai/fake-model",
        per_item=True,
        api_base=server.api_base,
        api_key="sk-local-fake",
        structured_output=True,
        prices=PRICES,
        retry=RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, max_retry_after=0.05),
        **kwargs,
    )
    flock = Flock(env={})
    (
        flock.agent("sentiment")
        .consumes(CustomerReview, batch=BatchSpec(size=5, timeout=timedelta(seconds=5)))
        .publishes(ReviewSentiment)
        .with_engines(engine)
        .max_concurrency(20)
    )
    return flock


def reviews(n: int) -> list[CustomerReview]:
    return [CustomerReview(review_id=f"r{i}", rating=1 + i % 5, text=f"review {i}: solid kettle") for i in range(n)]


async def run(flock: Flock, n: int) -> tuple[dict[str, object], list[object]]:
    published = await flock.publish_many(reviews(n))
    await flock.run_until_idle()
    await flock.shutdown()
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}
    return flock.metrics().usage["sentiment"], published


async def queue_settled(jobs: DeferredQueue, timeout: float = 30.0) -> None:
    """Wait until `jobs` has no job under way: a job's poller goes on after it answered its lines (it reads the rest
    of the output and the error file, then marks the job finished in the journal and prunes it), so a fixed sleep
    after an answer races it on a busy machine."""
    async with asyncio.timeout(timeout):
        while jobs._tasks:
            await asyncio.wait(set(jobs._tasks))
