"""Provider outages against a local fake OpenAI-compatible server on 127.0.0.1.

1. A provider that answers 500 to every request: how many requests does one batch of 25 cost, and what
   becomes of its items? (Before the circuit breaker: 4 + 4 x 25 = 104 requests; the issue measured it.)
2. 1,000 reviews, per-item labels, BatchSpec(size=25), with a 60 s outage (every request 503) starting once
   half the reviews were processed: are all 1,000 processed after it ends, with no failure records, and how
   many requests did waiting cost?
3. A provider down for the whole run, 300 reviews in 12 batches of 25, 4 at a time (the CLI's concurrency),
   with a short `max_outage`: requests sent, probes, and the wall time until every review has its failure
   record. One outage clock per engine: about one `max_outage` in all, not one per wave of batches. Also
   the same against a closed port (a provider that never answered: reported at the first failure).
4. "Probe answered, calls refused": every real call gets 429, the one-token probe passes (a quota that counts
   `max_tokens`): requests per batch, against the goal of at most `attempts` + 1 per recovery.

Run: python benchmarks/outage.py [--n 1000] [--outage 60] [--max-outage 3] [--skip-recovery]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
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
        .max_concurrency(4)  # the CLI's concurrency
    )
    return flock


async def down_all_run(api_base: str, server: FakeOpenAIServer | None, max_outage: float) -> dict[str, Any]:
    """300 reviews in 12 batches against a provider that never comes back; figures until the last failure record."""
    retry = RetryPolicy()  # the defaults: 4 attempts, backoff from 0.5 s
    engine = LLMEngine(
        "openai/fake-model", per_item=True, api_base=api_base, api_key="sk-local", retry=retry,
        breaker=BreakerPolicy(max_outage=max_outage, probe_interval=0.5),
    )  # fmt: skip
    flock = flock_for(engine)
    started = time.perf_counter()
    await flock.publish_many([Review(review_id=f"r{i}", text="fine") for i in range(300)])
    await flock.run_until_idle()
    wall = time.perf_counter() - started
    clock = engine.guard.failing_since
    since_first_failure = None if clock is None else asyncio.get_running_loop().time() - clock
    await flock.shutdown()
    failures = await flock.store.get_by_type(FailureRecord)
    return {
        "since_first_failure_s": since_first_failure,
        "requests": None if server is None else server.requests - server.probes,
        "probes": engine.guard.probes,
        "reviews_in_failure_records": sum(len(f.input_ids) for f in failures),
        "stages": sorted({f.stage for f in failures}),
        "wall_s": wall,
        "breaker_opened": engine.guard.opened,
        "first_error": failures[0].error[:160] if failures else "",
    }


async def refused_calls_run(batches: int, max_outage: float) -> dict[str, Any]:
    """Every real call gets 429, the probe passes: requests per batch and recoveries."""
    retry = RetryPolicy()
    with FakeOpenAIServer(latency_s=0.0, refuse_calls_status=429) as server:
        engine = LLMEngine(
            "openai/fake-model", per_item=True, api_base=server.api_base, api_key="sk-local", retry=retry,
            breaker=BreakerPolicy(max_outage=max_outage, probe_interval=0.5),
        )  # fmt: skip
        flock = flock_for(engine)
        started = time.perf_counter()
        await flock.publish_many([Review(review_id=f"r{i}", text="fine") for i in range(25 * batches)])
        await flock.run_until_idle()
        wall = time.perf_counter() - started
        await flock.shutdown()
        failures = await flock.store.get_by_type(FailureRecord)
        usage = flock.metrics().usage["labels"]
        return {
            "batches": batches,
            "requests": server.refused_calls,
            "requests_per_batch": server.refused_calls / batches,
            "probes": server.probes,
            "recoveries": engine.guard.recoveries,
            "goal_per_batch": f"<= attempts + recoveries = {retry.attempts} + {engine.guard.recoveries}",
            "fallbacks": usage["fallbacks"],
            "reviews_in_failure_records": sum(len(f.input_ids) for f in failures),
            "stages": sorted({f.stage for f in failures}),
            "wall_s": wall,
        }


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def whole_run_outages(max_outage: float) -> None:
    print(f"3. provider down for the whole run: 300 reviews, 12 batches of 25, 4 at a time, max_outage={max_outage:g}s")
    with FakeOpenAIServer(latency_s=0.0) as server:  # first: litellm's first call loads much of it
        healthy = await down_all_run(server.api_base, server, max_outage)
    print(f"   (warm-up, a provider that answers: {healthy['wall_s']:.1f} s, {healthy['requests']} requests)")
    with FakeOpenAIServer(latency_s=0.0, fail_status=503) as server:
        down = await down_all_run(server.api_base, server, max_outage)
    print(
        f"   every request 503: {down['requests']} requests + {down['probes']} probes; "
        f"{down['reviews_in_failure_records']}/300 reviews in failure records {down['stages']} after "
        f"{down['wall_s']:.1f} s, {down['since_first_failure_s']:.1f} s of them after the first failed request "
        f"(= {down['since_first_failure_s'] / max_outage:.2f} x max_outage; the breaker opened "
        f"{down['breaker_opened']} time(s))"
    )

    print(f"     first error: {down['first_error']}")
    refused = await down_all_run(f"http://127.0.0.1:{closed_port()}/v1", None, max_outage)
    print(
        f"   closed port (never answered): {refused['probes']} probes; {refused['reviews_in_failure_records']}/300 "
        f"reviews in failure records {refused['stages']} after {refused['wall_s']:.1f} s (no outage wait)"
    )
    print(f"     first error: {refused['first_error']}")
    print(
        "   scaling: the wait is one max_outage per engine from the first failure, whatever the number of "
        "batches or waves; before, each wave of 4 batches waited its own max_outage (12 batches: 3 x max_outage + "
        "retries, 905 s with the default 300 s), and a 10,000-review file ~100 waves"
    )
    print(f"4. probe answered, calls refused (every real call 429), max_outage={max_outage:g}s")
    for batches in (1, 12):
        result = await refused_calls_run(batches, max_outage)
        print(
            f"   {batches} batch(es) of 25: {result['requests']} requests = {result['requests_per_batch']:.1f} per "
            f"batch (goal {result['goal_per_batch']}), {result['probes']} probes, {result['fallbacks']} per-item "
            f"fallbacks; {result['reviews_in_failure_records']}/{25 * batches} reviews in failure records "
            f"{result['stages']}; {result['wall_s']:.1f} s"
        )
    print("   (before: one batch of 25 cost 171 requests with 18 per-item fallbacks)")


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


async def main(n: int, outage_s: float, max_outage: float, recovery: bool) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if recovery:
        await recovery_runs(n, outage_s)
    await whole_run_outages(max_outage)


async def recovery_runs(n: int, outage_s: float) -> None:
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
    parser.add_argument("--max-outage", type=float, default=3.0, help="max_outage of parts 3 and 4 (seconds)")
    parser.add_argument("--skip-recovery", action="store_true", help="run parts 3 and 4 only")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.outage, args.max_outage, not args.skip_recovery))
