"""Report numbers computed, not asked (pure: no I/O).

For a report output, fields that code can compute from the batch's items are computed here; an answer that
contradicts them, or cites an id that is not in the batch, is rejected (see `QualityGuard`: asked again once,
then the computed values are filled in and foreign ids dropped).

Computed automatically, by the report field's name (numbers over the items' payloads):

    item count   `count`, `n_items`, `item_count`, `items_count`, `total_items`, `<input type>_count`
                 (e.g. `review_count` for Review items)
    aggregates   `average_<f>`, `avg_<f>`, `mean_<f>`, `min_<f>`, `max_<f>`, `total_<f>`, `sum_<f>` where every
                 item has a numeric field `<f>` (e.g. `average_rating`, `total_amount`)

Ids: a list of strings or whole numbers whose field name ends in `ids` (`review_ids`, `cited_ids`), at any depth
(`top.review_ids` in a nested model), may only hold ids of the batch: the prompt's item ids (i1..iN) or the
values of the items' `id`/`*_id` fields.

A fact is computed only when its field's type can hold it as it is (an average of 4.5 is not put into an `int`
field) and it is a finite number (a NaN or an overflowing item makes no fact); a declared function that raises
is logged and skipped for that batch. The report is kept in every case.

Declare more with `ReportFacts(declared={"positive_share": lambda items: ...})`: a function of the batch's
payloads (a list of pydantic objects) returning the field's value.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from .._numbers import number
from ..errors import ConfigurationError

__all__ = ["ReportFacts", "check_report", "compute_facts", "fill_facts", "valid_ids"]

FactFunction = Callable[[Sequence[BaseModel]], Any]

log = logging.getLogger("flock_llm.quality")

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
        for tolerance in ("rel_tol", "abs_tol"):  # finite, no NaN, no bool (see `_numbers`)
            number(tolerance, getattr(self, tolerance), bound="non_negative", fix="e.g. ReportFacts(rel_tol=0.005)")


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
    try:
        if kind in ("average", "avg", "mean"):
            result = statistics.fmean(values)
        elif kind == "min":
            result = min(values)
        elif kind == "max":
            result = max(values)
        else:
            result = math.fsum(values)
    except (OverflowError, ValueError):  # numbers past a float's range (1e308 + 1e308), or an infinity minus one
        return None
    if not math.isfinite(result):  # a NaN or an infinity among the items: no fact (nan != nan: a re-ask forever)
        return None
    return round(result) if annotation is int and float(result).is_integer() else result


def compute_facts(output_type: type[BaseModel], payloads: Sequence[BaseModel], facts: ReportFacts) -> dict[str, Any]:
    """The values of `output_type`'s computable fields for a batch of `payloads`."""
    computed: dict[str, Any] = {}
    for name, info in output_type.model_fields.items():
        if name in facts.declared:
            try:
                value = facts.declared[name](payloads)
            except Exception as exc:  # noqa: BLE001 - the user's function: its fact is skipped, the report kept
                log.warning("declared fact %r raised %s on a batch of %d: not computed for it", name,
                            type(exc).__name__, len(payloads))  # fmt: skip
                continue
        elif facts.automatic and payloads:
            value = _automatic(name, info.annotation, payloads)
            if value is None:
                continue
        else:
            continue
        if _fits(info.annotation, value):
            computed[name] = value
        else:
            log.warning("fact %r = %r does not fit its field's type %r: not computed", name, value, info.annotation)
    return computed


def _fits(annotation: Any, value: Any) -> bool:
    """Whether the field can hold `value` as it is (an average of 4.5 cannot go into an int field)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    try:
        TypeAdapter(annotation).validate_python(value)
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def valid_ids(payloads: Sequence[BaseModel], item_count: int) -> set[str]:
    """The ids an answer about this batch may cite."""
    ids = {f"i{n}" for n in range(1, item_count + 1)}
    for payload in payloads:
        for name, value in payload.model_dump().items():
            if (name == "id" or name.endswith("_id")) and isinstance(value, (str, int)):
                ids.add(str(value))
    return ids


def _is_id_list(name: str, value: Any) -> bool:
    return (
        name.endswith("ids")
        and isinstance(value, list)
        and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
    )


def _id_lists(data: Any, prefix: str = "") -> list[tuple[str, list[Any]]]:
    """(dotted name, list) of every `*ids` list of ids (strings or whole numbers), also in nested models."""
    found: list[tuple[str, list[Any]]] = []
    if isinstance(data, Mapping):
        for name, value in data.items():
            if _is_id_list(str(name), value):
                found.append((f"{prefix}{name}", value))
            else:
                found += _id_lists(value, f"{prefix}{name}.")
    elif isinstance(data, list):
        for n, value in enumerate(data):
            found += _id_lists(value, f"{prefix}{n}.")
    return found


def _drop_foreign(data: Any, ids: set[str]) -> Any:
    if isinstance(data, Mapping):
        return {
            name: [v for v in value if str(v) in ids] if _is_id_list(str(name), value) else _drop_foreign(value, ids)
            for name, value in data.items()
        }
    if isinstance(data, list):
        return [_drop_foreign(value, ids) for value in data]
    return data


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
        for name, values in _id_lists(answer.model_dump()):
            foreign = [v for v in values if str(v) not in ids]
            if foreign:
                problems.append(f"`{name}` cites {len(foreign)} id(s) that are not in the batch")
    return problems


def fill_facts(answer: BaseModel, computed: Mapping[str, Any], ids: set[str], facts: ReportFacts) -> BaseModel:
    """`answer` with the computed values filled in and ids not in the batch dropped (validated again)."""
    data = answer.model_dump()
    data.update(computed)
    if facts.check_ids:
        data = _drop_foreign(data, ids)
    return type(answer).model_validate(data)
