"""The call shell is the only way to the model: every tier (standard, flex, batch-job lines), repairs, the per-item
rung and DSPy calls are paced by the engine's limits (local and shared windows), wait behind its breaker, hold
their worst case against the budget and are recorded once (usage `llm_calls` == the requests the provider saw).
A third engine gets all of it by calling the shell."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel
from shell_fakes import FAST, MODEL, PATHS, Provider, answered_lines, batch, context, engine_for, provider

from flock_llm.engines import EngineContext, EvalInputs, EvalResult
from flock_llm.engines._calls.breaker import BreakerPolicy
from flock_llm.engines._calls.models import load_litellm
from flock_llm.engines._calls.prices import CostLedger
from flock_llm.engines._calls.rate import PROCESS_WINDOWS, LocalWindows, window_name
from flock_llm.engines._calls.record import Usage
from flock_llm.engines._calls.shell import Ask, CallShell, Settled
from flock_llm.engines._ladder.engine import LadderEngine
from flock_llm.engines._ladder.ladder import Answer, LadderItem, Repair

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")
_limits = itertools.count(70_001)


async def run_batches(engine: LadderEngine, ctx: EngineContext, batches: int = 3, size: int = 4) -> list[EvalResult]:
    inputs = [batch(size, first=n * size) for n in range(batches)]
    return list(await asyncio.gather(*(engine.evaluate_batch(ctx, i) for i in inputs)))


def calls_made(results: Sequence[EvalResult]) -> int:
    return sum(int(r.usage["llm_calls"]) for r in results)


def assert_all_answered(results: Sequence[EvalResult], items: int) -> None:
    assert not [f for r in results for f in r.failures]
    assert sum(len(r.outputs) for r in results) == items


@pytest.mark.parametrize("path", PATHS)
async def test_every_path_goes_one_request_at_a_time_paced_and_is_recorded_once(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_concurrent_requests=1 and requests_per_minute=1200 (one per 50 ms) hold for every tier, repairs, the
    per-item rung and DSPy; the flex tier's refused requests included."""
    shell_calls = 0
    real_call = CallShell.call

    async def counted(self: CallShell, ask: Ask, *args: Any, **kwargs: Any) -> Any:
        nonlocal shell_calls
        reply = await real_call(self, ask, *args, **kwargs)
        shell_calls += 1
        return reply

    monkeypatch.setattr(CallShell, "call", counted)
    with provider(path) as fake:
        engine = engine_for(path, fake, max_concurrent_requests=1, requests_per_minute=1200)
        results = await run_batches(engine, context())
    assert_all_answered(results, 12)
    usage = [r.usage for r in results]
    lines = sum(answered_lines(u) for u in usage)
    assert fake.chat_requests >= 3 and fake.peak_in_flight == 1
    sent = fake.chat_requests + fake.job_requests  # a batch job's upload, create, polls, downloads included
    assert engine.limiter.started == sent  # each request took a slot of the limiter...
    assert sum(fake.gaps()) >= 0.05 * (sent - 1) - 0.05  # ...which starts one every 50 ms
    assert calls_made(results) == fake.chat_requests + lines  # every request counted once, no more
    assert len(engine.calls) == shell_calls  # one record per call
    if path == "flex":
        assert fake.flex_refused >= 1 and sum(u["flex_requests"] for u in usage) == 3  # refusals waited out
    if path == "batch":
        assert lines >= 3 and sum(u["repairs"] for u in usage) >= 3  # the jobs' lines; repairs the standard way
        assert fake.job_requests >= 4  # upload, create, a poll, a download: each paced and one at a time
    if path == "repair_and_rung":
        assert sum(u["repairs"] for u in usage) >= 3 and sum(u["fallbacks"] for u in usage) >= 3


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("window", ["local tokens", "shared tokens", "shared requests"])
async def test_a_full_minute_window_holds_every_path_until_it_has_room(path: str, window: str) -> None:
    limit = next(_limits)  # a limit no other test uses: the window is this process's for model + limit
    shared = LocalWindows() if window.startswith("shared") else None  # what the Redis store's windows stand for
    windows = shared or PROCESS_WINDOWS
    kind = "requests" if window.endswith("requests") else "tokens"
    limits = {"requests_per_minute": limit} if kind == "requests" else {"tokens_per_minute": limit}
    with provider(path) as fake:
        engine = engine_for(path, fake, **limits)
        full = windows.window(window_name(engine.costs.account, MODEL, kind), limit)
        held = await full.acquire(limit)  # another worker used the whole minute
        running = asyncio.create_task(run_batches(engine, context(rate_windows=shared), batches=2))
        await asyncio.sleep(0.4)
        assert fake.chat_requests == 0 and not running.done()  # waiting for room, not failed
        await full.settle(held, 0)
        results = await asyncio.wait_for(running, timeout=20)
    assert_all_answered(results, 8)
    assert fake.chat_requests >= 1
    assert calls_made(results) == fake.chat_requests + sum(answered_lines(r.usage) for r in results)


