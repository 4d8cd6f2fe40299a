"""Field-by-field comparison of two answers of one pydantic type (pure: no I/O).

Labels, enums and booleans must be equal; numbers agree within a tolerance; free text agrees when a cheap
similarity (difflib's ratio on normalised text; texts over `LONG_TEXT` characters as bags of words, in linear
time) reaches a threshold. Nested models are compared field by field under dotted names (`address.city`); lists
of labels, numbers or models as sets of equal elements, other lists as text.
"""

from __future__ import annotations

import enum
import json
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from .._numbers import number
from ..errors import ConfigurationError

__all__ = [
    "Comparison",
    "FieldAgreement",
    "FieldKind",
    "Tolerance",
    "compare_answers",
    "compared_fields",
    "field_kinds",
]

FieldKind = Literal["exact", "number", "text"]


@dataclass(frozen=True, slots=True)
class Tolerance:
    """When two values count as the same answer."""

    abs_tol: float = 1e-6
    """Numbers agree when they differ by at most this much..."""
    rel_tol: float = 0.05
    """...or by at most this share of the larger magnitude."""
    text_similarity: float = 0.8
    """Free text agrees when difflib's ratio of the normalised texts is at least this."""

    def __post_init__(self) -> None:
        for name in ("abs_tol", "rel_tol", "text_similarity"):  # finite, no NaN, no bool (see `_numbers`)
            number(name, getattr(self, name), bound="non_negative", fix="e.g. Tolerance(rel_tol=0.05)")
        if self.text_similarity > 1:
            raise ConfigurationError(f"`text_similarity` must be between 0 and 1, got {self.text_similarity!r}")


@dataclass(frozen=True, slots=True)
class FieldAgreement:
    """One field of one compared pair."""

    field: str
    """The dotted field name."""
    kind: FieldKind
    """How it was compared: "exact", "number" or "text"."""
    agreed: bool
    """Whether the two values agree within the tolerance."""
    score: float
    """1.0 / 0.0 for exact fields and numbers; the similarity for text."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two answers compared field by field; `agreed` when every compared field agrees."""

    fields: tuple[FieldAgreement, ...]
    """One entry per compared field."""

    @property
    def agreed(self) -> bool:
        """Every compared field agrees."""
        return all(f.agreed for f in self.fields)

    @property
    def disagreeing(self) -> tuple[str, ...]:
        """The names of the fields that disagree."""
        return tuple(f.field for f in self.fields if not f.agreed)


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X (the other members of a union are compared by value)."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        members = [a for a in get_args(annotation) if a is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation


def _kind(annotation: Any) -> FieldKind | type[BaseModel]:
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin is Literal or annotation is bool:
        return "exact"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return annotation
        if issubclass(annotation, enum.Enum):
            return "exact"
        if issubclass(annotation, (int, float)):
            return "number"
        if issubclass(annotation, str):
            return "text"
    if origin in (list, tuple, set, frozenset) and all(
        _kind(a) in ("exact", "number") or isinstance(_kind(a), type) for a in get_args(annotation) if a != ...
    ):
        return "exact"  # labels, numbers or models: equal elements (json text of similar models is no agreement)
    return "text"


def field_kinds(model: type[BaseModel], prefix: str = "") -> dict[str, FieldKind]:
    """How each (dotted) field of `model` is compared.

    Args:
        model: the output type.
        prefix: put before each name (for nested models, e.g. "address.").
    """
    kinds: dict[str, FieldKind] = {}
    for name, info in model.model_fields.items():
        kind = _kind(info.annotation)
        if isinstance(kind, type):
            kinds.update(field_kinds(kind, f"{prefix}{name}."))
        else:
            kinds[f"{prefix}{name}"] = kind
    return kinds


def _normalise(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.lower().split())
    return json.dumps(value, sort_keys=True, default=str).lower()


LONG_TEXT = 2000
"""Above this many characters (either text), texts are compared as bags of words: difflib's ratio is quadratic
(two different texts of 12,000 characters took 25 s, in the event loop)."""


def text_similarity(a: Any, b: Any) -> float:
    """difflib's ratio of the two values' normalised text (1.0 for equal text, also when both are empty); for long
    texts, the same ratio over their words taken as bags (order ignored), which takes linear time."""
    left, right = _normalise(a), _normalise(b)
    if left == right:
        return 1.0
    if max(len(left), len(right)) > LONG_TEXT:
        return SequenceMatcher(None, left.split(), right.split(), autojunk=False).quick_ratio()
    return SequenceMatcher(None, left, right, autojunk=False).ratio()


