"""Engine state shared by every worker process of a Redis store: rate windows (see `flock_llm.engines._rate`:
one sliding minute per (account, model, kind), changed only by the RATE_TAKE and RATE_SETTLE scripts, by the
server's clock; workers that disagree about a window's limit are refused) and
the journal of provider batch jobs (see `flock_llm.engines._journal`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ...engines._journal import JobRecord
from ...errors import ConfigurationError

if TYPE_CHECKING:
    from .connection import RedisConnection

__all__ = ["RedisJournal", "RedisWindow", "RedisWindows"]


class RedisWindow:
    """One limit per sliding minute, shared through Redis."""

    def __init__(self, store: RedisConnection, name: str, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.name = name
        base = store.key(f"rate:{name}")
        self._keys = [base, base + ":amounts", base + ":seq", base + ":limit"]

    async def acquire(self, amount: int) -> str:
        """Wait until `amount` fits the shared window, take it; returns the entry's id.

        Raises:
            ConfigurationError: another worker uses this window (the same account and model) with another limit.
        """
        store = self.store
        while True:
            taken, value = await store.retrying(
                lambda: store.script("RATE_TAKE")(keys=self._keys, args=[self.limit, amount]),
                limit=store.reconnect_timeout,
            )
            if int(taken) == -1:
                kind = "tokens_per_minute" if self.name.endswith(":tokens") else "requests_per_minute"
                raise ConfigurationError(
                    f"rate window {self.name!r} (one account on one model) is shared through Redis with a limit of "
                    f"{int(value):,} per minute, but this worker has `{kind}={self.limit:,}`: give every worker "
                    "the same limit (the window expires 2 minutes after its last use)"
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


class RedisJournal:
    """Provider batch jobs recorded in Redis before submission (any worker that restarts finds them)."""

    def __init__(self, store: RedisConnection) -> None:
        self.store = store
        self._requests = store.key("deferred:requests")

    def _job(self, key: str) -> str:
        return self.store.key(f"deferred:job:{key}")

    async def job_of(self, custom_id: str) -> JobRecord | None:
        client = self.store.client
        key = await self.store.retrying(lambda: client.hget(self._requests, custom_id), limit=None)
        if key is None:
            return None
        key = key.decode() if isinstance(key, bytes) else str(key)
        fields = await self.store.retrying(lambda: client.hgetall(self._job(key)), limit=None)
        found = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                 for k, v in fields.items()}  # fmt: skip
        return JobRecord(key, found.get("file_id") or None, found.get("batch_id") or None)

    async def begin(self, key: str, custom_ids: list[str]) -> None:
        client = self.store.client

        async def write() -> None:
            await client.hset(self._job(key), mapping={"created": "1"})
            await client.hset(self._requests, mapping=dict.fromkeys(custom_ids, key))

        await self.store.retrying(write, limit=None)

    async def submitted(self, key: str, *, file_id: str | None = None, batch_id: str | None = None) -> None:
        values = {k: v for k, v in (("file_id", file_id), ("batch_id", batch_id)) if v}
        if values:
            client = self.store.client
            await self.store.retrying(lambda: client.hset(self._job(key), mapping=values), limit=None)

    async def forget(self, custom_ids: list[str]) -> None:
        if custom_ids:
            client = self.store.client
            await self.store.retrying(lambda: client.hdel(self._requests, *custom_ids), limit=None)
