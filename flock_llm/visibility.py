"""Who may see an artifact.

An artifact is delivered only to agents its visibility allows. Visibilities
are immutable values; `TenantVisibility(tenant_id_extractor=...)` is a
template that is resolved to a fixed tenant when an object is published.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .errors import ConfigurationError

__all__ = [
    "AgentIdentity",
    "AllOfVisibility",
    "LabelledVisibility",
    "PrivateVisibility",
    "PublicVisibility",
    "TenantVisibility",
    "Visibility",
    "combine_visibilities",
    "visibility_from_dict",
    "visibility_to_dict",
]


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """What visibility checks know about an agent."""

    name: str
    """The agent's name (PrivateVisibility)."""
    labels: frozenset[str] = frozenset()
    """The labels it carries, from `.labels(...)` (LabelledVisibility)."""
    tenant_id: str | None = None
    """The tenant it acts for, from `.tenant(...)` (TenantVisibility)."""


class Visibility:
    """Base class: decides whether an agent may see an artifact."""

    __slots__ = ()

    def allows(self, agent: AgentIdentity) -> bool:
        """Whether `agent` may see an artifact of this visibility (and take it into a batch)."""
        raise NotImplementedError

    def resolve(self, obj: BaseModel) -> Visibility:
        """The concrete visibility for publishing `obj` (templates compute it from the object)."""
        return self


@dataclass(frozen=True, slots=True)
class PublicVisibility(Visibility):
    """Every agent may see the artifact."""

    def allows(self, agent: AgentIdentity) -> bool:
        return True


def _string_set(value: Iterable[str] | str, argument: str) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    items = frozenset(value)
    if not all(isinstance(item, str) and item for item in items):
        raise ConfigurationError(f"`{argument}` must hold non-empty strings, got {value!r}")
    return items


@dataclass(frozen=True, slots=True, init=False)
class PrivateVisibility(Visibility):
    """Only the named agents may see the artifact.

    Args:
        agents: the agents' names (one name, or several).

    Raises:
        ConfigurationError: no name, or a name that is not a non-empty string.
    """

    agents: frozenset[str]

    def __init__(self, *, agents: Iterable[str] | str) -> None:
        object.__setattr__(self, "agents", _string_set(agents, "agents"))
        if not self.agents:
            raise ConfigurationError("`agents` must name at least one agent; use PublicVisibility() for everyone")

    def allows(self, agent: AgentIdentity) -> bool:
        return agent.name in self.agents


@dataclass(frozen=True, slots=True, init=False)
class LabelledVisibility(Visibility):
    """Only agents carrying every one of `required_labels` may see the artifact.

    Args:
        required_labels: the labels an agent must all carry (`.labels(...)`).

    Raises:
        ConfigurationError: no label, or a label that is not a non-empty string.
    """

    required_labels: frozenset[str]

    def __init__(self, *, required_labels: Iterable[str] | str) -> None:
        object.__setattr__(self, "required_labels", _string_set(required_labels, "required_labels"))
        if not self.required_labels:
            raise ConfigurationError(
                "`required_labels` must name at least one label (no labels would let every agent see the "
                "artifact); use PublicVisibility() for everyone"
            )

    def allows(self, agent: AgentIdentity) -> bool:
        return self.required_labels <= agent.labels


