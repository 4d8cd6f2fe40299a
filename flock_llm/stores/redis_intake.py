"""One process's part in a shared (Redis) blackboard: read deliveries, fill shared batches, run flushed ones.

Per (agent, subscription) a worker runs an intake loop (its consumer group on the type streams) and, for a
batched subscription, a ready loop (flushed batches, taken only when the agent has a free slot, so idle
workers get the next batch). One housekeeping task flushes expired batches, renews the claims of runs in
progress and takes over what silent workers hold. All decisions about batches happen in Redis scripts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .._runtime.batching import FlushReason
from .._runtime.ledger import Receipt
from .._runtime.router import may_see
from .._runtime.runner import Work
from ..agent import Agent
from ..artifact import Artifact
from ..errors import ConfigurationError
from ..metrics import BatchStats
from ..subscription import Subscription
from .redis import READY_GROUP, RedisStore, connection_errors
from .redis_entries import decode_entry, flush_of, recheck_groups
from .redis_flushes import SharedFlushes
from .redis_peers import Peers, identity_of
from .redis_sets import SharedSets
from .redis_support import finish_tasks, member_of, stream_entries

if TYPE_CHECKING:
    from .._runtime.core import Runtime

__all__ = ["RedisWorker"]

log = logging.getLogger("flock_llm.redis")

_BLOCK_MS = 250
"""How long a read waits for new entries; also how soon a stopping worker notices."""


@dataclass
class _Plan:
    """What one read's entries turned into."""

    adds: list[tuple[str, str, str, int]] = field(default_factory=list)
    """(entry id, artifact json, batch member, tokens)"""
    placed: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    """(entry id, artifact json, type name, key json, tokens)"""
    handover: dict[str, list[str]] = field(default_factory=dict)
    refreshed: list[bool] = field(default_factory=list)
    runs: int = 0


