"""A real small model's answer quality per batch size: `flock-llm calibrate --model local[:NAME]` on VADER's
human-labelled Amazon review snippets (../shared/data/vader-icwsm2014, MIT licence).

Writes a seeded sample of snippets as the CLI's reviews (id, rating, text) with the human label as a gold column
(mean rating >= 0.25 positive, <= -0.25 negative, else neutral, as `benchmarks/quality.py` labels them), then runs
the calibrate command on the local model: per size, agreement with the same model's one-item answers (95% Wilson
interval), accuracy against the human labels, calls and tokens per item, and the recommended size; then the wall
time and the gold labels' shares (always answering the most common label scores its share).

The snippets have no star rating: every review is given rating 3, so the label must come from the text (a rating
derived from the human score would hand the model its answer). Needs the `local` extra. Slow on a CPU: a one-item
call takes seconds, a call of 25 about half a minute; 50 snippets at 1,5,10,25 take about 10 minutes.

Run: python benchmarks/local_quality.py [--n 50] [--sizes 1,5,10,25] [--model local:smollm2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from quality import load

from flock_llm.cli.main import main


def label_of(mean: float) -> str:
    return "positive" if mean >= 0.25 else "negative" if mean <= -0.25 else "neutral"


def write_sample(path: Path, n: int, seed: int) -> Counter[str]:
    """`n` snippets chosen with `seed`, as reviews with a `gold` column; returns the gold labels' counts."""
    rows = load()
    chosen = random.Random(seed).sample(rows, min(n, len(rows)))
    with path.open("w", encoding="utf-8") as handle:
        for sid, mean, text in chosen:
            handle.write(json.dumps({"id": sid, "rating": 3, "text": text, "gold": label_of(mean)}) + "\n")
    return Counter(label_of(mean) for _, mean, _ in chosen)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="snippets to calibrate on (default 50)")
    parser.add_argument("--sizes", default="1,5,10,25", help="batch sizes (default 1,5,10,25)")
    parser.add_argument("--model", default="local:smollm2", help="local[:NAME] (default local:smollm2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "snippets.jsonl"
        gold = write_sample(source, args.n, args.seed)
        started = time.perf_counter()
        code = main(["calibrate", str(source), "--model", args.model, "--sizes", args.sizes, "--sample",
                     str(args.n), "--gold", "gold", "--tolerance", "0.05"])  # fmt: skip
        wall = time.perf_counter() - started
    total = sum(gold.values())
    shares = ", ".join(f"{label} {count / total:.0%}" for label, count in gold.most_common())
    common, count = gold.most_common(1)[0]
    print(f"\nwall time {wall:.0f} s (exit {code}); gold labels of the {total} snippets: {shares} "
          f"(always answering {common!r} scores {count / total:.0%})")  # fmt: skip


if __name__ == "__main__":
    run()
