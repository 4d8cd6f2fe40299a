"""The engine side of quality: shuffle, chunk to the effective batch size, audit, and steer the size.

`LadderEngine` keeps one `QualityGuard` when it gets `audit=`, `quality=` or `shuffle=`; its `_run` hands a
flushed batch here. Every model call still goes through the engine: batches through its ladder, audits through
its own one-item `evaluate()`, so they are counted, priced and capped by the budget like any other call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .audit import Audit, Shuffle, add_usage, agreement_usage, audit_call_usage, audited_positions, shuffled_order
from .compare import Comparison, compare_answers
from .controller import ControllerState, QualityTarget, SizeChange, observe
from .facts import ReportFacts
from .reask import reask_majority
from .report_check import checked_report, prompt_facts
from .stats import AgreementTally, position_bucket

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..engines import Engine, EngineContext, EvalInputs, EvalResult

__all__ = ["QualityGuard", "SizeEvent"]

log = logging.getLogger("flock_llm.quality")

Ladder = Callable[["EngineContext", "EvalInputs"], Awaitable["EvalResult"]]

_NOT_ONE_CALL = ("splits", "overflow_splits", "fallbacks")
"""Usage counters of a chunk whose answers did not all come from one call of its size: auditing it would count
answers given in halves or alone as agreement at the chunk's size."""


@dataclass(frozen=True, slots=True)
class SizeEvent:
    """A change of an agent's effective batch size, kept for the CLI and tests."""

    agent: str
    subscription_index: int
    change: SizeChange


