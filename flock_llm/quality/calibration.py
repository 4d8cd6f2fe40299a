"""Calibration: ask a sample one item at a time and at each batch size, and measure what batching costs in
agreement (and accuracy against a gold column), by position, calls, tokens and cost.

The recommendation is the largest size whose agreement with the one-item answers has a 95% lower confidence
bound of at least `1 - tolerance`, provided every smaller size measured also has (so one lucky size is not
picked past a failing one); size 1 always qualifies. A small sample gives wide intervals and so a cautious
recommendation: 100 agreeing items have a lower bound of 96.3%, 40 of 91.2%.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .compare import Tolerance, compare_answers, compared_fields
from .stats import ALL_FIELDS, AgreementTally, Interval, wilson

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..artifact import Artifact
    from ..engines import Engine, EngineContext, EvalResult

__all__ = ["Calibration", "SizeRow", "calibrate", "parse_sizes", "recommend"]


@dataclass
class SizeRow:
    """What one batch size gave on the sample."""

    size: int
    items: int = 0
    agreement: Interval = field(default_factory=lambda: wilson(0, 0))
    """Whole answers equal (within tolerance) to the one-item answers."""
    by_position: dict[str, Interval] = field(default_factory=dict)
    by_field: dict[str, Interval] = field(default_factory=dict)
    """Agreement of each compared (dotted) field on its own: which field a size gets wrong."""
    accuracy: Interval | None = None
    """Share of answers whose gold field matches the gold column (with --gold)."""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    failed: int = 0

    def per_item(self, value: float | None) -> float | None:
        return None if value is None or not self.items else value / self.items

    def as_dict(self) -> dict[str, Any]:
        def interval(i: Interval | None) -> dict[str, float | None] | None:
            return None if i is None else {"rate": i.rate, "low": i.low, "high": i.high, "n": i.n}

        return {
            "size": self.size,
            "items": self.items,
            "agreement": interval(self.agreement),
            "by_position": {k: interval(v) for k, v in self.by_position.items()},
            "by_field": {k: interval(v) for k, v in self.by_field.items()},
            "accuracy": interval(self.accuracy),
            "calls": self.calls,
            "calls_per_item": self.per_item(self.calls),
            "prompt_tokens": self.prompt_tokens,
            "tokens_per_item": self.per_item(self.prompt_tokens + self.completion_tokens),
            "cost_usd": self.cost_usd,
            "cost_per_item_usd": self.per_item(self.cost_usd),
            "failed": self.failed,
        }


@dataclass
class Calibration:
    model: str
    sample: int
    tolerance: float
    rows: list[SizeRow]
    recommended: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "sample": self.sample,
            "tolerance": self.tolerance,
            "recommended_size": self.recommended,
            "reason": self.reason,
            "sizes": [row.as_dict() for row in self.rows],
        }


def parse_sizes(text: str) -> list[int]:
    """ "1,5,10" -> [1, 5, 10] (sorted, 1 added: the one-item answers are the reference)."""
    try:
        sizes = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ConfigurationError(f"--sizes must be whole numbers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigurationError(f"--sizes must be positive whole numbers, got {text!r}; e.g. --sizes 1,5,10,25")
    return sorted(sizes | {1})


def recommend(rows: Sequence[SizeRow], tolerance: float) -> tuple[int, str]:
    """The largest size whose agreement's lower bound (and every smaller size's) is >= 1 - tolerance, and why."""
    floor = 1 - tolerance
    best, why = 1, "one item per call is the reference"
    for row in sorted(rows, key=lambda r: r.size):
        if row.size == 1:
            continue
        agreement = row.agreement
        failed = f" ({row.failed} of {row.items} items failed: see the failed column)" if row.failed else ""
        if not agreement.n:
            return best, f"{why}; size {row.size}: nothing compared{failed}"
        if agreement.low < floor and failed:  # fewer answers than sampled: the failures, not the sample, are short
            return best, f"{why}; size {row.size} agrees {agreement}, its lower bound below {floor:.0%}{failed}"
        if agreement.low < floor:
            if agreement.rate is not None and agreement.rate < floor:
                return best, f"{why}; size {row.size} agrees {agreement}, below {floor:.0%}"
            return best, (
                f"{why}; size {row.size} agrees {agreement}: its lower bound is below {floor:.0%} "
                "(a larger --sample narrows the interval)"
            )
        best, why = row.size, f"size {row.size} agrees {agreement}"
    return best, why


async def calibrate(
    engine: Engine,
    ctx: EngineContext,
    artifacts: Sequence[Artifact],
    sizes: Sequence[int],
    *,
    model: str,
    tolerance: float = 0.05,
    compare: Tolerance | None = None,
    gold: Mapping[str, str] | None = None,
    gold_field: str = "label",
    concurrency: int = 4,
    fields: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
) -> Calibration:
    """Measure `sizes` on `artifacts` (one item each) with `engine` (per-item output). `gold` maps an artifact id
    to its true value of `gold_field`; `fields`/`ignore` choose the fields compared (as `Audit`'s: default every
    field; a model that rewords free text at each call agrees on its labels only with e.g. `fields=["label"]`)."""
    _check(_output_type(engine, ctx), tolerance, sizes, fields, ignore, gold_field if gold else None)
    from ..engines import EvalInputs

    gate = asyncio.Semaphore(max(1, concurrency))

    async def ask(size: int, chunk: Sequence[Artifact]) -> EvalResult:
        run_ctx = replace(ctx, is_batch=size > 1, batch_size=len(chunk), configured_size=size)
        async with gate:
            if size == 1:
                return await engine.evaluate(run_ctx, EvalInputs.of(*chunk))
            return await engine.evaluate_batch(run_ctx, EvalInputs.of(*chunk))

    rows: list[SizeRow] = []
    reference: dict[str, BaseModel] = {}
    for size in sorted(set(sizes) | {1}):
        chunks = [artifacts[k : k + size] for k in range(0, len(artifacts), size)]
        results = await asyncio.gather(*(ask(size, chunk) for chunk in chunks))
        row, answers = _measure(size, chunks, results, gold, gold_field)
        if size == 1:
            reference = answers
        compared = partial(compare_answers, tolerance=compare, fields=fields, ignore=ignore)
        tally = AgreementTally()
        for chunk in chunks:
            for position, artifact in enumerate(chunk):
                mine, alone = answers.get(artifact.id), reference.get(artifact.id)
                if mine is not None and alone is not None:
                    tally.add("calibrate", compared(mine, alone), position=position, batch_size=size)
        row.agreement = tally.overall()
        row.by_position = tally.by("bucket")
        row.by_field = {name: interval for name, interval in tally.by("field").items() if name != ALL_FIELDS}
        rows.append(row)
    best, why = recommend(rows, tolerance)
    return Calibration(model, len(artifacts), tolerance, rows, best, why)


def _output_type(engine: Engine, ctx: EngineContext) -> type[BaseModel] | None:
    """The type the answers will have, as the engine resolves it (its own `output_type`, else the first type the
    agent publishes), or None when it cannot be told before asking."""
    own = getattr(engine, "output_type", None)
    return own if isinstance(own, type) else ctx.publishes[0] if ctx.publishes else None


def _check(
    output: type[BaseModel] | None,
    tolerance: float,
    sizes: Sequence[int],
    fields: Sequence[str] | None,
    ignore: Sequence[str],
    gold_field: str | None,
) -> None:
    """`calibrate`'s arguments, checked before anything is asked (a comparison's fields would otherwise raise only
    once every call was paid for, and a gold field the answers lack would score every answer wrong)."""
    if not 0 < tolerance < 1:
        raise ConfigurationError(f"`tolerance` must be between 0 and 1, got {tolerance!r}")
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad or not sizes:
        raise ConfigurationError(f"`sizes` must be whole numbers >= 1, got {list(sizes)!r}; e.g. [1, 5, 10, 25]")
    if output is None:
        return
    compared_fields(output, fields, ignore)
    if gold_field is not None and gold_field not in output.model_fields:
        raise ConfigurationError(
            f"`gold_field` {gold_field!r}: {output.__name__} has no such field (every answer would count as wrong); "
            f"its fields: {sorted(output.model_fields)}"
        )


def _measure(
    size: int,
    chunks: Sequence[Sequence[Artifact]],
    results: Sequence[EvalResult],
    gold: Mapping[str, str] | None,
    gold_field: str,
) -> tuple[SizeRow, dict[str, BaseModel]]:
    row = SizeRow(size)
    answers: dict[str, BaseModel] = {}
    cost: float | None = None
    for chunk, result in zip(chunks, results, strict=True):
        row.items += len(chunk)
        for output in result.outputs:
            if output.derived_from and len(output.derived_from) == 1:
                answers[output.derived_from[0]] = output.obj
            elif len(chunk) == 1 and len(result.outputs) == 1:
                answers[chunk[0].id] = output.obj
        row.failed += sum(len(f.artifact_ids) for f in result.failures)
        usage = result.usage
        row.calls += int(usage.get("llm_calls", 0) or 0)
        row.prompt_tokens += int(usage.get("prompt_tokens", 0) or 0)
        row.completion_tokens += int(usage.get("completion_tokens", 0) or 0)
        spent = usage.get("cost_usd")
        if isinstance(spent, (int, float)):
            cost = (cost or 0.0) + float(spent)
    row.cost_usd = cost
    if gold:
        right = n = 0
        for artifact_id, answer in answers.items():
            if artifact_id in gold:
                n += 1
                right += str(getattr(answer, gold_field, None)).strip().lower() == gold[artifact_id].strip().lower()
        row.accuracy = wilson(right, n)
    return row, answers
