"""The runtime a Flock delegates to: one router, one ledger, one set of outcomes, one runner, and one intake
(this process's `LocalIntake`, or the shared store's), chosen once when it is built. Intakes are handed the
`RuntimeServices` (the `IntakeServices` port), never the runtime itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from .._vocabulary import FlushReason
from ..agent import Agent
from ..artifact import Artifact
from ..engines import CostLedger
from ..metrics import BatchStats, MetricsRecorder
from ..stores.memory import ArtifactStore, InMemoryStore
from ..subscription import Subscription
from ..tracing import Tracer
from .intake import LocalIntake
from .ledger import Ledger, Receipt
from .outcomes import Outcomes
from .ports import Held, Intake, KeepsSizeStates, LocalDurableStore, SharedStore
from .router import Router
from .runner import Runner
from .timers import Clock

__all__ = ["Held", "Runtime", "RuntimeServices"]

log = logging.getLogger("flock_llm")


@dataclass(frozen=True, slots=True)
class RuntimeServices:
    """The runtime's parts an intake works through (implements `IntakeServices`)."""

    agents: Mapping[str, Agent]
    clock: Clock
    router: Router
    ledger: Ledger
    outcomes: Outcomes
    runner: Runner
    metrics: MetricsRecorder
    tracer: Tracer | None


class Runtime:
    """Delivery, batching, runs and durability behind the Flock facade.

    Args:
        agents: the Flock's agents by name (read live).
        store: where artifacts live; a LocalDurableStore or SharedStore makes writes durable.
        budget: `Flock(budget_usd=)`'s ledger, handed to engines.
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
        budget: CostLedger | None = None,
    ) -> None:
        shared = store if isinstance(store, SharedStore) else None
        local = store if isinstance(store, LocalDurableStore) else None
        durable = local if local is not None else shared  # (`or` would ask an empty store for its length)
        self.store = store
        self.local_store = local
        """A local durable store (the Flock closes it at shutdown)."""
        self.metrics = MetricsRecorder()
        self.ledger = Ledger(durable)
        self.outcomes = Outcomes(self.publish_artifact, self.metrics, tracer)
        self.router = Router(agents, self._where_raised)
        forgetting = (
            store if isinstance(store, InMemoryStore) and not store.keep_consumed and not self.ledger.durable else None
        )
        self.runner = Runner(
            ledger=self.ledger,
            outcomes=self.outcomes,
            metrics=self.metrics,
            tracer=tracer,
            model=model,
            env=env,
            shared=shared is not None,
            budget=budget,
            rate_windows=shared.rate_windows() if shared is not None else None,
            jobs=durable.job_journal() if durable is not None else None,
            size_states=store.size_states() if isinstance(store, KeepsSizeStates) else None,
            release=self._release_run,
            forget=forgetting.consumed if forgetting is not None else None,
        )
        self.runner_agents = agents
        services = RuntimeServices(
            agents, clock, self.router, self.ledger, self.outcomes, self.runner, self.metrics, tracer
        )
        self.intake: Intake = (
            shared.intake(services)
            if shared is not None
            else LocalIntake(services, durable=local, forgetting=forgetting)
        )

    def _where_raised(self, agent: Agent, sub: Subscription, artifact: Artifact, exc: Exception) -> None:
        self.outcomes.user_code_failed(agent, sub, artifact, exc, stage="where", counter="predicate_errors")

    def _release_run(self, receipt: Receipt) -> None:
        self.intake.release_run(receipt)

    async def start(self) -> None:
        """Restore what a local durable store holds, or join the shared store's workers."""
        self.check_agents()
        await self.intake.start()

    def check_agents(self) -> None:
        """Refuse agents that cannot run as defined (before anything is stored or delivered)."""
        for agent in self.runner_agents.values():
            agent.check_engine()

    # -- publishing -------------------------------------------------------------------------------------

    def hold(self) -> Held | None:
        """A list for a publish's deliveries to wait in until its commit (local durable store), else None."""
        return self.intake.hold()

    def release(self, held: Held | None) -> None:
        self.intake.release(held)

    def publish_artifact(self, artifact: Artifact, held: Held | None = None) -> None:
        """Store an artifact and hand it to the intake, which delivers it to every subscription that takes it
        (to `held`, recorded but not yet handed over, when given; a shared store's workers read it there)."""
        if self.ledger.store is None or not self.ledger.artifact(artifact):
            self.store.add(artifact)  # (a durable store adds it when its unit is written)
        self.metrics.published += 1
        self.intake.accept(artifact, held)

    # -- batches -----------------------------------------------------------------------------------------

    async def flush_expired(self) -> int:
        return await self.intake.flush_due()

    async def flush_all(self, reason: FlushReason, *, agent: str | None = None) -> int:
        return await self.intake.flush_all(reason, agent=agent)

    def batch_stats(self) -> list[BatchStats]:
        return self.intake.stats()

    # -- finishing ----------------------------------------------------------------------------------------

    async def idle(self) -> None:
        """No work queued or running here (and this process's commits to a shared store applied)."""
        await asyncio.sleep(0)  # let callbacks already due (timers, finished commits) run first
        await self.runner.idle()
        await self.intake.settle()

    async def finish(self, deadline: float | None) -> None:
        """Finish all work: the intake finishes what is open (or stops taking work), then the runs end; at
        `deadline` (loop time) what is still running is cancelled."""
        await self.intake.finish(deadline)
        await self.idle()

    async def close(self) -> None:
        await self.intake.close()