class QualityGuard:
    """Audits, the position-bias guard and the batch-size controller of one engine."""

    def __init__(
        self,
        audit: Audit | None,
        target: QualityTarget | None,
        shuffle: Shuffle | None,
        facts: ReportFacts | None = None,
    ) -> None:
        self.facts = facts
        """Report fields computed from the items (report output only; see `flock_llm.quality.facts`)."""
        self.audit = audit
        self.target = target
        self.shuffle = shuffle
        self.tally = AgreementTally(audit.confidence if audit else 0.95)
        """Every audited comparison of this engine."""
        self.states: dict[tuple[str, int], ControllerState] = {}
        """The controller's state per (agent, subscription): `ControllerState.to_json()` to keep or share it."""
        self.events: deque[SizeEvent] = deque(maxlen=1000)

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any], *, per_item: bool = True) -> QualityGuard | None:
        """Take `audit=`, `quality=`, `shuffle=` and `report_facts=` out of an engine's keyword arguments (None:
        none given). `per_item=False` (a report engine) refuses `audit=` and `quality=`: a report has no one-item
        answer to compare with, so they would silently do nothing."""
        audit, target, shuffle = (
            arguments.pop("audit", None),
            arguments.pop("quality", None),
            arguments.pop("shuffle", None),
        )
        facts = arguments.pop("report_facts", None)
        if facts is True:
            facts = ReportFacts()
        if facts is not None and facts is not False and not isinstance(facts, ReportFacts):
            raise ConfigurationError(f"`report_facts` must be True or a ReportFacts(...), got {facts!r}")
        facts = facts or None
        if audit is not None and not isinstance(audit, Audit):
            raise ConfigurationError(f"`audit` must be an Audit, got {audit!r}; e.g. audit=Audit(rate=0.02)")
        if target is not None and not isinstance(target, QualityTarget):
            raise ConfigurationError(f"`quality` must be a QualityTarget, got {target!r}; e.g. QualityTarget(0.95)")
        if target is not None and audit is None:
            raise ConfigurationError("`quality=QualityTarget(...)` steers by audited agreement: add `audit=Audit(...)`")
        if not per_item and (audit is not None or target is not None):
            raise ConfigurationError(
                "`audit=` and `quality=` compare per-item answers with one-item answers; a report engine "
                "(per_item=False) has none: use `report_facts=` to check a report's numbers"
            )
        if shuffle is True:
            shuffle = Shuffle()
        if shuffle is not None and shuffle is not False and not isinstance(shuffle, Shuffle):
            raise ConfigurationError(f"`shuffle` must be True, False or a Shuffle(seed=...), got {shuffle!r}")
        shuffle = shuffle or None
        if audit is None and target is None and shuffle is None and facts is None:
            return None
        return cls(audit, target, shuffle, facts)

    def size_for(self, agent: str, subscription_index: int = 0) -> int | None:
        """The agent's effective batch size (None until its first batch, or without a target)."""
        state = self.states.get((agent, subscription_index))
        return None if state is None else state.size

    # -- a flushed batch ------------------------------------------------------------------------------------

    async def run(self, engine: Engine, ctx: EngineContext, inputs: EvalInputs, ladder: Ladder) -> EvalResult:
        from ..engines import EvalInputs, EvalResult

        items = list(inputs.items)
        if self.shuffle is not None:
            order = shuffled_order(self.shuffle.seed, ["|".join(a.id for a in item) for item in items])
            items = [items[n] for n in order]
        size = self._size(ctx, len(items))
        chunks = [EvalInputs(tuple(items[k : k + size])) for k in range(0, len(items), size)]
        results = await asyncio.gather(*(self._chunk(engine, ctx, chunk, ladder) for chunk in chunks))
        usage: dict[str, Any] = {}
        for result in results:
            add_usage(usage, result.usage)
        if len(chunks) > 1:
            usage["quality_chunks"] = len(chunks)
        merged = EvalResult.merge(results)
        return replace(merged, usage=usage)

    def _size(self, ctx: EngineContext, batch: int) -> int:
        if self.target is None:
            return max(1, batch)
        key = (ctx.agent_name, ctx.subscription_index)
        if key not in self.states:
            self.states[key] = self.target.start(max(1, ctx.configured_size or batch))
        return self.states[key].size

    async def _chunk(self, engine: Engine, ctx: EngineContext, chunk: EvalInputs, ladder: Ladder) -> EvalResult:
        chunk_ctx = replace(ctx, batch_size=len(chunk)) if len(chunk) != ctx.batch_size else ctx
        if self.facts is not None and not getattr(engine, "per_item", False):  # computed facts go in the prompt
            chunk_ctx = replace(chunk_ctx, facts=prompt_facts(chunk, self.facts))
            return await checked_report(chunk_ctx, chunk, await ladder(chunk_ctx, chunk), self.facts, ladder)
        result = await ladder(chunk_ctx, chunk)
        if self.audit is None or not getattr(engine, "per_item", False):
            return result
        if any(result.usage.get(name) for name in _NOT_ONE_CALL):  # answered by parts or alone: not at this size
            return replace(result, usage={**result.usage, "audit_skipped_chunks": 1})
        warming = self._warming(ctx)
        audited = audited_positions(self.audit, [[a.id for a in item] for item in chunk.items], warming=warming)
        if not audited:
            return result
        usage = dict(result.usage)
        checks = await asyncio.gather(*(self._audit(engine, chunk_ctx, chunk, n, result, usage) for n in audited))
        self._steer(ctx, len(chunk), [c[0] for c in checks if c is not None], usage)
        result = replace(result, usage=usage)
        disagreeing = [(n, c[1]) for n, c in zip(audited, checks, strict=True) if c is not None and not c[0].agreed]
        if self.audit.reask and disagreeing:
            return await reask_majority(chunk_ctx, chunk, result, disagreeing, ladder, self.audit)
        return result

    async def _audit(
        self,
        engine: Engine,
        ctx: EngineContext,
        chunk: EvalInputs,
        position: int,
        result: EvalResult,
        usage: dict[str, Any],
    ) -> tuple[Comparison, BaseModel] | None:
        """Ask the item at `position` alone and compare; (comparison, the one-item answer) or None."""
        from ..engines import EvalInputs

        assert self.audit is not None
        item = chunk.items[position]
        ids = tuple(a.id for a in item)
        batched = _output_for(result, ids)
        if batched is None:  # the batch failed this item: nothing to compare
            add_usage(usage, {"audit_skipped": 1})
            return None
        single_ctx = replace(ctx, is_batch=False, batch_size=1)
        started_ns = time.time_ns()
        try:
            alone = await engine.evaluate(single_ctx, EvalInputs((item,)))
        except Exception as exc:  # noqa: BLE001 - engine code (a budget stop, a provider error): count it, keep the batch's answer
            log.warning(
                "agent %r: an audit call failed (%s); the batch's answer stands", ctx.agent_name, type(exc).__name__
            )
            add_usage(usage, {"audit_errors": 1})
            return None
        add_usage(usage, audit_call_usage(alone.usage))
        reference = _output_for(alone, ids) or (alone.outputs[0].obj if len(alone.outputs) == 1 else None)
        if reference is None or type(reference) is not type(batched):
            add_usage(usage, {"audit_errors": 1})
            return None
        try:
            comparison = compare_answers(
                batched, reference, tolerance=self.audit.tolerance, fields=self.audit.fields, ignore=self.audit.ignore
            )
        except ConfigurationError as exc:  # Audit(fields=...) names a field the output lacks: the answer stands
            log.warning("agent %r: an audit could not compare the answers: %s", ctx.agent_name, exc)
            add_usage(usage, {"audit_errors": 1})
            return None
        self.tally.add(ctx.agent_name, comparison, position=position, batch_size=len(chunk))
        add_usage(usage, agreement_usage(comparison, position=position, batch_size=len(chunk)))
        self._span(ctx, comparison, position, len(chunk), started_ns)
        return comparison, reference

    def _span(self, ctx: EngineContext, comparison: Comparison, position: int, size: int, started_ns: int) -> None:
        if ctx.tracer is None:
            return
        ctx.tracer.record(
            "flock.quality.audit",
            start_ns=started_ns,
            end_ns=time.time_ns(),
            parent=ctx.trace_parent,
            agent=ctx.agent_name,
            batch_id=ctx.batch_id,
            batch_size=size,
            position=position,
            position_bucket=position_bucket(position, size),
            agreed=comparison.agreed,
            fields_compared=len(comparison.fields),
            fields_agreed=sum(f.agreed for f in comparison.fields),
            disagreeing=",".join(comparison.disagreeing),
        )

    def _warming(self, ctx: EngineContext) -> bool:
        """Whether the controller still lacks the audits it needs at the current size."""
        state = self.states.get((ctx.agent_name, ctx.subscription_index))
        return self.target is not None and state is not None and state.n < 2 * self.target.audits_to_judge

    def _steer(self, ctx: EngineContext, size: int, comparisons: list[Comparison], usage: dict[str, Any]) -> None:
        key = (ctx.agent_name, ctx.subscription_index)
        if self.target is None or not comparisons or key not in self.states:
            return
        current = self.states[key].size
        if size > current or size < 0.75 * current:  # another size's evidence: before a change, or a remainder chunk
            add_usage(usage, {"audit_other_size": len(comparisons)})
            return
        agreed = sum(c.agreed for c in comparisons)
        state, change = observe(self.target, self.states[key], agreed, len(comparisons))
        self.states[key] = state
        if change is None:
            return
        self.events.append(SizeEvent(ctx.agent_name, ctx.subscription_index, change))
        add_usage(usage, {f"batch_size_{change.direction}s": 1})
        log.info("agent %r: batch size %d -> %d: %s", ctx.agent_name, change.old, change.new, change.reason)
        if ctx.tracer is not None:
            now = time.time_ns()
            ctx.tracer.record(
                "flock.quality.batch_size",
                start_ns=now,
                end_ns=now,
                parent=ctx.trace_parent,
                agent=ctx.agent_name,
                subscription=ctx.subscription_index,
                old_size=change.old,
                new_size=change.new,
                direction=change.direction,
                reason=change.reason,
                agreement_low=change.low,
                agreement_high=change.high,
                audits=change.audits,
            )


def _output_for(result: EvalResult, ids: tuple[str, ...]) -> BaseModel | None:
    return next((o.obj for o in result.outputs if o.derived_from == ids), None)
