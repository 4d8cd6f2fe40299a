"""Who may receive an artifact: the one place that decides, for every path that delivers one (a publish, a
restore from SQLite, a shared Redis batch, a takeover after a dead worker).

An agent receives an artifact of a type it subscribes to when it did not produce it itself (no
self-triggering loops), the subscription accepts its origin and tags, its visibility allows the agent, and
every `where=` predicate holds. A predicate that raises is user code failing: it is reported through
`on_user_error` (which records a failure) and the artifact is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

from ..agent import Agent
from ..artifact import Artifact
from ..subscription import Subscription
from ..visibility import AgentIdentity

__all__ = ["Refusal", "Router", "UserCodeError", "may_see"]

Refusal = Literal["", "self", "origin", "visibility", "where", "raised"]
"""Why a subscription does not take an artifact ("" when it does)."""

UserCodeError = Callable[[Agent, Subscription, Artifact, Exception], None]


def may_see(who: AgentIdentity, artifact: Artifact) -> bool:
    """The visibility rule: whether an agent (as identified: name, labels, tenant) may see an artifact."""
    return artifact.visibility.allows(who)


class Router:
    """Routes by type name and checks each (agent, subscription) against an artifact.

    Args:
        agents: the Flock's agents by name (read live: agents defined later are routed too).
        on_user_error: called when a `where` predicate raises (records the failure).
    """

    def __init__(self, agents: Mapping[str, Agent], on_user_error: UserCodeError) -> None:
        self._agents = agents
        self._on_user_error = on_user_error
        self._routes: dict[str, list[tuple[Agent, Subscription]]] | None = None

    def invalidate(self) -> None:
        """The agents changed: rebuild the route table on next use."""
        self._routes = None

    def routes(self, type_name: str) -> list[tuple[Agent, Subscription]]:
        """Every (agent, subscription) that subscribes to `type_name`."""
        if self._routes is None:
            routes: dict[str, list[tuple[Agent, Subscription]]] = {}
            for agent in self._agents.values():
                for sub in agent.subscriptions:
                    for name in dict.fromkeys(sub.type_names):
                        routes.setdefault(name, []).append((agent, sub))
            self._routes = routes
        return self._routes.get(type_name, [])

    def accepts(self, agent: Agent, sub: Subscription, artifact: Artifact) -> bool:
        """Whether the subscription takes the artifact (`refusal()` says why not; this is its fast path)."""
        if artifact.produced_by == agent.name or not sub.accepts_origin(artifact.produced_by, artifact.tags):
            return False
        if not may_see(agent.identity, artifact):
            return False
        return not sub.where or self.where(agent, sub, artifact) == ""

    def refusal(self, agent: Agent, sub: Subscription, artifact: Artifact) -> Refusal:
        """Why the subscription does not take the artifact, or "" when it does."""
        if artifact.produced_by == agent.name:
            return "self"
        if not sub.accepts_origin(artifact.produced_by, artifact.tags):
            return "origin"
        if not may_see(agent.identity, artifact):
            return "visibility"
        if not sub.where:
            return ""
        return self.where(agent, sub, artifact)

    def where(self, agent: Agent, sub: Subscription, artifact: Artifact) -> Refusal:
        """The `where=` predicates alone: "" when all hold, "where" when one does not, "raised" when one raised
        (reported through `on_user_error`)."""
        for predicate in sub.where:
            try:
                if not predicate(artifact.payload):
                    return "where"
            except Exception as exc:  # noqa: BLE001 - user code: any error is possible; reported, never silent
                self._on_user_error(agent, sub, artifact, exc)
                return "raised"
        return ""
