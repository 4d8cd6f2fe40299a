"""A third engine, written from flock_llm's public API only (`flock_llm.engines`): subclassing ModelEngine and
calling its provider through the call shell, it is paced by max_concurrent_requests, requests_per_minute and
tokens_per_minute (local and shared windows), waits behind the circuit breaker (whose probes are calls of the
shell too), is held by the budget and is recorded once (usage == the requests the server saw)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from domain import CustomerReview, ReviewSentiment
from shell_fakes import Provider, batch, context, until

from flock_llm.engines import (
    Ask,
    BreakerPolicy,
    CostLedger,
    EngineContext,
    EvalInputs,
    EvalResult,
    ItemFailure,
    ModelEngine,
    Output,
    RateWindow,
    RetryPolicy,
    Settled,
    load_litellm,
)

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")
FAST = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0, max_retry_after=0.05)
_ports = itertools.count()


class ReviewCounter(ModelEngine):
    """One model call per batch: the provider is asked about the batch's reviews; each review gets a sentiment."""

    def __init__(self, fake: Provider, **limits: Any) -> None:
        self.settings = {"api_base": fake.api_base, "api_key": "sk-local-fake"}
        super().__init__(retry=FAST, timeout=5.0, settings=self.settings, **limits)

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        reviews = inputs.all_as(CustomerReview)
        ids = [a.id for a in inputs.artifacts]
        shell = self.shell(ctx, "openai/fake-model")
        messages = [{"role": "user", "content": " ".join(r.text for r in reviews)}]

        async def send() -> Any:
            return await load_litellm().acompletion(
                model="openai/fake-model", messages=messages, max_tokens=50, max_retries=0, **self.settings
            )

        try:
            await shell.call(Ask("batch", len(reviews), prompt_tokens=100, max_tokens=50), send, Settled.of_completion)
        except Exception as exc:  # noqa: BLE001 - any call error (budget, provider) becomes the items' failure
            return EvalResult(failures=(ItemFailure.from_exception(exc, ids),), usage=shell.usage.as_dict())
        sentiments = (ReviewSentiment(review_id=r.review_id, label="positive") for r in reviews)
        outputs = tuple(Output(s, (i,)) for s, i in zip(sentiments, ids, strict=True))
        return EvalResult(outputs=outputs, usage=shell.usage.as_dict())


async def run(engine: ReviewCounter, ctx: EngineContext, batches: int) -> list[EvalResult]:
    return list(await asyncio.gather(*(engine.evaluate_batch(ctx, batch(2, first=2 * n)) for n in range(batches))))


def calls(results: Sequence[EvalResult]) -> int:
    return sum(int(r.usage["llm_calls"]) for r in results)


def fake() -> Provider:
    return Provider(latency_s=0.02, per_item_latency_s=0.0)


async def test_a_public_engine_is_paced_by_concurrency_and_requests_per_minute_and_recorded_once() -> None:
    with fake() as server:
        engine = ReviewCounter(server, max_concurrent_requests=1, requests_per_minute=1200)  # one per 50 ms
        results = await run(engine, context(), batches=5)
    assert not [f for r in results for f in r.failures]
    assert server.chat_requests == 5 and server.peak_in_flight == 1
    assert sum(server.gaps()) >= 0.05 * 4 - 0.05  # started one per 50 ms (arrivals jitter on a loaded machine)
    assert calls(results) == server.chat_requests == len(engine.calls)  # recorded once each
    assert {c.kind for c in engine.calls} == {"batch"}


class _Gate:
    """A shared RateWindows (what a Redis store's windows are to the engine): every window is full until opened."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.taken: list[tuple[str, int]] = []

    def window(self, name: str, limit: int) -> RateWindow:
        gate = self

        class Window:
            async def acquire(self, amount: int) -> str:
                await gate.open.wait()
                gate.taken.append((name, amount))
                return str(len(gate.taken))

            async def settle(self, entry: str, actual: int) -> None:
                return None

        return Window()


@pytest.mark.parametrize("limit", ["tokens_per_minute", "requests_per_minute"])
async def test_a_public_engine_waits_for_a_full_shared_minute(limit: str) -> None:
    gate = _Gate()
    with fake() as server:
        engine = ReviewCounter(server, **{limit: 10_000})
        running = asyncio.create_task(run(engine, context(rate_windows=gate), batches=3))
        await asyncio.sleep(0.3)
        assert server.chat_requests == 0 and not running.done()  # held by the shared window
        gate.open.set()
        results = await asyncio.wait_for(running, timeout=10)
    assert calls(results) == server.chat_requests == 3
    kind = "tokens" if limit == "tokens_per_minute" else "requests"
    taken = [amount for name, amount in gate.taken if name.endswith(kind)]
    assert taken == ([150] * 3 if kind == "tokens" else [1] * 3)  # a call holds its prompt + max_tokens


async def test_a_public_engine_is_held_by_its_local_tokens_minute() -> None:
    with fake() as server:
        engine = ReviewCounter(
            server, tokens_per_minute=250
        )  # 150 held per call, ~60 after its answer: 2 fit, the third waits
        running = asyncio.create_task(run(engine, context(), batches=3))
        await until(lambda: len(engine.calls) == 2)  # two calls answered (a fixed 0.5 s raced them on a busy machine)
        await asyncio.sleep(0.2)  # time for a third call that did not wait
        assert server.chat_requests == 2 and not running.done()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert [c.outcome for c in engine.calls] == ["ok", "ok", "CancelledError"]  # the waiting call, recorded


async def test_a_public_engine_waits_behind_its_breaker_and_its_probes_are_calls() -> None:
    with fake() as server:
        server.fail_status = 503  # the provider is down
        engine = ReviewCounter(server, breaker=BreakerPolicy(probe_interval=0.05, max_probe_interval=0.05))
        running = asyncio.create_task(run(engine, context(), batches=3))
        for _ in range(200):  # until the breaker opens (the first call also imports litellm: no fixed sleep)
            if engine.guard.opened or running.done():
                break
            await asyncio.sleep(0.05)
        await until(lambda: any(c.kind == "probe" for c in engine.calls))  # a probe failed while the calls wait
        assert engine.guard.opened == 1 and not running.done()  # the calls wait, the breaker probes
        failed_so_far = server.chat_requests
        server.fail_status = None
        results = await asyncio.wait_for(running, timeout=10)
    assert not [f for r in results for f in r.failures]
    probes = [c for c in engine.calls if c.kind == "probe"]
    assert len(probes) == engine.guard.probes >= 2 and probes[-1].outcome == "ok"
    assert sum(int(r.usage["probes"]) for r in results) == len(probes)  # each counted once, in a run that waited
    assert calls(results) == server.chat_requests > failed_so_far  # probes and failed attempts included


async def test_a_public_engine_is_held_by_the_budget() -> None:
    budget = CostLedger(0.2)  # the Flock's budget; a call's worst case is $0.15 (150 tokens at $1,000 per million)
    with fake() as server:
        engine = ReviewCounter(server, prices={"input": 1000.0, "output": 1000.0}, max_concurrent_requests=2)
        results = await run(engine, context(budget=budget), batches=6)
    refused = [f for r in results for f in r.failures]
    assert refused and {f.error_type for f in refused} == {"BudgetExceededError"}
    assert 0 < budget.spent_usd <= 0.2 and budget.in_flight_usd == 0.0
    assert calls(results) == server.chat_requests == len([c for c in engine.calls if c.outcome == "ok"])
