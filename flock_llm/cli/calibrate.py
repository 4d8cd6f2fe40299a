"""`flock-llm calibrate FILE --model M`: what batching costs in answer quality, per batch size, on a sample.

A sample of the reviews is asked one at a time (the reference) and at each `--sizes` batch size (per-item
labels, as `flock-llm reviews --per-item` asks them). Per size it prints agreement with the one-item answers
(with a 95% Wilson interval), accuracy against a gold column (`--gold`), agreement at the start/middle/end of a
batch, and calls, tokens and cost per item; it recommends the largest size within `--tolerance`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import html
import json
import math
import os
import random
import sys
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .._numbers import number
from ..artifact import Artifact
from ..engines import EngineContext, EvalInputs, load_litellm, resolve_model
from ..errors import ConfigurationError
from ..quality.calibration import Calibration, calibrate, parse_sizes
from ..quality.compare import compared_fields
from .checks import output_problem
from .output import write_atomically
from .review_types import NOT_COMPARED, Review, ReviewLabel
from .reviews import AGENT, describe, read_reviews
from .rows import is_pipe

__all__ = ["add_parser", "run"]

_BUCKETS = ("first", "early", "middle", "late", "last")


def add_parser(commands: Any) -> None:
    """Register `calibrate` on the CLI's subcommands."""
    parser = commands.add_parser(
        "calibrate",
        help="measure answer agreement and cost per batch size on a sample, and recommend a size",
        description="Ask a sample of reviews one at a time and at each batch size; print per size the agreement "
        "with the one-item answers (95%% interval), accuracy against a gold column, agreement by position, calls, "
        "tokens and cost per item; recommend the largest size within --tolerance. Exit status: 0 done; 2 usage "
        "error (nothing was sent).",
    )
    parser.add_argument("file", type=Path, help="reviews as .jsonl or .csv (id, rating, text, and any gold column)")
    parser.add_argument("--model", help="litellm model string, or local[:NAME] for a small model served on this "
                        "machine for the calibration (default: FLOCK_LLM_MODEL, else the offline model)")  # fmt: skip
    parser.add_argument("--sizes", default="1,5,10,25,50", help="batch sizes to measure (default 1,5,10,25,50)")
    parser.add_argument("--sample", type=int, default=100, help="reviews to sample (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument(
        "--per-item", action="store_true", help="per-item labels (the default and only mode: a report has no "
        "one-item answer to compare with)"
    )  # fmt: skip
    parser.add_argument("--gold", metavar="COLUMN[:FIELD]", help="a column of true labels, compared with the "
                        "output field FIELD (default: label)")  # fmt: skip
    parser.add_argument("--fields", metavar="FIELD[,FIELD]", help="compare only these output fields with the "
                        "one-item answers (default: every field; e.g. --fields label for a model that rewords its "
                        "free-text reason at every call)")  # fmt: skip
    parser.add_argument("--ignore", metavar="FIELD[,FIELD]", help="output fields not compared (review_id never is "
                        "unless --fields names it: the output's review_id is the review's own)")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=0.05, help="agreement the recommendation may lose "
                        "against one-item answers (default 0.05)")  # fmt: skip
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds per LLM request (default 60)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--report", type=Path, help="also write the table as a self-contained HTML page")
    parser.add_argument("--estimate", action="store_true", help="print what the calibration itself would send "
                        "and cost, without calling a model, and exit")  # fmt: skip


@dataclass(frozen=True)
class _Plan:
    """A calibration's checked arguments: nothing has been started or sent yet."""

    sizes: list[int]
    field: str
    compared: list[str] | None
    """--fields: the output fields compared (None: every field)."""
    ignored: list[str]
    timeout: float
    artifacts: list[Artifact]
    gold: dict[str, str] | None
    model: str
    """The litellm model string the prompts are rendered for (a local model's served name)."""
    shown: str
    """The model as the table names it (`local:NAME` for a local one)."""


