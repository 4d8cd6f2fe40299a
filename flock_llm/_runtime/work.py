"""What a run is: the work queued for an engine run, and the finished run told to listeners."""

from __future__ import annotations

from dataclasses import dataclass

from ..agent import Agent
from ..artifact import Artifact
from ..subscription import Subscription
from ..tracing import SpanHandle
from .batching import Flush, Item
from .ledger import Receipt

__all__ = ["FinishedRun", "Work"]


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """One finished agent run, reported to `Flock.on_finished_run` listeners once it is committed."""

    agent: str
    """The agent that ran."""
    inputs: tuple[Artifact, ...]
    """The artifacts the run consumed."""
    published: tuple[Artifact, ...]
    """What it published: outputs and failure records (in memory, also a cancelled run's failure record)."""


@dataclass(slots=True)
class Work:
    """One run to do: an unbatched item, or a flushed batch."""

    agent: Agent
    subscription: Subscription
    items: tuple[Item, ...]
    flush: Flush | None
    span: SpanHandle | None = None
    receipt: Receipt | None = None
    """For a shared store: the delivery the run finishes."""
