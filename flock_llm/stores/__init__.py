"""Where artifacts live: in memory (the default), in a SQLite file (durable), or in Redis (shared by worker
processes).

    from flock_llm.stores import InMemoryStore, SQLiteStore, RedisStore, store_from_url

`SQLiteStore` and `RedisStore` are imported on first use, so `import flock_llm` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .memory import ArtifactStore, InMemoryStore
from .urls import store_from_url

if TYPE_CHECKING:
    from .redis import RedisStore
    from .sqlite import SQLiteStore

__all__ = ["ArtifactStore", "InMemoryStore", "RedisStore", "SQLiteStore", "store_from_url"]


def __getattr__(name: str) -> Any:
    if name == "SQLiteStore":
        from .sqlite import SQLiteStore

        return SQLiteStore
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
