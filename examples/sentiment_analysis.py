"""Sentiment analysis at scale: 100 customer reviews in ONE LLM call.

Uses the default engine (LLMEngine): the offline model unless FLOCK_LLM_MODEL and an API key are set.
Run: python examples/sentiment_analysis.py
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

from _timescale import scaled
from pydantic import BaseModel, Field

from flock_llm import Flock, flock_type
from flock_llm.subscription import BatchSpec


@flock_type
class CustomerReview(BaseModel):
    review_id: str
    rating: int
    text: str


@flock_type
class SentimentTrendReport(BaseModel):
    review_count: int = Field(description="how many reviews the report covers")
    overall_sentiment: str = Field(description="positive, mixed or negative")
    top_complaints: list[str]
    top_praise: list[str]


async def main() -> None:
    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / "reviews.jsonl").open(encoding="utf-8")]
    async with Flock() as flock:
        (
            flock.agent("sentiment")
            .description("Find the sentiment trend in a batch of customer reviews")
            .consumes(
                CustomerReview,
                batch=BatchSpec(
                    size=100,  # Analyze 100 reviews together
                    timeout=scaled(timedelta(minutes=5)),  # Flush every 5 min
                ),
            )
            .publishes(SentimentTrendReport)
        )
        await flock.publish_many(CustomerReview(review_id=r["id"], rating=r["rating"], text=r["text"]) for r in rows)
        await flock.run_until_idle()
    reports = await flock.store.get_by_type(SentimentTrendReport)
    usage = flock.metrics().usage["sentiment"]
    for report in reports:
        print(f"report over {report.review_count} reviews: {report.overall_sentiment}")
    print(
        f"{len(rows)} reviews -> {usage['llm_calls']} LLM calls (unbatched: {len(rows)}); prompt tokens "
        f"{usage['prompt_tokens']:,} vs {usage['per_item_prompt_tokens']:,} one review per call; model {usage['model']}"
    )


if __name__ == "__main__":
    asyncio.run(main())
