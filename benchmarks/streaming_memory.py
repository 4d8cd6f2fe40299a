"""Peak memory of `flock-llm reviews` for 2,000 and 1,000,000 reviews (the streaming CLI), and what the fixed
start-up memory is made of.

Each run is the real command in its own process (offline model, report mode, --batch-size 100 so the 1M run takes
minutes rather than tens of minutes; the memory bound is batch size x concurrency either way), on reviews written
by `examples/data/make_reviews.py`'s generator (varied products, ratings, lengths, languages). Peak RSS is the
child's ru_maxrss. Every run's output is checked: each review id appears in exactly one output record.

Run: python benchmarks/streaming_memory.py [--sizes 2000 1000000] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import resource, subprocess, sys, json
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": done.returncode, "peak_kb": peak_kb, "stdout": done.stdout, "stderr": done.stderr[-2000:]}))
"""

STARTUP = """
import os
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
def rss():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024
steps = [("python interpreter", rss())]
import flock_llm.cli.reviews, flock_llm.cli.main
steps.append(("flock_llm + pydantic + CLI (rich)", rss()))
from flock_llm.engines import load_litellm
litellm = load_litellm()
steps.append(("litellm (import, price map, providers)", rss()))
litellm.token_counter(model="gpt-3.5-turbo", text="hello")
steps.append(("tokenizer cl100k_base (the offline model's counts)", rss()))
from flock_llm.engines import _derive
_derive._vader()
steps.append(("VADER lexicon (sentiment)", rss()))
_derive._yake(5).extract_keywords("The battery lasts all week. Setup took five minutes.")
steps.append(("YAKE + numpy + networkx (themes, report mode)", rss()))
litellm.token_counter(model="gpt-4o-mini", text="hello")
steps.append(("NOT loaded any more: o200k_base tokenizer (was used for offline counts)", rss()))
import json; print(json.dumps(steps))
"""


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("make_reviews", ROOT / "examples" / "data" / "make_reviews.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_reviews(path: Path, n: int) -> None:
    make = _generator()
    rng = random.Random(20261201)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps(make.review(rng, i), ensure_ascii=False) + "\n")  # type: ignore[attr-defined]


def run_cli(source: Path, output: Path, batch_size: int) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOCK_", "OPENAI_"))}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    command = [sys.executable, "-m", "flock_llm", "reviews", str(source), "-o", str(output), "--no-progress", "--json",
               "--batch-size", str(batch_size)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env, cwd=ROOT)
    result = json.loads(done.stdout)
    result["wall_s"] = time.perf_counter() - started
    if result["rc"] != 0:
        raise SystemExit(f"flock-llm failed ({result['rc']}): {result['stderr']}")
    result["summary"] = json.loads(str(result["stdout"]))
    return result


def covered_exactly_once(output: Path, n: int) -> bool:
    seen: set[str] = set()
    with output.open(encoding="utf-8") as handle:
        for line in handle:
            for review_id in json.loads(line)["review_ids"]:
                if review_id in seen:
                    return False
                seen.add(review_id)
    return len(seen) == n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 1_000_000])
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    startup = json.loads(
        subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    )
    print("Fixed start-up memory (RSS after each step, MB):")
    previous = 0.0
    for name, mb in startup:
        print(f"  {name:<75} {mb:7.1f}  (+{mb - previous:5.1f})")
        previous = mb
    print()
    print(f"flock-llm reviews, offline model, report mode, --batch-size {args.batch_size}, concurrency 4:")
    print(f"  {'reviews':>10} {'peak RSS MB':>12} {'wall s':>8} {'reviews/s':>10} {'batches':>8} {'exactly once':>13}")
    peaks: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            source, output = Path(tmp) / f"reviews-{n}.jsonl", Path(tmp) / f"out-{n}.jsonl"
            write_reviews(source, n)
            result = run_cli(source, output, args.batch_size)
            summary = result["summary"]
            assert isinstance(summary, dict)
            peaks[n] = int(result["peak_kb"]) / 1024  # type: ignore[call-overload]
            once = covered_exactly_once(output, n)
            rate = n / summary["wall_s"]
            print(f"  {n:>10,} {peaks[n]:>12.1f} {summary['wall_s']:>8.1f} {rate:>10,.0f} {summary['batches']:>8,} "
                  f"{'yes' if once else 'NO':>13}")  # fmt: skip
            source.unlink()
            output.unlink()
    if len(peaks) >= 2:
        small, large = min(peaks), max(peaks)
        growth = peaks[large] - peaks[small]
        print(f"\nPeak RSS growth from {small:,} to {large:,} reviews: {growth:+.1f} MB (goal: at most +60 MB)")


if __name__ == "__main__":
    main()
