"""The offline model derives its answers from the items: counts, aggregates, sentiment, themes, summaries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from domain import CustomerReview, ReviewSentiment
from pydantic import BaseModel, Field

from flock_llm import Flock, flock_type
from flock_llm.engines.dspy import DSPyEngine
from flock_llm.engines.llm import LLMEngine
from flock_llm.engines.offline.derive import derive_value
from flock_llm.subscription import BatchSpec

pytest.importorskip("vaderSentiment", reason="the offline extra (make test installs it)")
pytest.importorskip("yake", reason="the offline extra (make test installs it)")


@flock_type
class DerivedTrend(BaseModel):
    review_count: int
    average_rating: float
    max_rating: int
    overall_sentiment: str = Field(description="positive, mixed or negative")
    top_themes: list[str]
    summary: str


REVIEWS = [
    CustomerReview(review_id="r1", rating=5, text="The battery life is excellent and the screen is gorgeous."),
    CustomerReview(review_id="r2", rating=4, text="Great battery, fast shipping. Love it."),
    CustomerReview(review_id="r3", rating=1, text="Terrible: the screen cracked after a week. Awful support."),
    CustomerReview(review_id="r4", rating=5, text="Der Akku hält ewig, sehr zufrieden."),
]


async def run(engine: object, output: type[BaseModel]) -> list[BaseModel]:
    flock = Flock(env={})
    flock.agent("a").consumes(CustomerReview, batch=BatchSpec(size=4, timeout=timedelta(seconds=5))).publishes(
        output
    ).with_engines(engine)  # type: ignore[arg-type]
    await flock.publish_many(REVIEWS)
    await flock.run_until_idle()
    found = await flock.store.get_by_type(output)
    await flock.shutdown()
    return found


@pytest.mark.parametrize("engine", [LLMEngine(), DSPyEngine()], ids=["llm", "dspy"])
async def test_a_report_is_derived_from_the_items(engine: object) -> None:
    (report,) = await run(engine, DerivedTrend)
    assert isinstance(report, DerivedTrend)
    assert report.review_count == 4 and report.average_rating == 3.75 and report.max_rating == 5
    assert report.overall_sentiment == "positive"
    assert "battery" in " ".join(report.top_themes).lower()
    assert "placeholder" not in report.summary and "4 items" in report.summary


@pytest.mark.parametrize("engine", [LLMEngine(per_item=True), DSPyEngine(per_item=True)], ids=["llm", "dspy"])
async def test_per_item_labels_follow_each_items_text_or_its_rating(engine: object) -> None:
    labels = {r.review_id: r.label for r in await run(engine, ReviewSentiment)}  # type: ignore[attr-defined]
    assert labels == {"r1": "positive", "r2": "positive", "r3": "negative", "r4": "positive"}  # r4: German, rating 5


def test_fields_it_cannot_derive_keep_their_placeholder() -> None:
    assert derive_value("colour", {"type": "string"}, [{"text": "red"}]) is None
    assert derive_value("average_weight", {"type": "number"}, [{"rating": 3}]) is None
    assert derive_value("label", {"type": "string", "enum": ["good", "bad"]}, [{"text": "awful"}]) == "good"
