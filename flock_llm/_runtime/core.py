"""The runtime a Flock delegates to: one router, one ledger, one set of outcomes, one runner, and an intake
(local, or the shared store's). It is also the narrow interface a shared intake works through: the public
attributes below, nothing private.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from ..agent import Agent
from ..artifact import Artifact
from ..metrics import BatchStats, MetricsRecorder
from ..stores.memory import ArtifactStore, InMemoryStore
from ..subscription import Subscription
from ..tracing import Tracer
from .batching import FlushReason
from .intake import LocalIntake
from .ledger import Ledger
from .outcomes import Outcomes
from .ports import LocalDurableStore, SharedIntake, SharedStore
from .router import Router
from .runner import Runner
from .timers import Clock

__all__ = ["Held", "Runtime"]

log = logging.getLogger("flock_llm")

Held = list[tuple[Agent, Subscription, Artifact]]
"""Deliveries of a publish that wait for its commit."""


class Runtime:
    """Delivery, batching, runs and durability behind the Flock facade.

    Args:
        agents: the Flock's agents by name (read live).
        store: where artifacts live; a LocalDurableStore or SharedStore makes writes durable.
    """

    def __init__(
        self,
        *,
        agents: Mapping[str, Agent],
        clock: Clock,
        store: ArtifactStore,
        model: str | None,
        env: Mapping[str, str],
        tracer: Tracer | None,
    ) -> None:
        self.agents = agents
        self.store = store
        self.tracer = tracer
        self.metrics = MetricsRecorder()
        self.shared_store = store if isinstance(store, SharedStore) else None
        self.local_store = store if isinstance(store, LocalDurableStore) else None
        self.ledger = Ledger(self.shared_store or self.local_store)
        self.outcomes = Outcomes(self.publish_artifact, self.metrics, tracer)
        self.router = Router(agents, self._where_raised)
        self.runner = Runner(
            ledger=self.ledger, outcomes=self.outcomes, metrics=self.metrics, tracer=tracer, model=model, env=env
        )
        self.runner.shared = self.shared_store is not None
        self.runner.rate_windows = self.shared_store.rate_windows() if self.shared_store is not None else None
        durable = self.local_store if self.local_store is not None else self.shared_store  # (a store may be empty)
        self.runner.jobs = durable.job_journal() if durable is not None else None
        self.intake = LocalIntake(
            agents=agents,
            clock=clock,
            router=self.router,
            ledger=self.ledger,
            outcomes=self.outcomes,
            runner=self.runner,
            metrics=self.metrics,
            tracer=tracer,
        )
        self.forgetting = (
            store if isinstance(store, InMemoryStore) and not store.keep_consumed and not self.ledger.durable else None
        )
        """An in-memory store that forgets what was consumed: told of deliveries here and of consumption by runs."""
        if self.forgetting is not None:
            self.runner.forget = self.forgetting.consumed
        self.shared: SharedIntake | None = None
        """Set on start when the store is shared between processes: it routes and batches there."""

    def _where_raised(self, agent: Agent, sub: Subscription, artifact: Artifact, exc: Exception) -> None:
        self.outcomes.user_code_failed(agent, sub, artifact, exc, stage="where", counter="predicate_errors")

    async def start(self) -> None:
        """Join the shared store's intake, or restore what a local durable store holds."""
        if self.shared_store is not None:
            shared = self.shared_store.intake(self)
            await shared.start()
            self.shared = shared
        elif self.local_store is not None:
            self.intake.restore(self.local_store.load())
            await self.flush_expired()

    # -- publishing -------------------------------------------------------------------------------------

    def hold(self) -> Held | None:
        """With a local durable store, a publish's deliveries wait for its commit (a failed write is not run)."""
        return [] if self.local_store is not None else None

    def release(self, held: Held | None) -> None:
        for agent, sub, artifact in held or ():
            self.intake.deliver(agent, sub, artifact, recorded=True)

    def publish_artifact(self, artifact: Artifact, held: Held | None = None) -> None:
        """Store an artifact and deliver it to every subscription the router lets take it (to `held`, recorded
        but not yet handed over, when given; a shared store delivers it to whichever process reads it)."""
        if self.ledger.store is None or not self.ledger.artifact(artifact):
            self.store.add(artifact)  # (a durable store adds it when its unit is written)
        self.metrics.published += 1
        if self.shared_store is not None:
            return
        accepted = [(a, s) for a, s in self.router.routes(artifact.type_name) if self.router.accepts(a, s, artifact)]
        if self.forgetting is not None:
            self.forgetting.delivered(artifact.id, len(accepted))
        for agent, sub in accepted:
            if held is None:
                self.intake.deliver(agent, sub, artifact)
            else:
                self.intake.record_delivery(agent, sub, artifact)
                held.append((agent, sub, artifact))

    # -- batches -----------------------------------------------------------------------------------------

    async def flush_expired(self) -> int:
        if self.shared is not None:
            return await self.shared.flush_due()
        return self.intake.flush_expired()

    async def flush_all(self, reason: FlushReason, *, agent: str | None = None) -> int:
        if self.shared is not None:
            return await self.shared.flush_all(reason, agent=agent)
        return self.intake.flush_all(reason, agent=agent)

    def batch_stats(self) -> list[BatchStats]:
        local = self.intake.stats()
        return local if self.shared is None else local + self.shared.stats()

    # -- finishing ----------------------------------------------------------------------------------------

    async def idle(self) -> None:
        """No work queued or running here (and, with a shared store, this process's commits applied)."""
        await asyncio.sleep(0)  # let callbacks already due (timers, finished commits) run first
        await self.runner.idle()
        if self.shared is not None:
            await self.shared.settle()

    async def finish(self, deadline: float | None) -> None:
        """Finish all work: flush partial batches (reason "shutdown"), close join groups, until nothing is left;
        at `deadline` (loop time) cancel what is still running. A shared intake stops taking work instead."""
        if self.shared is not None:
            await self.shared.stop()
            await self.idle()
            return
        while True:
            await self.runner.idle_by(deadline)
            flushed = self.intake.flush_all("shutdown")
            closed = self.intake.close_joins()
            if not flushed and not closed and not self.runner.tasks:
                return

    async def close(self) -> None:
        self.intake.cancel_timers()
        if self.shared is not None:
            await self.shared.close()
