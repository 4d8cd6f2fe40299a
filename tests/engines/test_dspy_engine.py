"""DSPyEngine through a mocked OpenAI endpoint (respx; DSPy calls litellm): the same batch contract."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import respx
from conftest import references
from domain import CustomerReview, ReviewSentiment, SentimentTrendReport
from llm_fakes import OPENAI_URL, body, chat

from flock_llm import Artifact, FailureRecord, Flock
from flock_llm.engines._calls.breaker import BreakerPolicy
from flock_llm.engines._calls.rate import PROCESS_WINDOWS, window_name
from flock_llm.engines._calls.retry import RetryPolicy
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


PRICES = {"input": 1000.0, "output": 2000.0}  # USD per million tokens: an answered call (100 + 20 tokens) is $0.14


async def test_a_flock_budget_stops_dspy_calls_and_the_rest_become_budget_failure_records(
    openai: respx.MockRouter,
) -> None:
    report = {"review_count": 2, "average_rating": 3.0, "summary": "fine"}
    route = openai.post(OPENAI_URL).mock(return_value=chat({"report": report}))
    flock = Flock(env={}, budget_usd=1.5)
    engine = DSPyEngine("openai/gpt-4.1-mini", api_key=KEY, retry=FAST_RETRY, prices=PRICES, max_concurrent_requests=1)
    (
        flock.agent("sentiment")
        .consumes(CustomerReview, batch=BatchSpec(size=2, timeout=timedelta(seconds=30)))
        .publishes(SentimentTrendReport)
        .with_engines(engine)
        .max_concurrency(1)
    )
    published = await flock.publish_many(reviews(20))
    await flock.run_until_idle()
    budget = flock.budget
    assert budget is not None and budget.refused_calls >= 1 and 1 <= route.call_count == budget.calls < 10
    assert budget.spent_usd == pytest.approx(0.14 * route.call_count)  # settled with the real usage
    assert budget.spent_usd <= 1.5 and engine.costs.ledger.spent_usd == budget.spent_usd
    failures = await flock.store.get_by_type(FailureRecord)
    assert {f.stage for f in failures} == {"budget"} and "would pass the budget" in failures[0].error
    reports = await flock.store.get_by_type(SentimentTrendReport)
    assert len(reports) == route.call_count and sum(len(f.input_ids) for f in failures) == 20 - 2 * len(reports)
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}
    await flock.shutdown()


async def test_an_engine_budget_without_a_known_price_refuses_before_calling(openai: respx.MockRouter) -> None:
    route = openai.post(OPENAI_URL).mock(return_value=chat({"report": {"summary": "x"}}))
    flock, published = await run(
        DSPyEngine("openai/my-private-model", api_key=KEY, retry=FAST_RETRY, budget_usd=1.0), reviews(3)
    )
    (failure,) = await flock.store.get_by_type(FailureRecord)
    assert failure.stage == "budget" and "price of openai/my-private-model is unknown" in failure.error
    assert route.call_count == 0 and sorted(failure.input_ids) == sorted(a.id for a in published)


async def test_a_dspy_call_waits_while_the_tokens_per_minute_window_is_full(openai: respx.MockRouter) -> None:
    route = openai.post(OPENAI_URL).mock(
        return_value=chat({"report": {"review_count": 2, "average_rating": 3.0, "summary": "ok"}})
    )
    limit = 4_321  # a limit no other test uses: the window is this process's for model + limit
    engine = DSPyEngine("openai/gpt-4.1-mini", api_key=KEY, retry=FAST_RETRY, tokens_per_minute=limit)
    window = PROCESS_WINDOWS.window(window_name(engine.costs.account, "openai/gpt-4.1-mini", "tokens"), limit)
    held = await window.acquire(limit)  # another engine of this process has used the whole minute
    running = asyncio.create_task(run(engine, reviews(2)))
    await asyncio.sleep(0.3)
    assert route.call_count == 0 and not running.done()  # waiting for room, not failed
    await window.settle(held, 0)  # that call's real tokens: none; the minute has room again
    flock, _ = await asyncio.wait_for(running, timeout=10)
    assert route.call_count == 1 and len(await flock.store.get_by_type(SentimentTrendReport)) == 1
    asked = body(route.calls[0].request)["max_tokens"]
    assert 16 <= asked < 4_096  # the answer expected for the call, with head-room: not the model's whole limit
    # the call holds what a provider counts for it: its real prompt (100) and the max_tokens it allowed
    follow_up = await asyncio.wait_for(window.acquire(limit - 100 - asked), timeout=1)
    await window.settle(follow_up, 0)


async def test_with_a_sqlite_store_dspy_items_over_budget_stay_pending_for_the_next_run(
    openai: respx.MockRouter, tmp_path: Path
) -> None:
    route = openai.post(OPENAI_URL).mock(
        return_value=chat({"report": {"review_count": 2, "average_rating": 3.0, "summary": "fine"}})
    )
    url = f"sqlite:///{tmp_path / 'run.db'}"

    def budgeted(budget_usd: float) -> Flock:
        flock = Flock(env={}, store=url, budget_usd=budget_usd)
        engine = DSPyEngine("openai/gpt-4.1-mini", api_key=KEY, retry=FAST_RETRY, prices=PRICES)
        spec = BatchSpec(size=2, timeout=timedelta(seconds=30))
        flock.agent("sentiment").consumes(CustomerReview, batch=spec).publishes(SentimentTrendReport).with_engines(
            engine
        ).max_concurrency(1)
        return flock

    first = budgeted(1.6)  # a call reserves its worst case (prompt + max_tokens: about $1.3), pays $0.14
    await first.publish_many(reviews(12))
    await first.run_until_idle()
    await first.shutdown()
    paid_first = route.call_count
    assert 1 <= paid_first < 6 and await first.store.get_by_type(FailureRecord) == []
    assert first.metrics().counters["budget_stopped_runs"] >= 1
    second = budgeted(100.0)
    await second.start()
    await second.run_until_idle()
    assert len(await second.store.get_by_type(SentimentTrendReport)) == 6  # the rest, continued
    assert route.call_count == 6  # no batch paid for twice
    await second.shutdown()


async def test_dspy_calls_that_get_no_answer_give_their_budget_back(openai: respx.MockRouter) -> None:
    """A dead provider: every attempt fails. The inputs end in failure records, and nothing stays held against
    the budget (a held estimate would starve the calls after the outage)."""
    route = openai.post(OPENAI_URL).mock(return_value=httpx.Response(500, json={"error": {"message": "down"}}))
    flock = Flock(env={}, budget_usd=5.0)
    breaker = BreakerPolicy(max_outage=0.5, probe_interval=0.1)
    engine = DSPyEngine("openai/gpt-4.1-mini", api_key=KEY, retry=FAST_RETRY, prices=PRICES, breaker=breaker)
    flock, published = await run(engine, reviews(4), flock=flock)
    failures = await flock.store.get_by_type(FailureRecord)
    assert route.call_count >= 1 and sorted(i for f in failures for i in f.input_ids) == sorted(a.id for a in published)
    budget = flock.budget
    assert budget is not None and budget.spent_usd == 0.0 and budget.in_flight_usd == 0.0
    assert engine.costs.ledger.in_flight_usd == 0.0 and budget.calls >= 1
