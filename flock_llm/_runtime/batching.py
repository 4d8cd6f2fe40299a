"""Pure batching logic: accumulate items, decide flushes. No clock, no I/O.

Time is a parameter (`now`, monotonic seconds) passed by the orchestrator,
which alone reads the clock and schedules deadlines on the event loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .._vocabulary import FlushReason
from ..artifact import Artifact
from ..subscription import BatchSpec

__all__ = ["BatchBuffer", "BatchEngine", "BatchKey", "Flush", "FlushReason", "Item"]

Item = tuple[Artifact, ...]
"""One batch item: a single artifact, or one correlated join group."""
BatchKey = tuple[str, int] | tuple[str, int, Hashable]
"""(agent name, subscription index[, partition key])."""

_batch_serial = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Flush:
    """A batch taken out of accumulation, ready for the agent."""

    key: BatchKey
    batch_id: str
    items: tuple[Item, ...]
    reason: FlushReason
    configured_size: int | None
    opened_at: float
    flushed_at: float
    tokens: int = 0
    """The items' prompt tokens as counted when they entered (0 unless the spec has `max_tokens`)."""

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def efficiency(self) -> float | None:
        """size / configured size, or None for a timeout-only spec."""
        return None if self.configured_size is None else len(self.items) / self.configured_size

    @property
    def waited_s(self) -> float:
        """Seconds from the batch's first item to the flush."""
        return self.flushed_at - self.opened_at

    @property
    def artifacts(self) -> list[Artifact]:
        return [artifact for item in self.items for artifact in item]


