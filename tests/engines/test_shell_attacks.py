"""Attacks on the call shell's promises from outside: a budget passed by retried calls under concurrency, a call
cancelled in the middle, bad `max_tokens=` values."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from shell_fakes import context
from test_call_shell import CountingEngine, Tally, run_batches

from flock_llm.engines._calls.models import load_litellm
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

    engine = CountingEngine(hangs, max_concurrent_requests=1, tokens_per_minute=limit)
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


@pytest.mark.parametrize("setting", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -5, True, 2.5, "100"])
def test_a_max_tokens_that_no_provider_takes_is_refused_when_the_engine_is_built(setting: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        LLMEngine("openai/fake-model", **{setting: value})


def test_a_dspy_max_tokens_that_no_provider_takes_is_refused_when_the_engine_is_built() -> None:
    from flock_llm.engines.dspy import DSPyEngine

    with pytest.raises(ConfigurationError, match="max_tokens"):
        DSPyEngine("openai/fake-model", max_tokens=0)
