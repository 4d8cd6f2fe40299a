"""Token-aware batching and cost control, measured against the fake OpenAI-compatible server (one run prints all):

1. 2,000 reviews, log-normal lengths (10 to 5,000 characters), per-item labels, a model with an 8,000-token
   context: BatchSpec(size=25) vs BatchSpec(size=100, max_tokens="auto"): calls, context-overflow splits, answers
   cut off, prompt tokens per review, wall time.
2. 3 Redis worker processes sharing LLMEngine(tokens_per_minute=20_000) against a server limited to 20,000
   tokens per sliding minute, for 60 s: the most tokens the server saw in any 60 s, and its 429s.
3. 40 consecutive batches: how many requests carried the same system message + response schema, and the share
   of prompt tokens the server reports as cached (OpenAI's rule: a repeated prefix of 1,024+ tokens).
4. `flock-llm reviews examples/data/reviews.jsonl --estimate` against the prompt tokens a real run then sends.

Needs a Redis on 127.0.0.1 (tests/start_redis.sh starts one on port 6390) for part 2.
Run: python benchmarks/token_budget.py [--minute 60] [--url redis://127.0.0.1:6390/0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flock_llm import FailureRecord, Flock, flock_type
from flock_llm.engines import RetryPolicy
from flock_llm.engines.llm import LLMEngine
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
FAST = RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.5, max_retry_after=5.0)
SENTENCES = [
    "The kettle boils fast and the handle stays cool.",
    "Delivery took nine days and the box was crushed.",
    "Battery life is excellent, easily a week of daily use.",
    "Customer support never answered my two emails.",
    "It looks smaller than in the photos but works well.",
    "After a month the hinge started to squeak loudly.",
    "Setup was quick and the instructions were clear.",
    "The colour faded after the first wash, disappointing.",
]
GUIDE = " ".join(
    f"Rule {n}: a review that mentions {topic} should weigh it as {weight}, and the reason should name it."
    for n, (topic, weight) in enumerate(
        [
            (t, w)
            for t in (
                "delivery",
                "price",
                "quality",
                "support",
                "battery",
                "size",
                "noise",
                "returns",
                "packaging",
                "durability",
                "design",
                "instructions",
                "smell",
                "colour",
                "fit",
            )
            for w in ("a strong signal", "a weak signal", "neutral context")
        ],  # fmt: skip
        1,
    )
)
"""Labelling guidelines (~1,200 tokens): a realistic instruction block, the static prefix that caching repeats."""


@flock_type(name="TokReview")
class Review(BaseModel):
    review_id: str
    rating: int
    text: str


@flock_type(name="TokLabel")
class Label(BaseModel):
    review_id: str
    label: str
    reason: str


def reviews(n: int, seed: int = 11) -> list[Review]:
    """Log-normal lengths between 10 and 5,000 characters (median ~500)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = int(min(5_000, max(10, rng.lognormvariate(math.log(500), 1.0))))
        text = ""
        while len(text) < length:
            text += rng.choice(SENTENCES) + " "
        out.append(Review(review_id=f"r{i}", rating=rng.randint(1, 5), text=text[:length].strip()))
    return out


def engine(server: FakeOpenAIServer, **kwargs: Any) -> LLMEngine:
    return LLMEngine(
        "openai/fake-model",
        per_item=True,
        api_base=server.api_base,
        api_key="sk-local-fake",
        structured_output=True,
        retry=FAST,
        **kwargs,
    )