async def test_a_full_redis_minute_holds_every_path(redis_single_url: str) -> None:
    """The shared windows of a Redis store (what every worker of a Flock counts in): full, they hold every tier,
    repairs, the per-item rung and DSPy. (A Redis waiter sleeps until the oldest entry of the minute expires, so
    the run is cancelled here instead of waiting a minute; the local and in-memory shared windows above show the
    calls go once there is room.)"""
    from flock_llm.stores import RedisStore

    store = RedisStore.from_url(redis_single_url)
    await store.connect()
    try:
        for path in PATHS:  # DSPy too: its cancelled call no longer waits out the minute and goes
            limit = next(_limits)
            with provider(path) as fake:
                # a batch job's lines are not in the tokens minute (providers meter batch queues apart); its own
                # requests (upload, create, poll, download) are in the requests minute
                kind = "requests" if path == "batch" else "tokens"
                engine = engine_for(path, fake, **{f"{kind}_per_minute": limit})
                windows = store.rate_windows()
                await windows.window(window_name(engine.costs.account, MODEL, kind), limit).acquire(limit)
                running = asyncio.create_task(run_batches(engine, context(rate_windows=windows), batches=2))
                await asyncio.sleep(0.3)
                assert fake.chat_requests == fake.job_requests == 0 and not running.done(), path
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running
            if path != "batch":  # a batch-job line waits for its job's upload, which waits for nothing but the queue
                assert {c.outcome for c in engine.calls} == {"CancelledError"}, path
            assert engine.costs.ledger.spent_usd == engine.costs.ledger.in_flight_usd == 0.0, path
    finally:
        await store.aclose()


@pytest.mark.parametrize("path", PATHS)
async def test_an_open_breaker_holds_every_path_until_its_probe_is_answered(path: str) -> None:
    released = asyncio.Event()

    async def probe() -> object:
        await released.wait()
        return "ok"

    with provider(path) as fake:
        engine = engine_for(path, fake, breaker=BreakerPolicy(probe_interval=0.05, max_outage=30.0))
        engine.probe_for = lambda model: probe  # type: ignore[method-assign]  # the provider is down until released
        engine.guard.open(probe)  # the provider failed a moment ago
        running = asyncio.create_task(run_batches(engine, context(), batches=2))
        await asyncio.sleep(0.4)
        assert fake.chat_requests == fake.job_requests == 0 and not running.done()  # no job upload either
        released.set()
        results = await asyncio.wait_for(running, timeout=20)
    assert_all_answered(results, 8)
    probes = sum(int(r.usage["probes"]) for r in results)
    assert probes == 1  # counted once, in a run that waited for it
    assert calls_made(results) - probes == fake.chat_requests + sum(answered_lines(r.usage) for r in results)


async def test_flex_sends_one_request_at_a_time_with_max_concurrent_requests_1() -> None:
    with provider("flex") as fake:
        fake.flex_refusals = 3  # not a time window: on a busy machine the second request came after it
        engine = engine_for("flex", fake, max_concurrent_requests=1)
        results = await run_batches(engine, context(), batches=6, size=2)
    assert_all_answered(results, 12)
    assert fake.flex_refused == 3 and fake.peak_in_flight == 1
    assert calls_made(results) == fake.chat_requests == fake.flex_requests


