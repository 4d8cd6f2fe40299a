"""flock-core users: plug flock_llm's batch LLM engine into an existing flock-core agent.

Needs Python >= 3.12 and flock-core (`pip install 'flock_llm[flock]'`). Runs offline with flock_llm's
offline model unless FLOCK_LLM_MODEL (and the provider's API key) is set.
Run: python examples/flock_core/sentiment_plugin.py
"""

from __future__ import annotations

import asyncio

from flock import BatchSpec, Flock, flock_type
from pydantic import BaseModel

from flock_llm.integrations.flock_core import FlockBatchLLMEngine


@flock_type
class CustomerReview(BaseModel):
    review_id: str
    rating: int
    text: str


@flock_type
class SentimentTrendReport(BaseModel):
    review_count: int
    overall_sentiment: str
    summary: str


@flock_type
class ReviewSentiment(BaseModel):
    review_id: str
    label: str


async def main() -> None:
    flock = Flock("openai/gpt-4.1-mini")  # flock-core's own default model; our engine resolves its own
    (
        flock.agent("sentiment")
        .description("Find the sentiment trend across customer reviews")
        .consumes(CustomerReview, batch=BatchSpec(size=25))
        .publishes(SentimentTrendReport)
        .with_engines(FlockBatchLLMEngine())  # one LLM call per batch, with retries and fallbacks
    )
    (
        flock.agent("labels")
        .consumes(CustomerReview, batch=BatchSpec(size=25))
        .publishes(ReviewSentiment, fan_out=(1, 25))  # one output per review: declare the range
        .with_engines(FlockBatchLLMEngine(per_item=True))
    )
    for i in range(50):
        await flock.publish(CustomerReview(review_id=f"r{i}", rating=1 + i % 5, text=f"Review number {i}"))
    await flock.run_until_idle()
    reports = await flock.store.get_by_type(SentimentTrendReport)
    labels = await flock.store.get_by_type(ReviewSentiment)
    print(f"flock_llm inside flock-core: {len(reports)} trend reports "
          f"({', '.join(str(r.review_count) for r in reports)} reviews), {len(labels)} per-review labels")


if __name__ == "__main__":
    asyncio.run(main())
