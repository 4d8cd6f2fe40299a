"""Report facts in the engine's run (see `facts`): given to the model in the prompt, and its answer checked
against them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .audit import add_usage
from .facts import ReportFacts, check_report, compute_facts, fill_facts, valid_ids

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..engines import EngineContext, EvalInputs, EvalResult, Output

__all__ = ["checked_report", "prompt_facts"]

log = logging.getLogger("flock_llm.quality")


def prompt_facts(
    chunk: EvalInputs, facts: ReportFacts
) -> Callable[[type[BaseModel], Sequence[str]], Mapping[str, Any]]:
    """`EngineContext.facts` for a report run over `chunk`: the computed values for the items a call asks (a call
    that asks part of the chunk, after a split, gets the part's values)."""

    def given(output_type: type[BaseModel], artifact_ids: Sequence[str]) -> Mapping[str, Any]:
        wanted = set(artifact_ids)
        payloads = [a.payload for a in chunk.artifacts if a.id in wanted]
        return compute_facts(output_type, payloads, facts) if payloads else {}

    return given


def _problems(result: EvalResult, chunk: EvalInputs, facts: ReportFacts) -> list[str]:
    found: list[str] = []
    for output in result.outputs:
        payloads = _payloads(output, chunk)
        computed = compute_facts(type(output.obj), payloads, facts)
        found.extend(check_report(output.obj, computed, valid_ids(payloads, len(chunk)), facts))
    return found


def _payloads(output: Output, chunk: EvalInputs) -> list[Any]:
    covered = set(output.derived_from) if output.derived_from is not None else None
    return [a.payload for a in chunk.artifacts if covered is None or a.id in covered]


async def checked_report(
    ctx: EngineContext,
    chunk: EvalInputs,
    result: EvalResult,
    facts: ReportFacts,
    ladder: Callable[[EngineContext, EvalInputs], Awaitable[EvalResult]],
) -> EvalResult:
    """`result` (a report run over `chunk`) checked: an answer that contradicts the computed facts or cites ids
    not in the batch is sent back through the ladder once; then the computed values are filled in and foreign
    ids dropped. Counted in usage as `report_rejected`, `report_facts_filled`, `report_foreign_ids_dropped`."""
    usage = dict(result.usage)
    problems = _problems(result, chunk, facts)
    if problems:
        log.info("agent %r: report answer rejected (%s); asking again", ctx.agent_name, "; ".join(problems[:3]))
        add_usage(usage, {"report_rejected": 1})
        again = await ladder(ctx, chunk)
        add_usage(usage, {k: v for k, v in again.usage.items() if k not in ("items", "per_item_prompt_tokens")})
        result = replace(again, usage=usage) if again.outputs else replace(result, usage=usage)
    outputs = []
    filled = dropped = 0
    for output in result.outputs:
        payloads = _payloads(output, chunk)
        computed = compute_facts(type(output.obj), payloads, facts)
        ids = valid_ids(payloads, len(chunk))
        left = check_report(output.obj, computed, ids, facts)
        fixed = fill_facts(output.obj, computed, ids, facts)
        filled += sum(1 for p in left if "the items give" in p)
        dropped += sum(1 for p in left if "not in the batch" in p)
        outputs.append(replace(output, obj=fixed))
    if filled or dropped:
        log.info("agent %r: %d computed value(s) filled in, %d id list(s) cleaned", ctx.agent_name, filled, dropped)
        add_usage(usage, {"report_facts_filled": filled, "report_foreign_ids_dropped": dropped})
    return replace(result, outputs=tuple(outputs), usage=usage)
