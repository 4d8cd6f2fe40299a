"""The agent builder: what an agent consumes, publishes, and which engine does the work."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from .engines import Engine
from .errors import ConfigurationError
from .registry import type_name_of
from .subscription import BatchSpec, JoinSpec, Subscription
from .visibility import AgentIdentity, Visibility

__all__ = ["Agent"]


def _names(value: Iterable[str] | str | None, argument: str) -> frozenset[str] | None:
    if value is None:
        return None
    names = frozenset({value}) if isinstance(value, str) else frozenset(value)
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(f"`{argument}` must be a string or an iterable of strings, got {value!r}")
    return names


def _predicates(
    where: Callable[[Any], bool] | Iterable[Callable[[Any], bool]] | None,
) -> tuple[Callable[[Any], bool], ...]:
    if where is None:
        return ()
    predicates = (where,) if callable(where) else tuple(where)
    for predicate in predicates:
        if not callable(predicate):
            raise ConfigurationError(f"`where` must be a callable or a list of callables, got {predicate!r}")
    return predicates


class Agent:
    """An agent on a Flock, configured with chained builder calls.

    Created by `flock.agent(name)`; every builder method returns the agent.

    Args:
        name: the agent's name, unique in its Flock (outputs record it as `produced_by`).
        on_change: called when a subscription or the concurrency changes (the Flock rebuilds its routing).
    """

    def __init__(self, name: str, on_change: Callable[[], None]) -> None:
        self.name = name
        self._on_change = on_change  # the Flock rebuilds its routing table
        self._description = ""
        self.subscriptions: list[Subscription] = []
        self.output_types: tuple[type[BaseModel], ...] = ()
        self.output_visibility: Visibility | None = None
        self.engine: Engine | None = None
        self.concurrency = 2
        self.identity = AgentIdentity(name)

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    @property
    def description_text(self) -> str:
        """What `.description(...)` set ("" when nothing)."""
        return self._description

    def description(self, text: str) -> Agent:
        """What the agent does; LLM engines put it in the prompt."""
        if not isinstance(text, str):
            raise ConfigurationError(f"`description` must be a string, got {text!r}")
        self._description = text
        return self

    def consumes(
        self,
        *types: type[BaseModel],
        where: Callable[[Any], bool] | Iterable[Callable[[Any], bool]] | None = None,
        batch: BatchSpec | None = None,
        join: JoinSpec | None = None,
        from_agents: Iterable[str] | str | None = None,
        tags: Iterable[str] | str | None = None,
    ) -> Agent:
        """Subscribe to artifacts of `types`. Each call adds one subscription.

        Args:
            *types: the registered types to consume; several make an AND gate, or a join with `join=`.
            where: predicate(s) on the payload; all must return True. Applied before batching.
            batch: accumulate items and process them together (see BatchSpec).
            join: correlate one artifact per slot by key within a window (two or more slots; a repeated type
                is two slots). Without `join=`, several types make an AND gate: the agent runs once it holds
                one artifact per slot (`consumes(A, A, B)`: two As and a B), filled in arrival order.
            from_agents: only artifacts published by these agents.
            tags: only artifacts carrying at least one of these tags.

        Raises:
            ConfigurationError: an unregistered type, a bad spec, or a join with fewer than two types.
        """
        if not types:
            raise ConfigurationError(f"agent {self.name!r}: `consumes()` needs at least one type")
        names = tuple(type_name_of(t) for t in types)
        if batch is not None and not isinstance(batch, BatchSpec):
            raise ConfigurationError(f"`batch` must be a BatchSpec, got {batch!r}")
        if join is not None:
            if not isinstance(join, JoinSpec):
                raise ConfigurationError(f"`join` must be a JoinSpec, got {join!r}")
            if len(names) < 2:
                raise ConfigurationError(
                    f"agent {self.name!r}: a join correlates two or more artifacts (slots), got {list(names)!r}; "
                    "repeat a type for two of it, e.g. consumes(Reading, Reading, join=...)"
                )
        if batch is not None and batch.max_tokens == "auto":
            _check_auto_budget(self.name, self.engine)
        if batch is not None and self.engine is not None:
            self.engine.check_batch(self.name, batch)
        self.subscriptions.append(
            Subscription(
                index=len(self.subscriptions),
                types=types,
                type_names=names,
                where=_predicates(where),
                batch=batch,
                join=join,
                from_agents=_names(from_agents, "from_agents"),
                tags=_names(tags, "tags"),
            )
        )
        self._on_change()
        return self

    def publishes(self, *types: type[BaseModel], visibility: Visibility | None = None) -> Agent:
        """Declare the output types. Without `visibility`, outputs inherit their inputs' visibility.

        Args:
            *types: the registered types the engine may publish (another type becomes a failure record).
            visibility: the visibility of every output; default: the inputs' (the most restrictive combination).
        """
        for t in types:
            type_name_of(t)
        if visibility is not None and not isinstance(visibility, Visibility):
            raise ConfigurationError(
                "`visibility` must be a Visibility (e.g. PublicVisibility(), TenantVisibility(...)), "
                f"got {visibility!r}"
            )
        self.output_types = self.output_types + tuple(t for t in types if t not in self.output_types)
        self.output_visibility = visibility
        return self

    def with_engines(self, *engines: Engine) -> Agent:
        """The engine that does the work (default: LLMEngine())."""
        if len(engines) != 1:
            raise ConfigurationError(
                f"agent {self.name!r}: `with_engines()` takes exactly one engine, got {len(engines)}"
            )
        if not isinstance(engines[0], Engine):
            raise ConfigurationError(f"engines must subclass flock_llm.engines.Engine, got {engines[0]!r}")
        if any(sub.batch is not None and sub.batch.max_tokens == "auto" for sub in self.subscriptions):
            _check_auto_budget(self.name, engines[0])
        for sub in self.subscriptions:
            if sub.batch is not None:
                engines[0].check_batch(self.name, sub.batch)
        self.engine = engines[0]
        return self

    def check_engine(self) -> None:
        """Refuse, when the Flock starts, a BatchSpec the default engine cannot serve (an agent without
        `with_engines()` runs `LLMEngine()`, which answers with one report per batch).

        Raises:
            ConfigurationError: `BatchSpec(quality=)` on an agent without an engine.
        """
        if self.engine is None and any(s.batch is not None and s.batch.quality is not None for s in self.subscriptions):
            raise ConfigurationError(
                f"agent {self.name!r}: BatchSpec(quality=...) steers by audits of per-item answers, and the default "
                "engine answers with one report per batch: add `.with_engines(LLMEngine(per_item=True))`"
            )

    def max_concurrency(self, n: int) -> Agent:
        """How many runs of this agent may be in flight at once (default 2)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigurationError(f"`max_concurrency` must be a positive integer, got {n!r}")
        self.concurrency = n
        self._on_change()
        return self

    def labels(self, *labels: str) -> Agent:
        """Labels this agent carries, checked by LabelledVisibility."""
        found = _names(labels, "labels") or frozenset()
        self.identity = AgentIdentity(self.name, self.identity.labels | found, self.identity.tenant_id)
        return self

    def tenant(self, tenant_id: str) -> Agent:
        """The tenant this agent acts for, checked by TenantVisibility."""
        if not isinstance(tenant_id, str) or not tenant_id:
            raise ConfigurationError(f"`tenant_id` must be a non-empty string, got {tenant_id!r}")
        self.identity = AgentIdentity(self.name, self.identity.labels, tenant_id)
        return self


def _check_auto_budget(agent: str, engine: Engine | None) -> None:
    """BatchSpec(max_tokens="auto") needs an engine that knows its context (the default LLMEngine does)."""
    if engine is not None and type(engine).batch_token_budget is Engine.batch_token_budget:
        raise ConfigurationError(
            f'agent {agent!r}: BatchSpec(max_tokens="auto") needs an engine that knows its context window '
            f"(LLMEngine, DSPyEngine); {type(engine).__name__} does not: give max_tokens a number"
        )
