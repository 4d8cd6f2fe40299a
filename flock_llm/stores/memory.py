"""Where published artifacts live. The in-memory store is the default."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar

from pydantic import BaseModel

from ..artifact import Artifact
from ..registry import type_name_of

if TYPE_CHECKING:
    from ..quality.shared import MemorySizeStates

__all__ = ["ArtifactStore", "InMemoryStore"]

T = TypeVar("T", bound=BaseModel)


class ArtifactStore(Protocol):
    """What the orchestrator needs from a store."""

    def add(self, artifact: Artifact) -> None:
        """Keep a published artifact (the runtime calls this; a durable store commits it in the same unit)."""
        ...

    async def get(self, artifact_id: str) -> Artifact | None:
        """The artifact with this id, or None when the store does not have it (any more)."""
        ...

    async def get_by_type(self, cls: type[T]) -> list[T]:
        """Every published object of type `cls`, as model instances, oldest first."""
        ...

    async def artifacts_by_type(self, cls: type[BaseModel]) -> list[Artifact]:
        """Every artifact of type `cls`, with lineage and visibility, oldest first."""
        ...

    async def list(self) -> list[Artifact]:
        """Every artifact the store has, oldest first."""
        ...


class InMemoryStore:
    """Artifacts in process memory, in publication order.

    Args:
        keep_consumed: False forgets an artifact once every subscription it was delivered to has consumed it
            (its run finished), so a long stream keeps only what is in flight. Outputs nobody consumes stay
            until `discard()` (the `flock-llm reviews` command discards each batch's outputs once written).
    """

    def __init__(self, *, keep_consumed: bool = True) -> None:
        self.keep_consumed = keep_consumed
        self._by_id: dict[str, Artifact] = {}
        self._by_type: dict[str, dict[str, Artifact]] = {}
        self._awaiting: dict[str, int] = {}
        self._size_states: MemorySizeStates | None = None

    def size_states(self) -> MemorySizeStates:
        """Batch-size controller states (`BatchSpec(quality=)`), shared by the engines of this process."""
        if self._size_states is None:
            from ..quality.shared import MemorySizeStates

            self._size_states = MemorySizeStates()
        return self._size_states

    def add(self, artifact: Artifact) -> None:
        """Keep a published artifact."""
        self._by_id[artifact.id] = artifact
        bucket = self._by_type.get(artifact.type_name)
        if bucket is None:
            self._by_type[artifact.type_name] = {artifact.id: artifact}
        else:
            bucket[artifact.id] = artifact

    def discard(self, ids: Iterable[str]) -> None:
        """Forget artifacts (written elsewhere, or a durable store's write failed and it forgets what it had not
        saved)."""
        for artifact_id in ids:
            artifact = self._by_id.pop(artifact_id, None)
            if artifact is not None:
                self._by_type[artifact.type_name].pop(artifact_id, None)
                self._awaiting.pop(artifact_id, None)

    def delivered(self, artifact_id: str, subscriptions: int) -> None:
        """(Runtime, with keep_consumed=False:) `artifact_id` went to this many subscriptions.

        Args:
            artifact_id: the delivered artifact.
            subscriptions: how many subscriptions it went to (it is forgotten once each consumed it).
        """
        if subscriptions:
            self._awaiting[artifact_id] = self._awaiting.get(artifact_id, 0) + subscriptions

    def consumed(self, artifacts: Iterable[Artifact]) -> None:
        """(Runtime, with keep_consumed=False:) one subscription consumed these; forget those nobody awaits."""
        gone = []
        for artifact in artifacts:
            left = self._awaiting.get(artifact.id, 0) - 1
            if left > 0:
                self._awaiting[artifact.id] = left
            else:
                gone.append(artifact.id)
        self.discard(gone)

    def add_many(self, artifacts: Iterable[Artifact]) -> None:
        """Keep several artifacts, in order."""
        for artifact in artifacts:
            self.add(artifact)

    async def get(self, artifact_id: str) -> Artifact | None:
        """The artifact with this id, or None (never published, or forgotten)."""
        return self._by_id.get(artifact_id)

    async def get_by_type(self, cls: type[T]) -> list[T]:
        """Every published object of type `cls`, as model instances, oldest first."""
        bucket = self._by_type.get(type_name_of(cls), {})
        return [a.payload for a in bucket.values() if isinstance(a.payload, cls)]

    async def artifacts_by_type(self, cls: type[BaseModel]) -> list[Artifact]:
        """Every artifact of type `cls`, with lineage and visibility, oldest first."""
        return list(self._by_type.get(type_name_of(cls), {}).values())

    async def list(self) -> list[Artifact]:
        """Every artifact kept, oldest first."""
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)