async def test_a_budget_under_8_concurrent_calls_with_long_answers_is_passed_by_no_more_than_a_prompts_error() -> None:
    """Issue 26.8: $0.01 with 8 concurrent calls and long answers spent 25.8x the budget. Each call now holds its
    worst case (prompt + max_tokens), so answers can never cost more than was held."""
    budget = CostLedger(0.01)
    with Provider(latency_s=0.05, per_item_latency_s=0.0, long_answers=20_000) as fake:
        engine = engine_for("standard", fake, prices={"input": 1.0, "output": 4.0}, max_concurrent_requests=8)
        results = await run_batches(engine, context(budget=budget), batches=8, size=3)
    assert budget.refused_calls >= 1 and 0 < budget.spent_usd <= 0.01
    assert budget.in_flight_usd == 0.0
    assert fake.chat_requests == calls_made(results) and fake.truncated_sent >= 1  # answers cut at max_tokens
    assert max(fake.max_tokens_asked) < 2_000


async def test_requests_carry_max_tokens_from_the_expected_answer_and_answers_still_fit() -> None:
    with provider("standard") as fake:
        engine = engine_for("standard", fake)
        results = await run_batches(engine, context(), batches=2, size=5)
    assert_all_answered(results, 10)
    assert fake.truncated_sent == 0  # each answer had room
    asked = [m for m in fake.max_tokens_asked if m != 1]
    assert asked and all(256 <= m < 2_048 for m in asked)  # twice the expected answer, not the model's 16,384
    plan = engine.answer_plan
    assert plan is not None and plan.learned >= 1


async def test_a_timed_out_call_is_charged_its_prompt() -> None:
    """Issue 26.13: the provider read the prompt of a request we stopped waiting for; it is paid."""
    with Provider(latency_s=0.0, per_item_latency_s=0.0, stall_after=0, stall_s=1.0) as fake:
        breaker = BreakerPolicy(probe_interval=0.05, max_outage=0.5)
        engine = engine_for("standard", fake, timeout=0.2, prices={"input": 1000.0, "output": 2000.0}, breaker=breaker)
        (result,) = await run_batches(engine, context(), batches=1, size=2)
    assert result.failures and not result.outputs
    records = [r for r in engine.calls if r.kind == "batch"]
    assert records and all(r.outcome in ("Timeout", "ProviderUnavailableError") for r in records)
    charged = sum(r.prompt_tokens for r in records)
    assert charged > 0 and result.usage["prompt_tokens"] >= charged
    # every call the budget paid is recorded, the breaker's probes too (an answered probe: its one answer token)
    paid = sum(r.prompt_tokens * 1000.0 + r.completion_tokens * 2000.0 for r in engine.calls) / 1e6
    assert engine.costs.ledger.spent_usd == pytest.approx(paid)
    assert engine.costs.ledger.in_flight_usd == 0.0


# -- a third engine, written against the contract ------------------------------------------------------------


class Tally(BaseModel):
    count: int


class CountingEngine(LadderEngine):
    """An engine of someone else's: its transport is a coroutine; limits, breaker, budget and records come from
    the shell."""

    engine_name = "CountingEngine"

    def __init__(self, transport: Any, **settings: Any) -> None:
        super().__init__(
            "custom/counter",
            per_item=False,
            output_type=Tally,
            max_input_tokens=8_000,
            requests_per_minute=None,
            retry=settings.pop("retry", FAST),
            breaker=settings.pop("breaker", None),
            timeout=5.0,
            passthrough={},
            reserved=(),
            **settings,
        )
        self.transport = transport

    def _backend(self, ctx: EngineContext, inputs: EvalInputs) -> _Counting:
        return _Counting(self, ctx)


