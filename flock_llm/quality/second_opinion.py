"""A quality target's second opinion: a call whose audit disagrees has its other items asked again in calls of
half its size. Their answers replace the call's (a smaller batch is answered at least as well: the answers a
degrading size got wrong are not published), each disagreeing audited item gets its one-item answer, and how
often the two answers of the re-asked items agree is evidence about the call's size for the controller.

One audit rarely tells a broken size from a stray error; the second opinion looks at every item of the call
that raised the doubt, so a size that collapsed (a provider that drifts) is given up after one call instead of
several, and the call's bad answers are not published. Its calls cost about one more call of the batch, only
after a disagreement. The comparison is conservative evidence: a disagreement may be either answer's error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .audit import Audit, add_usage, audit_call_usage
from .compare import compare_answers

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..engines import EngineContext, EvalInputs, EvalResult, Output

__all__ = ["SecondOpinion", "ask_second_opinion", "halves"]

log = logging.getLogger("flock_llm.quality")

Ladder = Callable[["EngineContext", "EvalInputs"], Awaitable["EvalResult"]]


@dataclass(frozen=True, slots=True)
class SecondOpinion:
    """What a second opinion did: the chunk's result with its answers replaced, and the evidence it gathered."""

    result: EvalResult
    """The chunk's result: re-asked answers and one-item answers in place of the batch's."""
    agreed: int
    """Re-asked items whose two answers agreed."""
    compared: int
    """Re-asked items with both answers (the evidence's size; 0 when every re-ask failed)."""


def halves(positions: Sequence[int], size: int) -> list[list[int]]:
    """`positions` (of a call of `size` items) in parts of half that size (at least one item), in order."""
    part = max(1, size // 2)
    return [list(positions[k : k + part]) for k in range(0, len(positions), part)]


async def ask_second_opinion(
    ctx: EngineContext,
    chunk: EvalInputs,
    result: EvalResult,
    references: Mapping[int, BaseModel],
    disagreeing: Sequence[int],
    ladder: Ladder,
    audit: Audit,
) -> SecondOpinion:
    """Ask the items of `chunk` that were not audited (not in `references`, position -> one-item answer) again in
    calls of half its size, through the engine's `ladder`; replace their answers by the re-asked ones and the
    answers at the `disagreeing` positions by their one-item answers. A re-ask that fails (a provider error, a
    budget stop) keeps the batch's answers of its items; an item the batch failed is not asked again (its failure
    record stands). Counted in usage: `second_opinion_calls` (its calls, tokens and cost are in the totals too),
    `second_opinion_compared`, `second_opinion_agreed`, `second_opinion_replaced`, `second_opinion_errors` (re-asks
    that raised or failed some of their items: a budget stop, a provider error)."""
    from ..engines import EvalInputs, Output

    outputs: list[Output] = list(result.outputs)
    at = {o.derived_from: n for n, o in enumerate(outputs) if o.derived_from is not None}
    # an item the batch failed keeps its failure record: a re-asked answer for it could only be thrown away
    rest = [k for k in range(len(chunk)) if k not in references and _ids(chunk, k) in at]
    parts = halves(rest, len(chunk))
    answers = await asyncio.gather(
        *(_ask(ctx, EvalInputs(tuple(chunk.items[k] for k in part)), ladder) for part in parts)
    )
    usage = dict(result.usage)
    agreed = compared = replaced = 0
    for part, again in zip(parts, answers, strict=True):
        if again is None or again.failures:  # raised, or recorded failures (a budget stop, a provider error)
            add_usage(usage, {"second_opinion_errors": 1})
        if again is None:
            continue
        spent = {k: v for k, v in audit_call_usage(again.usage).items() if not k.startswith("audit_")}
        add_usage(usage, {**spent, "second_opinion_calls": spent.get("llm_calls", 0)})
        for position in part:
            ids = _ids(chunk, position)
            second = next((o.obj for o in again.outputs if o.derived_from == ids), None)
            index = at.get(ids)
            if second is None or index is None or type(second) is not type(outputs[index].obj):
                continue  # the re-ask failed this item, or the batch did: the batch's outcome stands
            same = compare_answers(
                outputs[index].obj, second, tolerance=audit.tolerance, fields=audit.fields, ignore=audit.ignore
            ).agreed
            agreed, compared, replaced = agreed + same, compared + 1, replaced + (not same)
            outputs[index] = Output(second, ids)
    for position in disagreeing:
        ids = _ids(chunk, position)
        if (index := at.get(ids)) is not None:
            outputs[index] = Output(references[position], ids)
            replaced += 1
    add_usage(usage, {"second_opinion_compared": compared, "second_opinion_agreed": agreed})
    add_usage(usage, {"second_opinion_replaced": replaced})
    log.info(
        "agent %r: second opinion on a call of %d: %d of %d re-asked answers agreed, %d answer(s) replaced",
        ctx.agent_name,
        len(chunk),
        agreed,
        compared,
        replaced,
    )
    return SecondOpinion(replace(result, outputs=tuple(outputs), usage=usage), agreed, compared)


def _ids(chunk: EvalInputs, position: int) -> tuple[str, ...]:
    return tuple(a.id for a in chunk.items[position])


async def _ask(ctx: EngineContext, part: EvalInputs, ladder: Ladder) -> EvalResult | None:
    try:
        return await ladder(replace(ctx, batch_size=len(part)), part)
    except Exception as exc:  # noqa: BLE001 - engine code (a budget stop, a provider error): the batch's answers stand
        log.warning("agent %r: a second-opinion call failed (%s); the batch's answers stand", ctx.agent_name,
                    type(exc).__name__)  # fmt: skip
        return None
