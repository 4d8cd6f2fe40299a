"""Kept for one release: the Redis store now lives in `flock_llm.stores.redis` (import it from `flock_llm.stores`)."""

from ._runtime.ledger import Receipt
from .stores.redis import RedisStore

__all__ = ["Receipt", "RedisStore"]
