"""Claims on stream entries: renewing the ones whose runs go on here, taking over the ones silent workers held
longer than `claim_timeout` (Redis measures that idle time itself, in real time), and recovering a loop after
a failed read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

from ..._runtime.ledger import Receipt
from .connection import RedisConnection
from .support import connection_errors, stream_entries

__all__ = ["Claims"]

log = logging.getLogger("flock_llm.redis")


class Claims:
    """The claims of one worker process on entries of the store's streams."""

    def __init__(self, store: RedisConnection) -> None:
        self.store = store

    async def renew(self, receipts: Iterable[Receipt]) -> None:
        """Reset the idle time of entries whose runs are in progress here, so nobody takes them over."""
        groups: dict[tuple[str, str], list[str]] = {}
        for receipt in receipts:
            groups.setdefault((receipt.stream, receipt.group), []).append(receipt.entry_id)
        if not groups:
            return
        async with self.store.client.pipeline(transaction=False) as pipe:
            for (stream, group), ids in groups.items():
                pipe.xclaim(stream, group, self.store.consumer, 0, ids, justid=True)
            await pipe.execute()

    async def handed_over(self, stream: str, group: str, count: int, running: Collection[str]) -> list[Any]:
        """Entries pending for this worker that it did not read itself (`running`: the entry ids of `stream`
        running here): handed over by a peer whose definition of the agent may not see them (and ones whose
        intake failed here)."""
        if count <= 0:
            return []
        store = self.store
        summary = await store.client.xpending(stream, group)
        mine = {str(c["name"]): int(c["pending"]) for c in summary.get("consumers") or ()}
        if mine.get(store.consumer, 0) <= len(running):
            return []  # (reading would also create this consumer in groups it never used)
        replies = await store.client.xreadgroup(group, store.consumer, {stream: "0"}, count=count)
        return [e for _, found in stream_entries(replies) for e in found if e[1] and e[0] not in running]

    async def take_over(self, stream: str, group: str, count: int, what: str) -> list[Any]:
        """Claim up to `count` entries idle longer than `claim_timeout`; forget consumers long gone."""
        store = self.store
        idle_ms = int(store.claim_timeout * 1000)
        gone = await store.script("FORGET_CONSUMERS")(keys=[stream], args=[group, 3 * idle_ms, store.consumer])
        if gone:
            log.info("removed %d departed consumers from group %s of %s", gone, group, stream)
        if not count:
            return []
        claimed = await store.client.xautoclaim(stream, group, store.consumer, idle_ms, "0-0", count=count)
        entries = [entry for entry in claimed[1] if entry[1]]  # (deleted entries come back empty)
        if entries:
            log.warning("took over %d %s of %s from a silent worker", len(entries), what, stream)
        return entries

    @staticmethod
    async def recover(exc: Exception, create_groups: Callable[[], Awaitable[None]]) -> None:
        """After a failed read: recreate lost groups (Redis restarted empty) or wait for the connection."""
        from redis.exceptions import ResponseError

        if isinstance(exc, ResponseError) and ("NOGROUP" in str(exc) or "UNBLOCKED" in str(exc)):
            log.warning("a consumer group is missing (was Redis emptied?); recreating it")
            try:
                await create_groups()
            except Exception as again:  # noqa: BLE001 - logged; the loop retries
                log.warning("recreating consumer groups failed: %s", again)
        elif isinstance(exc, connection_errors()):
            log.warning("Redis read failed (%s); retrying", type(exc).__name__)
        else:
            log.error("Redis worker step failed: %s: %s; retrying", type(exc).__name__, exc)
        await asyncio.sleep(0.2)
