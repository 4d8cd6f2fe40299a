"""The Flock: the blackboard, its agents, and the only code that touches the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel

from ._runtime.batching import BatchEngine, BatchKey, Flush, Item
from ._runtime.correlation import ExpiredGroup, JoinBuffer
from ._runtime.ledger import DurableStore, UnitCollector
from ._runtime.outcomes import failure_artifact, output_artifact
from ._runtime.timers import Clock, LoopClock, TimerHandle
from .agent import Agent
from .artifact import Artifact, FailureRecord
from .engines._base import Engine, EngineContext, EvalInputs, EvalResult
from .errors import ClosedError, ConfigurationError, EngineError, StoreError
from .metrics import BatchStats, FlushRecord, JoinExpiry, Metrics, MetricsRecorder
from .registry import type_name_of
from .stores import ArtifactStore, InMemoryStore, store_from_url
from .subscription import Subscription
from .tracing import PublishSpans, SpanHandle, Tracer, TracingConfig, tracing_config
from .visibility import PublicVisibility, Visibility

__all__ = ["Flock"]

if TYPE_CHECKING:
    from .stores.redis import RedisStore
    from .stores.redis_intake import RedisWorker

log = logging.getLogger("flock_llm")

_PUBLIC = PublicVisibility()


@dataclass(slots=True)
class _Work:
    agent: Agent
    subscription: Subscription
    items: tuple[Item, ...]
    flush: Flush | None
    span: SpanHandle | None = None
    receipt: Any = None
    """For a shared store: the delivery the run finishes."""


@dataclass(slots=True)
class _AgentQueue:
    """Pending runs of one agent, drained by at most `agent.concurrency` worker tasks."""

    pending: deque[_Work] = field(default_factory=deque)
    workers: int = 0


class Flock:
    """A blackboard of typed artifacts and the agents that consume them.

    Args:
        model: the default litellm model string for LLM engines (e.g. "openai/gpt-4.1-mini").
        clock: where time comes from; the default is the running event loop's monotonic clock.
            Tests pass `flock_llm.testing.ManualClock()`.
        store: where artifacts are kept: in memory (default), or "sqlite:///path/to/flock.db" (or a
            SQLiteStore) to survive crashes: pending batches and unprocessed artifacts are restored on start;
            or "redis://host:6379/0" (or a RedisStore) to share the blackboard and its batches between
            worker processes (see `flock_llm.stores.redis`).
        env: the environment to read settings from (default: `os.environ`, read once, here).
        tracing: True, a TracingConfig, or None to follow FLOCK_AUTO_TRACE / FLOCK_TRACE_FILE (see tracing).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        clock: Clock | None = None,
        store: ArtifactStore | str | None = None,
        env: Mapping[str, str] | None = None,
        tracing: bool | TracingConfig | None = None,
    ) -> None:
        if model is not None and (not isinstance(model, str) or not model):
            raise ConfigurationError(f"`model` must be a litellm model string, got {model!r}")
        self.model = model
        source = os.environ if env is None else env
        self._env = {k: v for k, v in source.items() if k.startswith("FLOCK_")}
        self._clock: Clock = clock or LoopClock()
        if isinstance(store, str):
            store = store_from_url(store)
        self.store: ArtifactStore = store if store is not None else InMemoryStore()
        durable = getattr(store, "durable", False)
        self._shared: RedisWorker | None = None
        """Set on start when the store is shared between processes (Redis): it routes and batches there."""
        self._units: UnitCollector | None = UnitCollector(cast(DurableStore, store)) if durable else None
        self._started = self._units is None
        self._agents: dict[str, Agent] = {}
        self._routes: dict[str, list[tuple[Agent, Subscription]]] | None = None
        self._batch_engine = BatchEngine()
        self._batch_timers: dict[BatchKey, TimerHandle] = {}
        self._joins: dict[tuple[str, int], JoinBuffer] = {}
        self._join_timers: list[TimerHandle] = []
        self._queues: dict[str, _AgentQueue] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._default_engines: dict[str, Engine] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics = MetricsRecorder()
        self._closed = False
        self._cancelling = False
        """Set when shutdown's timeout passed: runs still going are cancelled, queued ones are not started."""
        self._write_failures: list[StoreError] = []
        """Commits of runs that failed (nobody awaits them): reported by shutdown()."""
        config = tracing_config(tracing, source)
        self._tracer: Tracer | None = None if config is None else Tracer(config)
        self._publish_spans = None if self._tracer is None else PublishSpans(self._tracer)

    # -- building ---------------------------------------------------------------

    def agent(self, name: str) -> Agent:
        """Create an agent; configure it with the returned builder."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"agent name must be a non-empty string, got {name!r}")
        if name in self._agents:
            raise ConfigurationError(f"an agent named {name!r} already exists on this Flock")
        agent = self._agents[name] = Agent(name, self._agents_changed)
        return agent

    @property
    def agents(self) -> list[Agent]:
        return list(self._agents.values())

    def _agents_changed(self) -> None:
        self._routes = None

    def _route_table(self) -> dict[str, list[tuple[Agent, Subscription]]]:
        if self._routes is None:
            routes: dict[str, list[tuple[Agent, Subscription]]] = {}
            for agent in self._agents.values():
                for sub in agent.subscriptions:
                    for name in dict.fromkeys(sub.type_names):
                        routes.setdefault(name, []).append((agent, sub))
            self._routes = routes
        return self._routes

    # -- publishing -------------------------------------------------------------

    async def publish(
        self,
        obj: BaseModel | Artifact,
        *,
        visibility: Visibility | None = None,
        tags: Iterable[str] | None = None,
        correlation_id: str | None = None,
    ) -> Artifact:
        """Put one object (or a ready Artifact) on the blackboard and route it to its subscribers.

        Raises:
            ConfigurationError: the object's type is not registered with @flock_type, or a bad visibility.
            ClosedError: the Flock was shut down.
        """
        if not self._started:
            await self.start()
        held = self._hold_deliveries()
        self._begin_unit()
        try:
            artifact = self._make_artifact(obj, visibility=visibility, tags=tags, correlation_id=correlation_id)
            self._publish_artifact(artifact, held)
        finally:
            committed = self._commit_unit()
        if self._publish_spans is not None:
            self._publish_spans.add(artifact)
        await self._release(committed, held)
        return artifact

    def _hold_deliveries(self) -> list[tuple[Agent, Subscription, Artifact]] | None:
        """With a local durable store, a publish's deliveries wait for its commit (a failed write is not run)."""
        return [] if self._units is not None and self._shared is None else None

    async def _release(
        self, committed: asyncio.Future[None] | None, held: list[tuple[Agent, Subscription, Artifact]] | None
    ) -> None:
        """Await a publish's commit (durable stores acknowledge after it), then hand over what it delivers.

        Raises:
            StoreError: the write failed; nothing of this publish was delivered.
        """
        if committed is not None:
            await committed
        for agent, sub, artifact in held or ():
            self._deliver(agent, sub, artifact, recorded=True)

    async def publish_many(
        self,
        objs: Iterable[BaseModel | Artifact],
        *,
        visibility: Visibility | None = None,
        tags: Iterable[str] | None = None,
        correlation_id: str | None = None,
    ) -> list[Artifact]:
        """Publish several objects, in order, with the same options (one commit with a durable store)."""
        if not self._started:
            await self.start()
        published = []
        held = self._hold_deliveries()
        self._begin_unit()
        try:
            for obj in objs:
                artifact = self._make_artifact(obj, visibility=visibility, tags=tags, correlation_id=correlation_id)
                self._publish_artifact(artifact, held)
                published.append(artifact)
                if self._publish_spans is not None:
                    self._publish_spans.add(artifact)
        finally:
            committed = self._commit_unit()
        await self._release(committed, held)
        return published

    def _make_artifact(
        self,
        obj: BaseModel | Artifact,
        *,
        visibility: Visibility | None,
        tags: Iterable[str] | None,
        correlation_id: str | None,
    ) -> Artifact:
        if self._closed:
            raise ClosedError("this Flock was shut down; create a new Flock to publish more")
        if isinstance(obj, Artifact):
            type_name_of(type(obj.payload))
            return obj
        if not isinstance(obj, BaseModel):
            raise ConfigurationError(f"publish() takes a @flock_type pydantic object or an Artifact, got {obj!r}")
        if visibility is not None and not isinstance(visibility, Visibility):
            raise ConfigurationError(f"`visibility` must be a Visibility, got {visibility!r}")
        return Artifact(
            type_name=type_name_of(type(obj)),
            payload=obj,
            visibility=_PUBLIC if visibility is None else visibility.resolve(obj),
            tags=frozenset(tags) if tags else frozenset(),
            correlation_id=correlation_id,
        )

    def _publish_artifact(
        self, artifact: Artifact, held: list[tuple[Agent, Subscription, Artifact]] | None = None
    ) -> None:
        """Store and route an artifact; deliveries go to `held` (recorded, not yet handed over) when given."""
        if self._units is None or not self._units.artifact(artifact):
            self.store.add(artifact)  # (a durable store adds it when its unit is written)
        self._metrics.published += 1
        if self._shared is not None:
            return  # a shared store delivers it, to whichever process reads it first
        for agent, sub in self._route_table().get(artifact.type_name, ()):
            if self._accepts(agent, sub, artifact):
                if held is None:
                    self._deliver(agent, sub, artifact)
                else:
                    self._record_delivery(agent, sub, artifact)
                    held.append((agent, sub, artifact))

    def _accepts(self, agent: Agent, sub: Subscription, artifact: Artifact) -> bool:
        """Whether a subscription takes an artifact of its type (a raising `where` is recorded, and refuses)."""
        if artifact.produced_by == agent.name:
            return False  # an agent never consumes its own outputs (no self-triggering loops)
        if not sub.accepts_origin(artifact.produced_by, artifact.tags):
            return False
        if not artifact.visibility.allows(agent.identity):
            return False
        return not sub.where or self._passes_where(agent, sub, artifact)

    def _passes_where(self, agent: Agent, sub: Subscription, artifact: Artifact) -> bool:
        for predicate in sub.where:
            try:
                if not predicate(artifact.payload):
                    return False
            except Exception as exc:  # noqa: BLE001 - user code: any error is possible; record it, don't drop silently
                self._user_code_failed(agent, sub, artifact, exc, stage="where", counter="predicate_errors")
                return False
        return True

    def _user_code_failed(
        self, agent: Agent, sub: Subscription, artifact: Artifact, exc: Exception, *, stage: str, counter: str
    ) -> None:
        self._metrics.counters[counter] += 1
        log.warning(
            "agent %r subscription %d: `%s` raised %s on artifact %s; the artifact was not consumed (failure recorded)",
            agent.name,
            sub.index,
            stage,
            type(exc).__name__,
            artifact.id,
        )
        if self._tracer is not None:
            span = self._tracer.start(
                "flock.user_code.error",
                agent=agent.name,
                subscription=sub.index,
                stage=stage,
                artifact_id=artifact.id,
                error_type=type(exc).__name__,
            )
            span.fail(exc)
            span.end()
        self._publish_failure(agent, [artifact], exc, stage=stage)

    def _record_delivery(self, agent: Agent, sub: Subscription, artifact: Artifact) -> None:
        if self._units is not None:
            self._units.delivery(agent.name, sub.index, artifact.id, time.time())

    def _deliver(
        self,
        agent: Agent,
        sub: Subscription,
        artifact: Artifact,
        entered_at: float | None = None,
        *,
        recorded: bool = False,
    ) -> None:
        """Hand an accepted artifact to its subscription; `entered_at` (wall time) when restoring one;
        `recorded` when its delivery was already written into the current unit."""
        now = self._clock.now()
        if entered_at is None:
            if not recorded:
                self._record_delivery(agent, sub, artifact)
        else:
            now -= max(0.0, time.time() - entered_at)  # restored: it entered this long ago
        item: Item = (artifact,)
        if sub.join is not None:
            joined = self._join(agent, sub, artifact, now)
            if joined is None:
                return
            item = joined
        if sub.batch is None:
            self._enqueue(_Work(agent, sub, (item,), None))
            return
        self._add_to_batch(agent, sub, item, now)

    def _add_to_batch(self, agent: Agent, sub: Subscription, item: Item, now: float) -> None:
        assert sub.batch is not None
        key: BatchKey = (agent.name, sub.index)
        if sub.batch.by is not None:
            try:
                partition: Hashable = sub.batch.by(item[0].payload)
                hash(partition)
            except Exception as exc:  # noqa: BLE001 - user code: record it against every artifact of the item
                self._mark_consumed(agent, sub, item)
                for member in item:
                    self._user_code_failed(agent, sub, member, exc, stage="batch_by", counter="batch_key_errors")
                return
            key = (agent.name, sub.index, partition)
        # the wall-clock time is for display of a batch's opening only; skip it on the hot path otherwise
        wall = None if key in self._batch_engine.batches else datetime.now(UTC)
        outcome = self._batch_engine.add(key, sub.batch, item, now=now, wall=wall)
        if outcome.flush is not None:
            self._cancel_timer(key)
            self._start_flush(outcome.flush)
        elif outcome.opened_deadline is not None:
            self._batch_timers[key] = self._clock.call_at(
                outcome.opened_deadline, partial(self._on_batch_deadline, key)
            )

    def _join(self, agent: Agent, sub: Subscription, artifact: Artifact, now: float) -> Item | None:
        assert sub.join is not None
        try:
            key = sub.join.by(artifact.payload)
            hash(key)
        except Exception as exc:  # noqa: BLE001 - user code: any error is possible; record it, don't drop silently
            self._mark_consumed(agent, sub, (artifact,))
            self._user_code_failed(agent, sub, artifact, exc, stage="join_by", counter="join_key_errors")
            return None
        buffer = self._joins.get((agent.name, sub.index))
        if buffer is None:
            buffer = self._joins[(agent.name, sub.index)] = JoinBuffer(sub.join, sub.type_names)
        outcome = buffer.add(artifact, key, now=now)
        self._report_expired_joins(agent, sub, outcome.expired)
        if outcome.opened_deadline is not None:
            self._join_timers.append(
                self._clock.call_at(outcome.opened_deadline, partial(self._expire_joins, agent, sub))
            )
        return outcome.completed

    def _expire_joins(self, agent: Agent, sub: Subscription) -> None:
        buffer = self._joins.get((agent.name, sub.index))
        if buffer is not None:
            self._report_expired_joins(agent, sub, buffer.take_expired(now=self._clock.now()))

    def _report_expired_joins(self, agent: Agent, sub: Subscription, expired: list[ExpiredGroup]) -> None:
        for group in expired:
            ids = tuple(a.id for a in group.artifacts)
            if group.reason == "window":  # dropped for good; a group open at shutdown is restored on restart
                self._mark_consumed(agent, sub, group.artifacts)
            self._metrics.counters["join_groups_expired"] += 1
            self._metrics.join_expiries.append(
                JoinExpiry(agent.name, sub.index, group.key, ids, group.missing, group.reason)
            )
            if self._tracer is not None:
                self._tracer.start(
                    "flock.join.expired",
                    agent=agent.name,
                    subscription=sub.index,
                    key=str(group.key),
                    reason=group.reason,
                    artifact_ids=list(ids),
                    missing=list(group.missing),
                ).end()
            log.warning(
                "agent %r subscription %d: join group %r closed incomplete (%s), missing %s; "
                "artifacts %s not processed",
                agent.name,
                sub.index,
                group.key,
                group.reason,
                ", ".join(group.missing),
                ", ".join(ids),
            )

    # -- batches and timers ---------------------------------------------------------

    def _cancel_timer(self, key: BatchKey) -> None:
        timer = self._batch_timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _on_batch_deadline(self, key: BatchKey) -> None:
        self._batch_timers.pop(key, None)
        # The timer exists only while its batch is open, so the batch that is there is the one it was set for.
        flush = self._batch_engine.take(key, "timeout", now=self._clock.now())
        if flush is not None:
            self._start_flush(flush)

    def _start_flush(self, flush: Flush, receipt: Any = None) -> None:
        agent = self._agents[flush.key[0]]
        sub = agent.subscriptions[flush.key[1]]
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
        )
        self._metrics.record_flush(record)
        span = None if self._tracer is None else self._tracer.start("flock.batch.flush", **record.span_attributes())
        self._enqueue(_Work(agent, sub, flush.items, flush, span, receipt))

    async def _check_batch_timeouts(self) -> int:
        """Flush every batch whose timeout has passed, now. Returns how many flushed.

        Deadlines fire on their own; this documented hook exists for tests and
        for code written against the guide. Follow it with `run_until_idle()`.
        """
        if self._shared is not None:
            return await self._shared.flush_due()
        flushes = self._batch_engine.take_expired(now=self._clock.now())
        for flush in flushes:
            self._cancel_timer(flush.key)
            self._start_flush(flush)
        return len(flushes)

    async def flush_batches(self, agent: str | None = None) -> int:
        """Flush every pending batch (of one agent, or all) now, with reason "manual".

        With a shared store this flushes the batches every process is filling.
        """
        if self._shared is not None:
            return await self._shared.flush_all("manual", agent=agent)
        return self._flush_all("manual", agent=agent)

    def _flush_all(self, reason: str, *, agent: str | None = None) -> int:
        now = self._clock.now()
        count = 0
        for key in list(self._batch_engine.batches):
            if agent is not None and key[0] != agent:
                continue
            self._cancel_timer(key)
            flush = self._batch_engine.take(key, reason, now=now)  # type: ignore[arg-type]
            if flush is not None:
                self._start_flush(flush)
                count += 1
        return count

    # -- running agents ---------------------------------------------------------------

    def _enqueue(self, work: _Work) -> None:
        queue = self._queues.get(work.agent.name)
        if queue is None:
            queue = self._queues[work.agent.name] = _AgentQueue()
        queue.pending.append(work)
        if queue.workers < work.agent.concurrency:
            queue.workers += 1
            task = asyncio.get_running_loop().create_task(self._drain(queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, queue: _AgentQueue) -> None:
        try:
            while queue.pending:
                await self._run(queue.pending.popleft())
        finally:
            queue.workers -= 1

    def _engine_for(self, agent: Agent) -> Engine:
        if agent.engine is not None:
            return agent.engine
        engine = self._default_engines.get(agent.name)
        if engine is None:
            from .engines.llm import LLMEngine  # deferred: the LLM engine is only needed when used

            engine = self._default_engines[agent.name] = LLMEngine()
        return engine

    async def _run(self, work: _Work) -> None:
        agent, flush = work.agent, work.flush
        inputs = EvalInputs(work.items)
        span = None
        if self._tracer is not None:
            name = "flock.engine.evaluate_batch" if flush is not None else "flock.agent.run"
            span = self._tracer.start(name, parent=work.span, agent=agent.name, items=len(inputs))
        ctx = EngineContext(
            agent_name=agent.name,
            subscription_index=work.subscription.index,
            description=agent.description_text,
            publishes=agent.output_types,
            is_batch=flush is not None,
            flush_reason=None if flush is None else flush.reason,
            batch_size=len(work.items),
            configured_size=None if flush is None else flush.configured_size,
            batch_id=None if flush is None else flush.batch_id,
            model=self.model,
            env=self._env,
            tracer=self._tracer,
            trace_parent=span,
        )
        self._metrics.counters["engine_runs"] += 1
        if span is None:
            await self._evaluate(agent, ctx, inputs, flush, work.receipt)
            return
        outcome: dict[str, Any] = {}
        try:
            outcome = await self._evaluate(agent, ctx, inputs, flush, work.receipt)
        finally:
            span.set(engine=type(agent.engine).__name__ if agent.engine else "LLMEngine", **outcome)
            span.end()
            if work.span is not None:
                work.span.end()

    async def _evaluate(
        self, agent: Agent, ctx: EngineContext, inputs: EvalInputs, flush: Flush | None, receipt: Any
    ) -> dict[str, Any]:
        """Run the engine and publish what it returned; the figures for tracing."""
        if self._cancelling:
            return self._cancelled(agent, ctx, inputs, flush, receipt)
        try:
            engine = self._engine_for(agent)
            if flush is not None:
                result = await engine.evaluate_batch(ctx, inputs)
            else:
                result = await engine.evaluate(ctx, inputs)
            if not isinstance(result, EvalResult):
                raise EngineError(f"{type(engine).__name__} returned {type(result).__name__}, expected an EvalResult")
        except asyncio.CancelledError:
            if not self._cancelling:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # this Flock cancelled it (shutdown's timeout): the run ends here, accounted for
            return self._cancelled(agent, ctx, inputs, flush, receipt)
        except Exception as exc:  # noqa: BLE001 - engine code: any error is possible; the inputs become a failure record
            self._metrics.counters["engine_errors"] += 1
            log.warning(
                "agent %r: engine raised %s; %d inputs recorded as failed",
                agent.name,
                type(exc).__name__,
                len(inputs.artifacts),
            )
            self._finish_run(
                agent,
                ctx,
                inputs,
                partial(self._publish_failure, agent, inputs.artifacts, exc, stage="engine", flush=flush),
                receipt,
            )
            return {"outcome": "error", "error_type": type(exc).__name__, "outputs": 0, "failures": 1}
        if result.usage:
            self._metrics.record_usage(agent.name, result.usage)
        self._finish_run(agent, ctx, inputs, lambda: self._publish_result(agent, inputs, result, flush), receipt)
        usage = {k: v for k, v in result.usage.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        return {**usage, "outcome": "ok", "outputs": len(result.outputs), "failures": len(result.failures)}

    def _cancelled(
        self, agent: Agent, ctx: EngineContext, inputs: EvalInputs, flush: Flush | None, receipt: Any
    ) -> dict[str, Any]:
        """A run stopped by shutdown's timeout: with a store that keeps deliveries, its inputs stay pending (the
        next start, or another worker, runs them); in memory they become a failure record (stage "cancelled")."""
        self._metrics.counters["cancelled_runs"] += 1
        log.warning("agent %r: run of %d inputs cancelled at shutdown", agent.name, len(inputs.artifacts))
        if self._units is None:
            error = TimeoutError("the run was cancelled: shutdown's timeout passed before it finished")
            self._finish_run(
                agent,
                ctx,
                inputs,
                partial(self._publish_failure, agent, inputs.artifacts, error, stage="cancelled", flush=flush),
                receipt,
            )
        return {"outcome": "cancelled", "outputs": 0, "failures": 0 if self._units is not None else 1}

    def _finish_run(
        self, agent: Agent, ctx: EngineContext, inputs: EvalInputs, publish: Callable[[], None], receipt: Any
    ) -> None:
        """Publish a run's outputs and mark its inputs consumed: one unit, committed together."""
        self._begin_unit()
        try:
            publish()
            self._mark_consumed(agent, agent.subscriptions[ctx.subscription_index], inputs.artifacts)
        finally:
            committed = self._commit_unit(receipt)
            if committed is not None:  # nobody awaits a run's commit: failures are counted, and shutdown() raises
                committed.add_done_callback(self._run_committed)

    def _run_committed(self, future: asyncio.Future[None]) -> None:
        exc = None if future.cancelled() else future.exception()
        if isinstance(exc, StoreError) and self._shared is None:
            self._metrics.counters["store_write_failures"] += 1
            self._write_failures.append(exc)

    # -- durability ------------------------------------------------------------------

    def _begin_unit(self) -> None:
        if self._units is not None:
            self._units.begin()

    def _commit_unit(self, receipt: Any = None) -> asyncio.Future[None] | None:
        return None if self._units is None else self._units.commit(receipt)

    def _mark_consumed(self, agent: Agent, sub: Subscription, artifacts: Iterable[Artifact]) -> None:
        if self._units is not None:
            self._units.consumed(agent.name, sub.index, artifacts)

    async def start(self) -> None:
        """Restore what a durable store holds: pending batches (with their first-item times) and queued work.

        Called by the first publish, `run_until_idle()` or `async with`; define the agents first.
        A batch whose deadline passed while the process was down flushes at once (reason "timeout").
        """
        if self._started:
            return
        self._started = True
        if self._units is None:
            return
        if getattr(self.store, "distributed", False):
            from .stores.redis_intake import RedisWorker

            worker = RedisWorker(self, cast("RedisStore", self.store))
            try:
                await worker.start()
            except BaseException:
                self._started = False
                raise
            self._shared = worker
            return
        recovered = self._units.store.load()
        if recovered.unknown_types:
            self._metrics.counters["unknown_type_artifacts"] += sum(recovered.unknown_types.values())
        for pending in recovered.pending:
            agent = self._agents.get(pending.agent)
            if agent is None or pending.sub >= len(agent.subscriptions):
                self._metrics.counters["orphan_deliveries"] += 1
                log.warning(
                    "stored delivery of artifact %s to %s/%d: no such agent subscription now; kept",
                    pending.artifact.id,
                    pending.agent,
                    pending.sub,
                )
                continue
            sub = agent.subscriptions[pending.sub]
            self._begin_unit()  # (a `where` that raises now records its failure durably)
            try:
                accepted = self._accepts(agent, sub, pending.artifact)
            finally:
                self._commit_unit()
            if not accepted:
                # the agent (as defined now) may not see it: it stays stored, for whoever may see it
                self._metrics.counters["refused_restored_deliveries"] += 1
                log.warning(
                    "stored delivery of artifact %s to %s/%d: the agent as defined now does not accept it "
                    "(visibility, origin or `where`); not delivered, kept",
                    pending.artifact.id,
                    pending.agent,
                    pending.sub,
                )
                continue
            self._metrics.counters["restored_deliveries"] += 1
            self._deliver(agent, sub, pending.artifact, entered_at=pending.entered_at)
        await self._check_batch_timeouts()

    def _publish_result(self, agent: Agent, inputs: EvalInputs, result: EvalResult, flush: Flush | None) -> None:
        by_id = {a.id: a for a in inputs.artifacts}
        for output in result.with_lineage(list(by_id)).outputs:
            sources = [by_id[i] for i in output.derived_from or () if i in by_id] or list(by_id.values())
            try:
                artifact = output_artifact(agent, output.obj, output.derived_from or (), sources)
            except Exception as exc:  # noqa: BLE001 - user code (visibility extractors) or a wrong output type
                self._metrics.counters["rejected_outputs"] += 1
                self._publish_failure(agent, sources, exc, stage="output", flush=flush)
                continue
            self._publish_artifact(artifact)
        for failure in result.failures:
            failed = [by_id[i] for i in failure.artifact_ids if i in by_id] or list(by_id.values())
            self._publish_failure_record(
                agent,
                failed,
                FailureRecord(
                    agent=agent.name,
                    input_ids=[a.id for a in failed],
                    stage=failure.stage,
                    error_type=failure.error_type,
                    error=failure.error,
                    flush_reason=None if flush is None else flush.reason,
                    batch_id=None if flush is None else flush.batch_id,
                ),
            )

    def _publish_failure(
        self, agent: Agent, inputs: list[Artifact], exc: BaseException, *, stage: str, flush: Flush | None = None
    ) -> None:
        record = FailureRecord.from_exception(
            exc,
            agent=agent.name,
            input_ids=[a.id for a in inputs],
            stage=stage,
            flush_reason=None if flush is None else flush.reason,
            batch_id=None if flush is None else flush.batch_id,
        )
        self._publish_failure_record(agent, inputs, record)

    def _publish_failure_record(
        self, agent: Agent, inputs: list[Artifact], record: FailureRecord, *, visibility: Visibility | None = None
    ) -> None:
        """Publish a failure record, as visible as its inputs (or as `visibility`, when they could not be read)."""
        self._metrics.counters["failure_records"] += 1
        self._publish_artifact(failure_artifact(agent, inputs, record, visibility=visibility))

    # -- lifecycle ----------------------------------------------------------------------

    async def run_until_idle(self) -> None:
        """Wait until no agent work is queued or running (in this process, with a shared store).

        Partial batches keep accumulating (their timers still fire); `shutdown()` flushes them.
        """
        if not self._started:
            await self.start()
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._shared is not None:
            await self._shared.store.settle()  # this process's runs are committed when it returns

    async def shutdown(self, *, timeout: float | None = None) -> None:
        """Flush every partial batch (reason "shutdown"), finish all work, close open join groups.

        Args:
            timeout: seconds to wait for the work to finish (None: as long as it takes). After it, runs still
                going are cancelled and queued ones are not started: in memory their inputs become failure
                records (stage "cancelled"); with a SQLite or Redis store they stay pending for the next start
                (or another worker). Nothing is lost either way.

        Raises:
            StoreError: (after everything was closed) runs whose outputs a durable store could not save.

        Outputs published while shutting down may fill other agents' batches; those flush too.
        With a shared store (Redis), this process stops taking work and finishes what it took; the
        shared batches stay for the other workers (their deadlines still flush them).
        """
        if self._closed:
            return
        if not self._started:
            await self.start()
        if self._shared is not None:
            await self._shared.stop()
            await self.run_until_idle()
        else:
            await self._finish_everything(None if timeout is None else asyncio.get_running_loop().time() + timeout)
        for timer in [*self._batch_timers.values(), *self._join_timers]:
            timer.cancel()
        self._batch_timers.clear()
        self._join_timers.clear()
        self._closed = True
        if self._tracer is not None:
            if self._publish_spans is not None:
                self._publish_spans.close()
            self._tracer.shutdown()
        if self._shared is not None:
            await self._shared.close()
        close = getattr(self.store, "close", None)
        if callable(close):
            await asyncio.to_thread(close)  # commits what is queued
        if self._write_failures:
            first = self._write_failures[0]
            raise StoreError(
                f"{len(self._write_failures)} agent run(s) finished but their outputs could not be saved ({first}); "
                "their inputs stay pending in the store and run again on the next start"
            )

    async def _finish_everything(self, deadline: float | None) -> None:
        while True:
            await self._idle_by(deadline)
            flushed = self._flush_all("shutdown")
            closed = self._close_joins()
            if not flushed and not closed and not self._tasks:
                return

    async def _idle_by(self, deadline: float | None) -> None:
        """Wait until no work is queued or running; at `deadline`, cancel what is still going."""
        loop = asyncio.get_running_loop()
        while self._tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                self._cancelling = True
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.wait(list(self._tasks))
                continue
            await asyncio.wait(list(self._tasks), timeout=remaining)

    def _close_joins(self) -> int:
        count = 0
        for (agent_name, index), buffer in self._joins.items():
            agent = self._agents[agent_name]
            closed = buffer.take_all()
            self._report_expired_joins(agent, agent.subscriptions[index], closed)
            count += len(closed)
        return count

    async def __aenter__(self) -> Flock:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    # -- what happened ---------------------------------------------------------------

    def flush_traces(self) -> None:
        """Export the spans recorded so far now (they are otherwise exported every second and at shutdown)."""
        if self._tracer is not None:
            self._tracer.flush()

    def metrics(self) -> Metrics:
        """A frozen snapshot of flushes, counters and engine usage."""
        return self._metrics.snapshot()

    def batch_stats(self) -> list[BatchStats]:
        """The batches accumulating now."""
        now = self._clock.now()
        stats = []
        for key, buf in self._batch_engine.batches.items():
            deadline = buf.deadline
            stats.append(
                BatchStats(
                    agent=key[0],
                    subscription_index=key[1],
                    partition=key[2] if len(key) > 2 else None,
                    pending=len(buf.items),
                    oldest_age_s=now - (buf.opened_at or now),
                    flush_in_s=None if deadline is None else max(0.0, deadline - now),
                )
            )
        return stats
