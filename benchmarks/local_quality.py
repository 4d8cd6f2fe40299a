"""A real small model's answer quality per batch size: `flock-llm calibrate --model local[:NAME]` on VADER's
human-labelled Amazon review snippets (../shared/data/vader-icwsm2014, MIT licence).

Writes a seeded sample of snippets as the CLI's reviews (id, rating, text) with the human label as a gold column
(mean rating >= 0.25 positive, <= -0.25 negative, else neutral, as `benchmarks/quality.py` labels them), then runs
the calibrate command on the local model (`--json`) and prints per size: agreement of whole answers (label and
reason) and of each field with the same model's one-item answers (95% Wilson interval for the label), accuracy
against the human labels, calls and tokens per item; the recommended size for whole answers and for the label
alone (as `--fields label` would recommend it); then the wall time and the gold labels' shares (always answering
the most common label scores its share).

The snippets have no star rating: every review is given rating 3, so the label must come from the text (a rating
derived from the human score would hand the model its answer). Needs the `local` extra. Slow on a CPU: a one-item
call takes seconds, a call of 25 about half a minute; 50 snippets at 1,5,10,25 take about 10 minutes.

Run: python benchmarks/local_quality.py [--n 50] [--sizes 1,5,10,25] [--model local:smollm2] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from quality import load

from flock_llm.cli.main import main
from flock_llm.quality.calibration import SizeRow, recommend
from flock_llm.quality.stats import wilson


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


def table(result: dict[str, Any], tolerance: float) -> list[str]:
    """The calibration's figures per size: whole answers, each field, accuracy, calls and tokens; then the
    recommended size for whole answers and for the label alone (as `--fields label` recommends it)."""
    rows, labels = [], []
    lines = [f"{'size':>4}  {'whole answers':>13}  {'label [95% CI]':>22}  {'reason':>6}  {'accuracy':>8}  "
             f"{'calls/item':>10}  {'tokens/item':>11}  {'failed':>6}"]  # fmt: skip
    for row in result["sizes"]:
        label, reason = row["by_field"].get("label"), row["by_field"].get("reason")
        whole, accuracy = row["agreement"], row["accuracy"]
        lines.append(
            f"{row['size']:>4}  {pct(whole):>13}  {interval(label):>22}  {pct(reason):>6}  {pct(accuracy):>8}  "
            f"{row['calls_per_item']:>10.3f}  {row['tokens_per_item']:>11.0f}  {row['failed']:>6}"
        )
        rows.append(size_row(row, whole))
        labels.append(size_row(row, label))
    lines.append(f"recommended: whole answers {result['recommended_size']}; the label alone "
                 f"{recommend(labels, tolerance)[0]} ({recommend(labels, tolerance)[1]})")  # fmt: skip
    return lines


def pct(figures: dict[str, Any] | None) -> str:
    return "-" if not figures or figures["rate"] is None else f"{figures['rate']:.1%}"


def interval(figures: dict[str, Any] | None) -> str:
    if not figures or figures["rate"] is None:
        return "-"
    return f"{figures['rate']:.1%} [{figures['low']:.1%}-{figures['high']:.1%}]"


def size_row(row: dict[str, Any], figures: dict[str, Any] | None) -> SizeRow:
    n = figures["n"] if figures else 0
    agreed = round((figures["rate"] or 0) * n) if figures else 0
    return SizeRow(row["size"], items=row["items"], agreement=wilson(agreed, n), failed=row["failed"])


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
        started, printed = time.perf_counter(), io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(["calibrate", str(source), "--model", args.model, "--sizes", args.sizes, "--sample",
                         str(args.n), "--gold", "gold", "--tolerance", "0.05", "--json"])  # fmt: skip
        wall = time.perf_counter() - started
    if code not in (0, 1):
        raise SystemExit(f"calibrate exited with {code}")
    result = json.loads(printed.getvalue())
    print(f"{result['model']} on {result['sample']} VADER snippets (seed {args.seed}); agreement with the same "
          "model's one-item answers, accuracy against the human labels")  # fmt: skip
    print("\n".join(table(result, 0.05)))
    total = sum(gold.values())
    shares = ", ".join(f"{label} {count / total:.0%}" for label, count in gold.most_common())
    common, count = gold.most_common(1)[0]
    print(f"wall time {wall:.0f} s (exit {code}); gold labels: {shares} (always answering {common!r} scores "
          f"{count / total:.0%})")  # fmt: skip


if __name__ == "__main__":
    run()
