"""The Flock: the blackboard's facade. Agents, publishing and the lifecycle live here; delivery, batching,
runs and durability are the runtime's (`flock_llm._runtime`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

from pydantic import BaseModel

from ._numbers import optional_number
from ._runtime.batching import BatchEngine
from ._runtime.core import Runtime
from ._runtime.intake import LocalIntake
from ._runtime.timers import Clock, LoopClock
from ._runtime.work import FinishedRun
from .agent import Agent
from .artifact import Artifact, new_artifact_id
from .engines import CostLedger
from .errors import ClosedError, ConfigurationError, StoreError
from .metrics import BatchStats, Metrics
from .registry import type_name_of
from .stores import ArtifactStore, InMemoryStore, store_from_url
from .tracing import PublishSpans, Tracer, TracingConfig, tracing_config
from .visibility import PublicVisibility, Visibility

__all__ = ["Flock"]

_PUBLIC = PublicVisibility()


class Flock:
    """A blackboard of typed artifacts and the agents that consume them.

    Args:
        model: the default litellm model string for LLM engines (e.g. "openai/gpt-4.1-mini").
        clock: where time comes from; the default is the running event loop's monotonic clock.
            Tests pass `flock_llm.testing.ManualClock()`.
        store: where artifacts are kept: in memory (default), or "sqlite:///path/to/flock.db" (or a
            SQLiteStore) to survive crashes: pending batches and unprocessed artifacts are restored on start;
            or "redis://host:6379/0" (or a RedisStore) to share the blackboard and its batches between
            worker processes (see `flock_llm.stores`).
        env: the environment to read settings from (default: `os.environ`, read once, here).
        tracing: True, a TracingConfig, or None to follow FLOCK_AUTO_TRACE / FLOCK_TRACE_FILE (see tracing).
        budget_usd: a cap on what the LLM calls of all agents cost together: a call that would pass it is not
            made; its items stay pending in a SQLite or Redis store (the next run continues them) or become
            failure records with stage "budget" in memory.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        clock: Clock | None = None,
        store: ArtifactStore | str | None = None,
        env: Mapping[str, str] | None = None,
        tracing: bool | TracingConfig | None = None,
        budget_usd: float | None = None,
    ) -> None:
        if model is not None and (not isinstance(model, str) or not model):
            raise ConfigurationError(f"`model` must be a litellm model string, got {model!r}")
        optional_number("budget_usd", budget_usd, unit="US dollars", fix="e.g. budget_usd=5.0, or None for no cap")
        self.model = model
        source = os.environ if env is None else env
        if isinstance(store, str):
            store = store_from_url(store)
        self.store: ArtifactStore = store if store is not None else InMemoryStore()
        self._agents: dict[str, Agent] = {}
        config = tracing_config(tracing, source)
        self._tracer: Tracer | None = None if config is None else Tracer(config)
        self._publish_spans = None if self._tracer is None else PublishSpans(self._tracer)
        self.budget = None if budget_usd is None else CostLedger(budget_usd)
        """Spending of every LLM call of this Flock against `budget_usd` (`budget.spent_usd`), or None."""
        self._runtime = Runtime(
            agents=self._agents,
            clock=clock or LoopClock(),
            store=self.store,
            model=model,
            env={k: v for k, v in source.items() if k.startswith("FLOCK_")},
            tracer=self._tracer,
            budget=self.budget,
        )
        self._started = not self._runtime.ledger.durable
        self._closed = False

    # -- building ---------------------------------------------------------------------------------------

    def agent(self, name: str) -> Agent:
        """Create an agent; configure it with the returned builder."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"agent name must be a non-empty string, got {name!r}")
        if name in self._agents:
            raise ConfigurationError(f"an agent named {name!r} already exists on this Flock")
        agent = self._agents[name] = Agent(name, self._runtime.router.invalidate)
        return agent

    @property
    def agents(self) -> list[Agent]:
        """The agents defined so far, in definition order."""
        return list(self._agents.values())

    # -- publishing -------------------------------------------------------------------------------------

    async def publish(
        self,
        obj: BaseModel | Artifact,
        *,
        visibility: Visibility | None = None,
        tags: Iterable[str] | None = None,
        correlation_id: str | None = None,
    ) -> Artifact:
        """Put one object (or a ready Artifact) on the blackboard and route it to its subscribers.

        Args:
            obj: a registered pydantic object, or an Artifact built elsewhere.
            visibility: who may see it (default: public).
            tags: tags for `consumes(..., tags=)` filters.
            correlation_id: the flow it belongs to (default: a fresh id).

        Returns:
            The published artifact (its id, correlation id and visibility).

        Raises:
            ConfigurationError: the object's type is not registered with @flock_type, or a bad visibility.
            ClosedError: the Flock was shut down.
            StoreError: a durable store could not write it (it was not delivered either).
        """
        if not self._started:
            await self.start()
        runtime = self._runtime
        runtime.check_agents()
        held = runtime.hold()
        with runtime.ledger.unit() as commit:
            artifact = self._make_artifact(obj, visibility=visibility, tags=tags, correlation_id=correlation_id)
            runtime.publish_artifact(artifact, held)
        if self._publish_spans is not None:
            self._publish_spans.add(artifact)
        if commit.future is not None:
            await commit.future  # durable stores acknowledge after the commit (StoreError: nothing delivered)
        runtime.release(held)
        return artifact

    async def publish_many(
        self,
        objs: Iterable[BaseModel | Artifact],
        *,
        visibility: Visibility | None = None,
        tags: Iterable[str] | None = None,
        correlation_id: str | None = None,
    ) -> list[Artifact]:
        """Publish several objects, in order, with the same options (one commit with a durable store).

        Args:
            objs: registered pydantic objects (or Artifacts); any iterable, read once.
            visibility: who may see them (default: public).
            tags: tags for `consumes(..., tags=)` filters.
            correlation_id: one flow for all of them (default: a fresh id each).

        Returns:
            The published artifacts, in order.
        """
        if not self._started:
            await self.start()
        runtime = self._runtime
        runtime.check_agents()
        published = []
        held = runtime.hold()
        with runtime.ledger.unit() as commit:
            for obj in objs:
                artifact = self._make_artifact(obj, visibility=visibility, tags=tags, correlation_id=correlation_id)
                runtime.publish_artifact(artifact, held)
                published.append(artifact)
                if self._publish_spans is not None:
                    self._publish_spans.add(artifact)
        if commit.future is not None:
            await commit.future  # durable stores acknowledge after the commit (StoreError: nothing delivered)
        runtime.release(held)
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
            correlation_id=correlation_id or new_artifact_id(),  # a fresh id per publish unless one is given
        )

    # -- batches ----------------------------------------------------------------------------------------

    @property
    def _batch_engine(self) -> BatchEngine:
        """The batches accumulating in this process: `flock._batch_engine.batches` maps (agent, subscription
        index[, partition]) to an accumulator with `.artifacts`, `.created_at` and `.batch_spec` (the guide's hook)."""
        intake = self._runtime.intake
        return intake.batch_engine if isinstance(intake, LocalIntake) else BatchEngine()  # (shared: in the store)

    async def _check_batch_timeouts(self) -> int:
        """Flush every batch whose timeout has passed, now. Returns how many flushed.

        Deadlines fire on their own; this documented hook exists for tests and
        for code written against the guide. Follow it with `run_until_idle()`.
        """
        return await self._runtime.flush_expired()

    async def flush_batches(self, agent: str | None = None) -> int:
        """Flush every pending batch (of one agent, or all) now, with reason "manual".

        With a shared store this flushes the batches every process is filling.
        """
        return await self._runtime.flush_all("manual", agent=agent)

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore what a durable store holds: pending batches (with their first-item times) and queued work;
        or, with a shared store, join its consumer groups.

        Called by the first publish, `run_until_idle()` or `async with`; define the agents first.
        A batch whose deadline passed while the process was down flushes at once (reason "timeout").
        """
        if self._started:
            return
        self._started = True
        try:
            await self._runtime.start()
        except BaseException:
            self._started = False
            raise

    async def run_until_idle(self) -> None:
        """Wait until no agent work is queued or running (in this process, with a shared store).

        Partial batches keep accumulating (their timers still fire); `shutdown()` flushes them.
        """
        if not self._started:
            await self.start()
        await self._runtime.idle()

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
        runtime = self._runtime
        await runtime.finish(None if timeout is None else asyncio.get_running_loop().time() + timeout)
        self._closed = True
        if self._tracer is not None:
            if self._publish_spans is not None:
                self._publish_spans.close()
            self._tracer.shutdown()
        await runtime.close()
        if runtime.local_store is not None:
            await asyncio.to_thread(runtime.local_store.close)  # commits what is queued
        failures = runtime.runner.write_failures
        if failures:
            raise StoreError(
                f"{len(failures)} agent run(s) finished but their outputs could not be saved ({failures[0]}); "
                "their inputs stay pending in the store and run again on the next start"
            )

    def cancel_running(self) -> None:
        """Cancel the runs in progress now and start no queued one (a second Ctrl-C, say). In memory their inputs
        become failure records (stage "cancelled"); with a SQLite or Redis store they stay pending. A
        `shutdown()` under way then finishes promptly."""
        self._runtime.runner.cancel_all()

    async def __aenter__(self) -> Flock:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    # -- what happened ----------------------------------------------------------------------------------

    def on_finished_run(self, listener: Callable[[FinishedRun], None]) -> None:
        """Call `listener` with each finished agent run (its inputs and what it published: outputs and failure
        records) once the run is committed: at once in memory, after the commit with a SQLite or Redis store
        (a run whose commit failed is not reported; its inputs run again). Use it to stream results out as
        batches finish. The listener runs on the event loop and must not block; an error it raises is logged.
        """
        if not callable(listener):
            raise ConfigurationError(f"on_finished_run needs a callable, got {type(listener).__name__}")
        self._runtime.runner.listeners.append(listener)

    def flush_traces(self) -> None:
        """Export the spans recorded so far now (they are otherwise exported every second and at shutdown)."""
        if self._tracer is not None:
            self._tracer.flush()

    def metrics(self) -> Metrics:
        """A frozen snapshot of flushes, counters and engine usage."""
        return self._runtime.metrics.snapshot()

    def batch_stats(self) -> list[BatchStats]:
        """The batches accumulating now (with a Redis store, also the shared ones, as last read from Redis)."""
        return self._runtime.batch_stats()