async def sized_run(server: FakeOpenAIServer, spec: BatchSpec, items: list[Review]) -> dict[str, float]:
    flock = Flock(env={})
    (
        flock.agent("labels")
        .consumes(Review, batch=spec)
        .publishes(Label)
        .with_engines(engine(server, max_input_tokens=8_000, max_output_tokens=8_000))
        .max_concurrency(4)
    )
    before_requests, before_truncated = server.requests, server.truncated_sent
    started = time.perf_counter()
    await flock.publish_many(items)
    await flock.run_until_idle()
    await flock.shutdown()
    wall = time.perf_counter() - started
    usage = flock.metrics().usage["labels"]
    failures = await flock.store.get_by_type(FailureRecord)
    return {
        "calls": server.requests - before_requests,
        "overflow": usage["overflow_splits"],
        "truncated": server.truncated_sent - before_truncated,
        "tokens_per_item": usage["prompt_tokens"] / len(items),
        "wall": wall,
        "labels": len(await flock.store.get_by_type(Label)),
        "failed": sum(len(f.input_ids) for f in failures),
        "flushes": sum(flock.metrics().flush_counts.values()),
    }


async def part_1() -> None:
    items = reviews(2_000)
    chars = sorted(len(r.text) for r in items)
    print(f"1. 2,000 reviews, {chars[0]}-{chars[-1]} characters (median {chars[1000]}), per-item labels, "
          "8,000-token context:")  # fmt: skip
    with FakeOpenAIServer(latency_s=0.05, per_item_latency_s=0.0005, context_limit=8_000) as server:
        rows = [
            ("size=25", await sized_run(server, BatchSpec(size=25, timeout=timedelta(seconds=5)), items)),
            (
                'size=100, max_tokens="auto"',
                await sized_run(server, BatchSpec(size=100, timeout=timedelta(seconds=5), max_tokens="auto"), items),
            ),
        ]
        print(f"   {'BatchSpec':<28}{'calls':>7}{'overflow splits':>17}{'cut off':>9}{'prompt tok/review':>19}"
              f"{'wall s':>8}{'labelled':>10}{'failed':>8}")  # fmt: skip
        for name, r in rows:
            print(f"   {name:<28}{r['calls']:>7.0f}{r['overflow']:>17.0f}{r['truncated']:>9.0f}"
                  f"{r['tokens_per_item']:>19.1f}{r['wall']:>8.2f}{r['labels']:>10.0f}{r['failed']:>8.0f}")  # fmt: skip
        auto, plain = rows[1][1]["calls"], rows[0][1]["calls"]
        print(f"   server refused for context: {server.context_rejected}; calls with max_tokens: "
              f"{auto:.0f} vs {plain:.0f} ({auto / plain:.0%})")  # fmt: skip


WORKER = """
import asyncio, sys
from datetime import timedelta
sys.path.insert(0, {bench!r})
from token_budget import Review, Label, engine_for
from flock_llm import Flock
from flock_llm.subscription import BatchSpec

async def main(url, api_base):
    flock = Flock(store=url, env={{}})
    (flock.agent("labels").consumes(Review, batch=BatchSpec(size=8, timeout=timedelta(seconds=1)))
        .publishes(Label).with_engines(engine_for(api_base)).max_concurrency(2))
    await flock.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def engine_for(api_base: str) -> LLMEngine:
    """The workers' engine in part 2 (imported by the worker processes)."""
    return LLMEngine(
        "openai/fake-model",
        per_item=True,
        api_base=api_base,
        api_key="sk-local-fake",
        structured_output=True,
        retry=FAST,
        tokens_per_minute=20_000,
    )


async def part_2(url: str, minute: float) -> None:
    namespace = f"tokbench{uuid.uuid4().hex[:8]}"
    store_url = f"{url}{'&' if '?' in url else '?'}namespace={namespace}"
    with FakeOpenAIServer(latency_s=0.2, per_item_latency_s=0.002, tokens_per_minute=20_000) as server:
        code = WORKER.format(bench=str(Path(__file__).parent))
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", code, store_url, server.api_base],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            )  # fmt: skip
            for _ in range(3)
        ]
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        producer = Flock(store=store_url, env={})
        await producer.publish_many(reviews(1_500, seed=5))
        started = time.monotonic()
        await asyncio.sleep(minute)
        for worker in workers:
            worker.kill()
            worker.wait()
        elapsed = time.monotonic() - started
        peak = server.peak_tokens_per_minute()
        answered = len(server.token_log)
        total = sum(t for _, t in server.token_log)
        await producer.shutdown()
    print(f"2. 3 Redis worker processes, LLMEngine(tokens_per_minute=20_000), server limit 20,000 tokens/min, "
          f"{elapsed:.0f} s:")  # fmt: skip
    print(
        f"   {answered} requests answered, {total:,} tokens; most tokens in any 60 s: {peak:,} "
        f"({peak / 20_000 - 1:+.1%} vs the limit); 429s from the server: {server.tpm_rejected}"
    )


