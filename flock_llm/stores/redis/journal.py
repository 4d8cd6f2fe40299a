"""The journal of provider batch jobs in a Redis store (see `flock_llm.engines._tiers.journal`), shared by every
worker process: `deferred:requests` maps each request id to its job, `deferred:job:<key>` holds the job's input
file and batch id, `deferred:job:<key>:ids` its request ids, `deferred:job:<key>:claim` the process creating it
from its file after a restart (expiring), and `deferred:finished` (a sorted set) the jobs whose
lines were read, by the time they finished, for `prune()`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ...engines import JobRecord

if TYPE_CHECKING:
    from .connection import RedisConnection

__all__ = ["RedisJournal"]

# KEYS: requests, finished. ARGV: the key prefix of jobs, the cutoff. Forgets each job that finished before the
# cutoff: its request ids (those still mapped to it), its record and its id set. Returns how many jobs.
_PRUNE = """
local done = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
for _, key in ipairs(done) do
  local job = ARGV[1] .. key
  for _, id in ipairs(redis.call('SMEMBERS', job .. ':ids')) do
    if redis.call('HGET', KEYS[1], id) == key then redis.call('HDEL', KEYS[1], id) end
  end
  redis.call('DEL', job, job .. ':ids', job .. ':claim')
  redis.call('ZREM', KEYS[2], key)
end
return #done
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisJournal:
    """Provider batch jobs recorded in Redis before submission (any worker that restarts finds them)."""

    def __init__(self, store: RedisConnection) -> None:
        self.store = store
        self._requests = store.key("deferred:requests")
        self._finished = store.key("deferred:finished")
        self._prune: Any = None

    def _job(self, key: str) -> str:
        return self.store.key(f"deferred:job:{key}")

    async def job_of(self, custom_id: str) -> JobRecord | None:
        client = self.store.client
        key = await self.store.retrying(lambda: client.hget(self._requests, custom_id), limit=None)
        if key is None:
            return None
        key = _text(key)
        fields = await self.store.retrying(lambda: client.hgetall(self._job(key)), limit=None)
        found = {_text(k): _text(v) for k, v in fields.items()}
        return JobRecord(key, found.get("file_id") or None, found.get("batch_id") or None)

    async def begin(self, key: str, custom_ids: list[str]) -> None:
        client = self.store.client

        async def write() -> None:
            await client.hset(self._job(key), mapping={"created": "1"})
            if custom_ids:
                await client.sadd(self._job(key) + ":ids", *custom_ids)
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

    async def claim(self, key: str, owner: str, until: float) -> bool:
        client, name = self.store.client, self._job(key) + ":claim"
        seconds = max(1, int(until - time.time()) + 1)

        async def take() -> bool:
            if await client.set(name, owner, nx=True, ex=seconds):
                return True
            if _text(await client.get(name) or b"") != owner:
                return False
            await client.expire(name, seconds)  # ours already: extended
            return True

        return bool(await self.store.retrying(take, limit=None))

    async def finished(self, key: str, at: float) -> None:
        client = self.store.client
        await self.store.retrying(lambda: client.zadd(self._finished, {key: at}), limit=None)

    async def prune(self, before: float) -> int:
        client = self.store.client
        if self._prune is None:
            self._prune = client.register_script(_PRUNE)
        keys, args = [self._requests, self._finished], [self.store.key("deferred:job:"), before]
        return int(await self.store.retrying(lambda: self._prune(keys=keys, args=args), limit=None))
