"""AND gates and joins on the Redis store: sets are filled and completed atomically by the SLOTS script (so
two workers never fire the same set and no artifact lands in two sets); a completed set is ONE item of the
shared batch, or a run of its own. Windows expire by the Redis server's clock, and expired sets are reported
by the worker that closed them (log, `join_groups_expired`, `join_expiries`, span)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..._runtime.ledger import Receipt
from ...agent import Agent
from ...artifact import Artifact
from ...metrics import JoinExpiry
from ...subscription import Subscription
from .clock import SharedTime
from .connection import RedisConnection
from .support import id_of

if TYPE_CHECKING:
    from ..._runtime.ports import IntakeServices

__all__ = ["SharedSets"]

log = logging.getLogger("flock_llm.redis")


class SharedSets:
    """Gate and join sets of the subscriptions one worker process serves."""

    def __init__(self, store: RedisConnection, services: IntakeServices, time: SharedTime) -> None:
        self.store = store
        self.services = services
        self._time = time

    def sets_key(self, member: str) -> str:
        return self.store.key(f"sets:{member}")

    def key_of(self, agent: Agent, sub: Subscription, artifact: Artifact, receipt: Receipt) -> str | None:
        """The set key (JSON) of an accepted artifact; None when the join key raised or is not JSON (the failure is
        recorded and the entry acknowledged with it)."""
        if sub.join is None:
            return "[]"  # a gate: one set at a time
        try:
            return json.dumps(sub.join.by(artifact.payload), separators=(",", ":"), sort_keys=True)
        except Exception as exc:  # noqa: BLE001 - user code (or a key that is not JSON): record it, keep the artifact
            with self.services.ledger.unit(receipt):
                self.services.ledger.consumed(agent.name, sub.index, (artifact,))
                self.services.outcomes.user_code_failed(
                    agent, sub, artifact, exc, stage="join_by", counter="join_key_errors"
                )
            return None

    def arguments(self, agent: Agent, sub: Subscription, group: str, member: str) -> list[Any]:
        """The SLOTS script's fixed arguments for a subscription."""
        batch = sub.batch
        size = 0 if batch is None or batch.size is None else batch.size
        timeout_ms = (
            0 if batch is None or batch.timeout is None else max(1, round(batch.timeout.total_seconds() * 1000))
        )
        within = None if sub.join is None else sub.join.within
        if isinstance(within, timedelta):
            kind, window = "t", max(1, round(within.total_seconds() * 1000))
        elif isinstance(within, int):
            kind, window = "c", within
        else:
            kind, window = "n", 0
        direct = "1" if batch is None else "0"
        budget = self.services.runner.token_budget(agent, sub) or 0
        return [group, member, size, timeout_ms, kind, window, json.dumps(list(sub.type_names)), direct, budget]

    async def add(
        self,
        agent: Agent,
        sub: Subscription,
        stream: str,
        group: str,
        member: str,
        ready: str,
        placed: list[tuple[str, str, str, str, int]],
        arm: Callable[..., None],
    ) -> None:
        """Place accepted entries in their gate/join sets (one SLOTS script per read; safe to repeat: an entry
        placed already is acknowledged, and SLOTS then skips it)."""
        store = self.store
        keys = [
            stream,
            store.batch_list(member),
            store.key("deadlines"),
            store.key("opened"),
            ready,
            store.key("seq"),
            self.sets_key(member),
            self.sets_key(member) + ":n",
        ]
        args = [self._time.now_arg(), *self.arguments(agent, sub, group, member)]
        args += [part for quint in placed for part in quint]
        result = await store.retrying(lambda: store.script("SLOTS")(keys=keys, args=args), limit=None)
        _, now_ms, deadline_ms, expired = result
        if int(deadline_ms) != -1:
            arm(member, now_ms=int(now_ms), deadline_ms=int(deadline_ms))
        self.report(agent, sub, expired)

    async def sweep(self, agent: Agent, sub: Subscription, member: str) -> None:
        """Close the time-window sets whose window passed (by the server's clock) and report them."""
        store = self.store
        expired = await store.retrying(
            lambda: store.script("SETS_DUE")(keys=[self.sets_key(member)], args=[self._time.now_arg()]),
            limit=store.reconnect_timeout,
        )
        self.report(agent, sub, expired)

    def report(self, agent: Agent, sub: Subscription, expired: list[Any]) -> None:
        metrics = self.services.metrics
        for key, docs in expired:
            ids = tuple(id_of(doc) for doc in docs)
            present = [_type_of(doc) for doc in docs]
            missing = list(sub.type_names)
            for name in present:
                if name in missing:
                    missing.remove(name)
            metrics.counters.join_groups_expired += 1
            metrics.join_expiries.append(JoinExpiry(agent.name, sub.index, key, ids, tuple(missing), "window"))
            tracer = self.services.tracer
            if tracer is not None:
                tracer.start(
                    "flock.join.expired",
                    agent=agent.name,
                    subscription=sub.index,
                    key=str(key),
                    reason="window",
                    artifact_ids=list(ids),
                    missing=missing,
                ).end()
            log.warning(
                "agent %r subscription %d: join group %s closed incomplete (window), missing %s; artifacts %s not "
                "processed",
                agent.name,
                sub.index,
                key,
                ", ".join(missing),
                ", ".join(ids),
            )


def _type_of(doc: str) -> str:
    try:
        return str(json.loads(doc)[1])
    except (ValueError, IndexError, TypeError):
        return "?"
