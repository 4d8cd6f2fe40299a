"""A process for the deferred-tier durability test: labels reviews through provider batch jobs with a SQLite
store; killed by the test between the job's submission and its retrieval, then started again.

usage (DB: a SQLite path or a store URL): deferred_worker.py DB API_BASE publish COUNT [FIRST] | DB API_BASE recover

With FIRST, the first FIRST reviews are published alone and flush by timeout (0.5 s) before the rest come: a
restart must re-form that batch as it was, or it would ask different requests than the job it submitted.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from domain import CustomerReview, ReviewSentiment

from flock_llm import FailureRecord, Flock
from flock_llm.engines.llm import DeferredPolicy, LLMEngine
from flock_llm.subscription import BatchSpec


def define(db: str, api_base: str) -> Flock:
    flock = Flock(store=db if "://" in db else f"sqlite:///{db}", env={})  # a path, or a store URL
    engine = LLMEngine(
        "openai/fake-model",
        per_item=True,
        tier="batch",
        api_base=api_base,
        api_key="sk-local-fake",
        structured_output=True,
        deferred=DeferredPolicy(job_size=40, job_wait=30.0, quiet=1.0, poll_interval=0.1, max_poll_interval=0.3),
    )
    (
        flock.agent("sentiment")
        .consumes(CustomerReview, batch=BatchSpec(size=25, timeout=timedelta(seconds=0.5)))
        .publishes(ReviewSentiment)
        .with_engines(engine)
        .max_concurrency(50)
    )
    return flock


def reviews(start: int, stop: int) -> list[CustomerReview]:
    return [
        CustomerReview(review_id=f"r{i}", rating=1 + i % 5, text=f"review {i}: solid kettle")
        for i in range(start, stop)
    ]


async def main(db: str, api_base: str, command: str, count: int, first: int) -> None:
    flock = define(db, api_base)
    await flock.start()
    if command == "publish":
        if first:
            await flock.publish_many(reviews(0, first))
            await asyncio.sleep(1.0)  # their batch flushes by timeout meanwhile
        await flock.publish_many(reviews(first, count))
        print("published", flush=True)
    if command == "recover" and "://" in db:  # a shared store: the dead worker's items are reclaimed after its
        await asyncio.sleep(1.5)  # claim times out (the tests' Redis URLs set claim_timeout=1)
    await flock.run_until_idle()
    labels = await flock.store.get_by_type(ReviewSentiment)  # before the shutdown: a Redis store disconnects
    failures = await flock.store.get_by_type(FailureRecord)
    await flock.shutdown()
    print(f"done labels={len(labels)} failed={sum(len(f.input_ids) for f in failures)}", flush=True)


if __name__ == "__main__":
    numbers = [int(arg) for arg in sys.argv[4:]] + [0, 0]
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], numbers[0], numbers[1]))
