"""The position-bias guard's second half: a batch whose audit disagrees is asked once more in another order,
and each disagreeing audited item keeps its majority answer (batched, alone, re-asked)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .audit import Audit, add_usage, audit_call_usage
from .compare import compare_answers

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..engines import EngineContext, EvalInputs, EvalResult, Output

__all__ = ["reask_majority", "rotated"]

log = logging.getLogger("flock_llm.quality")


def rotated(size: int) -> list[int]:
    """An order that moves the middle of a batch to its ends (rotate by half)."""
    half = size // 2
    return [*range(half, size), *range(half)]


async def reask_majority(
    ctx: EngineContext,
    chunk: EvalInputs,
    result: EvalResult,
    disagreeing: Sequence[tuple[int, BaseModel]],
    ladder: Callable[[EngineContext, EvalInputs], Awaitable[EvalResult]],
    audit: Audit,
) -> EvalResult:
    """Ask `chunk` again in a rotated order; an audited item whose batched answer the re-asked one does not
    confirm gets its one-item answer (2 of 3 votes, or the reference when all three differ). Counted in usage:
    `reask_calls` and `reask_replaced` (its calls, tokens and cost are in the totals)."""
    from ..engines import EvalInputs, Output

    order = rotated(len(chunk))
    again = await ladder(ctx, EvalInputs(tuple(chunk.items[k] for k in order)))
    usage = dict(result.usage)
    spent = audit_call_usage(again.usage)
    add_usage(usage, {k: v for k, v in spent.items() if not k.startswith("audit_")})
    add_usage(usage, {"reask_calls": spent.get("llm_calls", 0), "reask_replaced": 0})
    outputs: list[Output] = list(result.outputs)
    replaced = 0
    for position, reference in disagreeing:
        ids = tuple(a.id for a in chunk.items[position])
        at = next((k for k, o in enumerate(outputs) if o.derived_from == ids), None)
        third = next((o.obj for o in again.outputs if o.derived_from == ids), None)
        if at is None:
            continue
        confirmed = (
            third is not None
            and compare_answers(
                outputs[at].obj, third, tolerance=audit.tolerance, fields=audit.fields, ignore=audit.ignore
            ).agreed
        )
        if not confirmed:
            outputs[at] = Output(reference, ids)
            replaced += 1
    if replaced:
        log.info("agent %r: %d disagreeing answer(s) replaced by their majority answer", ctx.agent_name, replaced)
    usage["reask_replaced"] = replaced
    return replace(result, outputs=tuple(outputs), usage=usage)