def _numbers_agree(a: Any, b: Any, tol: Tolerance) -> bool:
    if a is None or b is None:
        return a is b
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return bool(a == b)
    return math.isclose(x, y, rel_tol=tol.rel_tol, abs_tol=tol.abs_tol)


def _exact(a: Any, b: Any) -> bool:
    if isinstance(a, enum.Enum):
        a = a.value
    if isinstance(b, enum.Enum):
        b = b.value
    if isinstance(a, (list, tuple, set, frozenset)) and isinstance(b, (list, tuple, set, frozenset)):
        return {_normalise(v) for v in a} == {_normalise(v) for v in b}
    return bool(a == b)


def _field(name: str, kind: FieldKind, a: Any, b: Any, tol: Tolerance) -> FieldAgreement:
    if kind == "exact":
        same = _exact(a, b)
        return FieldAgreement(name, kind, same, 1.0 if same else 0.0)
    if kind == "number":
        same = _numbers_agree(a, b, tol)
        return FieldAgreement(name, kind, same, 1.0 if same else 0.0)
    score = text_similarity(a, b)
    return FieldAgreement(name, kind, score >= tol.text_similarity, score)


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def compared_fields(
    model: type[BaseModel], fields: Sequence[str] | None = None, ignore: Sequence[str] = ()
) -> dict[str, FieldKind]:
    """The (dotted) fields of `model` that `compare_answers(..., fields=, ignore=)` compares, and how.

    Args:
        model: the output type.
        fields: compare only these; default: every field of the type.
        ignore: fields never compared (each must be among those `fields` leaves).

    Raises:
        ConfigurationError: `fields` or `ignore` names a field the type lacks (a typo would leave the field
            compared), or no field is left (an empty comparison would count as full agreement).
    """
    for flag, names in (("fields", fields), ("ignore", ignore)):
        if isinstance(names, str) or (names is None and flag == "ignore"):  # (a str is a sequence of letters)
            raise ConfigurationError(f"`{flag}` must be a list of field names, got {names!r}; e.g. {flag}=['label']")
    kinds = field_kinds(model)
    if fields is not None:
        unknown = [f for f in fields if f not in kinds]
        if unknown:
            raise ConfigurationError(f"{model.__name__} has no field(s) {unknown!r}; its fields: {sorted(kinds)}")
        kinds = {f: kinds[f] for f in fields}
    unknown_ignored = [f for f in ignore if f not in kinds]
    if unknown_ignored:
        raise ConfigurationError(
            f"`ignore` names field(s) {unknown_ignored!r} that {model.__name__} lacks; its fields: {sorted(kinds)}"
        )
    compared = {name: kind for name, kind in kinds.items() if name not in ignore}
    if not compared:
        raise ConfigurationError(
            f"no field of {model.__name__} is left to compare (fields={fields!r}, ignore={list(ignore)!r}): "
            "an empty comparison would count as agreement"
        )
    return compared


def compare_answers(
    a: BaseModel,
    b: BaseModel,
    *,
    tolerance: Tolerance | None = None,
    fields: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
) -> Comparison:
    """Compare two answers of one type field by field.

    Args:
        a: one answer (e.g. the batched one).
        b: the other answer, of the same type (e.g. the one-item one).
        tolerance: number and text tolerances (default `Tolerance()`).
        fields: compare only these (dotted) fields; default: every field of the type.
        ignore: fields never compared (ids, timestamps...).

    Raises:
        ConfigurationError: the answers are of different types, `fields` or `ignore` names a field the type
            lacks, or no field is left to compare (an empty comparison would count as full agreement).
    """
    if type(a) is not type(b):
        raise ConfigurationError(f"compare answers of one type, got {type(a).__name__} and {type(b).__name__}")
    tol = tolerance or Tolerance()
    compared = compared_fields(type(a), fields, ignore)
    left, right = a.model_dump(mode="python"), b.model_dump(mode="python")
    return Comparison(
        tuple(_field(name, kind, _lookup(left, name), _lookup(right, name), tol) for name, kind in compared.items())
    )
