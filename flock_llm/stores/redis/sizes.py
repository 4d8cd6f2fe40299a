"""Batch-size controller states in a Redis store (`BatchSpec(quality=)`, see `flock_llm.quality.shared`), shared
by every worker process: the hash `quality:sizes` maps each agent subscription to its state's JSON text. A
change is a compare-and-set in one script (SWAP), so two workers that audit at once never lose a change: the
one that read an older text reads again and adds its audits to the newer state. Each swap carries a token kept
in `quality:sizes:writers`: a swap sent again after a dropped connection (the script ran, its reply was lost) is
told it succeeded, not that another worker wrote first (which would make it add its audits a second time)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import RedisConnection

__all__ = ["RedisSizeStates"]

# KEYS: the states hash, the writers hash. ARGV: field, "1" when a text is expected ("0": none stored yet), the
# expected text, the new text, this swap's token. Returns 1 when the new text was stored (now or by this same swap
# before a lost reply), 0 when the stored one was not the expected one.
_SWAP = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current == ARGV[4] and redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[5] then return 1 end
if ARGV[2] == '0' then
  if current then return 0 end
elseif current ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
return 1
"""


class RedisSizeStates:
    """`SizeStates` in Redis: one state per agent subscription, for every worker of the store."""

    def __init__(self, store: RedisConnection) -> None:
        self.store = store
        self._hash = store.key("quality:sizes")
        self._writers = store.key("quality:sizes:writers")
        self._swap: Any = None

    async def get(self, key: str) -> str | None:
        client = self.store.client
        value = await self.store.retrying(lambda: client.hget(self._hash, key), limit=self.store.reconnect_timeout)
        return None if value is None else value.decode() if isinstance(value, bytes) else str(value)

    async def swap(self, key: str, expected: str | None, new: str) -> bool:
        client = self.store.client
        if self._swap is None:
            self._swap = client.register_script(_SWAP)
        args = [key, "0" if expected is None else "1", expected or "", new, uuid.uuid4().hex]  # (one token per swap)
        done = await self.store.retrying(
            lambda: self._swap(keys=[self._hash, self._writers], args=args), limit=self.store.reconnect_timeout
        )
        return int(done) == 1
