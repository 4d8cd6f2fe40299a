"""Attacks on the call shell's promises from outside: a budget passed by retried calls under concurrency, a call
cancelled in the middle, bad `max_tokens=` values."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import respx
from llm_fakes import body, chat, error, item_ids
from shell_fakes import Provider, context, engine_for, provider
from test_call_shell import CountingEngine, Tally, run_batches
from test_llm_engine import reviews, run_batch

from flock_llm.engines._calls.models import load_litellm
from flock_llm.engines._calls.prices import CostLedger
from flock_llm.engines._calls.rate import PROCESS_WINDOWS, window_name
from flock_llm.engines._calls.record import Usage
from flock_llm.engines._calls.shell import Ask, CallShell, Settled
from flock_llm.engines.llm import LLMEngine
from flock_llm.errors import ConfigurationError

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")
_limits = itertools.count(90_001)


async def test_retried_calls_in_flight_never_pass_the_budget_by_more_than_one_calls_error() -> None:
    """Each of 8 concurrent calls times out once (its prompt is charged) and is then answered: before the fix each
    call cost its timed-out prompt on top of the worst case it held, 8 x $0.10 over a $0.50 budget."""
    timed_out: set[int] = set()

    async def transport(items: int) -> int:
        task = id(asyncio.current_task())
        await asyncio.sleep(0.01)
        if task not in timed_out:
            timed_out.add(task)
            raise TimeoutError("the transport timed out")
        return items

    # a call holds $0.15 (100 + 50 tokens at $1 per 1,000); answered it costs $0.11, a timed-out prompt $0.10
    engine = CountingEngine(transport, max_concurrent_requests=8, prices={"input": 1000.0, "output": 1000.0})
    engine.costs.ledger.budget_usd = 0.5
    await run_batches(engine, context(publishes=(Tally,)), batches=8, size=1)
    ledger = engine.costs.ledger
    assert ledger.in_flight_usd == pytest.approx(0.0)
    assert ledger.spent_usd <= 0.5 + 1e-9


async def test_a_call_cancelled_while_it_waits_for_a_slot_frees_its_minute_and_its_budget() -> None:
    """A call cancelled before its request was sent (it waited for the engine's only slot) held its tokens in the
    sliding minute for 60 s: the next call waited a minute for a request that never went out."""
    limit = next(_limits)
    gate = asyncio.Event()

    async def transport(items: int) -> int:
        await gate.wait()
        return items

    engine = CountingEngine(
        transport, max_concurrent_requests=1, tokens_per_minute=limit, prices={"input": 1.0, "output": 1.0}
    )
    engine.costs.ledger.budget_usd = 100.0
    shell = CallShell(engine, context(publishes=(Tally,)), Usage(), "custom/counter", load_litellm())
    ask = Ask("batch", 1, prompt_tokens=limit // 2 - 10, max_tokens=10)  # two calls fill the minute
    first = asyncio.create_task(shell.call(ask, lambda: transport(1), lambda n: Settled(ask.prompt_tokens, 1)))
    second = asyncio.create_task(shell.call(ask, lambda: transport(1), lambda n: Settled(ask.prompt_tokens, 1)))
    await asyncio.sleep(0.05)  # the first is sent and waits for its answer; the second waits for the slot
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    gate.set()
    assert await asyncio.wait_for(first, timeout=2) == 1
    third = shell.call(ask, lambda: transport(1), lambda n: Settled(ask.prompt_tokens, 1))
    assert await asyncio.wait_for(third, timeout=2) == 1  # the cancelled call's tokens were given back
    assert engine.costs.ledger.in_flight_usd == pytest.approx(0.0)
    assert [r.outcome for r in engine.calls].count("CancelledError") == 1


async def test_a_call_cancelled_while_its_request_is_out_keeps_what_the_provider_counted_and_frees_the_slot() -> None:
    limit = next(_limits)
    sent = asyncio.Event()

    async def hangs(items: int) -> int:
        sent.set()
        await asyncio.sleep(30)
        return items

    async def answers(items: int) -> int:
        return items

    engine = CountingEngine(
        hangs, max_concurrent_requests=1, tokens_per_minute=limit, prices={"input": 1000.0, "output": 1000.0}
    )
    shell = CallShell(engine, context(publishes=(Tally,)), Usage(), "custom/counter", load_litellm())
    ask = Ask("batch", 1, prompt_tokens=100, max_tokens=10)
    running = asyncio.create_task(shell.call(ask, lambda: hangs(1), lambda n: Settled(100, 1)))
    await asyncio.wait_for(sent.wait(), timeout=2)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    later = shell.call(ask, lambda: answers(2), lambda n: Settled(100, 1))
    assert await asyncio.wait_for(later, timeout=2) == 2  # the slot was freed
    window = PROCESS_WINDOWS.window(window_name(engine.costs.account, "custom/counter", "tokens"), limit)
    assert window.wait_for(limit - 220) == 0.0 and window.wait_for(limit - 219) > 0  # both requests' 110 counted
    # the provider read the cancelled request's prompt: charged like a timed-out one ($0.10), the later call $0.101
    assert engine.costs.ledger.spent_usd == pytest.approx(0.1 + 0.101)
    assert shell.usage.llm_calls == 2 and [r.outcome for r in engine.calls] == ["CancelledError", "ok"]


@pytest.mark.parametrize("setting", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -5, True, 2.5, "100"])
def test_a_max_tokens_that_no_provider_takes_is_refused_when_the_engine_is_built(setting: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        LLMEngine("openai/fake-model", **{setting: value})


def test_a_dspy_max_tokens_that_no_provider_takes_is_refused_when_the_engine_is_built() -> None:
    from flock_llm.engines.dspy import DSPyEngine

    with pytest.raises(ConfigurationError, match="max_tokens"):
        DSPyEngine("openai/fake-model", max_tokens=0)


async def test_flex_refused_until_flex_wait_goes_the_standard_way_within_the_limits() -> None:
    """A flex tier that is never available: each refusal is a paced request, given up after `flex_wait`, then the
    batch is answered the standard way; one request at a time throughout."""
    with provider("flex") as fake:
        fake.flex_busy_s = 3_600.0
        engine = engine_for("flex", fake, max_concurrent_requests=1, requests_per_minute=1200)
        engine.route.wait = 0.3  # type: ignore[attr-defined]  # flex_wait
        results = await asyncio.wait_for(run_batches(engine, context(), batches=2, size=2), timeout=10)
    assert not [f for r in results for f in r.failures] and sum(len(r.outputs) for r in results) == 4
    assert sum(int(r.usage["flex_fallbacks"]) for r in results) == 2 and fake.flex_refused >= 2
    assert fake.peak_in_flight == 1 and engine.limiter.started == fake.chat_requests
    assert sum(int(r.usage["llm_calls"]) for r in results) == fake.chat_requests


async def test_two_engines_sharing_a_flock_budget_concurrently_stay_within_it() -> None:
    budget = CostLedger(0.01)
    with Provider(latency_s=0.02, per_item_latency_s=0.0, long_answers=20_000) as fake:
        prices = {"input": 1.0, "output": 4.0}
        engines = [engine_for(path, fake, prices=prices) for path in ("standard", "dspy")]
        ctx = context(budget=budget)
        runs = [run_batches(engine, ctx, batches=6, size=3) for engine in engines]
        results = [r for rs in await asyncio.gather(*runs) for r in rs]
    assert budget.refused_calls >= 1 and 0 < budget.spent_usd <= 0.01
    assert budget.in_flight_usd == pytest.approx(0.0)
    assert sum(int(r.usage["llm_calls"]) for r in results) == fake.chat_requests


async def test_a_transport_error_that_is_no_http_error_is_recorded_once_and_costs_nothing() -> None:
    async def broken(items: int) -> int:
        raise TypeError("acompletion() got an unexpected keyword argument 'temprature'")

    engine = CountingEngine(broken, prices={"input": 1000.0, "output": 1000.0})
    engine.costs.ledger.budget_usd = 1.0
    (result,) = await run_batches(engine, context(publishes=(Tally,)), batches=1, size=1)
    assert result.failures and not result.outputs
    assert [r.outcome for r in engine.calls] == ["TypeError"]  # not retried, recorded once
    assert engine.costs.ledger.in_flight_usd == 0.0 and engine.costs.ledger.spent_usd == 0.0
    assert engine.limiter.started == 1


async def test_dspy_with_a_tokens_minute_smaller_than_one_call_still_sends_it_alone() -> None:
    """A call bigger than `tokens_per_minute` waits for an empty minute and goes alone: it does not hang."""
    with provider("dspy") as fake:
        engine = engine_for("dspy", fake, tokens_per_minute=10)
        (result,) = await asyncio.wait_for(run_batches(engine, context(), batches=1, size=2), timeout=10)
    assert not result.failures and len(result.outputs) == 2 and fake.chat_requests == 1


async def test_a_call_the_budget_has_room_for_once_the_calls_in_flight_settle_waits_for_them() -> None:
    """Six batches flush at once under a $0.50 budget; a call holds $0.15 and costs $0.11. Three fit at once; the
    others were refused for good although spending after the first three left room for one more: now a call that
    fits what is spent waits for the calls in flight, and is refused only when it cannot fit even then."""

    async def transport(items: int) -> int:
        await asyncio.sleep(0.02)
        return items

    engine = CountingEngine(transport, max_concurrent_requests=8, prices={"input": 1000.0, "output": 1000.0})
    engine.costs.ledger.budget_usd = 0.5
    results = await asyncio.wait_for(run_batches(engine, context(publishes=(Tally,)), batches=6, size=1), timeout=5)
    answered = [o for r in results for o in r.outputs]
    refused = [f for r in results for f in r.failures]
    assert len(answered) == 4 and len(refused) == 2 and {f.stage for f in refused} == {"budget"}
    assert engine.costs.ledger.spent_usd == pytest.approx(0.44) and engine.costs.ledger.in_flight_usd == 0.0


async def test_a_request_the_http_client_refused_to_send_is_not_counted_as_one() -> None:
    """`temperature=object()` cannot be sent (litellm: "not JSON serializable"): the failure says nothing was sent,
    and usage said one request although the provider saw none."""
    with provider("standard") as fake:
        engine = engine_for("standard", fake, temperature=object(), prices={"input": 1.0, "output": 1.0})
        (result,) = await run_batches(engine, context(), batches=1, size=2)
    assert result.failures and "nothing was sent" in result.failures[0].error
    assert fake.chat_requests == 0 and result.usage["llm_calls"] == 0
    assert len(engine.calls) == 1 and engine.costs.ledger.in_flight_usd == 0.0


async def test_a_request_sent_again_in_the_next_format_is_paced_like_any_request(openai: respx.MockRouter) -> None:
    """A server rejecting json_schema: the request sent again with json_object went out inside the first one's
    slot, without waiting for the requests-per-minute pacing or the tokens minute (the server saw 2 requests, the
    limiter started 1)."""

    def answer(request: object) -> object:
        sent = body(request)["response_format"]  # type: ignore[arg-type]
        if sent["type"] == "json_schema":
            return error(500, "Invalid request: response_format: 'json_schema' not in ('text', 'json_object')")
        ids = item_ids(request)  # type: ignore[arg-type]
        return chat({"results": {i: {"review_id": f"r-{i}", "label": "positive"} for i in ids}})

    route = openai.post("http://127.0.0.1:8998/v1/chat/completions").mock(side_effect=answer)
    limit = next(_limits)
    engine = LLMEngine(
        "openai/smollm2", per_item=True, api_base="http://127.0.0.1:8998/v1", api_key="sk-local",
        requests_per_minute=1200, tokens_per_minute=limit,
    )  # fmt: skip
    flock, _ = await run_batch(engine, reviews(2), per_item=True, size=2)
    usage = flock.metrics().usage["sentiment"]
    assert route.call_count == 2 == usage["llm_calls"] and usage["format_fallbacks"] == 1
    assert engine.limiter.started == 2  # each request took its own start
    window = PROCESS_WINDOWS.window(window_name(engine.costs.account, "openai/smollm2", "tokens"), limit)
    assert len(window._entries) == 2  # type: ignore[attr-defined]  # each request counted in the minute
