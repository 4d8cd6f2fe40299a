"""Tokens and money against a fake provider over loopback HTTP: context planning, static prompts (cached prefix),
cached-token accounting, budgets, and per-minute token limits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import respx
from conftest import references
from domain import CustomerReview, ReviewSentiment

from flock_llm import BudgetExceededError, FailureRecord, Flock
from flock_llm.engines._calls.prices import CostLedger, TokenPrices
from flock_llm.engines._calls.rate import LocalWindow
from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.engines.llm import BreakerPolicy, LLMEngine
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer

FAST = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, max_retry_after=0.05)
PRICES = {"input": 1000.0, "output": 2000.0, "cached_input": 250.0}  # USD per million: a call costs ~ $0.5


pytestmark = pytest.mark.usefixtures("litellm_clients_closed")


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as fake:
        yield fake


def engine(server: FakeOpenAIServer, **kwargs: object) -> LLMEngine:
    settings: dict[str, object] = {"per_item": True, "api_base": server.api_base, "api_key": "sk-local-fake"}
    return LLMEngine("openai/fake-model", retry=FAST, structured_output=True, **{**settings, **kwargs})


def reviews(n: int, words: int = 8) -> list[CustomerReview]:
    return [
        CustomerReview(review_id=f"r{i}", rating=1 + i % 5, text=" ".join(["solid kettle, fast delivery"] * words))
        for i in range(n)
    ]


def sentiment_flock(agent_engine: LLMEngine, spec: BatchSpec, concurrency: int = 2, **flock_args: object) -> Flock:
    flock = Flock(env={}, **flock_args)  # type: ignore[arg-type]
    (
        flock.agent("sentiment")
        .consumes(CustomerReview, batch=spec)
        .publishes(ReviewSentiment)
        .with_engines(agent_engine)
        .max_concurrency(concurrency)
    )
    return flock


async def test_batches_sized_by_auto_tokens_fit_the_context_and_no_answer_is_cut(server: FakeOpenAIServer) -> None:
    server.context_limit = 3_000
    flock = sentiment_flock(
        engine(server, max_input_tokens=3_000, max_output_tokens=1_500),
        BatchSpec(size=100, timeout=timedelta(seconds=5), max_tokens="auto"),
    )
    published = await flock.publish_many(reviews(60, words=12))
    await flock.run_until_idle()
    await flock.shutdown()
    usage = flock.metrics().usage["sentiment"]
    assert flock.metrics().flush_counts.get("tokens", 0) >= 2  # the token budget, not the size, closed batches
    assert usage["overflow_splits"] == 0 and usage["truncated_answers"] == 0
    assert server.context_rejected == 0 and server.truncated_sent == 0
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 60


async def test_a_batch_over_the_context_is_split_before_sending_and_answers_get_room(server: FakeOpenAIServer) -> None:
    server.context_limit = 2_000
    flock = sentiment_flock(engine(server, max_input_tokens=2_000), BatchSpec(size=40, timeout=timedelta(seconds=5)))
    published = await flock.publish_many(reviews(40, words=10))
    await flock.run_until_idle()
    usage = flock.metrics().usage["sentiment"]
    assert usage["overflow_splits"] >= 1 and server.context_rejected == 0  # split here, never refused there
    assert server.truncated_sent == 0  # each request asked for the room its answer needs (max_tokens)
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}
    await flock.shutdown()


async def test_the_system_prompt_and_schema_repeat_byte_for_byte_and_cached_tokens_are_counted(
    server: FakeOpenAIServer,
) -> None:
    server.cache_min_tokens = 128
    flock = sentiment_flock(
        engine(server, prices=PRICES), BatchSpec(size=7, timeout=timedelta(milliseconds=50))
    )  # batches of 7, then a partial one of another size
    await flock.publish_many(reviews(30))
    await flock.run_until_idle()
    await flock.shutdown()
    assert server.requests >= 5 and len(server.prefixes) == 1  # one prefix across batches of different sizes
    usage = flock.metrics().usage["sentiment"]
    assert usage["cached_prompt_tokens"] == server.cached_tokens_total > 0
    # the cost counts cached tokens at the cached price: less than the same tokens at the full price
    full = TokenPrices(**{k: v for k, v in PRICES.items() if k != "cached_input"})
    undiscounted = full.cost(prompt=usage["prompt_tokens"], completion=usage["completion_tokens"])
    assert usage["cost_usd"] == pytest.approx(
        undiscounted - usage["cached_prompt_tokens"] * (PRICES["input"] - PRICES["cached_input"]) / 1e6
    )


async def test_the_budget_stops_calls_and_the_rest_become_budget_failure_records_in_memory(
    server: FakeOpenAIServer,
) -> None:
    flock = sentiment_flock(
        engine(server, prices=PRICES, max_concurrent_requests=1),
        BatchSpec(size=5, timeout=timedelta(seconds=5)),
        concurrency=1,
        budget_usd=4.0,
    )
    published = await flock.publish_many(reviews(40))
    await flock.run_until_idle()
    await flock.shutdown()
    budget = flock.budget
    assert budget is not None and budget.refused_calls >= 1
    assert budget.spent_usd <= 4.0  # each call reserved its worst case (prompt + max_tokens): never past
    failures = await flock.store.get_by_type(FailureRecord)
    assert failures and {f.stage for f in failures} == {"budget"} and "would pass the budget" in failures[0].error
    labelled = len(await flock.store.get_by_type(ReviewSentiment))
    assert 0 < labelled < 40 and labelled + sum(len(f.input_ids) for f in failures) == 40
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}


async def test_with_a_sqlite_store_items_over_budget_stay_pending_for_the_next_run(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'run.db'}"
    spec = BatchSpec(size=5, timeout=timedelta(seconds=5))
    first = sentiment_flock(engine(server, prices=PRICES, budget_usd=4.0), spec, concurrency=1, store=url)
    await first.publish_many(reviews(20))
    await first.run_until_idle()
    await first.shutdown()
    done_first = len(await first.store.get_by_type(ReviewSentiment))
    assert 0 < done_first < 20 and await first.store.get_by_type(FailureRecord) == []
    assert first.metrics().counters["budget_stopped_runs"] >= 1
    second = sentiment_flock(engine(server, prices=PRICES, budget_usd=100.0), spec, store=url)
    await second.start()
    await second.run_until_idle()
    await second.shutdown()
    assert len(await second.store.get_by_type(ReviewSentiment)) == 20  # the rest, continued; none twice


async def test_a_budget_without_a_known_price_refuses_clearly(server: FakeOpenAIServer) -> None:
    flock = sentiment_flock(engine(server, budget_usd=5.0), BatchSpec(size=3, timeout=timedelta(seconds=5)))
    await flock.publish_many(reviews(3))
    await flock.run_until_idle()
    (failure,) = await flock.store.get_by_type(FailureRecord)
    assert failure.stage == "budget" and "price of openai/fake-model is unknown" in failure.error
    assert server.requests == 0
    await flock.shutdown()


def test_cost_ledger_and_prices_refuse_bad_input_and_hold_estimates() -> None:
    with pytest.raises(Exception, match="budget_usd"):
        CostLedger(-1)
    with pytest.raises(Exception, match="prices"):
        LLMEngine(prices={"input": 1.0})
    ledger = CostLedger(1.0)
    ledger.reserve(0.6)
    with pytest.raises(BudgetExceededError):
        ledger.reserve(0.5)  # 0.6 in flight + 0.5 would pass 1.0
    ledger.settle(0.6, 0.3)
    ledger.reserve(0.5)
    assert (ledger.spent_usd, ledger.in_flight_usd, ledger.refused_calls) == (0.3, 0.5, 1)


async def test_the_token_window_waits_for_room_and_keeps_real_usage() -> None:
    now = [0.0]
    window = LocalWindow(1_000, clock=lambda: now[0])
    first = await window.acquire(600)
    assert window.wait_for(600) == pytest.approx(60.0)  # 1,200 would pass 1,000 until the first entry expires
    await window.settle(first, 300)  # it really took 300
    assert window.wait_for(600) == 0.0
    now[0] = 30.0
    await window.acquire(600)
    assert window.wait_for(200) == pytest.approx(30.0)  # the 300 entry leaves at 60 s
    assert window.wait_for(5_000) > 0  # too big while others are in the window
    now[0] = 200.0
    assert window.wait_for(5_000) == 0.0  # alone in an empty window it goes


async def test_requests_stay_under_the_servers_tokens_per_minute_without_429s(server: FakeOpenAIServer) -> None:
    server.tokens_per_minute = 6_000
    flock = sentiment_flock(
        engine(server, tokens_per_minute=6_000, max_concurrent_requests=4),
        BatchSpec(size=5, timeout=timedelta(seconds=5)),
        concurrency=4,
    )
    await flock.publish_many(reviews(20))  # about 4 x 1,100 tokens: fits one minute
    await flock.run_until_idle()
    await flock.shutdown()
    assert server.tpm_rejected == 0 and server.peak_tokens_per_minute() <= 6_000
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 20


def test_anthropic_requests_carry_a_cache_breakpoint_after_the_system_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from flock_llm.engines._calls.models import load_litellm

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-real")
    monkeypatch.setenv("DISABLE_AIOHTTP_TRANSPORT", "True")
    monkeypatch.setattr(load_litellm(), "disable_aiohttp_transport", True)  # so respx sees the request
    answer = {"results": [{"item_id": "i1", "output": {"review_id": "r0", "label": "positive"}}]}
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": json.dumps(answer)}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 900, "output_tokens": 20, "cache_read_input_tokens": 700},
    }
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post("https://api.anthropic.com/v1/messages").mock(return_value=httpx.Response(200, json=message))
        flock = sentiment_flock(
            LLMEngine(
                "anthropic/claude-sonnet-4-20250514",
                per_item=True,
                retry=FAST,
                structured_output=False,
                breaker=BreakerPolicy(max_outage=1.0, probe_interval=0.2),
            ),
            BatchSpec(size=1, timeout=timedelta(seconds=5)),
        )

        async def run() -> None:
            await flock.publish_many(reviews(1))
            await flock.run_until_idle()
            await flock.shutdown()

        asyncio.run(run())
    sent = json.loads(route.calls[0].request.content)
    system = sent["system"]
    assert isinstance(system, list) and system[-1]["cache_control"] == {"type": "ephemeral"}
    usage = flock.metrics().usage["sentiment"]
    assert usage["cached_prompt_tokens"] == 700


async def test_with_a_redis_store_batches_over_budget_stay_pending_for_another_worker(
    server: FakeOpenAIServer, redis_url: str
) -> None:
    url = f"{redis_url}{'&' if '?' in redis_url else '?'}claim_timeout=1"
    spec = BatchSpec(size=5, timeout=timedelta(seconds=5))
    poor = sentiment_flock(engine(server, prices=PRICES, budget_usd=4.0), spec, concurrency=1, store=url)
    await poor.start()
    await poor.publish_many(reviews(20))
    deadline = time.monotonic() + 20
    while poor.metrics().counters.get("budget_stopped_runs", 0) < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert poor.metrics().counters["budget_stopped_runs"] >= 1
    labelled = len(await poor.store.get_by_type(ReviewSentiment))
    assert 0 < labelled < 20 and await poor.store.get_by_type(FailureRecord) == []
    await poor.shutdown()
    rich = sentiment_flock(engine(server, prices=PRICES, budget_usd=100.0), spec, store=url)
    await rich.start()  # takes over the released batches once their claims lapse
    while len(await rich.store.get_by_type(ReviewSentiment)) < 20 and time.monotonic() < deadline + 20:
        await asyncio.sleep(0.1)
    assert len(await rich.store.get_by_type(ReviewSentiment)) == 20
    assert await rich.store.get_by_type(FailureRecord) == []
    await rich.shutdown()