def run(args: argparse.Namespace) -> int:
    """Run `flock-llm calibrate`; returns the exit status (0 done; 1 every batched call failed, nothing was
    compared, or the local model server exited during the calibration; 2 usage error: nothing sent; 3 the
    --report page could not be written after the run, or the result could not be printed: stdout closed).

    With `--model local[:NAME]` the model is served on this machine for the calibration (started after the
    arguments are checked, stopped at the end; `--estimate` starts none); if the server exits meanwhile, the calls
    left fail at once naming how it exited."""
    env = dict(os.environ)
    try:  # everything a run needs is checked here, before anything is started or sent
        plan = _plan(args, env)
        if args.estimate:
            return _estimate(plan, args.model, env, args.json)
        result, died = _calibrate(plan, args, env)
    except (ConfigurationError, OSError) as exc:  # (also: a local model's weights or server that are missing)
        sys.stderr.write(f"flock-llm calibrate: {exc}\n")
        return 2
    printed = _say(json.dumps(result.as_dict(), indent=2) if args.json else table(result))  # (`| head`: the
    # page, if asked for, is still written: the calibration was paid for)
    batched = [row for row in result.rows if row.size > 1]
    if died is not None:  # the sizes asked after it failed: their rows, and the recommendation, measure nothing
        sys.stderr.write(f"flock-llm calibrate: {died} during the calibration; the items asked after it failed, so "
                         "the recommendation is not a measurement: run the calibration again\n")  # fmt: skip
        return 1
    if batched and all(row.failed == row.items for row in batched):
        sys.stderr.write("flock-llm calibrate: every batched call failed, nothing was compared (see the warnings "
                         "above for the provider's errors)\n")  # fmt: skip
        return 1
    if args.report is not None:
        try:
            write_atomically(args.report, page(result))
        except OSError as exc:  # checked before the run; the disk filled up or the directory went away since
            sys.stderr.write(f"flock-llm calibrate: --report {str(args.report)!r} could not be written: {exc}\n")
            return 3
    return 0 if printed else 3


def _plan(args: argparse.Namespace, env: dict[str, str]) -> _Plan:
    from .local import estimate_settings, local_name

    field = (args.gold.split(":", 1)[1] if args.gold and ":" in args.gold else "label").strip()
    sizes = parse_sizes(args.sizes)
    if args.sample < 1:
        raise ConfigurationError(f"--sample must be a positive number of reviews, got {args.sample}")
    if not 0 < args.tolerance < 1:
        raise ConfigurationError(f"--tolerance must be between 0 and 1, got {args.tolerance}")
    if args.gold and field not in ReviewLabel.model_fields:
        raise ConfigurationError(
            f"--gold {args.gold!r}: the output has no field {field!r}; its fields: {sorted(ReviewLabel.model_fields)}"
        )
    if args.gold and args.file.exists() and is_pipe(args.file):  # the gold column is read in a second pass
        raise ConfigurationError(
            f"--gold reads {str(args.file)!r} twice (the reviews, then the gold column), which a named pipe cannot do; "
            "save the input to a file first"
        )
    if args.report is not None and (problem := output_problem(args.report, args.file)):
        raise ConfigurationError(problem.replace("--output", "--report"))
    compared, ignored = _names("--fields", args.fields), _names("--ignore", args.ignore) or []
    if compared is None:  # (with --fields, only the fields named are compared)
        ignored += [name for name in NOT_COMPARED if name not in ignored]
    compared_fields(ReviewLabel, compared, ignored)  # names the output has, leaving one to compare
    timeout = number("--request-timeout", args.request_timeout, unit="seconds")
    reviews, gold = _sample(args.file, args.sample, args.seed, args.gold)
    artifacts = [Artifact(type_name="Review", payload=r, id=_artifact_id(r)) for r in reviews]
    local = local_name(args.model)
    if local is None:
        model = resolve_model(None, args.model, env)
        return _Plan(sizes, field, compared, ignored, timeout, artifacts, gold, model, model)
    from ..testing.local_server import known_local_model, unknown_local_model

    if not known_local_model(local):
        raise unknown_local_model(local)
    served = estimate_settings(args.model)[0] or ""
    return _Plan(sizes, field, compared, ignored, timeout, artifacts, gold, served, f"local:{local}")