class _Counting:
    context = 8_000
    max_output = 100

    def __init__(self, engine: CountingEngine, ctx: EngineContext) -> None:
        self.engine = engine
        self.output_type: type[BaseModel] = Tally
        self.usage = Usage()
        self.shell = CallShell(engine, ctx, self.usage, "custom/counter", load_litellm())

    def fits(self, items: Sequence[LadderItem], *, per_item: bool) -> bool:
        return True

    def count_tokens(self, items: Sequence[LadderItem]) -> int:
        return 10 * len(items)

    def item_tokens(self, item: LadderItem) -> int:
        return 10

    def text_tokens(self, text: str) -> int:
        return len(text.split())

    async def ask(
        self, items: Sequence[LadderItem], *, per_item: bool, repair: Repair | None = None, reduce_total: int = 0
    ) -> Answer:
        ask = Ask("batch", len(items), prompt_tokens=100, max_tokens=50)
        count = await self.shell.call(ask, lambda: self.engine.transport(len(items)), lambda n: Settled(100, 10))
        return Answer(json.dumps({"count": count}))


async def test_a_third_engine_gets_limits_breaker_budget_and_records_by_calling_the_shell() -> None:
    in_flight = peak = sent = 0
    failures_left = 1

    async def transport(items: int) -> int:
        nonlocal in_flight, peak, sent, failures_left
        sent += 1
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.02)
            if failures_left:
                failures_left -= 1
                raise TimeoutError("the transport timed out")  # transient: retried, its prompt charged
            return items
        finally:
            in_flight -= 1

    # $1 per 1,000 tokens: a call's worst case is $0.15 (100 + 50 tokens), an answered one costs $0.11
    engine = CountingEngine(
        transport, max_concurrent_requests=2, prices={"input": 1000.0, "output": 1000.0}, budget_usd=0.5
    )
    results = await run_batches(engine, context(publishes=(Tally,)), batches=6, size=1)
    answered = [o.obj for r in results for o in r.outputs]
    refused = [f for r in results for f in r.failures]
    assert peak <= 2 and answered and refused and {f.stage for f in refused} == {"budget"}
    assert calls_made(results) == sent  # the timed-out request included
    assert sum(int(r.usage["retries"]) for r in results) == 1
    # one record per call, its retry inside it: the timed-out call's retry would hold $0.10 + $0.15 more than the
    # budget has left, so it is refused (the budget holds retries in flight too)
    assert sorted(r.outcome for r in engine.calls) == ["BudgetExceededError"] + ["ok"] * len(answered)
    assert engine.costs.ledger.spent_usd == pytest.approx(0.11 * len(answered) + 0.1)  # + the timed-out prompt
    assert engine.costs.ledger.spent_usd <= 0.5


async def test_a_third_engine_waits_behind_its_breaker_and_a_full_tokens_minute() -> None:
    sent = 0

    async def transport(items: int) -> int:
        nonlocal sent
        sent += 1
        return items

    limit = next(_limits)
    engine = CountingEngine(transport, tokens_per_minute=limit, breaker=BreakerPolicy(probe_interval=0.05))
    full = PROCESS_WINDOWS.window(window_name(engine.costs.account, "custom/counter", "tokens"), limit)
    held = await full.acquire(limit)  # another engine of this process used the whole minute
    released = asyncio.Event()

    async def probe() -> object:
        await released.wait()
        return "ok"

    engine.probe_for = lambda model: probe  # type: ignore[method-assign]  # the provider is down until released
    engine.guard.open(probe)
    running = asyncio.create_task(run_batches(engine, context(publishes=(Tally,)), batches=3, size=1))
    await asyncio.sleep(0.3)
    assert sent == 0 and not running.done()  # the breaker holds every call
    released.set()
    await asyncio.sleep(0.3)
    assert sent == 0 and not running.done()  # the breaker closed; the minute is still full
    await full.settle(held, 0)
    results = await asyncio.wait_for(running, timeout=10)
    assert sent == 3 and [o.obj for r in results for o in r.outputs] == [Tally(count=1)] * 3
    assert [c.kind for c in engine.calls] == ["probe", "batch", "batch", "batch"]  # the probe waited for the minute
