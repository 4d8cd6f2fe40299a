"""Units of durable writes: what one synchronous step of the orchestrator wrote, committed together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..artifact import Artifact

__all__ = ["DurableStore", "Unit", "UnitCollector"]


@dataclass(slots=True)
class Unit:
    """Writes that commit together."""

    artifacts: list[Artifact] = field(default_factory=list)
    deliveries: list[tuple[str, int, str, float]] = field(default_factory=list)
    """(agent, subscription index, artifact id, wall time it entered the subscription)."""
    consumed: list[tuple[str, int, str]] = field(default_factory=list)
    receipt: Any = None
    """For a shared store: the delivery this unit finishes (acknowledged in the same commit)."""

    def __bool__(self) -> bool:
        return bool(self.artifacts or self.deliveries or self.consumed or self.receipt is not None)


class DurableStore(Protocol):
    durable: bool

    def write(self, unit: Unit) -> asyncio.Future[None] | None: ...

    def load(self) -> Any: ...


class UnitCollector:
    """Collects the writes of one step (a publish call, the end of a run) and hands them to the store.

    Steps are synchronous (no awaits between `begin` and `commit`), so one current unit is enough.
    """

    def __init__(self, store: DurableStore) -> None:
        self.store = store
        self._current: Unit | None = None

    def begin(self) -> None:
        self._current = Unit()

    def commit(self, receipt: Any = None) -> asyncio.Future[None] | None:
        """Write the unit (finishing `receipt`, if given); the future (if any) resolves once it is committed."""
        unit, self._current = self._current, None
        if unit is None:
            return None
        unit.receipt = receipt
        if not unit:
            return None
        return self.store.write(unit)

    def artifact(self, artifact: Artifact) -> bool:
        """Collect a published artifact; False when no step is open (the caller stores it directly)."""
        if self._current is None:
            return False
        self._current.artifacts.append(artifact)
        return True

    def delivery(self, agent: str, sub: int, artifact_id: str, entered_at: float) -> None:
        if self._current is not None:
            self._current.deliveries.append((agent, sub, artifact_id, entered_at))

    def consumed(self, agent: str, sub: int, artifacts: Iterable[Artifact]) -> None:
        marks = [(agent, sub, a.id) for a in artifacts]
        if self._current is not None:
            self._current.consumed.extend(marks)
        else:  # e.g. a join window closing on a timer, outside any step
            self.store.write(Unit(consumed=marks))
