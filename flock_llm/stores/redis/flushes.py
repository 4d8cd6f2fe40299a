"""Flushes of shared batches: deadline timers (server time), flushing due or all batches through the FLUSH
script, and what the shared batches hold for `batch_stats()`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

from ..._runtime.timers import TimerHandle
from ..._vocabulary import FlushReason
from ...agent import Agent
from ...errors import StoreUnavailableError
from ...metrics import BatchStats
from ...subscription import Subscription
from .clock import SharedTime
from .connection import RedisConnection
from .support import hashable

__all__ = ["SharedFlushes"]

log = logging.getLogger("flock_llm.redis")

_STATS_LIMIT = 200
"""At most this many shared batches are read for `batch_stats()` per sweep."""


class SharedFlushes:
    """Deadline timers and flushes of the shared batches one worker process knows of."""

    def __init__(self, store: RedisConnection, agents: Mapping[str, Agent], time: SharedTime) -> None:
        self.store = store
        self._agents = agents
        self._time = time
        self._timers: dict[str, tuple[int, TimerHandle]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stats: list[BatchStats] = []

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        """Flushes in flight."""
        return list(self._tasks)

    def cancel_timers(self) -> None:
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def stats(self) -> list[BatchStats]:
        return list(self._stats)

    def arm(self, member: str, *, now_ms: int, deadline_ms: int) -> None:
        """Flush `member` at its deadline (server time), if this process has no timer for that deadline yet."""
        armed = self._timers.get(member)
        if armed is not None:
            if armed[0] == deadline_ms:
                return
            armed[1].cancel()
        delay = max(0.0, (deadline_ms - now_ms) / 1000)
        handle = self._time.call_later(delay, partial(self._deadline_passed, member, deadline_ms))
        self._timers[member] = (deadline_ms, handle)

    def _deadline_passed(self, member: str, deadline_ms: int) -> None:
        armed = self._timers.get(member)
        if armed is not None and armed[0] == deadline_ms:
            del self._timers[member]
        self._spawn(self._flush(member, ""))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, member: str, reason: str) -> bool:
        """Flush one shared batch: when due (reason ""), or now with a reason. True if this call flushed it."""
        store = self.store
        agent, sub_index, identity = (json.loads(member) + [""])[:3]
        keys = [
            store.batch_list(member),
            store.key("deadlines"),
            store.key("opened"),
            store.ready_stream(agent, sub_index, identity),
            store.key("seq"),
        ]
        spec = self._spec(agent, sub_index)
        size = 0 if spec is None or spec.size is None else spec.size
        try:
            result = await store.retrying(
                lambda: store.script("FLUSH")(keys=keys, args=[self._time.now_arg(), member, size, reason]),
                limit=store.reconnect_timeout,
            )
        except StoreUnavailableError as exc:
            log.warning("could not flush batch %s (%s); the next sweep tries again", member, exc)
            return False
        if result[0] == 1:  # not due yet by the server's clock
            self.arm(member, now_ms=int(result[1]), deadline_ms=int(result[2]))
        return bool(result[0] == 2)

    def _spec(self, agent: str, sub: int) -> Any:
        found = self._agents.get(agent)
        return None if found is None or sub >= len(found.subscriptions) else found.subscriptions[sub].batch

    async def flush_due(self) -> int:
        """Flush every shared batch whose deadline passed (any process's). Returns how many flushed."""
        store = self.store
        due = await store.retrying(
            lambda: store.script("DUE")(keys=[store.key("deadlines")], args=[self._time.now_arg()]), limit=None
        )
        flushed = [await self._flush(member, "") for member in due]
        return sum(flushed)

    async def flush_all(self, reason: FlushReason, *, agent: str | None = None) -> int:
        """Flush every shared batch (of one agent, or all) now, with `reason`."""
        prefix = self.store.batch_list("")
        members = [key[len(prefix) :] for key in await self.store.keys_under(prefix)]
        flushed = 0
        for member in members:
            if agent is None or json.loads(member)[0] == agent:
                flushed += await self._flush(member, reason)
        return flushed

    async def read_stats(self) -> None:
        """Read the shared batches' sizes, ages and deadlines (server time) from Redis."""
        store, client = self.store, self.store.client
        prefix = store.batch_list("")
        keys = (await store.keys_under(prefix))[:_STATS_LIMIT]
        if not keys:
            self._stats = []
            return
        now_ms = int(self._time.now_arg() or 0)
        if self._time.by_server:
            seconds, micros = await client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
        stats = []
        for key in keys:
            member = key[len(prefix) :]
            pending = int(await client.llen(key))
            opened = await client.hget(store.key("opened"), member)
            deadline = await client.zscore(store.key("deadlines"), member)
            parts = json.loads(member)
            stats.append(
                BatchStats(
                    agent=str(parts[0]),
                    subscription_index=int(parts[1]),
                    partition=hashable(parts[3]) if len(parts) > 3 else None,
                    pending=pending,
                    oldest_age_s=0.0 if opened is None else max(0.0, (now_ms - int(opened)) / 1000),
                    flush_in_s=None if deadline is None else max(0.0, (float(deadline) - now_ms) / 1000),
                )
            )
        self._stats = stats

    async def add(
        self,
        sub: Subscription,
        stream: str,
        group: str,
        ready: str,
        adds: list[tuple[str, str, str, int]],
        budget: int | None = None,
    ) -> None:
        """One ADD script per shared batch touched (usually one), sent together; `budget`: the batch's token
        budget (each add carries its tokens)."""
        assert sub.batch is not None
        store, add = self.store, self.store.script("ADD")
        size = sub.batch.size or 0
        timeout_ms = 0 if sub.batch.timeout is None else max(1, round(sub.batch.timeout.total_seconds() * 1000))
        shared = [
            store.key("deadlines"),
            store.key("opened"),
            ready,
            store.key("seq"),
        ]
        by_member: dict[str, list[str | int]] = {}
        for entry_id, doc, member, tokens in adds:
            by_member.setdefault(member, []).extend((entry_id, doc, tokens))
        fixed = [size, timeout_ms, budget or 0]

        async def run() -> list[Any]:  # concurrent calls, not a pipeline: Redis Cluster pipelines refuse scripts
            calls = [
                add(
                    keys=[stream, store.batch_list(member), *shared],
                    args=[self._time.now_arg(), group, member, *fixed, *triples],
                )
                for member, triples in by_member.items()
            ]
            return list(await asyncio.gather(*calls))

        # safe to repeat: an entry already added is acknowledged, and ADD then skips it
        results = await store.retrying(run, limit=None)
        for member, (_, _, now_ms, deadline_ms) in zip(by_member, results, strict=True):
            if deadline_ms != -1:
                self.arm(member, now_ms=int(now_ms), deadline_ms=int(deadline_ms))