def _calibrate(plan: _Plan, args: argparse.Namespace, env: dict[str, str]) -> tuple[Calibration, str | None]:
    """Ask the sample at every size (serving a local model for it, when `--model local[:NAME]`); with how the
    local server exited if it did during the calibration (else None)."""
    from ..engines.llm import LLMEngine
    from .local import LOCAL_REQUEST_TIMEOUT_S, serve_local, watched

    with serve_local(args.model) as (served, settings, exited):
        timeout = max(plan.timeout, LOCAL_REQUEST_TIMEOUT_S) if settings else plan.timeout  # minutes on a CPU
        engine = watched(LLMEngine(per_item=True, timeout=timeout, **settings), exited)
        measure = partial(calibrate, model=plan.shown, tolerance=args.tolerance, gold=plan.gold, gold_field=plan.field,
                          fields=plan.compared, ignore=plan.ignored)  # fmt: skip
        result = asyncio.run(measure(engine, _context(served or plan.model, env), plan.artifacts, plan.sizes))
        died = None if exited is None else exited()
    if settings:  # a model served on this machine costs nothing (as --estimate prices it), not "unknown"
        for row in result.rows:
            row.cost_usd = 0.0
    return result, died


def _names(flag: str, text: str | None) -> list[str] | None:
    """--fields/--ignore "label,reason" -> ["label", "reason"] (None: not given)."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        fields = sorted(ReviewLabel.model_fields)
        raise ConfigurationError(f"{flag} {text!r} names no field; the output's fields: {fields}")
    return names


def _context(model: str | None, env: dict[str, str]) -> EngineContext:
    return EngineContext(agent_name=AGENT, description=describe(True), publishes=(ReviewLabel,), model=model,
                         env=env)  # fmt: skip


def _sample(path: Path, n: int, seed: int, gold: str | None) -> tuple[list[Review], dict[str, str] | None]:
    reviews, bad = read_reviews(path)
    if bad:
        sys.stderr.write(f"flock-llm calibrate: skipped {len(bad)} rows of {str(path)!r} (first: line "
                         f"{bad[0].line}: {bad[0].error})\n")  # fmt: skip
    if not reviews:
        raise ConfigurationError(f"no usable reviews in {str(path)!r}: rows need id, rating (1-5) and text")
    chosen = sorted(random.Random(seed).sample(range(len(reviews)), min(n, len(reviews))))
    sample = [reviews[k] for k in chosen]
    if not gold:
        return sample, None
    column = gold.split(":", 1)[0].strip()
    labels = _column(path, column)
    if not labels:
        raise ConfigurationError(f"--gold {column!r}: no row of {str(path)!r} has that column")
    return sample, {_artifact_id(r): labels[r.review_id] for r in sample if r.review_id in labels}


def _artifact_id(review: Review) -> str:
    """A sampled review's artifact id, derived from its review id: the gold labels are keyed by it."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"flock-llm-calibrate:{review.review_id}").hex


def _column(path: Path, column: str) -> dict[str, str]:
    """review id -> the value of `column`, for the rows that have both."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(handle))
        else:
            rows = [row for line in handle if line.strip() and (row := _json_row(line)) is not None]
    found: dict[str, str] = {}
    for row in rows:
        key = row.get("review_id", row.get("id"))
        if key is not None and row.get(column) not in (None, ""):
            found[str(key)] = str(row[column])
    return found


def _json_row(line: str) -> dict[str, Any] | None:
    """A JSONL line as a row; None for a line the reviews reader skips too (not JSON, not an object)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _estimate(plan: _Plan, model_arg: str | None, env: dict[str, str], as_json: bool) -> int:
    """What the calibration would send and cost, without calling a model (nor starting a local one)."""
    from ..engines.llm import LLMEngine
    from .local import estimate_settings

    engine = LLMEngine(per_item=True, timeout=plan.timeout, **estimate_settings(model_arg)[1])
    ctx, artifacts = _context(plan.model, env), plan.artifacts
    calls = prompt = answer = 0
    for size in plan.sizes:
        batch_ctx = EngineContext(**{**_fields(ctx), "is_batch": size > 1, "batch_size": size})
        for k in range(0, len(artifacts), size):
            p, a = engine.estimate_call(batch_ctx, EvalInputs.of(*artifacts[k : k + size]))
            calls, prompt, answer = calls + 1, prompt + p, answer + a
    prices = engine.costs.prices_for(plan.model, load_litellm())
    free = plan.shown != plan.model  # a model served on this machine
    cost = 0.0 if free else None if prices is None else prices.cost(prompt=prompt, completion=answer)
    figures = {"model": plan.shown, "sample": len(artifacts), "sizes": plan.sizes, "calls": calls,
               "prompt_tokens": prompt, "completion_tokens": answer, "cost_usd": cost}  # fmt: skip
    shown = "unknown (no price for the model)" if cost is None else f"${cost:.4f}"
    text = json.dumps(figures, indent=2) if as_json else (
        f"calibrating {len(artifacts)} reviews at sizes {','.join(map(str, plan.sizes))} with {plan.shown} would "
        f"send {calls} calls, {prompt:,} prompt tokens, ~{answer:,} answer tokens; cost {shown}"
    )  # fmt: skip
    return 0 if _say(text) else 3


