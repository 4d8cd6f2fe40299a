"""DSPyEngine through a mocked OpenAI endpoint (respx; DSPy calls litellm): the same batch contract."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import httpx
import respx
from conftest import references
from domain import CustomerReview, ReviewSentiment, SentimentTrendReport
from llm_fakes import OPENAI_URL, body, chat

from flock_llm import Artifact, Flock
from flock_llm.engines._limits import RetryPolicy
from flock_llm.engines.dspy import DSPyEngine
from flock_llm.subscription import BatchSpec

FAST_RETRY = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0)
KEY = "sk-test-dspy-0123456789"


def reviews(n: int) -> list[CustomerReview]:
    return [CustomerReview(review_id=f"r{i}", rating=1 + i % 5, text=f"review text {i}") for i in range(n)]


def user_text(request: httpx.Request) -> str:
    return "\n".join(m["content"] for m in body(request)["messages"] if m["role"] == "user")


def dspy_item_ids(request: httpx.Request) -> list[str]:
    return re.findall(r'"item_id": "(i\d+)"', user_text(request))


async def run(
    engine: DSPyEngine,
    items: list[CustomerReview],
    *,
    per_item: bool = False,
    name: str = "sentiment",
    flock: Flock | None = None,
) -> tuple[Flock, list[Artifact]]:
    flock = flock or Flock(env={})
    (
        flock.agent(name)
        .description("Analyse customer reviews")
        .consumes(CustomerReview, batch=BatchSpec(size=len(items), timeout=timedelta(seconds=30)))
        .publishes(ReviewSentiment if per_item else SentimentTrendReport)
        .with_engines(engine)
    )
    published = await flock.publish_many(items)
    await flock.run_until_idle()
    return flock, published


async def test_report_mode_sends_every_item_and_publishes_one_report(openai: respx.MockRouter) -> None:
    report = {"review_count": 4, "average_rating": 2.5, "summary": "mixed"}
    route = openai.post(OPENAI_URL).mock(return_value=chat({"report": report}))
    flock, published = await run(DSPyEngine("openai/gpt-4.1-mini", api_key=KEY, retry=FAST_RETRY), reviews(4))
    assert route.call_count == 1
    assert dspy_item_ids(route.calls[0].request) == ["i1", "i2", "i3", "i4"]
    assert all(f"review text {i}" in user_text(route.calls[0].request) for i in range(4))
    (out,) = await flock.store.artifacts_by_type(SentimentTrendReport)
    assert out.as_type(SentimentTrendReport).summary == "mixed"
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}
    usage = flock.metrics().usage["sentiment"]
    assert (usage["llm_calls"], usage["prompt_tokens"], usage["completion_tokens"]) == (1, 100, 20)


async def test_per_item_mode_aligns_answers_by_id(openai: respx.MockRouter) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        ids = dspy_item_ids(request)
        results = [{"item_id": i, "output": {"review_id": f"for-{i}", "label": "ok"}} for i in reversed(ids)]
        return chat({"results": results})

    openai.post(OPENAI_URL).mock(side_effect=answer)
    flock, published = await run(
        DSPyEngine("openai/gpt-4.1-mini", per_item=True, api_key=KEY, retry=FAST_RETRY), reviews(5), per_item=True
    )
    outputs = await flock.store.artifacts_by_type(ReviewSentiment)
    assert {o.derived_from: o.as_type(ReviewSentiment).review_id for o in outputs} == {
        (a.id,): f"for-i{n}" for n, a in enumerate(published, 1)
    }
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}


async def test_a_user_signature_and_module(openai: respx.MockRouter) -> None:
    import dspy

    class TrendSignature(dspy.Signature):
        """Summarise the sentiment of a batch of reviews."""

        reviews: list[CustomerReview] = dspy.InputField()
        report: SentimentTrendReport = dspy.OutputField()

    report = {"review_count": 3, "average_rating": 4.0, "summary": "happy customers"}
    route = openai.post(OPENAI_URL).mock(return_value=chat({"reasoning": "counted them", "report": report}))
    engine = DSPyEngine(
        "openai/gpt-4.1-mini", module=dspy.ChainOfThought(TrendSignature), api_key=KEY, retry=FAST_RETRY
    )
    flock, published = await run(engine, reviews(3))
    sent = user_text(route.calls[0].request)
    assert "[[ ## reviews ## ]]" in sent and "review text 2" in sent
    (out,) = await flock.store.get_by_type(SentimentTrendReport)
    assert out.summary == "happy customers"
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}

    route.mock(return_value=chat({"report": {**report, "summary": "via signature"}}))
    flock, published = await run(
        DSPyEngine("openai/gpt-4.1-mini", signature=TrendSignature, api_key=KEY, retry=FAST_RETRY), reviews(3)
    )
    assert [r.summary for r in await flock.store.get_by_type(SentimentTrendReport)] == ["via signature"]


async def test_malformed_answers_fall_back_and_lose_nothing(openai: respx.MockRouter) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        ids = dspy_item_ids(request)
        if len(ids) > 1:
            return chat("this is not JSON at all")
        return chat({"results": [{"item_id": ids[0], "output": {"review_id": "solo", "label": "fine"}}]})

    openai.post(OPENAI_URL).mock(side_effect=answer)
    flock, published = await run(
        DSPyEngine("openai/gpt-4.1-mini", per_item=True, api_key=KEY, retry=FAST_RETRY), reviews(4), per_item=True
    )
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 4
    usage = flock.metrics().usage["sentiment"]
    assert usage["repairs"] == 1 and usage["splits"] >= 1
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}


async def test_two_engines_with_different_models_share_no_global_state(openai: respx.MockRouter) -> None:
    import dspy

    models_seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        models_seen.append(body(request)["model"])
        return chat({"report": {"review_count": 2, "average_rating": 3.0, "summary": body(request)["model"]}})

    openai.post(OPENAI_URL).mock(side_effect=answer)
    flock = Flock(env={})
    await run(DSPyEngine("openai/gpt-4.1-mini", api_key=KEY, retry=FAST_RETRY), reviews(2), name="a", flock=flock)
    await run(DSPyEngine("openai/gpt-4o-mini", api_key=KEY, retry=FAST_RETRY), reviews(2), name="b", flock=flock)
    by_agent = {
        a.produced_by: a.as_type(SentimentTrendReport).summary
        for a in await flock.store.artifacts_by_type(SentimentTrendReport)
    }
    assert by_agent == {"a": "gpt-4.1-mini", "b": "gpt-4o-mini"}
    assert sorted(set(models_seen)) == ["gpt-4.1-mini", "gpt-4o-mini"]
    assert dspy.settings.lm is None  # nothing configured globally


async def test_dspy_engine_offline_end_to_end() -> None:
    flock, published = await run(DSPyEngine(per_item=True), reviews(6), per_item=True)
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 6
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}
    assert json.loads(json.dumps(flock.metrics().usage["sentiment"]))["model"] == "flock-offline/placeholder"
