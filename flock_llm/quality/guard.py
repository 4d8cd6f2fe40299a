"""The engine side of quality: shuffle, chunk to the effective batch size, audit, and steer the size.

`LadderEngine` keeps one `QualityGuard` when it gets `audit=`, `quality=` or `shuffle=`; its `_run` hands a
flushed batch here. Every model call still goes through the engine: batches through its ladder, audits through
its own one-item `evaluate()`, so they are counted, priced and capped by the budget like any other call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .audit import Audit, Shuffle, add_usage, agreement_usage, audit_call_usage, audited_positions, shuffled_order
from .compare import Comparison, compare_answers
from .controller import ControllerState, QualityTarget
from .facts import ReportFacts
from .reask import reask_majority
from .report_check import checked_report, prompt_facts
from .second_opinion import ask_second_opinion
from .stats import AgreementTally, position_bucket
from .steering import SizeEvent, SizeSteering, measures

if TYPE_CHECKING:
    from collections import deque

    from pydantic import BaseModel

    from ..engines import Engine, EngineContext, EvalInputs, EvalResult, Usage

__all__ = ["DEFAULT_AUDIT", "QualityGuard", "SizeEvent"]

log = logging.getLogger("flock_llm.quality")

DEFAULT_AUDIT = Audit(rate=0.25)
"""The audit of a quality target (`quality=` of an engine or a BatchSpec) whose engine has no `audit=`: one item of
a quarter of the calls, one item of every call while the controller warms up at a size (a controller needs
evidence: at the plain `Audit()`'s 2% of the calls, it would judge a size after hundreds of calls)."""

Ladder = Callable[["EngineContext", "EvalInputs"], Awaitable["EvalResult"]]

_NOT_ONE_CALL = ("splits", "overflow_splits", "fallbacks")
"""Usage counters of a chunk whose answers did not all come from one call of its size: auditing it would count
answers given in halves or alone as agreement at the chunk's size."""


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
        self.steering = SizeSteering()
        """The batch-size controller's state per (agent, subscription), kept in the run's store when it has one."""
        self._first_opinions: set[tuple[str, int, int]] = set()
        """(agent, subscription, configured size) whose first call at that size got its second opinion here."""

    @property
    def states(self) -> dict[tuple[str, int], ControllerState]:
        """The controller's state per (agent, subscription), as this process last read or wrote it."""
        return self.steering.states

    @property
    def events(self) -> deque[SizeEvent]:
        """The changes of effective batch size this process made (the latest 1000)."""
        return self.steering.events

    def target_for(self, ctx: EngineContext) -> QualityTarget | None:
        """The quality target of the run: the engine's `quality=`, else its BatchSpec's (`ctx.quality`)."""
        return self.target if self.target is not None else ctx.quality

    def audit_for(self, ctx: EngineContext) -> Audit | None:
        """The audit of the run: the engine's `audit=`; with a quality target (the engine's or the BatchSpec's)
        and no `audit=`, `DEFAULT_AUDIT`."""
        if self.audit is None and self.target_for(ctx) is not None:
            return DEFAULT_AUDIT
        return self.audit

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
        if not per_item and (audit is not None or target is not None):
            raise ConfigurationError(
                "`audit=` and `quality=` compare per-item answers with one-item answers; a report engine "
                "(per_item=False) has none: use per_item=True, or `report_facts=` to check a report's numbers"
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
        return self.steering.size_for(agent, subscription_index)

    # -- a flushed batch ------------------------------------------------------------------------------------

    async def run(self, engine: Engine, ctx: EngineContext, inputs: EvalInputs, ladder: Ladder) -> EvalResult:
        """Shuffle, chunk, answer, audit and steer a flushed batch. Cancelled (a shutdown's timeout) after some of
        its runs finished (a chunk's call while its audits or second opinion are in flight, a whole chunk while
        another is in flight), it reports what those runs had spent (`cancelled_run`): a run still in flight
        reports its own, a finished one only returned its usage here, and the result is now never returned."""
        from ..engines import Usage, cancelled_run

        spent = Usage()

        async def counted(run_ctx: EngineContext, part: EvalInputs) -> EvalResult:
            result = await ladder(run_ctx, part)
            spent.absorb(result.usage)
            return result

        try:
            return await self._run(engine, ctx, inputs, counted, spent)
        except asyncio.CancelledError:
            cancelled_run(spent)
            raise

    async def _run(
        self, engine: Engine, ctx: EngineContext, inputs: EvalInputs, ladder: Ladder, spent: Usage
    ) -> EvalResult:
        from ..engines import EvalInputs, EvalResult

        items = list(inputs.items)
        if self.shuffle is not None:
            order = shuffled_order(self.shuffle.seed, ["|".join(a.id for a in item) for item in items])
            items = [items[n] for n in order]
        target = self.target_for(ctx)
        state = None if target is None else await self.steering.current(target, ctx, len(items))
        size = max(1, len(items)) if state is None else state.size
        chunks = [EvalInputs(tuple(items[k : k + size])) for k in range(0, len(items), size)]
        results = await _together(
            self._chunk(engine, ctx, chunk, ladder, spent, first=self._unmeasured(ctx, state, chunk) if not k else 0)
            for k, chunk in enumerate(chunks)
        )
        usage: dict[str, Any] = {}
        for result in results:
            add_usage(usage, result.usage)
        if len(chunks) > 1:
            usage["quality_chunks"] = len(chunks)
        merged = EvalResult.merge(results)
        return replace(merged, usage=usage)

    def _unmeasured(self, ctx: EngineContext, state: ControllerState | None, chunk: EvalInputs) -> int:
        """The configured size when `chunk` is the first call at it, a guess until measured (it gets a second
        opinion in any case), else 0: a state with no audits and no change yet, a call its audits would measure (not a
        remainder far under the size: a trickle flushed by its timeout is never measured by its own calls), and
        no first-call second opinion asked at this size in this process yet (audits that never come in: a tiny
        rate, audits that fail, would otherwise make every call "the first")."""
        if state is None:
            return 0
        first = (
            state.n == 0
            and state.changes == 0
            and state.size == state.max_size
            and measures(len(chunk), state)
            and (ctx.agent_name, ctx.subscription_index, state.max_size) not in self._first_opinions
        )
        return state.max_size if first else 0

    async def _chunk(
        self, engine: Engine, ctx: EngineContext, chunk: EvalInputs, ladder: Ladder, spent: Usage, *, first: int
    ) -> EvalResult:
        """One chunk's call, audits and second opinion (`spent`: the flush's finished runs, audits added here;
        `first`: the configured size when this is the first call at it, which nothing has measured yet: it gets a
        second opinion in any case; else 0)."""
        chunk_ctx = replace(ctx, batch_size=len(chunk)) if len(chunk) != ctx.batch_size else ctx
        if self.facts is not None and not getattr(engine, "per_item", False):  # computed facts go in the prompt
            chunk_ctx = replace(chunk_ctx, facts=prompt_facts(chunk, self.facts))
            return await checked_report(chunk_ctx, chunk, await ladder(chunk_ctx, chunk), self.facts, ladder)
        result = await ladder(chunk_ctx, chunk)
        audit, target = self.audit_for(ctx), self.target_for(ctx)
        if audit is None or not getattr(engine, "per_item", False):
            return result
        if any(result.usage.get(name) for name in _NOT_ONE_CALL):  # answered by parts or alone: not at this size
            return replace(result, usage={**result.usage, "audit_skipped_chunks": 1})
        warming = target is not None and self.steering.warming(target, ctx)
        audited = audited_positions(audit, [[a.id for a in item] for item in chunk.items], warming=warming)
        if first and target is not None and target.second_opinion and len(chunk) > 1 and result.outputs:
            # one per size and process (a call that failed every item measured nothing: the next one is the first)
            self._first_opinions.add((ctx.agent_name, ctx.subscription_index, first))
        else:
            first = 0
        if not audited and not first:
            return result
        usage = dict(result.usage)
        checks = await asyncio.gather(
            *(self._audit(engine, audit, chunk_ctx, chunk, n, result, usage, spent) for n in audited)
        )
        compared = [c[0] for c in checks if c is not None]
        if target is not None and compared:
            await self.steering.steer(target, ctx, len(chunk), sum(c.agreed for c in compared), len(compared), usage)
        result = replace(result, usage=usage)
        disagreeing = [(n, c[1]) for n, c in zip(audited, checks, strict=True) if c is not None and not c[0].agreed]
        if target is not None and target.second_opinion and (disagreeing or first):
            references = {n: c[1] for n, c in zip(audited, checks, strict=True) if c is not None}
            second = await ask_second_opinion(
                chunk_ctx, chunk, result, references, [n for n, _ in disagreeing], ladder, audit
            )
            usage = dict(second.result.usage)
            if second.compared:
                await self.steering.steer(
                    target,
                    ctx,
                    len(chunk),
                    second.agreed,
                    second.compared,
                    usage,
                    second_opinion=True,
                )
            return replace(second.result, usage=usage)
        if audit.reask and disagreeing:
            return await reask_majority(chunk_ctx, chunk, result, disagreeing, ladder, audit)
        return result

    async def _audit(
        self,
        engine: Engine,
        audit: Audit,
        ctx: EngineContext,
        chunk: EvalInputs,
        position: int,
        result: EvalResult,
        usage: dict[str, Any],
        spent: Usage,
    ) -> tuple[Comparison, BaseModel] | None:
        """Ask the item at `position` alone and compare; (comparison, the one-item answer) or None."""
        from ..engines import EvalInputs

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
        spent.absorb(alone.usage)
        add_usage(usage, audit_call_usage(alone.usage))
        reference = _output_for(alone, ids) or (alone.outputs[0].obj if len(alone.outputs) == 1 else None)
        if reference is None or type(reference) is not type(batched):
            add_usage(usage, {"audit_errors": 1})
            return None
        try:
            comparison = compare_answers(
                batched, reference, tolerance=audit.tolerance, fields=audit.fields, ignore=audit.ignore
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


def _output_for(result: EvalResult, ids: tuple[str, ...]) -> BaseModel | None:
    return next((o.obj for o in result.outputs if o.derived_from == ids), None)


async def _together(calls: Iterable[Coroutine[Any, Any, EvalResult]]) -> list[EvalResult]:
    """Every chunk's result; when one raises (engine code), the others are cancelled and awaited before the error
    goes on: the runtime records the whole flush as failed, and a chunk left running would spend on calls whose
    answers nobody publishes."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
