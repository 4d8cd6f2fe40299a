"""The local intake: accepted deliveries -> joins -> batches -> flushes, with deadlines on the event loop.

Every artifact reaches it through the router (a publish, or a restore from a durable store: restored
deliveries are checked again, exactly like new ones). Flushed batches and unbatched items go to the runner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from .._vocabulary import FlushReason
from ..agent import Agent
from ..artifact import Artifact
from ..metrics import BatchStats, JoinExpiry
from ..subscription import Subscription
from .batching import BatchEngine, BatchKey, Flush, Item
from .correlation import ExpiredGroup, JoinBuffer
from .ledger import Receipt
from .ports import Held, IntakeServices, LocalDurableStore
from .timers import TimerHandle
from .work import Work

if TYPE_CHECKING:
    from ..stores.memory import InMemoryStore
    from ..stores.sqlite import Recovered

__all__ = ["LocalIntake"]

log = logging.getLogger("flock_llm")


class LocalIntake:
    """Joins and batches of one process, timers included.

    Args:
        services: the runtime's parts it works through.
        durable: a local durable store: a publish's deliveries wait for its commit, and what the store holds
            pending is restored on start.
        forgetting: an in-memory store that forgets consumed artifacts: told how many deliveries each got.
    """

    def __init__(
        self, services: IntakeServices, *, durable: LocalDurableStore | None, forgetting: InMemoryStore | None
    ) -> None:
        self._agents = services.agents
        self._clock = services.clock
        self._router = services.router
        self._ledger = services.ledger
        self._outcomes = services.outcomes
        self._runner = services.runner
        self._metrics = services.metrics
        self._tracer = services.tracer
        self._durable = durable
        self._forgetting = forgetting
        self.batch_engine = BatchEngine()
        """The batches accumulating now (the guide's `flock._batch_engine`)."""
        self._batch_timers: dict[BatchKey, TimerHandle] = {}
        self._joins: dict[tuple[str, int], JoinBuffer] = {}
        self._join_timers: list[TimerHandle] = []

    # -- the Intake port --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore what a local durable store holds pending, then flush what expired meanwhile."""
        if self._durable is not None:
            self.restore(self._durable.load())
            self.flush_expired()

    def hold(self) -> Held | None:
        """With a local durable store, a publish's deliveries wait for its commit (a failed write is not run)."""
        return [] if self._durable is not None else None

    def accept(self, artifact: Artifact, held: Held | None) -> None:
        """Deliver a stored artifact to every subscription the router lets take it (to `held`, recorded but
        not yet handed over, when given)."""
        router = self._router
        accepted = [(a, s) for a, s in router.routes(artifact.type_name) if router.accepts(a, s, artifact)]
        if self._forgetting is not None:
            self._forgetting.delivered(artifact.id, len(accepted))
        for agent, sub in accepted:
            if held is None:
                self.deliver(agent, sub, artifact)
            else:
                self.record_delivery(agent, sub, artifact)
                held.append((agent, sub, artifact))

    def release(self, held: Held | None) -> None:
        for agent, sub, artifact in held or ():
            self.deliver(agent, sub, artifact, recorded=True)

    def release_run(self, receipt: Receipt) -> None:
        """Local runs hold no receipts: nothing to give back."""

    async def flush_due(self) -> int:
        return self.flush_expired()

    async def flush_all(self, reason: FlushReason, *, agent: str | None = None) -> int:
        return self.flush_now(reason, agent=agent)

    async def settle(self) -> bool:
        return True  # (a local durable store's commits are awaited by their publishers and runs)

    async def finish(self, deadline: float | None) -> None:
        """Flush partial batches (reason "shutdown") and close join groups until nothing is left; at `deadline`
        (loop time) the runner cancels what is still running."""
        while True:
            await self._runner.idle_by(deadline)
            flushed = self.flush_now("shutdown")
            closed = self.close_joins()
            if not flushed and not closed and not self._runner.tasks:
                return

    async def close(self) -> None:
        self.cancel_timers()

    # -- deliveries -----------------------------------------------------------------------------------

    def record_delivery(self, agent: Agent, sub: Subscription, artifact: Artifact) -> None:
        self._ledger.delivery(agent.name, sub.index, artifact.id, time.time())

    def deliver(
        self,
        agent: Agent,
        sub: Subscription,
        artifact: Artifact,
        entered_at: float | None = None,
        *,
        recorded: bool = False,
    ) -> None:
        """Hand an accepted artifact to its subscription; `entered_at` (wall time) when restoring one;
        `recorded` when its delivery was already written into the current unit."""
        now = self._clock.now()
        if entered_at is None:
            if not recorded and self._ledger.store is not None:
                self.record_delivery(agent, sub, artifact)
        else:
            now -= max(0.0, time.time() - entered_at)  # restored: it entered this long ago
        item: Item = (artifact,)
        if sub.groups:
            joined = self._join(agent, sub, artifact, now)
            if joined is None:
                return
            item = joined
        if sub.batch is None:
            self._runner.enqueue(Work(agent, sub, (item,), None))
            return
        self._add_to_batch(agent, sub, item, now)

    def restore(self, recovered: Recovered) -> None:
        """Re-deliver what a durable store held pending, through the router like any new delivery."""
        if recovered.unknown_types:
            self._metrics.counters.unknown_type_artifacts += sum(recovered.unknown_types.values())
        for pending in recovered.pending:
            agent = self._agents.get(pending.agent)
            if agent is None or pending.sub >= len(agent.subscriptions):
                self._metrics.counters.orphan_deliveries += 1
                log.warning(
                    "stored delivery of artifact %s to %s/%d: no such agent subscription now; kept",
                    pending.artifact.id,
                    pending.agent,
                    pending.sub,
                )
                continue
            sub = agent.subscriptions[pending.sub]
            with self._ledger.unit():  # (a `where` that raises now records its failure durably)
                accepted = self._router.accepts(agent, sub, pending.artifact)
            if not accepted:
                # the agent (as defined now) may not see it: it stays stored, for whoever may see it
                self._metrics.counters.refused_restored_deliveries += 1
                log.warning(
                    "stored delivery of artifact %s to %s/%d: the agent as defined now does not accept it "
                    "(visibility, origin or `where`); not delivered, kept",
                    pending.artifact.id,
                    pending.agent,
                    pending.sub,
                )
                continue
            self._metrics.counters.restored_deliveries += 1
            self.deliver(agent, sub, pending.artifact, entered_at=pending.entered_at)

    # -- batches --------------------------------------------------------------------------------------

    def _add_to_batch(self, agent: Agent, sub: Subscription, item: Item, now: float) -> None:
        assert sub.batch is not None
        key: BatchKey = (agent.name, sub.index)
        if sub.batch.by is not None:
            try:
                partition: Hashable = sub.batch.by(item[0].payload)
                hash(partition)
            except Exception as exc:  # noqa: BLE001 - user code: record it against every artifact of the item
                self._ledger.consumed(agent.name, sub.index, item)
                for member in item:
                    self._outcomes.user_code_failed(
                        agent, sub, member, exc, stage="batch_by", counter="batch_key_errors"
                    )
                return
            key = (agent.name, sub.index, partition)
        # the wall-clock time is for display of a batch's opening only; skip it on the hot path otherwise
        wall = None if key in self.batch_engine.batches else datetime.now(UTC)
        budget = self._runner.token_budget(agent, sub)
        tokens = 0 if budget is None else self._runner.item_tokens(agent, sub, item)
        limit = None  # BatchSpec(quality=): flush at the size the engine's controller holds
        if sub.batch.quality is not None:
            limit = self._runner.engine_for(agent).effective_batch_size(agent.name, sub.index)
        outcome = self.batch_engine.add(
            key, sub.batch, item, now=now, wall=wall, tokens=tokens, budget=budget, limit=limit
        )
        for flush in outcome.flushes:
            self._cancel_timer(key)
            self._start(flush)
        if outcome.opened_deadline is not None:
            self._batch_timers[key] = self._clock.call_at(outcome.opened_deadline, partial(self._deadline, key))

    def _start(self, flush: Flush) -> None:
        agent = self._agents[flush.key[0]]
        self._runner.start_flush(agent, agent.subscriptions[flush.key[1]], flush)

    def _cancel_timer(self, key: BatchKey) -> None:
        timer = self._batch_timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _deadline(self, key: BatchKey) -> None:
        self._batch_timers.pop(key, None)
        # The timer exists only while its batch is open, so the batch that is there is the one it was set for.
        flush = self.batch_engine.take(key, "timeout", now=self._clock.now())
        if flush is not None:
            self._start(flush)

    def flush_expired(self) -> int:
        """Flush every batch whose timeout has passed, now."""
        flushes = self.batch_engine.take_expired(now=self._clock.now())
        for flush in flushes:
            self._cancel_timer(flush.key)
            self._start(flush)
        return len(flushes)

    def flush_now(self, reason: FlushReason, *, agent: str | None = None) -> int:
        """Flush every batch (of one agent, or all) now, with `reason`."""
        now = self._clock.now()
        count = 0
        for key in list(self.batch_engine.batches):
            if agent is not None and key[0] != agent:
                continue
            self._cancel_timer(key)
            flush = self.batch_engine.take(key, reason, now=now)
            if flush is not None:
                self._start(flush)
                count += 1
        return count

    def stats(self) -> list[BatchStats]:
        now = self._clock.now()
        stats = []
        for key, buf in self.batch_engine.batches.items():
            deadline = buf.deadline
            stats.append(
                BatchStats(
                    agent=key[0],
                    subscription_index=key[1],
                    partition=key[2] if len(key) > 2 else None,
                    pending=len(buf.items),
                    oldest_age_s=now - (buf.opened_at or now),
                    flush_in_s=None if deadline is None else max(0.0, deadline - now),
                )
            )
        return stats

    def cancel_timers(self) -> None:
        for timer in [*self._batch_timers.values(), *self._join_timers]:
            timer.cancel()
        self._batch_timers.clear()
        self._join_timers.clear()

    # -- joins ----------------------------------------------------------------------------------------

    def _join(self, agent: Agent, sub: Subscription, artifact: Artifact, now: float) -> Item | None:
        """Place an artifact in its join group or gate set; the completed set, if it completed one."""
        key: Hashable = ()  # a gate: one set at a time
        if sub.join is not None:
            try:
                key = sub.join.by(artifact.payload)
                hash(key)
            except Exception as exc:  # noqa: BLE001 - user code: any error is possible; record it, don't drop it
                self._ledger.consumed(agent.name, sub.index, (artifact,))
                self._outcomes.user_code_failed(agent, sub, artifact, exc, stage="join_by", counter="join_key_errors")
                return None
        buffer = self._joins.get((agent.name, sub.index))
        if buffer is None:
            buffer = self._joins[(agent.name, sub.index)] = JoinBuffer(sub.join, sub.type_names)
        outcome = buffer.add(artifact, key, now=now)
        self._report_expired(agent, sub, outcome.expired)
        if outcome.opened_deadline is not None:
            self._join_timers.append(
                self._clock.call_at(outcome.opened_deadline, partial(self._expire_joins, agent, sub))
            )
        return outcome.completed

    def _expire_joins(self, agent: Agent, sub: Subscription) -> None:
        buffer = self._joins.get((agent.name, sub.index))
        if buffer is not None:
            self._report_expired(agent, sub, buffer.take_expired(now=self._clock.now()))

    def close_joins(self) -> int:
        """Close every open join group (at shutdown); each is reported like an expired one."""
        count = 0
        for (agent_name, index), buffer in self._joins.items():
            agent = self._agents[agent_name]
            closed = buffer.take_all()
            self._report_expired(agent, agent.subscriptions[index], closed)
            count += len(closed)
        return count

    def _report_expired(self, agent: Agent, sub: Subscription, expired: list[ExpiredGroup]) -> None:
        for group in expired:
            ids = tuple(a.id for a in group.artifacts)
            if group.reason == "window":  # dropped for good; a group open at shutdown is restored on restart
                self._ledger.consumed(agent.name, sub.index, group.artifacts)
            self._metrics.counters.join_groups_expired += 1
            self._metrics.join_expiries.append(
                JoinExpiry(agent.name, sub.index, group.key, ids, group.missing, group.reason)
            )
            if self._tracer is not None:
                self._tracer.start(
                    "flock.join.expired",
                    agent=agent.name,
                    subscription=sub.index,
                    key=str(group.key),
                    reason=group.reason,
                    artifact_ids=list(ids),
                    missing=list(group.missing),
                ).end()
            log.warning(
                "agent %r subscription %d: %s closed incomplete (%s), missing %s; artifacts %s not processed",
                agent.name,
                sub.index,
                "gate set" if sub.is_gate else f"join group {group.key!r}",
                group.reason,
                ", ".join(group.missing),
                ", ".join(ids),
            )
