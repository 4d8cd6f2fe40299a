"""What a store or a shared intake must provide. A store's capabilities are declared by the Protocols it
implements (checked with isinstance against these), never discovered attribute by attribute.

    ArtifactStore        every store: add/get/list (stores/memory.py)
    LocalDurableStore    commits units and restores pending deliveries on start (SQLite)
    SharedStore          commits units and brings its own intake (Redis: routing and batching happen in the
                         store, shared by every worker process)
    SharedIntake         what the Flock asks of that intake
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..metrics import BatchStats
from .batching import FlushReason
from .ledger import Unit

if TYPE_CHECKING:
    from ..engines._journal import JobJournal
    from ..engines._rate import RateWindows
    from ..stores.sqlite import Recovered
    from .core import Runtime

__all__ = ["LocalDurableStore", "SharedIntake", "SharedStore"]


@runtime_checkable
class LocalDurableStore(Protocol):
    """A store in one process that survives a crash: units are committed; pending deliveries are restored."""

    def write(self, unit: Unit) -> asyncio.Future[None] | None: ...

    def load(self) -> Recovered: ...

    def close(self) -> None: ...

    def job_journal(self) -> JobJournal:
        """Where provider batch jobs are recorded before submission, in the same file."""
        ...


class SharedIntake(Protocol):
    """Routing, batching and runs of a store shared by worker processes."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def close(self) -> None: ...

    async def settle(self) -> bool: ...

    async def flush_due(self) -> int: ...

    async def flush_all(self, reason: FlushReason, *, agent: str | None = None) -> int: ...

    def stats(self) -> list[BatchStats]: ...


@runtime_checkable
class SharedStore(Protocol):
    """A store shared by worker processes; it delivers artifacts through its own intake."""

    def write(self, unit: Unit) -> asyncio.Future[None]: ...

    def intake(self, runtime: Runtime) -> SharedIntake: ...

    def rate_windows(self) -> RateWindows:
        """Per-minute limits shared by every worker process using the store."""
        ...

    def job_journal(self) -> JobJournal:
        """Where provider batch jobs are recorded before submission, shared by every worker process."""
        ...
