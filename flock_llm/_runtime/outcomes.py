"""Pure construction of what an agent run publishes: outputs (type-checked, with lineage and
visibility) and failure records. No I/O; the orchestrator publishes what these return."""

from __future__ import annotations

from pydantic import BaseModel

from ..agent import Agent
from ..artifact import Artifact, FailureRecord
from ..errors import EngineError
from ..registry import type_name_of
from ..visibility import Visibility, combine_visibilities

__all__ = ["failure_artifact", "output_artifact"]


def output_artifact(agent: Agent, obj: BaseModel, derived_from: tuple[str, ...], sources: list[Artifact]) -> Artifact:
    """The artifact for one engine output.

    Raises:
        EngineError: the object is not of a type the agent publishes.
        ConfigurationError: the agent's visibility template cannot resolve the object (and whatever a
            user `tenant_id_extractor` raises).
    """
    if not isinstance(obj, BaseModel) or type(obj) not in agent.output_types:
        declared = ", ".join(t.__name__ for t in agent.output_types) or "nothing"
        raise EngineError(
            f"the engine returned a {type(obj).__name__}, but agent {agent.name!r} publishes {declared}; "
            "declare it with `.publishes(...)`"
        )
    if agent.output_visibility is not None:
        visibility = agent.output_visibility.resolve(obj)
    else:
        visibility = combine_visibilities(a.visibility for a in sources)
    return Artifact(
        type_name=type_name_of(type(obj)),
        payload=obj,
        produced_by=agent.name,
        derived_from=derived_from,
        correlation_id=sources[0].correlation_id if sources else None,
        visibility=visibility,
    )


def failure_artifact(
    agent: Agent, inputs: list[Artifact], record: FailureRecord, *, visibility: Visibility | None = None
) -> Artifact:
    """The artifact for a failure record: derived from, and as visible as, the inputs it names (or as
    `visibility`, for inputs known only by id and visibility, such as entries that no longer decode)."""
    return Artifact(
        type_name=type_name_of(FailureRecord),
        payload=record,
        produced_by=agent.name,
        derived_from=tuple(record.input_ids),
        correlation_id=inputs[0].correlation_id if inputs else None,
        visibility=combine_visibilities(a.visibility for a in inputs) if visibility is None else visibility,
    )
