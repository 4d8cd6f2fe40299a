"""Which worker processes define which agents how (tenant and labels), kept in Redis, so an artifact one
worker's definition may not see goes to a live worker whose definition may (mid-deploy), not nowhere."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping

from ..._runtime.router import may_see
from ...agent import Agent
from ...artifact import Artifact
from ...visibility import AgentIdentity
from .connection import RedisConnection

__all__ = ["Peers", "identity_of"]

log = logging.getLogger("flock_llm.redis")


def identity_of(agent: Agent) -> str:
    """A short name for what visibility checks know of an agent ("" for no tenant and no labels)."""
    return _identity_key(agent.identity)


def _identity_key(who: AgentIdentity) -> str:
    if who.tenant_id is None and not who.labels:
        return ""
    text = json.dumps([who.tenant_id, sorted(who.labels)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Peers:
    """How the live worker processes define this process's agents (tenant and labels), kept in Redis.

    Each worker announces its definitions (and reads everyone's) every housekeeping tick; an entry this
    process may not see, but a live peer's definition of the same agent may, is left for that peer.
    """

    def __init__(self, store: RedisConnection, agents: Mapping[str, Agent]) -> None:
        self.store = store
        self._agents = agents  # (read live: the agents are defined after the worker is built)
        self._known: dict[str, list[tuple[str, str, AgentIdentity]]] = {}

    async def exchange(self) -> None:
        """Announce this process's definitions and read the live ones of every process."""
        key = self.store.key("identities")
        client = self.store.client
        mine = {a.name: [a.identity.tenant_id, sorted(a.identity.labels)] for a in self._agents.values()}
        await client.hset(key, self.store.consumer, json.dumps({"at": time.time(), "agents": mine}))
        known: dict[str, list[tuple[str, str, AgentIdentity]]] = {}
        horizon = time.time() - 3 * self.store.claim_timeout
        stale = []
        for consumer, doc in (await client.hgetall(key)).items():
            try:
                found = json.loads(doc)
                if float(found["at"]) < horizon:
                    stale.append(consumer)
                    continue
                for name, (tenant, labels) in found["agents"].items():
                    if name in mine:
                        identity = AgentIdentity(name, frozenset(labels), tenant)
                        known.setdefault(name, []).append((consumer, _identity_key(identity), identity))
            except (ValueError, KeyError, TypeError):
                stale.append(consumer)  # written by another version: ignored, and removed
        if stale:
            await client.hdel(key, *stale)
        self._known = known

    def who_may_see(self, agent: str, identity: str, artifact: Artifact) -> str | None:
        """The consumer name of a live peer that defines `agent` otherwise than `identity` and may see
        `artifact`, if there is one."""
        for consumer, key, who in self._known.get(agent, ()):
            if key != identity and may_see(who, artifact):
                return consumer
        return None

    async def leave(self) -> None:
        try:
            await self.store.client.hdel(self.store.key("identities"), self.store.consumer)
        except Exception as exc:  # noqa: BLE001 - Redis may be gone at shutdown; the entry then goes stale
            log.info("could not withdraw this worker's agent definitions: %s", type(exc).__name__)
