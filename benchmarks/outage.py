"""Provider outages against a local fake OpenAI-compatible server on 127.0.0.1.

1. A provider that answers 500 to every request: how many requests does one batch of 25 cost, and what
   becomes of its items? (Before the circuit breaker: 4 + 4 x 25 = 104 requests; the issue measured it.)
2. 1,000 reviews, per-item labels, BatchSpec(size=25), with a 60 s outage (every request 503) starting once
   half the reviews were processed: are all 1,000 processed after it ends, with no failure records, and how
   many requests did waiting cost?

Run: python benchmarks/outage.py [--n 1000] [--outage 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from flock_llm import FailureRecord, Flock, flock_type
from flock_llm.engines.llm import BreakerPolicy, LLMEngine, RetryPolicy
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer


@flock_type(name="OutageReview")
class Review(BaseModel):
    review_id: str
    text: str


@flock_type(name="OutageLabel")
class Label(BaseModel):
    review_id: str
    label: str


def flock_for(engine: LLMEngine, on_done: Any = None) -> Flock:
    flock = Flock(env={})
    (
        flock.agent("labels")
        .consumes(Review, batch=BatchSpec(size=25, timeout=timedelta(seconds=5)))
        .publishes(Label)
        .with_engines(engine)
        .max_concurrency(4)
    )
    return flock


async def always_failing(retry: RetryPolicy, breaker: BreakerPolicy) -> dict[str, Any]:
    with FakeOpenAIServer(latency_s=0.0, fail_status=500) as server:
        engine = LLMEngine(
            "openai/fake-model",
            per_item=True,
            api_base=server.api_base,
            api_key="sk-local",
            retry=retry,
            breaker=breaker,
        )
        flock = flock_for(engine)
        started = time.perf_counter()
        await flock.publish_many([Review(review_id=f"r{i}", text="fine") for i in range(25)])
        await flock.run_until_idle()
        await flock.shutdown()
        failures = await flock.store.get_by_type(FailureRecord)
        return {
            "batch_requests": server.requests - server.probes,
            "probes": server.probes,
            "failed_items": sum(len(f.input_ids) for f in failures),
            "stages": sorted({f.stage for f in failures}),
            "wall_s": time.perf_counter() - started,
        }


async def outage_run(n: int, outage_s: float) -> dict[str, Any]:
    with FakeOpenAIServer(latency_s=0.05, per_item_latency_s=0.002) as server:
        engine = LLMEngine("openai/fake-model", per_item=True, api_base=server.api_base, api_key="sk-local")
        flock = flock_for(engine)
        labels = 0
        outage_started: float | None = None
        started = time.perf_counter()
        for i in range(0, n, 25):
            await flock.publish_many([Review(review_id=f"r{j}", text="works well") for j in range(i, min(n, i + 25))])
            if outage_started is None and i + 25 >= n // 2:
                await flock.run_until_idle()  # half are done: the provider goes down now
                labels = len(await flock.store.get_by_type(Label))
                server.outage(outage_s)
                outage_started = time.perf_counter()
        await flock.run_until_idle()
        await flock.shutdown()
        failures = await flock.store.get_by_type(FailureRecord)
        usage = flock.metrics().usage["labels"]
        return {
            "processed_before_outage": labels,
            "probes_at_server": server.probes,
            "labels": len(await flock.store.get_by_type(Label)),
            "failure_records": len(failures),
            "requests": server.requests,
            "requests_refused_during_outage": server.failed_sent,
            "llm_calls_counted": usage["llm_calls"],
            "fallbacks": usage["fallbacks"],
            "breaker_opened": engine.guard.opened,
            "probes": engine.guard.probes,
            "outage_s": outage_s,
            "after_outage_s": time.perf_counter() - (outage_started or started) - outage_s,
            "wall_s": time.perf_counter() - started,
        }


async def main(n: int, outage_s: float) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    print("1. a provider answering 500 to everything, one batch of 25 (per-item mode)")
    for retry, breaker in (
        (RetryPolicy(), BreakerPolicy(max_outage=5.0)),
        (RetryPolicy(attempts=3, base_delay=0.1), BreakerPolicy(max_outage=2.0, probe_interval=0.5)),
        (RetryPolicy(attempts=3, base_delay=0.1), BreakerPolicy(max_outage=10.0, probe_interval=0.5)),
    ):
        result = await always_failing(retry, breaker)
        settings = f"attempts={retry.attempts} max_outage={breaker.max_outage:g}s"
        print(
            f"   {settings} probe_interval={breaker.probe_interval:g}s: {result['batch_requests']} requests for "
            f"the batch (goal <= attempts+1 = {retry.attempts + 1}) + {result['probes']} one-token probes; "
            f"{result['failed_items']}/25 items in failure records {result['stages']}; {result['wall_s']:.1f} s"
        )
    print("   (before the breaker: 4 + 4 x 25 = 104 requests for the same batch)")
    print(f"2. {n} reviews, per-item, size 25, a {outage_s:g} s outage once half were processed (default settings)")
    result = await outage_run(n, outage_s)
    for key, value in result.items():
        print(f"   {key}: {value:.1f}" if isinstance(value, float) else f"   {key}: {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--outage", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.outage))
