"""A breaker probe when the calls waiting for it hold the whole budget: the probe must not wait for them (they wait
for it), or the engine waits out `max_outage` although the provider is back."""

from __future__ import annotations

import asyncio
from typing import Any

from shell_fakes import context

from flock_llm.engines import Ask, BreakerPolicy, ModelEngine, RetryPolicy, Settled

ONCE = RetryPolicy(attempts=1, base_delay=0.0, max_delay=0.0)


async def test_a_probe_is_sent_when_the_waiting_calls_hold_the_budget() -> None:
    engine = ModelEngine(
        retry=ONCE,
        prices={"input": 1.0, "output": 1.0},
        budget_usd=0.0004,  # two calls of 100 + 100 tokens hold it all
        breaker=BreakerPolicy(probe_interval=0.02, max_probe_interval=0.02, max_outage=30.0),
    )
    probes = 0

    async def probe() -> dict[str, Any]:
        nonlocal probes
        probes += 1
        return {"usage": {"prompt_tokens": 8, "completion_tokens": 1}}

    engine.probe_for = lambda model: probe  # type: ignore[method-assign]
    engine.guard.open(probe)  # the provider failed a moment ago

    async def send() -> dict[str, Any]:
        return {"usage": {"prompt_tokens": 50, "completion_tokens": 20}}

    async def one() -> Any:
        shell = engine.shell(context(), "openai/fake-model")
        return await shell.call(Ask("batch", 1, 100, 100), send, Settled.of_completion)

    replies = await asyncio.wait_for(asyncio.gather(one(), one()), timeout=5)  # before: waited out max_outage
    assert len(replies) == 2 and probes == 1
    assert engine.costs.ledger.spent_usd <= 0.0004
