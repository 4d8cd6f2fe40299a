"""LLM batching benchmark against a local fake OpenAI-compatible server on 127.0.0.1.

1,000 review artifacts, one sentiment label per review:
  batched   - BatchSpec(size=25) + LLMEngine(per_item=True): one call per 25 reviews
  unbatched - no BatchSpec: one call per review
both in the same run, against the same server (100 ms + 2 ms per answered item per request).
Then the batched run again with the server injecting 10% malformed answers and 5% 429s.

Run: python benchmarks/llm_batching.py [--n 1000]
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
from flock_llm.engines import RetryPolicy
from flock_llm.engines.llm import LLMEngine
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer


@flock_type(name="BenchReview")
class Review(BaseModel):
    review_id: str
    rating: int
    text: str


@flock_type(name="BenchSentiment")
class Sentiment(BaseModel):
    review_id: str
    label: str


TEXTS = [
    "Arrived quickly and works exactly as described. Would buy again.",
    "The handle broke after two days; customer support never answered my emails.",
    "Decent value for the price, although the manual is confusing and the colour is off.",
    "Absolutely love it! My kids use it every day and it still looks brand new.",
    "Too loud for an apartment. Returned it.",
]


def reviews(n: int) -> list[Review]:
    return [Review(review_id=f"r{i}", rating=1 + i % 5, text=TEXTS[i % len(TEXTS)]) for i in range(n)]


async def run(server: FakeOpenAIServer, n: int, *, batched: bool) -> dict[str, Any]:
    engine = LLMEngine(
        "openai/fake-model",
        per_item=True,
        api_base=server.api_base,
        api_key="sk-local-fake",
        structured_output=True,
        max_concurrent_requests=16,
        max_input_tokens=100_000,
        retry=RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.5),
    )
    flock = Flock(env={})
    spec = BatchSpec(size=25, timeout=timedelta(seconds=5)) if batched else None
    flock.agent("sentiment").consumes(Review, batch=spec).publishes(Sentiment).with_engines(engine).max_concurrency(16)
    requests_before = server.requests
    start = time.perf_counter()
    published = await flock.publish_many(reviews(n))
    await flock.run_until_idle()
    await flock.shutdown()
    wall = time.perf_counter() - start
    outputs = await flock.store.artifacts_by_type(Sentiment)
    failures = await flock.store.get_by_type(FailureRecord)
    covered = [i for o in outputs for i in o.derived_from] + [i for f in failures for i in f.input_ids]
    usage = flock.metrics().usage["sentiment"]
    return {
        "wall_s": wall,
        "http_requests": server.requests - requests_before,
        "llm_calls": usage["llm_calls"],
        "prompt_tokens": usage["prompt_tokens"],
        "per_item_prompt_tokens_counted": usage["per_item_prompt_tokens"],
        "outputs": len(outputs),
        "failed": sum(len(f.input_ids) for f in failures),
        "accounted": len(set(covered) & {a.id for a in published}),
        "exactly_once": sorted(covered) == sorted(a.id for a in published),
        "usage": usage,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    n = parser.parse_args().n
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    with FakeOpenAIServer(latency_s=0.1, per_item_latency_s=0.002) as server:
        await run(server, 50, batched=True)  # warm-up: litellm's first call sets up clients and caches
        batched = await run(server, n, batched=True)
        unbatched = await run(server, n, batched=False)
    print(f"{n} reviews, per-item sentiment, fake server on 127.0.0.1 (100 ms + 2 ms/item per request)")
    print(f"{'':24}{'batched (25)':>16}{'unbatched':>16}{'ratio':>10}")
    rows = [
        ("LLM calls", batched["llm_calls"], unbatched["llm_calls"]),
        ("LLM calls per item", batched["llm_calls"] / n, unbatched["llm_calls"] / n),
        ("prompt tokens", batched["prompt_tokens"], unbatched["prompt_tokens"]),
        ("prompt tokens per item", batched["prompt_tokens"] / n, unbatched["prompt_tokens"] / n),
        ("wall time (s)", batched["wall_s"], unbatched["wall_s"]),
    ]
    for name, b, u in rows:
        print(f"{name:24}{b:>16,.3f}{u:>16,.3f}{b / u:>10.3f}")
    print(
        f"batched run's own count of per-item prompt tokens for the same items: "
        f"{batched['per_item_prompt_tokens_counted']:,} (tokenizer) vs {batched['usage']['prompt_tokens']:,} sent"
    )
    print(f"accounted exactly once: batched {batched['exactly_once']}, unbatched {unbatched['exactly_once']}")

    with FakeOpenAIServer(
        latency_s=0.1, per_item_latency_s=0.002, malformed_rate=0.10, rate_limit_rate=0.05, seed=11
    ) as server:
        faulty = await run(server, n, batched=True)
        injected = (server.malformed_sent, server.rate_limited_sent)
    u = faulty["usage"]
    print(f"\nwith 10% malformed answers and 5% 429s (server sent {injected[0]} malformed, {injected[1]} 429s):")
    print(
        f"  items accounted for: {faulty['accounted']}/{n} ({100 * faulty['accounted'] / n:.1f}%), "
        f"exactly once: {faulty['exactly_once']}; outputs {faulty['outputs']}, failure records cover "
        f"{faulty['failed']}"
    )
    print(
        f"  LLM calls {faulty['llm_calls']} vs {batched['llm_calls']} without faults "
        f"(+{faulty['llm_calls'] - batched['llm_calls']} extra): retries {u['retries']}, repairs {u['repairs']}, "
        f"splits {u['splits']}, per-item fallbacks {u['fallbacks']}"
    )
    print(f"  wall time {faulty['wall_s']:.2f} s; LLM calls per item {faulty['llm_calls'] / n:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
