"""Kept for one release: the in-memory store now lives in `flock_llm.stores.memory` (see `flock_llm.stores`)."""

from .stores.memory import ArtifactStore, InMemoryStore

__all__ = ["ArtifactStore", "InMemoryStore"]
