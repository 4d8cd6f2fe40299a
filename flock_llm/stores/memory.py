"""Where published artifacts live. The in-memory store is the default."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from pydantic import BaseModel

from ..artifact import Artifact
from ..registry import type_name_of

__all__ = ["ArtifactStore", "InMemoryStore"]

T = TypeVar("T", bound=BaseModel)


class ArtifactStore(Protocol):
    """What the orchestrator needs from a store."""

    def add(self, artifact: Artifact) -> None: ...

    async def get(self, artifact_id: str) -> Artifact | None: ...

    async def get_by_type(self, cls: type[T]) -> list[T]: ...

    async def artifacts_by_type(self, cls: type[BaseModel]) -> list[Artifact]: ...

    async def list(self) -> list[Artifact]: ...


class InMemoryStore:
    """Artifacts in process memory, in publication order."""

    def __init__(self) -> None:
        self._by_id: dict[str, Artifact] = {}
        self._by_type: dict[str, list[Artifact]] = {}

    def add(self, artifact: Artifact) -> None:
        self._by_id[artifact.id] = artifact
        bucket = self._by_type.get(artifact.type_name)
        if bucket is None:
            self._by_type[artifact.type_name] = [artifact]
        else:
            bucket.append(artifact)

    def discard(self, ids: Iterable[str]) -> None:
        """Forget artifacts (a durable store whose write failed forgets what it had not saved)."""
        gone = {i for i in ids if self._by_id.pop(i, None) is not None}
        if gone:
            for name, bucket in self._by_type.items():
                self._by_type[name] = [a for a in bucket if a.id not in gone]

    def add_many(self, artifacts: Iterable[Artifact]) -> None:
        for artifact in artifacts:
            self.add(artifact)

    async def get(self, artifact_id: str) -> Artifact | None:
        return self._by_id.get(artifact_id)

    async def get_by_type(self, cls: type[T]) -> list[T]:
        """Every published object of type `cls`, as model instances, oldest first."""
        return [a.payload for a in self._by_type.get(type_name_of(cls), ()) if isinstance(a.payload, cls)]

    async def artifacts_by_type(self, cls: type[BaseModel]) -> list[Artifact]:
        """Every artifact of type `cls`, with lineage and visibility, oldest first."""
        return list(self._by_type.get(type_name_of(cls), ()))

    async def list(self) -> list[Artifact]:
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)
