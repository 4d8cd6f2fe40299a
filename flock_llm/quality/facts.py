"""Report numbers computed, not asked (pure: no I/O).

For a report output, fields that code can compute from the batch's items are computed here; an answer that
contradicts them, or cites an id that is not in the batch, is rejected (see `QualityGuard`: asked again once,
then the computed values are filled in and foreign ids dropped).

Computed automatically, by the report field's name (numbers over the items' payloads):

    item count   `count`, `n_items`, `item_count`, `items_count`, `total_items`, `<input type>_count`
                 (e.g. `review_count` for Review items)
    aggregates   `average_<f>`, `avg_<f>`, `mean_<f>`, `min_<f>`, `max_<f>`, `total_<f>`, `sum_<f>` where every
                 item has a numeric field `<f>` (e.g. `average_rating`, `total_amount`)

Ids: a list-of-strings field whose name ends in `ids` (`review_ids`, `cited_ids`) may only hold ids of the batch:
the prompt's item ids (i1..iN) or the values of the items' `id`/`*_id` fields.

Declare more with `ReportFacts(declared={"positive_share": lambda items: ...})`: a function of the batch's
payloads (a list of pydantic objects) returning the field's value.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ..errors import ConfigurationError

__all__ = ["ReportFacts", "check_report", "compute_facts", "fill_facts", "valid_ids"]

FactFunction = Callable[[Sequence[BaseModel]], Any]

_COUNT_NAMES = frozenset({"count", "n_items", "item_count", "items_count", "total_items"})
_AGGREGATE = re.compile(r"^(average|avg|mean|min|max|total|sum)_(\w+)$")


@dataclass(frozen=True, slots=True)
class ReportFacts:
    """Which report fields are computed from the items, and how closely the model's numbers must match."""

    declared: Mapping[str, FactFunction] = field(default_factory=dict)
    """Field name -> function of the batch's payloads giving its value (in addition to the automatic ones)."""
    automatic: bool = True
    """Compute counts and aggregates by the field names listed in the module docstring."""
    rel_tol: float = 0.005
    """Relative tolerance: a model's number agrees with a computed one within this share (or `abs_tol`)."""
    abs_tol: float = 0.01
    """A model's number agrees with a computed one within these (an average rounded to 2 decimals passes)."""
    check_ids: bool = True
    """Reject `*ids` lists that cite an id that is not in the batch (then drop the foreign ids)."""

    def __post_init__(self) -> None:
        for name, function in self.declared.items():
            if not callable(function):
                raise ConfigurationError(f"declared fact {name!r} must be a function of the items, got {function!r}")
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise ConfigurationError(f"tolerances must be >= 0, got rel_tol={self.rel_tol!r}, abs_tol={self.abs_tol!r}")


def _numbers(payloads: Sequence[BaseModel], name: str) -> list[float] | None:
    values = []
    for payload in payloads:
        value = getattr(payload, name, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        values.append(float(value))
    return values or None


def _automatic(name: str, annotation: Any, payloads: Sequence[BaseModel]) -> Any:
    type_names = {type(p).__name__.lower() for p in payloads}
    if name in _COUNT_NAMES or (name.endswith("_count") and name[: -len("_count")].rstrip("s") in type_names):
        return len(payloads)
    match = _AGGREGATE.match(name)
    if match is None:
        return None
    values = _numbers(payloads, match.group(2))
    if values is None:
        return None
    kind = match.group(1)
    if kind in ("average", "avg", "mean"):
        result = statistics.fmean(values)
    elif kind == "min":
        result = min(values)
    elif kind == "max":
        result = max(values)
    else:
        result = math.fsum(values)
    return round(result) if annotation is int and float(result).is_integer() else result


def compute_facts(output_type: type[BaseModel], payloads: Sequence[BaseModel], facts: ReportFacts) -> dict[str, Any]:
    """The values of `output_type`'s computable fields for a batch of `payloads`."""
    computed: dict[str, Any] = {}
    for name, info in output_type.model_fields.items():
        if name in facts.declared:
            computed[name] = facts.declared[name](payloads)
        elif facts.automatic and payloads:
            value = _automatic(name, info.annotation, payloads)
            if value is not None:
                computed[name] = value
    return computed


def valid_ids(payloads: Sequence[BaseModel], item_count: int) -> set[str]:
    """The ids an answer about this batch may cite."""
    ids = {f"i{n}" for n in range(1, item_count + 1)}
    for payload in payloads:
        for name, value in payload.model_dump().items():
            if (name == "id" or name.endswith("_id")) and isinstance(value, (str, int)):
                ids.add(str(value))
    return ids


def _id_fields(answer: BaseModel) -> list[str]:
    return [
        name
        for name, value in answer.model_dump().items()
        if name.endswith("ids") and isinstance(value, list) and all(isinstance(v, str) for v in value)
    ]


def check_report(answer: BaseModel, computed: Mapping[str, Any], ids: set[str], facts: ReportFacts) -> list[str]:
    """What is wrong with a report answer: numbers that contradict computed facts, ids not in the batch."""
    problems = []
    for name, expected in computed.items():
        given = getattr(answer, name, None)
        if isinstance(expected, (int, float)) and isinstance(given, (int, float)):
            if not math.isclose(float(given), float(expected), rel_tol=facts.rel_tol, abs_tol=facts.abs_tol):
                problems.append(f"`{name}` is {given!r}, but the items give {expected!r}")
        elif given != expected:
            problems.append(f"`{name}` is {given!r}, but the items give {expected!r}")
    if facts.check_ids:
        for name in _id_fields(answer):
            foreign = [v for v in getattr(answer, name) if v not in ids]
            if foreign:
                problems.append(f"`{name}` cites {len(foreign)} id(s) that are not in the batch")
    return problems


def fill_facts(answer: BaseModel, computed: Mapping[str, Any], ids: set[str], facts: ReportFacts) -> BaseModel:
    """`answer` with the computed values filled in and ids not in the batch dropped (validated again)."""
    data = answer.model_dump()
    data.update(computed)
    if facts.check_ids:
        for name in _id_fields(answer):
            data[name] = [v for v in data[name] if v in ids]
    return type(answer).model_validate(data)