def _say(text: str) -> bool:
    """Print `text`; False when stdout was closed (a pipe whose reader ended, e.g. `| head`)."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        if sys.__stdout__ is not None and sys.stdout is sys.__stdout__:  # the rest of its buffer goes nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)  # (not a second error at exit)
            os.dup2(devnull, sys.__stdout__.fileno())
            os.close(devnull)
        sys.stderr.write("flock-llm calibrate: cannot print the result: the output was closed (broken pipe)\n")
        return False
    return True


def _fields(ctx: EngineContext) -> dict[str, Any]:
    return {name: getattr(ctx, name) for name in ctx.__dataclass_fields__}


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"


def _rows(result: Calibration) -> list[list[str]]:
    rows = []
    for row in result.rows:
        a = row.agreement
        agreement = f"{_pct(a.rate)} [{_pct(a.low)}-{_pct(a.high)}]" if a.n else "-"
        accuracy = "-" if row.accuracy is None or not row.accuracy.n else _pct(row.accuracy.rate)
        positions = " ".join(_pct(row.by_position[b].rate) if b in row.by_position else "-" for b in _BUCKETS)
        cost = row.per_item(row.cost_usd)
        rows.append([
            str(row.size), agreement, accuracy, positions, f"{row.per_item(row.calls) or 0:.3f}",
            f"{row.per_item(row.prompt_tokens + row.completion_tokens) or 0:,.0f}",
            "-" if cost is None else f"${cost:.6f}", str(row.failed),
        ])  # fmt: skip
    return rows


_HEADER = ["size", "agreement [95% CI]", "accuracy", "first/early/middle/late/last", "calls/item", "tokens/item",
           "cost/item", "failed"]  # fmt: skip


def table(result: Calibration) -> str:
    """The calibration as a text table with the recommendation under it."""
    rows = [_HEADER, *_rows(result)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([
        f"calibration of {result.model} on {result.sample} sampled reviews (per-item labels)", *lines, "",
        *_field_lines(result), f"recommended batch size: {result.recommended} ({result.reason})",
    ])  # fmt: skip


def _field_lines(result: Calibration) -> list[str]:
    """Agreement of each compared field at each size (which field a size gets wrong), then a blank line; none
    when one field is compared (the table's agreement is that field's)."""
    names = sorted({name for row in result.rows for name in row.by_field})
    if len(names) < 2:
        return []
    sizes = "/".join(str(row.size) for row in result.rows)
    lines = [f"agreement by field at sizes {sizes}:"]
    for name in names:
        rates = "/".join(_pct(row.by_field[name].rate) if name in row.by_field else "-" for row in result.rows)
        lines.append(f"  {name}: {rates}")
    return [*lines, ""]


def page(result: Calibration) -> str:
    """The calibration as a self-contained HTML page."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in _rows(result))
    title = f"Calibration of {html.escape(result.model)}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>body{{font-family:sans-serif;"
        "margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        f"</style></head><body><h1>{title}</h1><p>{result.sample} sampled reviews, per-item labels; agreement is "
        "with the same model's one-item answers.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        + "".join(f"<p>{html.escape(line)}</p>" for line in _field_lines(result) if line)
        + f"<p><strong>Recommended batch size: {result.recommended}</strong> ({html.escape(result.reason)})</p>"
        "</body></html>"
    )
