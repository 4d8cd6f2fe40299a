"""A store from a URL: "sqlite:///path" or "redis://host:port/db?..." (the stores are imported only when named)."""

from __future__ import annotations

from typing import cast

from ..errors import ConfigurationError
from .memory import ArtifactStore

__all__ = ["store_from_url"]


def store_from_url(url: str) -> ArtifactStore:
    """The store a URL names.

    Raises:
        ConfigurationError: the URL names no store flock_llm knows.
    """
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return cast(ArtifactStore, RedisStore.from_url(url))
    raise ConfigurationError(f"store URL must start with 'sqlite:///' or 'redis://', got {url.split('@')[-1]!r}")