class RedisWorker:
    def __init__(self, runtime: Runtime, store: RedisStore) -> None:
        self.runtime = runtime
        self.store = store
        agents = list(runtime.agents.values())
        self._subs = [(agent, sub) for agent in agents for sub in agent.subscriptions]
        self._identity = {agent.name: identity_of(agent) for agent in agents}
        self._members = {
            (agent.name, sub.index): member_of(agent.name, sub.index, self._identity[agent.name], None, False)
            for agent, sub in self._subs
        }
        self._peers = Peers(store, agents)
        self._running: dict[tuple[str, str], tuple[str, Receipt]] = {}
        """(stream, entry id) -> (agent name, receipt) of the runs holding a slot and a claim here."""
        self._stopping = False
        self._closing = False
        self._loops: list[asyncio.Task[None]] = []
        self._housekeeping: asyncio.Task[None] | None = None
        self.flushes = SharedFlushes(store, runtime.agents)
        self.sets = SharedSets(store, runtime)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        for agent, sub in self._subs:
            if sub.groups and sub.batch is not None and sub.batch.by is not None:
                raise ConfigurationError(
                    f"agent {agent.name!r}: with a Redis store, a join or gate cannot also partition its batches "
                    "(`BatchSpec(by=...)`); drop `by=` or use an in-memory or SQLite store"
                )
        await self.store.connect()
        self.store.on_committed = self._committed
        self.runtime.runner.release = self._committed  # a run the budget stopped: released, not acknowledged
        await self.store.retrying(self._create_groups, limit=self.store.reconnect_timeout)
        await self.store.retrying(self._peers.exchange, limit=self.store.reconnect_timeout)
        loop = asyncio.get_running_loop()
        for agent, sub in self._subs:
            self._loops.append(loop.create_task(self._intake_loop(agent, sub)))
            if sub.batch is not None or sub.groups:
                self._loops.append(loop.create_task(self._ready_loop(agent, sub)))
        self._housekeeping = loop.create_task(self._housekeep())

    async def _create_groups(self) -> None:
        from redis.exceptions import ResponseError

        client = self.store.client
        for agent, sub in self._subs:
            groups = [
                (self.store.type_stream(t), self.store.intake_group(agent.name, sub.index)) for t in sub.type_names
            ]
            if sub.batch is not None or sub.groups:
                groups.append((self._ready_stream(agent, sub), READY_GROUP))
            for stream, group in groups:
                try:  # from the stream's beginning: what was published before any worker started is not lost
                    await client.xgroup_create(stream, group, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    async def stop(self) -> None:
        """Stop taking work (runs already taken go on); within about a quarter of a second, or, while Redis
        is unreachable, `reconnect_timeout` (what a loop had read but not added stays pending in Redis)."""
        self._stopping = True
        await finish_tasks(self._loops, self.store.reconnect_timeout)

    async def close(self) -> None:
        """After the runs finished: stop housekeeping and timers, commit what is in flight, disconnect.

        Housekeeping is stopped with a flag, not by cancelling it: a cancellation can be lost inside a
        client call (asyncio.gather returns normally when its children swallow it), and shutdown must end.
        """
        self._closing = True
        self.flushes.cancel_timers()
        tasks = [*self.flushes.tasks, *([self._housekeeping] if self._housekeeping is not None else [])]
        await finish_tasks(tasks, 2.0)
        await self._peers.leave()
        await self.store.aclose()

    def _ready_stream(self, agent: Agent, sub: Subscription) -> str:
        return self.store.ready_stream(agent.name, sub.index, self._identity[agent.name])

    # -- intake: deliveries into shared batches (or straight to a run) --------------------

    async def _intake_loop(self, agent: Agent, sub: Subscription) -> None:
        group = self.store.intake_group(agent.name, sub.index)
        streams = {self.store.type_stream(t): ">" for t in dict.fromkeys(sub.type_names)}
        slots = self.runtime.runner.slots(agent)
        direct = sub.batch is None and not sub.groups
        while not self._stopping:
            if direct and not await slots.take(_BLOCK_MS / 1000):
                continue
            try:
                replies = await self.store.client.xreadgroup(
                    group, self.store.consumer, streams, count=1 if direct else self.store.read_count, block=_BLOCK_MS
                )
            except Exception as exc:  # noqa: BLE001 - connection trouble, a deleted group...: log, wait, retry
                if direct:
                    slots.give()
                await self._recover(exc)
                continue
            taken = 0
            try:
                for stream, entries in stream_entries(replies):
                    taken += await self._take(agent, sub, stream, group, entries)
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; what was not added stays pending
                await self._recover(exc)  # (and is taken over after `claim_timeout`)
            if direct and not taken:
                slots.give()

    async def _take(self, agent: Agent, sub: Subscription, stream: str, group: str, entries: list[Any]) -> int:
        """Route delivered entries; returns how many became direct runs (holding a slot)."""
        plan = _Plan()
        for entry_id, fields in entries:
            if (stream, entry_id) not in self._running:  # (else: read again from its own pending list mid-run)
                await self._route(agent, sub, Receipt(stream, group, entry_id), fields, plan)
        for peer, ids in plan.handover.items():
            self.runtime.metrics.counters.handed_to_peers += len(ids)
            await self.store.client.xclaim(stream, group, peer, 0, ids, justid=True)
        if plan.adds:
            budget = self.runtime.runner.token_budget(agent, sub)
            await self.flushes.add(sub, stream, group, self._ready_stream(agent, sub), plan.adds, budget)
        if plan.placed:
            member = self._members[(agent.name, sub.index)]
            ready = self._ready_stream(agent, sub)
            await self.sets.add(agent, sub, stream, group, member, ready, plan.placed, self.flushes.arm)
        return plan.runs

    async def _route(self, agent: Agent, sub: Subscription, receipt: Receipt, fields: Any, plan: _Plan) -> None:
        """Where one delivered entry goes: a peer, a run, a shared batch or a gate/join set (or nowhere)."""
        artifact = decode_entry(self.runtime, agent, receipt, [fields.get("a", "") if fields else ""])
        if artifact is None:
            return
        peer = await self._peer_for(agent, artifact[0], plan.refreshed)
        if peer is not None:
            plan.handover.setdefault(peer, []).append(receipt.entry_id)
            return
        member = self._admit(agent, sub, artifact[0], receipt)
        if member is None:
            return
        tokens = self.runtime.runner.item_tokens(agent, sub, tuple(artifact))
        if sub.groups:
            key = self.sets.key_of(agent, sub, artifact[0], receipt)
            if key is not None:
                plan.placed.append((receipt.entry_id, fields["a"], artifact[0].type_name, key, tokens))
        elif sub.batch is None:
            self._running[(receipt.stream, receipt.entry_id)] = (agent.name, receipt)
            self.runtime.runner.enqueue(Work(agent, sub, (tuple(artifact),), None, receipt=receipt))
            plan.runs += 1
        else:
            plan.adds.append((receipt.entry_id, fields["a"], member, tokens))

    async def _peer_for(self, agent: Agent, artifact: Artifact, refreshed: list[bool]) -> str | None:
        """The live peer to hand an artifact to: one that defines this agent with a tenant or labels that may
        see it, when this process may not (mid-deploy). Handed over unacknowledged, it is not dropped here."""
        if may_see(agent.identity, artifact):
            return None
        if not refreshed:  # once per read: a peer that started a moment ago may be the one to see it
            await self._peers.exchange()
            refreshed.append(True)
        return self._peers.who_may_see(agent.name, self._identity[agent.name], artifact)

    def _admit(self, agent: Agent, sub: Subscription, artifact: Artifact, receipt: Receipt) -> str | None:
        """The batch member for an accepted artifact ("" when unbatched); None when refused (acknowledged,
        with a failure record when user code raised)."""
        member: str | None = None
        with self.runtime.ledger.unit(receipt) as commit:
            if self.runtime.router.accepts(agent, sub, artifact):
                member = "" if sub.batch is None and not sub.groups else self._member(agent, sub, artifact)
            if member is not None:
                commit.receipt = None  # accepted: acknowledged later, by its batch or its run
        return member

    def _member(self, agent: Agent, sub: Subscription, artifact: Artifact) -> str | None:
        if sub.batch is None or sub.batch.by is None:
            return self._members[(agent.name, sub.index)]
        try:
            partition = sub.batch.by(artifact.payload)
            return member_of(agent.name, sub.index, self._identity[agent.name], partition, True)
        except Exception as exc:  # noqa: BLE001 - user code (or a key that is not JSON): record it, keep the artifact
            self.runtime.outcomes.user_code_failed(
                agent, sub, artifact, exc, stage="batch_by", counter="batch_key_errors"
            )
            return None

    # -- shared batches: flushes and what they hold ---------------------------------------------------

    async def flush_due(self) -> int:
        """Flush every shared batch whose deadline passed (any process's). Returns how many flushed."""
        return await self.flushes.flush_due()

    async def flush_all(self, reason: FlushReason, *, agent: str | None = None) -> int:
        """Flush every shared batch (of one agent, or all) now, with `reason`."""
        return await self.flushes.flush_all(reason, agent=agent)

    async def settle(self) -> bool:
        """Wait until this process's commits in flight are applied (or failed); False if some still retry."""
        return await self.store.settle()

    def stats(self) -> list[BatchStats]:
        """The shared batches accumulating now, as last read from Redis (every `sweep_interval`)."""
        return self.flushes.stats()

    # -- ready batches: run them, one free slot at a time -----------------------------------

    async def _ready_loop(self, agent: Agent, sub: Subscription) -> None:
        stream = self._ready_stream(agent, sub)
        slots = self.runtime.runner.slots(agent)
        while not self._stopping:
            if not await slots.take(_BLOCK_MS / 1000):
                continue
            try:
                replies = await self.store.client.xreadgroup(
                    READY_GROUP, self.store.consumer, {stream: ">"}, count=1, block=_BLOCK_MS
                )
            except Exception as exc:  # noqa: BLE001 - connection trouble, a deleted group...: log, wait, retry
                slots.give()
                await self._recover(exc)
                continue
            entries = [entry for _, found in stream_entries(replies) for entry in found]
            if not entries:
                slots.give()
            for entry_id, fields in entries:
                self._run_batch(agent, sub, stream, entry_id, fields)

    def _run_batch(self, agent: Agent, sub: Subscription, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        try:
            self._start_batch(agent, sub, stream, entry_id, fields)
        except Exception as exc:  # noqa: BLE001 - a malformed entry: it stays pending (and is logged), the loop goes on
            self._committed(Receipt(stream, READY_GROUP, entry_id, delete=True))
            log.error("ready batch %s of %s could not be started: %s: %s", entry_id, stream, type(exc).__name__, exc)

    def _start_batch(self, agent: Agent, sub: Subscription, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        receipt = Receipt(stream, READY_GROUP, entry_id, delete=True)
        self._running[(stream, entry_id)] = (agent.name, receipt)
        lines = fields["items"].split("\n")
        # a gate's or join's items are whole sets: each line is a JSON array of artifact documents
        sets = [json.loads(line) for line in lines] if sub.groups else [[line] for line in lines]
        decoded = decode_entry(self.runtime, agent, receipt, [doc for found in sets for doc in found])
        if decoded is None:
            return
        items = recheck_groups(self.runtime, agent, sub, receipt, decoded, [len(found) for found in sets])
        if not items:
            return
        if fields.get("direct") == "1":  # a completed set of an unbatched gate or join: one run of its own
            self.runtime.runner.enqueue(Work(agent, sub, tuple(items), None, receipt=receipt))
            return
        flush = flush_of(self.store.namespace, agent, sub, fields, items)
        self.runtime.runner.start_flush(agent, sub, flush, receipt)

    def _committed(self, receipt: Receipt) -> None:
        running = self._running.pop((receipt.stream, receipt.entry_id), None)
        if running is not None:
            self.runtime.runner.slots(self.runtime.agents[running[0]]).give()

    # -- housekeeping --------------------------------------------------------------------------

    async def _housekeep(self) -> None:
        store = self.store
        tick = min(store.sweep_interval, store.claim_timeout / 3)
        loop = asyncio.get_running_loop()
        last_sweep = last_claim = last_trim = loop.time()
        while not self._closing:
            await asyncio.sleep(tick)
            now = loop.time()
            try:
                await self._peers.exchange()
                await self._renew_claims()
                if now - last_sweep >= store.sweep_interval:
                    last_sweep = now
                    await self.flush_due()
                    await self.flushes.read_stats()
                    for agent, sub in self._subs:
                        if sub.join is not None and isinstance(sub.join.within, timedelta):
                            await self.sets.sweep(agent, sub, self._members[(agent.name, sub.index)])
                if store.retention is not None and now - last_trim >= min(60.0, max(tick, store.retention / 2)):
                    last_trim = now
                    await store.trim(store.retention)
                if not self._stopping and now - last_claim >= store.claim_timeout / 2:
                    last_claim = now
                    await self._claim_abandoned()
            except Exception as exc:  # noqa: BLE001 - keep housekeeping alive through outages; log and go on
                await self._recover(exc)

    async def _renew_claims(self) -> None:
        """Reset the idle time of entries whose runs are in progress here, so nobody takes them over."""
        if not self._running:
            return
        groups: dict[tuple[str, str], list[str]] = {}
        for _, receipt in list(self._running.values()):
            groups.setdefault((receipt.stream, receipt.group), []).append(receipt.entry_id)
        async with self.store.client.pipeline(transaction=False) as pipe:
            for (stream, group), ids in groups.items():
                pipe.xclaim(stream, group, self.store.consumer, 0, ids, justid=True)
            await pipe.execute()

    async def _claim_abandoned(self) -> None:
        """Take over entries that silent workers held longer than `claim_timeout`."""
        store = self.store
        for agent, sub in self._subs:
            group = store.intake_group(agent.name, sub.index)
            slots = self.runtime.runner.slots(agent)
            for t in dict.fromkeys(sub.type_names):
                stream = store.type_stream(t)
                count = store.read_count if sub.batch is not None else slots.take_up_to(store.read_count)
                entries = await self._autoclaim(stream, group, count, "entries")
                entries += await self._handed_over(stream, group, count - len(entries))
                runs = await self._take(agent, sub, stream, group, entries)
                if sub.batch is None:
                    slots.give(count - runs)
            if sub.batch is not None:
                stream = self._ready_stream(agent, sub)
                count = slots.take_up_to(agent.concurrency)
                entries = await self._autoclaim(stream, READY_GROUP, count, "batches")
                slots.give(count - len(entries))
                for entry_id, fields in entries:
                    self._run_batch(agent, sub, stream, entry_id, fields)

    async def _handed_over(self, stream: str, group: str, count: int) -> list[Any]:
        """Entries pending for this worker that it did not read itself: handed over by a peer whose definition
        of the agent may not see them (and ones whose intake failed here)."""
        if count <= 0:
            return []
        summary = await self.store.client.xpending(stream, group)
        mine = {str(c["name"]): int(c["pending"]) for c in summary.get("consumers") or ()}
        if mine.get(self.store.consumer, 0) <= sum(1 for key in self._running if key[0] == stream):
            return []  # (reading would also create this consumer in groups it never used)
        replies = await self.store.client.xreadgroup(group, self.store.consumer, {stream: "0"}, count=count)
        return [
            e for _, found in stream_entries(replies) for e in found if e[1] and (stream, e[0]) not in self._running
        ]

    async def _autoclaim(self, stream: str, group: str, count: int, what: str) -> list[Any]:
        """Claim up to `count` entries idle longer than `claim_timeout`; forget consumers long gone."""
        idle_ms = int(self.store.claim_timeout * 1000)
        gone = await self.store.script("FORGET_CONSUMERS")(
            keys=[stream], args=[group, 3 * idle_ms, self.store.consumer]
        )
        if gone:
            log.info("removed %d departed consumers from group %s of %s", gone, group, stream)
        if not count:
            return []
        claimed = await self.store.client.xautoclaim(stream, group, self.store.consumer, idle_ms, "0-0", count=count)
        entries = [entry for entry in claimed[1] if entry[1]]  # (deleted entries come back empty)
        if entries:
            log.warning("took over %d %s of %s from a silent worker", len(entries), what, stream)
        return entries

    async def _recover(self, exc: Exception) -> None:
        """After a failed read: recreate lost groups (Redis restarted empty) or wait for the connection."""
        from redis.exceptions import ResponseError

        if isinstance(exc, ResponseError) and ("NOGROUP" in str(exc) or "UNBLOCKED" in str(exc)):
            log.warning("a consumer group is missing (was Redis emptied?); recreating it")
            try:
                await self._create_groups()
            except Exception as again:  # noqa: BLE001 - logged; the loop retries
                log.warning("recreating consumer groups failed: %s", again)
        elif isinstance(exc, connection_errors()):
            log.warning("Redis read failed (%s); retrying", type(exc).__name__)
        else:
            log.error("Redis worker step failed: %s: %s; retrying", type(exc).__name__, exc)
        await asyncio.sleep(0.2)