@dataclass(slots=True)
class BatchBuffer:
    """One accumulating batch. Reused: taking a flush empties it.

    Example (times are plain numbers)::

        buf = BatchBuffer(BatchSpec(size=2, timeout=timedelta(seconds=30)))
        buf.add((artifact,), now=0.0)   # None; buf.deadline == 30.0
        buf.take_if_due(now=30.0)       # Flush(reason="timeout", ...)
    """

    batch_spec: BatchSpec
    key: BatchKey = ("", 0)
    items: list[Item] = field(default_factory=list)
    opened_at: float | None = None
    """Monotonic time of the first item, or None while empty."""
    created_at: datetime | None = None
    """Wall-clock time of the first item, for display."""
    batch_id: str = ""
    tokens: int = 0
    """The prompt tokens of the items accumulated (counted only under a `max_tokens` budget)."""

    @property
    def artifacts(self) -> list[Artifact]:
        return [artifact for item in self.items for artifact in item]

    @property
    def deadline(self) -> float | None:
        timeout = self.batch_spec.timeout_seconds
        if timeout is None or self.opened_at is None:
            return None
        return self.opened_at + timeout

    def add(self, item: Item, *, now: float, wall: datetime | None = None) -> Flush | None:
        """Add one item; return the flush it caused (the batch reached its size, or its deadline had passed)."""
        flushes, _ = self.add_counted(item, 0, None, now=now, wall=wall)
        return flushes[0] if flushes else None

    def add_counted(
        self,
        item: Item,
        tokens: int,
        budget: int | None,
        *,
        now: float,
        wall: datetime | None = None,
        limit: int | None = None,
    ) -> tuple[list[Flush], bool]:
        """Add one item of `tokens` prompt tokens under a token `budget` (None: no budget). Returns the flushes it
        caused, in order (the batch so far, reason "tokens", when the item would take it over the budget; then
        the batch with the item, when that reached its size or budget: an item alone over the budget goes
        alone), and whether the item opened a new batch (schedule its deadline). `limit`: the size the batch
        flushes at when it is below the spec's (the effective size of `BatchSpec(quality=)`).

        An item that comes at or after the batch's deadline (its timer is late, or the item is a restored one
        that entered then) first flushes the batch, reason "timeout": it never belonged to it. So batches
        restored from a durable store re-form as they first flushed."""
        flushes: list[Flush] = []
        deadline = self.deadline
        if deadline is not None and self.items and now >= deadline:
            flushes.append(self._take("timeout", now=now))
        elif budget is not None and self.items and self.tokens + tokens > budget:
            flushes.append(self._take("tokens", now=now))
        opened = self.opened_at is None
        if opened:
            self.opened_at = now
            self.created_at = wall or datetime.now(UTC)
            self.batch_id = f"b{next(_batch_serial)}"
        self.items.append(item)
        self.tokens += tokens
        size = self.batch_spec.size
        if size is not None and limit is not None:
            size = max(1, min(size, limit))
        if size is not None and len(self.items) >= size:
            flushes.append(self._take("size", now=now))
        elif budget is not None and self.tokens >= budget:
            flushes.append(self._take("tokens", now=now))
        return flushes, opened and bool(self.items)

    def take_if_due(self, *, now: float) -> Flush | None:
        """The flush, with reason "timeout", when the deadline has passed."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return None
        return self.take("timeout", now=now)

    def take(self, reason: FlushReason, *, now: float) -> Flush | None:
        """Take whatever is accumulated (None when empty) and start afresh."""
        if not self.items or self.opened_at is None:
            return None
        return self._take(reason, now=now)

    def _take(self, reason: FlushReason, *, now: float) -> Flush:
        flush = Flush(
            key=self.key,
            batch_id=self.batch_id,
            items=tuple(self.items),
            reason=reason,
            configured_size=self.batch_spec.size,
            opened_at=self.opened_at if self.opened_at is not None else now,
            flushed_at=now,
            tokens=self.tokens,
        )
        self.items = []
        self.opened_at = None
        self.created_at = None
        self.batch_id = ""
        self.tokens = 0
        return flush


@dataclass(frozen=True, slots=True)
class AddOutcome:
    flushes: tuple[Flush, ...]
    """The flushes this add caused (size or tokens), in order."""
    opened_deadline: float | None
    """The deadline of a batch this add opened and left accumulating (schedule a timer for it), if any."""

    @property
    def flush(self) -> Flush | None:
        """The last flush this add caused, if any."""
        return self.flushes[-1] if self.flushes else None


class BatchEngine:
    """All accumulating batches, keyed by (agent, subscription index[, partition key]).

    `batches` maps each key to its accumulator (`.artifacts`, `.created_at`,
    `.batch_spec`); only batches holding items are present.
    """

    def __init__(self) -> None:
        self.batches: dict[BatchKey, BatchBuffer] = {}

    def add(
        self,
        key: BatchKey,
        spec: BatchSpec,
        item: Item,
        *,
        now: float,
        wall: datetime | None = None,
        tokens: int = 0,
        budget: int | None = None,
        limit: int | None = None,
    ) -> AddOutcome:
        """Add `item` (of `tokens` prompt tokens, under a token `budget` when the spec has one; `limit`: an
        effective size below the spec's)."""
        buf = self.batches.get(key)
        if buf is None:
            buf = self.batches[key] = BatchBuffer(spec, key=key)
        flushes, opened = buf.add_counted(item, tokens, budget, now=now, wall=wall, limit=limit)
        if not buf.items:
            del self.batches[key]
        return AddOutcome(tuple(flushes), buf.deadline if opened else None)

    def take(self, key: BatchKey, reason: FlushReason, *, now: float) -> Flush | None:
        buf = self.batches.pop(key, None)
        return None if buf is None else buf.take(reason, now=now)

    def take_if_due(self, key: BatchKey, *, now: float) -> Flush | None:
        buf = self.batches.get(key)
        if buf is None:
            return None
        flush = buf.take_if_due(now=now)
        if flush is not None:
            del self.batches[key]
        return flush

    def take_expired(self, *, now: float) -> list[Flush]:
        """Every batch whose deadline has passed, in deadline order."""
        due = [key for key, buf in self.batches.items() if buf.deadline is not None and buf.deadline <= now]
        due.sort(key=lambda k: self.batches[k].deadline or 0.0)
        return [flush for key in due if (flush := self.take_if_due(key, now=now)) is not None]

    def take_all(self, reason: FlushReason, *, now: float) -> list[Flush]:
        return [flush for key in list(self.batches) if (flush := self.take(key, reason, now=now)) is not None]

    def pending_keys(self) -> Iterator[BatchKey]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)
