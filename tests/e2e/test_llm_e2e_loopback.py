"""End to end over real HTTP: LLMEngine against the fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import references
from domain import CustomerReview, ReviewSentiment, SentimentTrendReport

from flock_llm import FailureRecord, Flock
from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.engines.llm import LLMEngine
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")


async def test_batches_over_loopback_http_with_injected_faults_lose_nothing() -> None:
    with FakeOpenAIServer(
        latency_s=0.0, per_item_latency_s=0.0, malformed_rate=0.2, rate_limit_rate=0.1, seed=3
    ) as server:
        common = {
            "api_base": server.api_base,
            "api_key": "sk-local-fake",
            "structured_output": True,
            "retry": RetryPolicy(attempts=4, base_delay=0.0, max_delay=0.0, max_retry_after=0.06),
        }
        flock = Flock(env={})
        spec = BatchSpec(size=10, timeout=timedelta(seconds=5))
        (
            flock.agent("sentiment")
            .consumes(CustomerReview, batch=spec)
            .publishes(ReviewSentiment)
            .with_engines(LLMEngine("openai/fake", per_item=True, **common))
        )
        (
            flock.agent("trends")
            .consumes(CustomerReview, batch=spec)
            .publishes(SentimentTrendReport)
            .with_engines(LLMEngine("openai/fake", **common))
        )
        published = await flock.publish_many(
            CustomerReview(review_id=f"r{i}", rating=1 + i % 5, text=f"review number {i}") for i in range(60)
        )
        await flock.run_until_idle()
        await flock.shutdown()
    assert server.malformed_sent + server.rate_limited_sent > 0
    for agent in ("sentiment", "trends"):
        assert await references(flock, agent) == {a.id: 1 for a in published}
    by_id = {a.id: a.as_type(CustomerReview).review_id for a in published}
    outputs = await flock.store.artifacts_by_type(ReviewSentiment)
    for output in outputs:  # each answer landed on its own review (the server echoes the item's review_id)
        assert output.as_type(ReviewSentiment).review_id == by_id[output.derived_from[0]]
    failures = await flock.store.get_by_type(FailureRecord)
    assert len(outputs) + sum(len(f.input_ids) for f in failures if f.agent == "sentiment") == 60
    reports = await flock.store.artifacts_by_type(SentimentTrendReport)
    assert 6 <= len(reports) and sum(len(r.derived_from) for r in reports) <= 60  # six batches, maybe some split
