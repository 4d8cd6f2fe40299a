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
from typing import Any

from ..._runtime.ledger import Receipt
from ..._runtime.ports import Held, IntakeServices
from ..._runtime.router import may_see
from ..._runtime.work import Work
from ..._vocabulary import FlushReason
from ...agent import Agent
from ...artifact import Artifact
from ...errors import ConfigurationError
from ...metrics import BatchStats
from ...subscription import Subscription
from .claims import Claims
from .clock import SharedTime
from .connection import RedisConnection
from .entries import decode_entry, flush_of, recheck_groups
from .flushes import SharedFlushes
from .peers import Peers, identity_of
from .retention import trim
from .sets import SharedSets
from .support import READY_GROUP, finish_tasks, member_of, stream_entries

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
    """The `Intake` of a Redis store in one process (see the module's docstring).

    Args:
        services: the runtime's parts it works through.
        store: the Redis connection it reads and writes through.
    """

    def __init__(self, services: IntakeServices, store: RedisConnection) -> None:
        self.services = services
        self.store = store
        self._subs: list[tuple[Agent, Subscription]] = []
        self._identity: dict[str, str] = {}
        self._members: dict[tuple[str, int], str] = {}
        self._peers = Peers(store, services.agents)
        self._claims = Claims(store)
        self._running: dict[tuple[str, str], tuple[str, Receipt]] = {}
        """(stream, entry id) -> (agent name, receipt) of the runs holding a slot and a claim here."""
        self._stopping = False
        self._closing = False
        self._loops: list[asyncio.Task[None]] = []
        self._housekeeping: asyncio.Task[None] | None = None
        self.time = SharedTime(services.clock)
        self.flushes = SharedFlushes(store, services.agents, self.time)
        self.sets = SharedSets(store, services, self.time)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Join the shared blackboard with the agents defined now: create consumer groups, start the loops."""
        agents = list(self.services.agents.values())
        self._subs = [(agent, sub) for agent in agents for sub in agent.subscriptions]
        self._identity = {agent.name: identity_of(agent) for agent in agents}
        self._members = {
            (agent.name, sub.index): member_of(agent.name, sub.index, self._identity[agent.name], None, False)
            for agent, sub in self._subs
        }
        for agent, sub in self._subs:
            if sub.groups and sub.batch is not None and sub.batch.by is not None:
                raise ConfigurationError(
                    f"agent {agent.name!r}: with a Redis store, a join or gate cannot also partition its batches "
                    "(`BatchSpec(by=...)`); drop `by=` or use an in-memory or SQLite store"
                )
        await self.store.connect()
        self.store.on_committed = self._committed
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

    async def finish(self, deadline: float | None) -> None:
        """At shutdown: stop taking work; what is open stays in Redis for the other workers. At `deadline`
        (loop time) the runs still going are cancelled: their entries stay unacknowledged, for another worker."""
        await self.stop()
        await self.services.runner.idle_by(deadline)

    def hold(self) -> Held | None:
        return None  # (a publish is delivered by whichever worker reads it, after Redis has it)

    def accept(self, artifact: Artifact, held: Held | None) -> None:
        """Nothing to do here: the shared store delivers a published artifact to whichever worker reads it."""

    def release(self, held: Held | None) -> None:
        """Nothing is held (see `hold`)."""

    def release_run(self, receipt: Receipt) -> None:
        """A run the budget stopped: its slot is given back, its entry is left unacknowledged (another worker
        takes it after `claim_timeout`)."""
        self._committed(receipt)

    def _ready_stream(self, agent: Agent, sub: Subscription) -> str:
        return self.store.ready_stream(agent.name, sub.index, self._identity[agent.name])

    # -- intake: deliveries into shared batches (or straight to a run) --------------------

    async def _intake_loop(self, agent: Agent, sub: Subscription) -> None:
        group = self.store.intake_group(agent.name, sub.index)
        streams = {self.store.type_stream(t): ">" for t in dict.fromkeys(sub.type_names)}
        slots = self.services.runner.slots(agent)
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
                await self._claims.recover(exc, self._create_groups)
                continue
            taken = 0
            try:
                for stream, entries in stream_entries(replies):
                    taken += await self._take(agent, sub, stream, group, entries)
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; what was not added stays pending
                await self._claims.recover(exc, self._create_groups)  # (and is taken over after `claim_timeout`)
            if direct and not taken:
                slots.give()

    async def _take(self, agent: Agent, sub: Subscription, stream: str, group: str, entries: list[Any]) -> int:
        """Route delivered entries; returns how many became direct runs (holding a slot)."""
        plan = _Plan()
        for entry_id, fields in entries:
            if (stream, entry_id) not in self._running:  # (else: read again from its own pending list mid-run)
                await self._route(agent, sub, Receipt(stream, group, entry_id), fields, plan)
        for peer, ids in plan.handover.items():
            self.services.metrics.counters.handed_to_peers += len(ids)
            await self.store.client.xclaim(stream, group, peer, 0, ids, justid=True)
        if plan.adds:
            budget = self.services.runner.token_budget(agent, sub)
            await self.flushes.add(sub, stream, group, self._ready_stream(agent, sub), plan.adds, budget)
        if plan.placed:
            member = self._members[(agent.name, sub.index)]
            ready = self._ready_stream(agent, sub)
            await self.sets.add(agent, sub, stream, group, member, ready, plan.placed, self.flushes.arm)
        return plan.runs

    async def _route(self, agent: Agent, sub: Subscription, receipt: Receipt, fields: Any, plan: _Plan) -> None:
        """Where one delivered entry goes: a peer, a run, a shared batch or a gate/join set (or nowhere)."""
        artifact = decode_entry(self.services, agent, receipt, [fields.get("a", "") if fields else ""])
        if artifact is None:
            return
        peer = await self._peer_for(agent, artifact[0], plan.refreshed)
        if peer is not None:
            plan.handover.setdefault(peer, []).append(receipt.entry_id)
            return
        member = self._admit(agent, sub, artifact[0], receipt)
        if member is None:
            return
        tokens = self.services.runner.item_tokens(agent, sub, tuple(artifact))
        if sub.groups:
            key = self.sets.key_of(agent, sub, artifact[0], receipt)
            if key is not None:
                plan.placed.append((receipt.entry_id, fields["a"], artifact[0].type_name, key, tokens))
        elif sub.batch is None:
            self._running[(receipt.stream, receipt.entry_id)] = (agent.name, receipt)
            self.services.runner.enqueue(Work(agent, sub, (tuple(artifact),), None, receipt=receipt))
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
        with self.services.ledger.unit(receipt) as commit:
            if self.services.router.accepts(agent, sub, artifact):
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
            self.services.outcomes.user_code_failed(
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
        slots = self.services.runner.slots(agent)
        while not self._stopping:
            if not await slots.take(_BLOCK_MS / 1000):
                continue
            try:
                replies = await self.store.client.xreadgroup(
                    READY_GROUP, self.store.consumer, {stream: ">"}, count=1, block=_BLOCK_MS
                )
            except Exception as exc:  # noqa: BLE001 - connection trouble, a deleted group...: log, wait, retry
                slots.give()
                await self._claims.recover(exc, self._create_groups)
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
        decoded = decode_entry(self.services, agent, receipt, [doc for found in sets for doc in found])
        if decoded is None:
            return
        items = recheck_groups(self.services, agent, sub, receipt, decoded, [len(found) for found in sets])
        if not items:
            return
        if fields.get("direct") == "1":  # a completed set of an unbatched gate or join: one run of its own
            self.services.runner.enqueue(Work(agent, sub, tuple(items), None, receipt=receipt))
            return
        flush = flush_of(self.store.namespace, agent, sub, fields, items)
        self.services.runner.start_flush(agent, sub, flush, receipt)

    def _committed(self, receipt: Receipt) -> None:
        running = self._running.pop((receipt.stream, receipt.entry_id), None)
        if running is not None:
            self.services.runner.slots(self.services.agents[running[0]]).give()

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
                await self._claims.renew(receipt for _, receipt in list(self._running.values()))
                if now - last_sweep >= store.sweep_interval:
                    last_sweep = now
                    await self.flush_due()
                    await self.flushes.read_stats()
                    for agent, sub in self._subs:
                        if sub.join is not None and isinstance(sub.join.within, timedelta):
                            await self.sets.sweep(agent, sub, self._members[(agent.name, sub.index)])
                if store.retention is not None and now - last_trim >= min(60.0, max(tick, store.retention / 2)):
                    last_trim = now
                    await trim(store, store.retention)
                if not self._stopping and now - last_claim >= store.claim_timeout / 2:
                    last_claim = now
                    await self._claim_abandoned()
            except Exception as exc:  # noqa: BLE001 - keep housekeeping alive through outages; log and go on
                await self._claims.recover(exc, self._create_groups)

    async def _claim_abandoned(self) -> None:
        """Take over entries that silent workers held longer than `claim_timeout`."""
        store = self.store
        for agent, sub in self._subs:
            group = store.intake_group(agent.name, sub.index)
            slots = self.services.runner.slots(agent)
            for t in dict.fromkeys(sub.type_names):
                stream = store.type_stream(t)
                count = store.read_count if sub.batch is not None else slots.take_up_to(store.read_count)
                entries = await self._claims.take_over(stream, group, count, "entries")
                running = {entry for held, entry in self._running if held == stream}
                entries += await self._claims.handed_over(stream, group, count - len(entries), running)
                runs = await self._take(agent, sub, stream, group, entries)
                if sub.batch is None:
                    slots.give(count - runs)
            if sub.batch is not None:
                stream = self._ready_stream(agent, sub)
                count = slots.take_up_to(agent.concurrency)
                entries = await self._claims.take_over(stream, READY_GROUP, count, "batches")
                slots.give(count - len(entries))
                for entry_id, fields in entries:
                    self._run_batch(agent, sub, stream, entry_id, fields)