async def part_3() -> None:
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as server:  # cache_min_tokens=1024 (OpenAI)
        flock = Flock(env={})
        (
            flock.agent("labels")
            .description("Label each review's sentiment (positive, neutral or negative) with a short reason. " + GUIDE)
            .consumes(Review, batch=BatchSpec(size=10, timeout=timedelta(milliseconds=20)))
            .publishes(Label)
            .with_engines(engine(server))
        )
        items = reviews(400, seed=3)
        for start in range(0, 400, 10):  # 40 batches, some cut short by the timeout (different sizes)
            await flock.publish_many(items[start : start + random.Random(start).choice([7, 10])])
            await flock.run_until_idle()
        await flock.shutdown()
    same = max(server.prefixes.values())
    requests = sum(server.prefixes.values())
    usage = flock.metrics().usage["labels"]
    print(f"3. {sum(flock.metrics().flush_counts.values())} consecutive batches (sizes 7 and 10), ~1,200-token "
          "instructions:")  # fmt: skip
    print(
        f"   system message + response schema identical in {same}/{requests} requests ({same / requests:.0%}); "
        f"cached prompt tokens reported by the server: {server.cached_tokens_total:,} of "
        f"{server.prompt_tokens_total:,} ({server.cached_tokens_total / server.prompt_tokens_total:.0%}); "
        f"counted in usage: {usage['cached_prompt_tokens']:,}"
    )


def part_4() -> None:
    sample = ROOT / "examples" / "data" / "reviews.jsonl"
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOCK_", "OPENAI_"))}
        env.update(OPENAI_API_BASE=server.api_base, OPENAI_API_KEY="sk-local-fake", LITELLM_LOCAL_MODEL_COST_MAP="True")
        rows = []
        for mode in ([], ["--per-item"]):
            common = [sys.executable, "-m", "flock_llm", "reviews", str(sample), "--model", "openai/gpt-4.1-mini",
                      *mode, "--json"]  # fmt: skip
            estimate = json.loads(subprocess.run([*common, "--estimate"], capture_output=True, text=True, env=env,
                                                 check=True).stdout)  # fmt: skip
            out = Path(f"/tmp/token-budget-{uuid.uuid4().hex}.jsonl")
            run = json.loads(subprocess.run([*common, "--no-progress", "-o", str(out)], capture_output=True,
                                            text=True, env=env, check=True).stdout)  # fmt: skip
            out.unlink()
            rows.append((mode[0] if mode else "report", estimate, run))
    print("4. --estimate on examples/data/reviews.jsonl (gpt-4.1-mini prices) vs the run that followed:")
    for mode, estimate, run in rows:
        print(
            f"   {mode:<10} estimate {estimate['prompt_tokens']:,} prompt tokens in {estimate['calls']} calls, "
            f"${estimate['cost_usd']:.4f}; run {run['prompt_tokens']:,} in {run['llm_calls']} calls, "
            f"${run['cost_usd']:.4f}: prompt tokens {estimate['prompt_tokens'] / run['prompt_tokens'] - 1:+.1%}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minute", type=float, default=60.0, help="seconds part 2 runs (60)")
    parser.add_argument("--url", default=os.environ.get("FLOCK_BENCH_REDIS_URL", "redis://127.0.0.1:6390/0"))
    args = parser.parse_args()
    await part_1()
    await part_2(args.url, args.minute)
    await part_3()
    part_4()


if __name__ == "__main__":
    asyncio.run(main())
