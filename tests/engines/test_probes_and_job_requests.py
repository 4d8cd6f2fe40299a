"""The breaker's probes and a batch job's own HTTP requests go through the call shell too: a probe is reserved,
settled, paced and recorded (as a "probe" CallRecord, its usage counted once in a run that waited for it); a job's
upload, creation, polls, downloads and cancellation are paced by the request limits, wait behind the breaker (a
provider that fails while a job is polled opens it like any call) and carry the engine's endpoint settings."""

from __future__ import annotations

import asyncio

import pytest
from shell_fakes import batch, context, engine_for, provider, until

from flock_llm.engines import BreakerPolicy, EvalResult
from flock_llm.engines.llm import LLMEngine

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")
QUICK_BREAKER = BreakerPolicy(probe_interval=0.05, max_probe_interval=0.05, max_outage=30.0)


async def run(engine: LLMEngine, batches: int, size: int = 2) -> list[EvalResult]:
    inputs = [batch(size, first=n * size) for n in range(batches)]
    return list(await asyncio.gather(*(engine.evaluate_batch(context(), i) for i in inputs)))


async def test_probes_are_budgeted_paced_and_recorded_calls() -> None:
    with provider("standard") as fake:
        fake.fail_status = 503  # the provider is down
        engine = engine_for("standard", fake, breaker=QUICK_BREAKER, prices={"input": 1.0, "output": 2.0})
        running = asyncio.create_task(run(engine, batches=2))
        await until(lambda: engine.guard.probes >= 2)  # the breaker opened and probes (they fail too)
        fake.fail_status = None
        results = await asyncio.wait_for(running, timeout=10)
    assert not [f for r in results for f in r.failures]
    probes = [c for c in engine.calls if c.kind == "probe"]
    assert len(probes) == engine.guard.probes and probes[-1].outcome == "ok"
    assert {c.outcome for c in probes[:-1]} == {"ServiceUnavailableError"}
    assert probes[-1].prompt_tokens > 0 and probes[-1].cost_usd  # settled with what the provider reported
    assert engine.limiter.started == fake.chat_requests  # every request, probes included, took a limiter slot
    assert sum(int(r.usage["probes"]) for r in results) == len(probes)  # counted once, in a run that waited
    assert sum(int(r.usage["llm_calls"]) for r in results) == fake.chat_requests
    spent = sum(c.cost_usd or 0.0 for c in engine.calls)
    assert engine.costs.ledger.spent_usd == pytest.approx(spent) and engine.costs.ledger.in_flight_usd == 0.0


async def test_a_provider_down_while_a_job_is_polled_opens_the_breaker_and_holds_the_polls() -> None:
    with provider("batch") as fake:
        fake.batches.completion_delay_s = 0.6
        engine = engine_for("batch", fake, breaker=QUICK_BREAKER)
        running = asyncio.create_task(run(engine, batches=1))
        await until(lambda: fake.job_requests >= 2)  # uploaded and created
        fake.fail_status = 503  # down while the job is polled
        await until(lambda: engine.guard.state != "closed")
        held = fake.job_requests
        await until(lambda: engine.guard.probes >= 2)
        assert fake.job_requests == held  # no poll while the breaker is open: only its probes go
        fake.fail_status = None
        results = await asyncio.wait_for(running, timeout=15)
    assert not [f for r in results for f in r.failures]
    assert engine.guard.opened == 1 and fake.job_requests > held  # polled again once a probe got through
    assert sum(int(r.usage["deferred_requests"]) for r in results) >= 1


async def test_no_job_is_uploaded_while_the_breaker_is_open() -> None:
    released = asyncio.Event()

    async def probe() -> object:
        await released.wait()
        return "ok"

    with provider("batch") as fake:
        engine = engine_for("batch", fake, breaker=QUICK_BREAKER)
        engine.probe_for = lambda model: probe  # type: ignore[method-assign]  # down until released
        engine.guard.open(probe)
        running = asyncio.create_task(run(engine, batches=2))
        await asyncio.sleep(0.4)
        assert fake.job_requests == fake.chat_requests == 0 and not running.done()
        released.set()
        results = await asyncio.wait_for(running, timeout=15)
    assert not [f for r in results for f in r.failures]
    assert fake.job_requests >= 4  # upload, create, poll, download: after the breaker closed


async def test_job_requests_carry_the_engines_headers_and_organization() -> None:
    with provider("batch") as fake:
        engine = engine_for("batch", fake, extra_headers={"X-Team": "reviews"}, organization="org-flock")
        results = await run(engine, batches=1)
    assert not [f for r in results for f in r.failures]
    assert fake.job_requests >= 4
    assert all(h.get("x-team") == "reviews" for h in fake.job_headers)
    assert all(h.get("openai-organization") == "org-flock" for h in fake.job_headers)
