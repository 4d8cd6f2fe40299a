"""Artifacts as rows and as JSON text, for the stores that keep them outside the process. Pure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from ..artifact import Artifact
from ..registry import resolve_type
from ..visibility import PublicVisibility, visibility_from_dict, visibility_to_dict

__all__ = ["artifact_from_json", "artifact_from_row", "artifact_to_json", "artifact_to_row"]

_PUBLIC_JSON = json.dumps(visibility_to_dict(PublicVisibility()))


def artifact_to_row(a: Artifact) -> tuple[object, ...]:
    """(id, type_name, payload, produced_by, derived_from, correlation_id, tags, visibility, created_at)."""
    # the common cases (public, no tags, no lineage) skip json.dumps: it is most of the cost of a row
    visibility = (
        _PUBLIC_JSON if isinstance(a.visibility, PublicVisibility) else json.dumps(visibility_to_dict(a.visibility))
    )
    return (
        a.id,
        a.type_name,
        a.payload.model_dump_json(),
        a.produced_by,
        json.dumps(a.derived_from) if a.derived_from else "[]",
        a.correlation_id,
        json.dumps(sorted(a.tags)) if a.tags else "[]",
        visibility,
        a.created_at.timestamp(),
    )


def artifact_from_row(row: Sequence[object]) -> Artifact:
    """The artifact of a row; raises ConfigurationError when its type is not registered here."""
    id_, type_name, payload, produced_by, derived, correlation, tags, visibility, created = row
    model = resolve_type(str(type_name))
    return Artifact(
        type_name=str(type_name),
        payload=model.model_validate_json(str(payload)),
        id=str(id_),
        produced_by=None if produced_by is None else str(produced_by),
        derived_from=tuple(json.loads(str(derived))),
        correlation_id=None if correlation is None else str(correlation),
        tags=frozenset(json.loads(str(tags))),
        visibility=visibility_from_dict(json.loads(str(visibility))),
        created_at=datetime.fromtimestamp(float(created), tz=UTC),  # type: ignore[arg-type]
    )


def artifact_to_json(a: Artifact) -> str:
    """One line of JSON (no raw newlines: several can be joined with "\\n")."""
    return json.dumps(artifact_to_row(a), separators=(",", ":"))


def artifact_from_json(text: str) -> Artifact:
    return artifact_from_row(json.loads(text))
