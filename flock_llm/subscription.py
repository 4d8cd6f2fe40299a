"""What an agent consumes: types, filters, and how items are joined and batched."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from .errors import BatchSpecWarning, ConfigurationError

if TYPE_CHECKING:
    from .quality.controller import QualityTarget

__all__ = ["BatchSpec", "JoinSpec", "Subscription"]


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_quality(quality: object, size: int | None) -> None:
    from .quality.controller import QualityTarget

    if not isinstance(quality, QualityTarget):
        raise ConfigurationError(
            f"`quality` must be a QualityTarget, got {quality!r}; e.g. quality=QualityTarget(0.95)"
        )
    if size is None:
        raise ConfigurationError(
            "BatchSpec(quality=...) steers the batch size: give it the largest size, e.g. "
            "BatchSpec(size=50, quality=QualityTarget(0.95), timeout=timedelta(seconds=30))"
        )
    if quality.min_size > size:
        raise ConfigurationError(
            f"the quality target's min_size={quality.min_size} is above BatchSpec(size={size}): the size could "
            "never shrink; lower `min_size` or raise `size`"
        )


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """Collect items and hand them to the engine together.

    A batch flushes when it holds `size` items, when the next item would take
    it over `max_tokens` prompt tokens, or `timeout` after its first item
    arrived, whichever comes first.

    Raises:
        ConfigurationError: `size` is not a positive int, `timeout` is not a
            positive timedelta, `max_tokens` is not a positive int or "auto",
            none of the three is given, `by` is not callable, or `quality` is
            not a QualityTarget (or is given without `size`).
    """

    size: int | None = None
    """Flush as soon as the batch holds this many items (join groups count as one)."""
    timeout: timedelta | None = None
    """Flush a partial batch this long after its first item arrived (monotonic clock)."""
    by: Callable[[Any], Hashable] | None = field(default=None, compare=False)
    """Keep one batch per key computed from each item's payload (e.g. per customer)."""
    max_tokens: int | Literal["auto"] | None = None
    """Flush before an item would take the batch's prompt tokens over this (reason "tokens"); an item alone over
    it goes alone. Each item's tokens are counted once, as it enters, by the consuming engine
    (`Engine.item_tokens`). "auto": what the engine's context leaves after its fixed instructions and schema
    and the room its answer needs (`Engine.batch_token_budget`; LLMEngine and DSPyEngine know it)."""
    quality: QualityTarget | None = None
    """Hold a quality target: the batch size shrinks below `size` while audited agreement with one-item answers
    falls short of it, and grows back (at most to `size`) while it holds (`flock_llm.quality.QualityTarget`;
    needs `size` and an engine that audits: LLMEngine or DSPyEngine, whose `audit=` defaults to `Audit()` here)."""

    def __post_init__(self) -> None:
        if self.size is not None and not _is_positive_int(self.size):
            raise ConfigurationError(
                f"`size` must be a positive integer, got {self.size!r}; use `size=None` to flush on `timeout` only"
            )
        if self.timeout is not None:
            if not isinstance(self.timeout, timedelta):
                raise ConfigurationError(
                    f"`timeout` must be a datetime.timedelta, got {self.timeout!r}; "
                    "e.g. `timeout=timedelta(seconds=30)`"
                )
            if self.timeout <= timedelta(0):
                raise ConfigurationError(f"`timeout` must be positive, got {self.timeout!r}")
        if self.max_tokens is not None and self.max_tokens != "auto" and not _is_positive_int(self.max_tokens):
            raise ConfigurationError(f'`max_tokens` must be a positive integer or "auto", got {self.max_tokens!r}')
        if self.size is None and self.timeout is None and self.max_tokens is None:
            raise ConfigurationError(
                "BatchSpec needs `size=`, `timeout=` or `max_tokens=`, e.g. "
                "BatchSpec(size=25, timeout=timedelta(seconds=30))"
            )
        if self.quality is not None:
            _check_quality(self.quality, self.size)
        if self.by is not None and not callable(self.by):
            raise ConfigurationError(f"`by` must be a callable returning the partition key, got {self.by!r}")
        if self.timeout is None:
            trigger = f"size={self.size}" if self.size is not None else f"max_tokens={self.max_tokens!r}"
            warnings.warn(
                f"BatchSpec({trigger}) has no `timeout`: a partial batch waits until shutdown. "
                "Add e.g. `timeout=timedelta(minutes=5)`.",
                BatchSpecWarning,
                stacklevel=3,
            )

    @property
    def timeout_seconds(self) -> float | None:
        """`timeout` in seconds (None without one)."""
        return None if self.timeout is None else self.timeout.total_seconds()


@dataclass(frozen=True, slots=True)
class JoinSpec:
    """Correlate artifacts of different types that share a key; each complete group is one item.

    `within` is a time window (timedelta, from the group's first artifact) or a
    count window (int: the group must complete within that many arrivals at
    this subscription). A group that expires incomplete is reported, not
    silently dropped.

    Raises:
        ConfigurationError: `by` is not callable or `within` is not a positive timedelta/int.
    """

    by: Callable[[Any], Hashable]
    """Computes the correlation key from each artifact's payload."""
    within: timedelta | int
    """Time window (timedelta) or count window (int)."""

    def __post_init__(self) -> None:
        if not callable(self.by):
            raise ConfigurationError(f"`by` must be a callable returning the correlation key, got {self.by!r}")
        if isinstance(self.within, timedelta):
            if self.within <= timedelta(0):
                raise ConfigurationError(f"`within` must be positive, got {self.within!r}")
        elif not _is_positive_int(self.within):
            raise ConfigurationError(
                f"`within` must be a positive timedelta (time window) or int (count window), got {self.within!r}"
            )


@dataclass(frozen=True, slots=True)
class Subscription:
    """One `consumes(...)` call of an agent (built by `Agent.consumes`)."""

    index: int
    """Its position among the agent's subscriptions (0 for the first `consumes()`)."""
    types: tuple[type[BaseModel], ...]
    """The consumed types, one per slot."""
    type_names: tuple[str, ...]
    """Their registered names."""
    where: tuple[Callable[[Any], bool], ...] = ()
    """Predicates an artifact must pass (all of them) before it is delivered."""
    batch: BatchSpec | None = None
    """How items are batched (None: one run per item)."""
    join: JoinSpec | None = None
    """How slots are correlated (None: a single type, or an AND gate)."""
    from_agents: frozenset[str] | None = None
    """Only artifacts published by these agents (None: from anyone)."""
    tags: frozenset[str] | None = None
    """Only artifacts carrying at least one of these tags (None: any)."""

    @property
    def is_gate(self) -> bool:
        """`consumes(A, B)` without `join=`: an AND gate that runs once it holds one artifact per slot."""
        return self.join is None and len(self.type_names) > 1

    @property
    def groups(self) -> bool:
        """Whether arrivals are grouped into sets (a join or a gate) before they become one item."""
        return self.join is not None or len(self.type_names) > 1

    def accepts_origin(self, produced_by: str | None, tags: frozenset[str]) -> bool:
        """Whether an artifact from `produced_by` with `tags` passes `from_agents=` and `tags=`.

        Args:
            produced_by: the agent that published it (None: published from outside).
            tags: its tags.
        """
        if self.from_agents is not None and produced_by not in self.from_agents:
            return False
        return not (self.tags and not (tags & self.tags))
