"""What a store or an intake must provide, and what an intake is given. A store's capabilities are declared by
the Protocols it implements (checked with isinstance against these), never discovered attribute by attribute.

    ArtifactStore        every store: add/get/list (stores/memory.py)
    LocalDurableStore    commits units and restores pending deliveries on start (SQLite)
    SharedStore          commits units and brings its own intake (Redis: routing and batching happen in the
                         store, shared by every worker process)
    KeepsSizeStates      keeps batch-size controller states (`BatchSpec(quality=)`): memory in its process,
                         SQLite across restarts, Redis shared by every worker
    Intake               where stored artifacts go: routing, joins, batches, flushes; this process's own
                         (`LocalIntake`) or a shared store's. The runtime holds one and never asks which.
    IntakeServices       what an intake works through (the runtime's parts), and nothing more
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .._vocabulary import FlushReason
from ..metrics import BatchStats, MetricsRecorder
from .ledger import Ledger, Receipt, Unit
from .timers import Clock

if TYPE_CHECKING:
    from ..agent import Agent
    from ..artifact import Artifact
    from ..engines import JobJournal, RateWindows
    from ..quality.shared import SizeStates
    from ..stores.sqlite import Recovered
    from ..subscription import Subscription
    from ..tracing import Tracer
    from .outcomes import Outcomes
    from .router import Router
    from .runner import Runner

__all__ = ["Held", "Intake", "IntakeServices", "KeepsSizeStates", "LocalDurableStore", "SharedStore"]

Held = list[tuple["Agent", "Subscription", "Artifact"]]
"""Deliveries of a publish that wait for its commit."""


@runtime_checkable
class LocalDurableStore(Protocol):
    """A store in one process that survives a crash: units are committed; pending deliveries are restored."""

    def write(self, unit: Unit) -> asyncio.Future[None] | None: ...

    def load(self) -> Recovered: ...

    def close(self) -> None: ...

    def job_journal(self) -> JobJournal:
        """Where provider batch jobs are recorded before submission, in the same file."""
        ...


@runtime_checkable
class KeepsSizeStates(Protocol):
    """A store that keeps the batch-size controller's states (`flock_llm.quality.shared`); a store without it
    (yours) leaves them to each engine, in its process. Kept apart from the other ports so their checks do not
    start to refuse stores written before it."""

    def size_states(self) -> SizeStates:
        """The states, as the store keeps them (every engine of the Flock reads and writes them there)."""
        ...


class IntakeServices(Protocol):
    """The parts of the runtime an intake works through (read-only)."""

    @property
    def agents(self) -> Mapping[str, Agent]:
        """The Flock's agents by name (read live)."""
        ...

    @property
    def clock(self) -> Clock:
        """The Flock's clock: batch deadlines and sweeps are scheduled on it."""
        ...

    @property
    def router(self) -> Router: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def outcomes(self) -> Outcomes: ...

    @property
    def runner(self) -> Runner: ...

    @property
    def metrics(self) -> MetricsRecorder: ...

    @property
    def tracer(self) -> Tracer | None: ...


class Intake(Protocol):
    """Where stored artifacts go: routing, joins, batches and flushes, of this process or of a shared store."""

    async def start(self) -> None:
        """Begin taking work (restore what a durable store holds, or join the shared store's workers)."""
        ...

    def hold(self) -> Held | None:
        """A list for a publish's deliveries to wait in until its commit, when they must; else None."""
        ...

    def accept(self, artifact: Artifact, held: Held | None) -> None:
        """A stored artifact: deliver it to every subscription that takes it (to `held` when given)."""
        ...

    def release(self, held: Held | None) -> None:
        """Hand over the deliveries a publish held, once its unit is committed."""
        ...

    def release_run(self, receipt: Receipt) -> None:
        """A run that stopped before its commit (the budget): give back its slot, leave its entry to others."""
        ...

    async def flush_due(self) -> int: ...

    async def flush_all(self, reason: FlushReason, *, agent: str | None = None) -> int: ...

    def stats(self) -> list[BatchStats]: ...

    async def settle(self) -> bool:
        """Wait until this process's commits in flight are applied; False if some still retry."""
        ...

    async def finish(self, deadline: float | None) -> None:
        """Stop at shutdown: finish what is open (local) or stop taking work (shared), by `deadline`."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class SharedStore(Protocol):
    """A store shared by worker processes; it delivers artifacts through its own intake."""

    def write(self, unit: Unit) -> asyncio.Future[None]: ...

    def intake(self, services: IntakeServices) -> Intake: ...

    def rate_windows(self) -> RateWindows:
        """Per-minute limits shared by every worker process using the store."""
        ...

    def job_journal(self) -> JobJournal:
        """Where provider batch jobs are recorded before submission, shared by every worker process."""
        ...
