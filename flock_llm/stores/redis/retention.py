"""Retention for the Redis store: forget artifacts every consumer group is done with, never earlier."""

from __future__ import annotations

from .connection import RedisConnection
from .support import entry_id

__all__ = ["trim"]


async def trim(store: RedisConnection, retention: float) -> int:
    """Forget artifacts older than `retention` seconds that every consumer group is done with.

    The bound for each type stream is the oldest of: the cut-off time, the entry after each group's
    last delivered one, and each group's oldest unacknowledged one; groups only move forward, so a
    bound computed now stays safe. Returns how many artifacts were forgotten.
    """
    seconds, micros = await store.client.time()
    cutoff = (int(seconds) * 1000 + int(micros) // 1000 - int(retention * 1000), 0)
    streams = await store.keys_under(store.type_stream(""))
    forgotten = 0
    for stream in streams:
        bound = cutoff
        for group in await store.client.xinfo_groups(stream):
            delivered = entry_id(group["last-delivered-id"])
            bound = min(bound, (delivered[0], delivered[1] + 1))  # undelivered entries stay
            if group["pending"]:
                oldest = (await store.client.xpending(stream, group["name"]))["min"]
                bound = min(bound, entry_id(oldest))  # unacknowledged ones too
        while True:
            removed = int(
                await store.script("TRIM")(keys=[stream, store.key("ids")], args=[f"{bound[0]}-{bound[1]}", 500])
            )
            forgotten += removed
            if removed < 500:
                break
    return forgotten