@dataclass(frozen=True, slots=True, init=False)
class TenantVisibility(Visibility):
    """Only agents of one tenant may see the artifact.

    Give a fixed `tenant_id=`, or a `tenant_id_extractor=` that computes the
    tenant from the published object when it is published.

    Args:
        tenant_id: the tenant whose agents (`.tenant(...)`) may see the artifact.
        tenant_id_extractor: computes the tenant id (a non-empty string) from the published object.

    Raises:
        ConfigurationError: neither or both given, an empty tenant id, or an extractor that is not callable.
    """

    tenant_id: str | None
    tenant_id_extractor: Callable[[Any], object] | None = field(compare=False)

    def __init__(
        self,
        *,
        tenant_id: str | None = None,
        tenant_id_extractor: Callable[[Any], object] | None = None,
    ) -> None:
        if (tenant_id is None) == (tenant_id_extractor is None):
            raise ConfigurationError(
                "TenantVisibility needs exactly one of `tenant_id=` or `tenant_id_extractor=`, "
                f"got tenant_id={tenant_id!r}, tenant_id_extractor={tenant_id_extractor!r}"
            )
        if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
            raise ConfigurationError(f"`tenant_id` must be a non-empty string, got {tenant_id!r}")
        if tenant_id_extractor is not None and not callable(tenant_id_extractor):
            raise ConfigurationError(f"`tenant_id_extractor` must be callable, got {tenant_id_extractor!r}")
        object.__setattr__(self, "tenant_id", tenant_id)
        object.__setattr__(self, "tenant_id_extractor", tenant_id_extractor)

    def allows(self, agent: AgentIdentity) -> bool:
        # An unresolved template allows nobody: it must be resolved at publish time.
        return self.tenant_id is not None and agent.tenant_id == self.tenant_id

    def resolve(self, obj: BaseModel) -> Visibility:
        if self.tenant_id_extractor is None:
            return self
        tenant = self.tenant_id_extractor(obj)
        if not isinstance(tenant, str) or not tenant:
            raise ConfigurationError(
                f"`tenant_id_extractor` must return a non-empty string, got {tenant!r} for a {type(obj).__name__}"
            )
        return TenantVisibility(tenant_id=tenant)


@dataclass(frozen=True, slots=True)
class AllOfVisibility(Visibility):
    """Visible only to agents every part allows (what outputs of mixed inputs inherit)."""

    parts: tuple[Visibility, ...]
    """The visibilities an agent must all pass."""

    def allows(self, agent: AgentIdentity) -> bool:
        return all(part.allows(agent) for part in self.parts)


_PUBLIC = PublicVisibility()


def combine_visibilities(visibilities: Iterable[Visibility]) -> Visibility:
    """The visibility an output inherits from its inputs: the most restrictive combination."""
    unique: list[Visibility] = []
    for vis in visibilities:
        parts = vis.parts if isinstance(vis, AllOfVisibility) else (vis,)
        for part in parts:
            if not isinstance(part, PublicVisibility) and part not in unique:
                unique.append(part)
    if not unique:
        return _PUBLIC
    if len(unique) == 1:
        return unique[0]
    return AllOfVisibility(tuple(unique))


def visibility_to_dict(visibility: Visibility) -> dict[str, object]:
    """A JSON-ready description of a (resolved) visibility, for durable stores."""
    if isinstance(visibility, PublicVisibility):
        return {"kind": "public"}
    if isinstance(visibility, PrivateVisibility):
        return {"kind": "private", "agents": sorted(visibility.agents)}
    if isinstance(visibility, LabelledVisibility):
        return {"kind": "labelled", "labels": sorted(visibility.required_labels)}
    if isinstance(visibility, TenantVisibility) and visibility.tenant_id is not None:
        return {"kind": "tenant", "tenant_id": visibility.tenant_id}
    if isinstance(visibility, AllOfVisibility):
        return {"kind": "all_of", "parts": [visibility_to_dict(p) for p in visibility.parts]}
    raise ConfigurationError(f"cannot store visibility {visibility!r}; custom visibilities need the in-memory store")


def visibility_from_dict(data: dict[str, object]) -> Visibility:
    """The visibility `visibility_to_dict` described (as a durable store read it back).

    Raises:
        ConfigurationError: a description of no known kind.
    """
    kind = data.get("kind")
    if kind == "public":
        return _PUBLIC
    if kind == "private":
        return PrivateVisibility(agents=list(data["agents"]))  # type: ignore[call-overload]
    if kind == "labelled":
        return LabelledVisibility(required_labels=list(data["labels"]))  # type: ignore[call-overload]
    if kind == "tenant":
        return TenantVisibility(tenant_id=str(data["tenant_id"]))
    if kind == "all_of":
        return AllOfVisibility(tuple(visibility_from_dict(p) for p in data["parts"]))  # type: ignore[attr-defined]
    raise ConfigurationError(f"unknown stored visibility {data!r}")
