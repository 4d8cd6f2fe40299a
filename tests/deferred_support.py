"""Shared by the deferred-tier tests: a labelling Flock on the fake server's Batch API, reviews, and a run."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
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


def killed_between_upload_and_creation(server: FakeOpenAIServer, command: list[str], env: Mapping[str, str]) -> None:
    """Run the worker `command` until it has uploaded a job's file and asked for the job, then SIGKILL it before
    the provider creates the job (also when the wait fails), and let the held creation fail: the provider never
    created that job."""
    server.batches.completion_delay_s = 0.3
    server.batches.hold_creation = True  # the upload succeeds; the job's creation waits for the kill
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=dict(env))  # noqa: S603 - the test's worker
    try:
        deadline = time.monotonic() + 120  # a worker that starts slowly on a busy machine (15 s seen)
        while server.batches.creations_held < 1 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert server.batches.files_uploaded >= 1 and server.batches.creations_held >= 1
    finally:
        first.send_signal(signal.SIGKILL)  # between the upload and the job's creation (and on failure)
        first.wait(timeout=30)
    server.batches.release_creation()
