"""Durable write units: what one synchronous step of the runtime wrote, committed together.

A step (a publish call, the end of an agent run, a refusal) opens a unit with `Ledger.unit()`, records
artifacts, deliveries and consumption marks, and the unit is handed to the store when the step ends:

    with ledger.unit(receipt) as commit:
        ...                      # publish outputs, mark inputs consumed
    await commit.future          # (when the caller acknowledges after the commit)

Steps are synchronous (no awaits inside a unit), so one current unit is enough. Without a durable store the
ledger records nothing and `commit.future` stays None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..artifact import Artifact

__all__ = ["Commit", "DurableWriter", "Ledger", "Receipt", "Unit"]


@dataclass(frozen=True, slots=True)
class Receipt:
    """The shared-store delivery a unit finishes: a stream entry, acknowledged in the same commit (and, for a
    flushed batch, deleted)."""

    stream: str
    group: str
    entry_id: str
    delete: bool = False


@dataclass(slots=True)
class Unit:
    """Writes that commit together."""

    artifacts: list[Artifact] = field(default_factory=list)
    deliveries: list[tuple[str, int, str, float]] = field(default_factory=list)
    """(agent, subscription index, artifact id, wall time it entered the subscription)."""
    consumed: list[tuple[str, int, str]] = field(default_factory=list)
    receipt: Receipt | None = None
    """For a shared store: the delivery this unit finishes (acknowledged in the same commit)."""

    def __bool__(self) -> bool:
        return bool(self.artifacts or self.deliveries or self.consumed or self.receipt is not None)


class DurableWriter(Protocol):
    """A store that commits units (SQLite, Redis)."""

    def write(self, unit: Unit) -> asyncio.Future[None] | None: ...


@dataclass(slots=True)
class Commit:
    """A unit being written: the receipt it finishes (may be set inside the block), and once the block ended,
    the future that resolves when the store committed it (None: nothing to wait for)."""

    receipt: Receipt | None = None
    future: asyncio.Future[None] | None = None


class UnitScope:
    """The `with` block of one unit (a small class rather than a generator: it runs once per publish and run)."""

    __slots__ = ("_commit", "_ledger")

    def __init__(self, ledger: Ledger | None, commit: Commit) -> None:
        self._ledger = ledger
        self._commit = commit

    def __enter__(self) -> Commit:
        if self._ledger is not None:
            self._ledger.begin()
        return self._commit

    def __exit__(self, *exc: object) -> None:
        if self._ledger is not None:
            self._ledger.end(self._commit)


class Ledger:
    """Collects each step's writes into a unit and hands it to the durable store (if any)."""

    def __init__(self, store: DurableWriter | None) -> None:
        self.store = store
        self._current: Unit | None = None

    @property
    def durable(self) -> bool:
        return self.store is not None

    def unit(self, receipt: Receipt | None = None) -> UnitScope:
        """One step's unit; written (finishing `receipt`, if given) when the block ends, even by an error."""
        if self.store is None:
            return _NO_UNIT
        return UnitScope(self, Commit(receipt))

    def begin(self) -> None:
        """(Used by `unit()`: opens the current unit.)"""
        self._current = Unit()

    def end(self, commit: Commit) -> None:
        """(Used by `unit()`: hands the current unit to the store.)"""
        unit, self._current = self._current, None
        if unit is None or self.store is None:
            return
        unit.receipt = commit.receipt
        if unit:
            commit.future = self.store.write(unit)

    def artifact(self, artifact: Artifact) -> bool:
        """Collect a published artifact; False when no unit is open (the caller stores it directly)."""
        if self._current is None:
            return False
        self._current.artifacts.append(artifact)
        return True

    def delivery(self, agent: str, sub: int, artifact_id: str, entered_at: float) -> None:
        if self._current is not None:
            self._current.deliveries.append((agent, sub, artifact_id, entered_at))

    def consumed(self, agent: str, sub: int, artifacts: Iterable[Artifact]) -> None:
        if self.store is None:
            return
        marks = [(agent, sub, a.id) for a in artifacts]
        if self._current is not None:
            self._current.consumed.extend(marks)
        else:  # e.g. a join window closing on a timer, outside any step
            self.store.write(Unit(consumed=marks))


_NO_UNIT = UnitScope(None, Commit())
"""Without a durable store a unit records nothing: one shared, inert scope."""
