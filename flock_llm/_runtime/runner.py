"""Engine runs: one queue and one set of concurrency slots per agent, the engine call, and the end of a run
(its outputs published and its inputs marked consumed in one durable unit).

Local deliveries and flushes are queued with `enqueue()` and drained by at most `agent.concurrency` tasks. A
shared intake (Redis) takes a slot with `slots(agent).take()` *before* it reads work, so an idle process gets
the next batch; the slot is given back when the run's commit is applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ..agent import Agent
from ..artifact import Artifact
from ..engines import (
    CostLedger,
    Engine,
    EngineContext,
    EvalInputs,
    EvalResult,
    JobJournal,
    RateWindows,
    Usage,
    cancelled_usage,
)
from ..errors import EngineError, StoreError
from ..metrics import FlushRecord, MetricsRecorder
from ..quality.shared import SizeStates
from ..subscription import Subscription
from ..tracing import Tracer
from .batching import Flush, Item
from .ledger import Ledger, Receipt
from .outcomes import Outcomes
from .slots import Slots
from .work import FinishedRun, Work

__all__ = ["FinishedRun", "Runner", "Slots", "Work"]

log = logging.getLogger("flock_llm")


@dataclass(slots=True)
class _Queue:
    pending: deque[Work] = field(default_factory=deque)
    workers: int = 0


class Runner:
    """Runs engines for queued work and publishes what they return (through `outcomes`)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        outcomes: Outcomes,
        metrics: MetricsRecorder,
        tracer: Tracer | None,
        model: str | None,
        env: Mapping[str, str],
        shared: bool = False,
        budget: CostLedger | None = None,
        rate_windows: RateWindows | None = None,
        jobs: JobJournal | None = None,
        size_states: SizeStates | None = None,
        release: Callable[[Receipt], None] | None = None,
        forget: Callable[[tuple[Artifact, ...]], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.outcomes = outcomes
        self.metrics = metrics
        self.tracer = tracer
        self.model = model
        self.env = dict(env)
        self.tasks: set[asyncio.Task[None]] = set()
        self.cancelling = False
        """Set when shutdown's timeout passed: runs still going are cancelled, queued ones are not started."""
        self.write_failures: list[StoreError] = []
        """Commits of runs that failed (nobody awaits them): reported by shutdown()."""
        self.shared = shared
        """A shared store acknowledges runs itself; failed commits there are retried elsewhere, not counted."""
        self._queues: dict[str, _Queue] = {}
        self._slots: dict[str, Slots] = {}
        self._default_engines: dict[str, Engine] = {}
        self._budgets: dict[tuple[str, int], int | None] = {}
        self.budget = budget
        """`Flock(budget_usd=)`: handed to engines in their context."""
        self.rate_windows = rate_windows
        """Per-minute limits: shared through the store (Redis), else this process's."""
        self.jobs = jobs
        """Where provider batch jobs are recorded (a SQLite store's file), for engines with tier="batch"."""
        self.size_states = size_states
        """Where batch-size controller states are kept (`BatchSpec(quality=)`): the store's, handed to engines."""
        self.release = release
        """Give back a run's slot and claim without acknowledging its entry (a shared intake's receipts)."""
        self.listeners: list[Callable[[FinishedRun], None]] = []
        """Told of each finished run once its unit is committed (`Flock.on_finished_run`)."""
        self.forget = forget
        """When the in-memory store forgets consumed artifacts: called with each run's inputs."""

    # -- queueing -----------------------------------------------------------------------------------

    def slots(self, agent: Agent) -> Slots:
        """The agent's concurrency slots, for a shared intake that takes work only when one is free."""
        found = self._slots.get(agent.name)
        if found is None:
            found = self._slots[agent.name] = Slots(agent.concurrency)
        return found

    def start_flush(self, agent: Agent, sub: Subscription, flush: Flush, receipt: Receipt | None = None) -> None:
        """Record a flush (metrics, span) and queue its run."""
        record = FlushRecord(
            agent=agent.name,
            subscription_index=sub.index,
            partition=flush.key[2] if len(flush.key) > 2 else None,
            batch_id=flush.batch_id,
            batch_size=flush.size,
            configured_size=flush.configured_size,
            reason=flush.reason,
            efficiency=flush.efficiency,
            waited_s=flush.waited_s,
            tokens=flush.tokens,
        )
        self.metrics.record_flush(record)
        span = None if self.tracer is None else self.tracer.start("flock.batch.flush", **record.span_attributes())
        self.enqueue(Work(agent, sub, flush.items, flush, span, receipt))

    def enqueue(self, work: Work) -> None:
        queue = self._queues.get(work.agent.name)
        if queue is None:
            queue = self._queues[work.agent.name] = _Queue()
        queue.pending.append(work)
        if queue.workers < work.agent.concurrency:
            queue.workers += 1
            task = asyncio.get_running_loop().create_task(self._drain(queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _drain(self, queue: _Queue) -> None:
        try:
            while queue.pending:
                await self._run(queue.pending.popleft())
        finally:
            queue.workers -= 1

    async def idle(self) -> None:
        """Wait until no work is queued or running."""
        while self.tasks:
            await asyncio.wait(list(self.tasks))

    def cancel_all(self) -> None:
        """Cancel every run in progress now and start no queued one (each ends accounted for, see `_cancelled`)."""
        self.cancelling = True
        for task in list(self.tasks):
            task.cancel()

    async def idle_by(self, deadline: float | None) -> None:
        """Wait until no work is queued or running; at `deadline` (loop time), cancel what is still going."""
        loop = asyncio.get_running_loop()
        while self.tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                self.cancel_all()
                await asyncio.wait(list(self.tasks))
                continue
            await asyncio.wait(list(self.tasks), timeout=remaining)

    # -- token budgets (BatchSpec(max_tokens=)) -------------------------------------------------------

    def _static_context(self, agent: Agent, sub: Subscription) -> EngineContext:
        return EngineContext(
            agent_name=agent.name,
            subscription_index=sub.index,
            description=agent.description_text,
            publishes=agent.output_types,
            is_batch=True,
            configured_size=None if sub.batch is None else sub.batch.size,
            model=self.model,
            env=self.env,
            budget=self.budget,
            rate_windows=self.rate_windows,
            jobs=self.jobs,
            quality=None if sub.batch is None else sub.batch.quality,
            size_states=self.size_states,
        )

    def item_tokens(self, agent: Agent, sub: Subscription, item: Item) -> int:
        """An item's prompt tokens (a join group's: its members'), counted by the agent's engine; 0 when the
        subscription's batches have no token budget."""
        if sub.batch is None or sub.batch.max_tokens is None:
            return 0
        engine = self.engine_for(agent)
        ctx = self._static_context(agent, sub)
        total = 0
        for artifact in item:
            try:
                total += max(0, int(engine.item_tokens(ctx, artifact)))
            except Exception as exc:  # noqa: BLE001 - engine code: fall back to the documented estimate
                log.warning("agent %r: item_tokens raised %s; using the estimate", agent.name, type(exc).__name__)
                total += Engine.item_tokens(engine, ctx, artifact)
        return total

    def token_budget(self, agent: Agent, sub: Subscription) -> int | None:
        """The subscription's `max_tokens` (for "auto", the engine's figure, asked once), or None for none."""
        spec = sub.batch
        if spec is None or spec.max_tokens is None:
            return None
        if spec.max_tokens != "auto":
            return spec.max_tokens
        key = (agent.name, sub.index)
        if key not in self._budgets:
            budget = None
            try:
                budget = self.engine_for(agent).batch_token_budget(self._static_context(agent, sub), spec.size)
            except Exception as exc:  # noqa: BLE001 - engine code; the batch then flushes by size and timeout
                log.warning("agent %r: batch_token_budget raised %s", agent.name, type(exc).__name__)
            if budget is None:
                log.warning('agent %r: max_tokens="auto" has no figure; flushing by size and timeout', agent.name)
            self._budgets[key] = None if budget is None else max(1, int(budget))
        return self._budgets[key]

    def engine_for(self, agent: Agent) -> Engine:
        if agent.engine is not None:
            return agent.engine
        engine = self._default_engines.get(agent.name)
        if engine is None:
            from ..engines.llm import LLMEngine  # deferred: the LLM engine is only needed when used

            engine = self._default_engines[agent.name] = LLMEngine()
        return engine

    async def _run(self, work: Work) -> None:
        agent, flush = work.agent, work.flush
        inputs = EvalInputs(work.items)
        span = None
        if self.tracer is not None:
            name = "flock.engine.evaluate_batch" if flush is not None else "flock.agent.run"
            span = self.tracer.start(name, parent=work.span, agent=agent.name, items=len(inputs))
        ctx = replace(
            self._static_context(agent, work.subscription),
            is_batch=flush is not None,
            flush_reason=None if flush is None else flush.reason,
            batch_size=len(work.items),
            configured_size=None if flush is None else flush.configured_size,
            batch_id=None if flush is None else flush.batch_id,
            tracer=self.tracer,
            trace_parent=span,
        )
        self.metrics.counters.engine_runs += 1
        if span is None:
            await self._evaluate(agent, work.subscription, ctx, inputs, flush, work.receipt)
            return
        outcome: dict[str, Any] = {}
        try:
            outcome = await self._evaluate(agent, work.subscription, ctx, inputs, flush, work.receipt)
        finally:
            span.set(engine=type(agent.engine).__name__ if agent.engine else "LLMEngine", **outcome)
            span.end()
            if work.span is not None:
                work.span.end()

    async def _evaluate(
        self,
        agent: Agent,
        sub: Subscription,
        ctx: EngineContext,
        inputs: EvalInputs,
        flush: Flush | None,
        receipt: Receipt | None,
    ) -> dict[str, Any]:
        """Run the engine and publish what it returned; the figures for tracing."""
        if self.cancelling:
            return self._cancelled(agent, sub, inputs, flush, receipt)
        try:
            engine = self.engine_for(agent)
            with cancelled_usage() as sent:  # what a run cancelled by shutdown had sent: counted in _cancelled
                if flush is not None:
                    result = await engine.evaluate_batch(ctx, inputs)
                else:
                    result = await engine.evaluate(ctx, inputs)
            if not isinstance(result, EvalResult):
                raise EngineError(f"{type(engine).__name__} returned {type(result).__name__}, expected an EvalResult")
        except asyncio.CancelledError:
            if not self.cancelling:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # cancelled by shutdown's timeout: the run ends here, accounted for
            return self._cancelled(agent, sub, inputs, flush, receipt, sent)
        except Exception as exc:  # noqa: BLE001 - engine code: any error is possible; the inputs become a failure record
            self.metrics.counters.engine_errors += 1
            log.warning(
                "agent %r: engine raised %s; %d inputs recorded as failed",
                agent.name,
                type(exc).__name__,
                len(inputs.artifacts),
            )
            fail = partial(self.outcomes.failure, agent, inputs.artifacts, exc, stage="engine", flush=flush)
            self.finish(agent, sub, inputs, fail, receipt)
            return {"outcome": "error", "error_type": type(exc).__name__, "outputs": 0, "failures": 1}
        if result.usage:
            self.metrics.record_usage(agent.name, result.usage)
        if self.ledger.durable and _stopped_by_budget(result):
            return self._left_pending(agent, inputs, receipt)
        self.finish(agent, sub, inputs, partial(self.outcomes.result, agent, inputs, result, flush), receipt)
        usage = {k: v for k, v in result.usage.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        return {**usage, "outcome": "ok", "outputs": len(result.outputs), "failures": len(result.failures)}

    def _left_pending(self, agent: Agent, inputs: EvalInputs, receipt: Receipt | None) -> dict[str, Any]:
        """The budget stopped the calls before any answer: the inputs stay pending in the store (a shared store's
        entry is released unacknowledged: a worker takes it again after `claim_timeout`)."""
        self.metrics.counters.budget_stopped_runs += 1
        log.warning("agent %r: the budget stopped this run; its %d inputs stay pending", agent.name, len(inputs))
        if receipt is not None and self.release is not None:
            self.release(receipt)
        return {"outcome": "budget", "outputs": 0, "failures": 0}

    def _cancelled(
        self,
        agent: Agent,
        sub: Subscription,
        inputs: EvalInputs,
        flush: Flush | None,
        receipt: Receipt | None,
        sent: Usage | None = None,
    ) -> dict[str, Any]:
        """A run stopped by shutdown's timeout: with a store that keeps deliveries, its inputs stay pending (the
        next start, or another worker, runs them); in memory they become a failure record (stage "cancelled").
        What its engine had `sent` (calls that went out, prompts read) is counted in the agent's usage."""
        self.metrics.counters.cancelled_runs += 1
        if sent is not None and (sent.llm_calls or sent.prompt_tokens):
            self.metrics.record_usage(agent.name, sent.as_dict())
        log.warning("agent %r: run of %d inputs cancelled at shutdown", agent.name, len(inputs.artifacts))
        if self.ledger.durable:
            return {"outcome": "cancelled", "outputs": 0, "failures": 0}
        error = TimeoutError("the run was cancelled: shutdown's timeout passed before it finished")
        fail = partial(self.outcomes.failure, agent, inputs.artifacts, error, stage="cancelled", flush=flush)
        self.finish(agent, sub, inputs, fail, receipt)
        return {"outcome": "cancelled", "outputs": 0, "failures": 1}

    def finish(
        self,
        agent: Agent,
        sub: Subscription,
        inputs: EvalInputs,
        publish: Callable[[], None],
        receipt: Receipt | None,
    ) -> None:
        """Publish a run's outputs and mark its inputs consumed: one unit, committed together."""
        if self.listeners:
            self.outcomes.collect()
        try:
            with self.ledger.unit(receipt) as commit:
                publish()
                self.ledger.consumed(agent.name, sub.index, inputs.artifacts)
        finally:
            published = self.outcomes.collected()
        if self.forget is not None:
            self.forget(tuple(inputs.artifacts))
        done = FinishedRun(agent.name, tuple(inputs.artifacts), tuple(published)) if self.listeners else None
        if commit.future is None:
            if done is not None:
                self._tell(done)
            return
        # nobody awaits a run's commit: failures are counted, and shutdown() raises
        commit.future.add_done_callback(self._committed)
        if done is not None:
            commit.future.add_done_callback(partial(self._tell_if_committed, done))

    def _tell_if_committed(self, done: FinishedRun, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._tell(done)

    def _tell(self, done: FinishedRun) -> None:
        for listener in self.listeners:
            try:
                listener(done)
            except Exception:  # noqa: BLE001 - user code: a failing listener must not stop the runtime
                log.exception("a finished-run listener raised; the run itself is committed")

    def _committed(self, future: asyncio.Future[None]) -> None:
        exc = None if future.cancelled() else future.exception()
        if isinstance(exc, StoreError) and not self.shared:
            self.metrics.counters.store_write_failures += 1
            self.write_failures.append(exc)


def _stopped_by_budget(result: EvalResult) -> bool:
    """A run whose every item failed because the budget stopped the calls (and that published nothing)."""
    return not result.outputs and bool(result.failures) and all(f.stage == "budget" for f in result.failures)
