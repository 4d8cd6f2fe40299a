"""Engine state shared by every worker process of a Redis store: rate windows (see `flock_llm.engines._rate`:
one sliding minute per name, changed only by the RATE_TAKE and RATE_SETTLE scripts, by the server's clock). The
journal of provider batch jobs is in `redis_journal`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .redis_connection import RedisConnection

__all__ = ["RedisWindow", "RedisWindows"]


class RedisWindow:
    """One limit per sliding minute, shared through Redis."""

    def __init__(self, store: RedisConnection, name: str, limit: int) -> None:
        self.store = store
        self.limit = limit
        base = store.key(f"rate:{name}")
        self._keys = [base, base + ":amounts", base + ":seq"]

    async def acquire(self, amount: int) -> str:
        store = self.store
        while True:
            taken, value = await store.retrying(
                lambda: store.script("RATE_TAKE")(keys=self._keys, args=[self.limit, amount]),
                limit=store.reconnect_timeout,
            )
            if int(taken) == 1:
                return value.decode() if isinstance(value, bytes) else str(value)
            await asyncio.sleep(min(max(int(value), 5), 60_000) / 1000)

    async def settle(self, entry: str, actual: int) -> None:
        store = self.store
        await store.retrying(
            lambda: store.script("RATE_SETTLE")(keys=self._keys, args=[entry, max(0, actual)]),
            limit=store.reconnect_timeout,
        )


class RedisWindows:
    """The windows of one Redis store (a provider's limit, shared by every worker using the store)."""

    def __init__(self, store: RedisConnection) -> None:
        self.store = store

    def window(self, name: str, limit: int) -> RedisWindow:
        return RedisWindow(self.store, name, limit)
