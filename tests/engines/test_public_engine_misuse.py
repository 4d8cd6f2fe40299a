"""A third engine that misuses the call shell gets a clear error, and what it sent is still counted and held: a
negative or fractional count in its Ask, a `settled` function that returns something else than a Settled, a `send`
that is not a coroutine function."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from shell_fakes import context

from flock_llm.engines import Ask, CallShell, ModelEngine, Resend, RetryPolicy, Settled
from flock_llm.engines._calls.ask import MAX_RESENDS
from flock_llm.errors import ConfigurationError, ModelCallError

ONCE = RetryPolicy(attempts=1, base_delay=0.0, max_delay=0.0)


class Counting:
    """A transport that counts its requests (what the server saw)."""

    def __init__(self) -> None:
        self.sent = 0

    async def __call__(self) -> dict[str, Any]:
        self.sent += 1
        return {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}


def shell(**limits: Any) -> tuple[ModelEngine, CallShell]:
    engine = ModelEngine(retry=ONCE, prices={"input": 1.0, "output": 1.0}, budget_usd=1.0, **limits)
    return engine, engine.shell(context(), "openai/fake-model")


@pytest.mark.parametrize(
    ("field", "value"),
    [("prompt_tokens", -1_000_000), ("max_tokens", -5), ("items", 1.5), ("prompt_tokens", float("nan"))],
)
def test_an_ask_with_a_count_that_cannot_be_held_is_refused(field: str, value: object) -> None:
    """Before, Ask(prompt_tokens=-1_000_000) reserved a negative cost: it freed budget for every other call."""
    counts: dict[str, Any] = {"items": 1, "prompt_tokens": 10, "max_tokens": 10, field: value}
    with pytest.raises(ConfigurationError, match=rf"Ask\({field}=\.\.\.\)"):
        Ask("batch", **counts)


def test_an_ask_names_a_known_tier_and_a_kind() -> None:
    with pytest.raises(ConfigurationError, match="tier"):
        Ask("batch", 1, 10, 10, tier="cheap")
    with pytest.raises(ConfigurationError, match="kind"):
        Ask("", 1, 10, 10)


async def test_a_settled_function_returning_garbage_is_a_clear_error_and_the_request_is_still_counted() -> None:
    """Before, an AttributeError ('dict' object has no attribute 'requests') escaped: the answered request was not
    in the usage (usage != calls at the server) and its tokens-minute entry was never settled."""
    engine, calls = shell(tokens_per_minute=1_000)
    send = Counting()
    with pytest.raises(TypeError, match=r"`settled` function returned a dict.*Settled\.of_completion"):
        await calls.call(Ask("batch", 1, prompt_tokens=10, max_tokens=10), send, lambda reply: reply)
    assert send.sent == calls.usage.llm_calls == 1  # the request went out: it is counted once
    assert [c.outcome for c in engine.calls] == ["TypeError"]
    assert engine.costs.ledger.in_flight_usd == 0.0 and engine.costs.ledger.spent_usd > 0  # its prompt is charged


async def test_a_send_that_is_not_a_coroutine_function_is_a_clear_error() -> None:
    engine, calls = shell()

    def send() -> Settled:  # a plain function: never awaited before, "object Settled can't be used in 'await'"
        return Settled()

    with pytest.raises(TypeError, match=r"`send` must be a coroutine function \(async def\)"):
        await calls.call(Ask("batch", 1, prompt_tokens=10, max_tokens=10), send, lambda r: r)  # type: ignore[arg-type,return-value]
    assert [c.outcome for c in engine.calls] == ["TypeError"] and engine.costs.ledger.in_flight_usd == 0.0


async def test_a_transport_that_always_resends_stops_after_max_resends() -> None:
    """Before, a transport raising Resend on every request looped forever, unpaced, against the provider."""
    engine, calls = shell()
    sent = 0

    async def send() -> Settled:
        nonlocal sent
        sent += 1
        raise Resend("the server refused this form")

    with pytest.raises(ModelCallError, match=r"raised Resend 5 times in a row"):
        await asyncio.wait_for(calls.call(Ask("batch", 1, 10, 10), send, lambda r: r), timeout=5)
    assert sent == MAX_RESENDS + 1 == calls.usage.llm_calls  # every request counted
    assert [c.outcome for c in engine.calls] == ["ModelCallError"]
