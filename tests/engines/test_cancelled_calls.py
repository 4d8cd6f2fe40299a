"""A cancelled call is never sent: not even when a wait before it swallowed the cancellation (Python 3.11's
`asyncio.wait_for` does when the awaited thing finishes as the cancel comes; redis-py's commands use it, so a
DSPyEngine run cancelled while a shared Redis minute was full sent its call ~58 s later)."""

from __future__ import annotations

import asyncio

import pytest
from shell_fakes import batch, context, engine_for, provider

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")


class SwallowingWindows:
    """Shared windows whose wait ends without raising when its task is cancelled (as wait_for's race does)."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.settled: list[int] = []

    def window(self, name: str, limit: int) -> SwallowingWindows:
        return self

    async def acquire(self, amount: int) -> str:
        self.waiting.set()
        try:
            await asyncio.sleep(30)  # the full minute
        except asyncio.CancelledError:
            pass  # swallowed: the task goes on, still "cancelling"
        return "entry"

    async def settle(self, entry: str, actual: int) -> None:
        self.settled.append(actual)


@pytest.mark.parametrize("path", ["standard", "dspy"])
@pytest.mark.parametrize("limit", ["tokens_per_minute", "requests_per_minute"])
async def test_a_call_cancelled_while_a_shared_minute_is_full_is_never_sent(path: str, limit: str) -> None:
    windows = SwallowingWindows()
    with provider(path) as fake:
        engine = engine_for(path, fake, **{limit: 10_000})
        running = asyncio.create_task(engine.evaluate_batch(context(rate_windows=windows), batch(2)))
        await asyncio.wait_for(windows.waiting.wait(), timeout=10)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):  # before: the run went on and returned its answers
            await asyncio.wait_for(running, timeout=10)
        assert fake.chat_requests == 0
    assert windows.settled == ([0] if limit == "tokens_per_minute" else [1])  # its entry settled: no tokens sent
    assert [c.outcome for c in engine.calls] == ["CancelledError"]
    assert engine.costs.ledger.in_flight_usd == 0.0
