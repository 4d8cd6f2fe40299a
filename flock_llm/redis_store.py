"""Kept for one release: the Redis store now lives in `flock_llm.stores.redis` (import it from `flock_llm.stores`)."""

from .stores.redis import Receipt, RedisStore

__all__ = ["Receipt", "RedisStore"]
