"""Artifacts: typed, immutable records on the blackboard, with their lineage."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, Field

from ._error_text import describe_error
from .registry import flock_type, resolve_type
from .visibility import PublicVisibility, Visibility

__all__ = ["Artifact", "FailureRecord", "new_artifact_id"]

T = TypeVar("T", bound=BaseModel)

_PUBLIC = PublicVisibility()
_NO_TAGS: frozenset[str] = frozenset()


def new_artifact_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Artifact:
    """One published object and what the blackboard knows about it."""

    type_name: str
    """The registered name of the payload's type."""
    payload: BaseModel
    """The published pydantic object."""
    id: str = field(default_factory=new_artifact_id)
    """A unique id (a fresh uuid4 hex unless given)."""
    produced_by: str | None = None
    """The agent that published it, or None when published from outside."""
    derived_from: tuple[str, ...] = ()
    """Ids of the artifacts this one was computed from."""
    correlation_id: str | None = None
    """The flow it belongs to: given at publish, or fresh; outputs inherit their inputs' when they share one."""
    tags: frozenset[str] = _NO_TAGS
    """Tags given at publish, matched by `consumes(..., tags=)`."""
    visibility: Visibility = _PUBLIC
    """Which agents may see it."""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    """Wall-clock publication time, for display and lineage (timers use a monotonic clock)."""

    def as_type(self, cls: type[T]) -> T:
        """The payload as `cls`; raises TypeError when it is of another type."""
        if not isinstance(self.payload, cls):
            raise TypeError(f"artifact {self.id} holds a {self.type_name}, not a {cls.__name__}")
        return self.payload

    @property
    def payload_type(self) -> type[BaseModel]:
        """The registered class of the payload."""
        return resolve_type(self.type_name)


@flock_type(name="FailureRecord")
class FailureRecord(BaseModel):
    """Published when an agent could not turn some of its inputs into outputs.

    Every consumed artifact ends up referenced by an output or by a failure record.
    """

    agent: str
    """The agent whose inputs failed."""
    input_ids: list[str] = Field(description="ids of the input artifacts that were not processed")
    """The ids of the input artifacts that were not processed."""
    stage: str = Field(description="where it failed: engine, output, where, join, ...")
    """Where it failed: one of the failure stages (`flock_llm._vocabulary.FailureStage`)."""
    error_type: str
    """The exception's class name."""
    error: str
    """What went wrong: never the payload's values, never a key."""
    flush_reason: str | None = None
    """The flush reason of the batch the inputs were in (None outside a batch)."""
    batch_id: str | None = None
    """The id of that batch."""

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        agent: str,
        input_ids: Iterable[str],
        stage: str,
        flush_reason: str | None = None,
        batch_id: str | None = None,
    ) -> FailureRecord:
        """The failure record of `input_ids`, described by `exc` (its type and a redacted message).

        Args:
            exc: the error that stopped these inputs.
            agent: the agent whose inputs they were.
            input_ids: the ids of the input artifacts.
            stage: where it failed (see the failure stages).
            flush_reason: the flush reason of their batch, if any.
            batch_id: the id of their batch, if any.
        """
        return cls(
            agent=agent,
            input_ids=list(input_ids),
            stage=stage,
            error_type=type(exc).__name__,
            error=describe_error(exc),
            flush_reason=flush_reason,
            batch_id=batch_id,
        )
