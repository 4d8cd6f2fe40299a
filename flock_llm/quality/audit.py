"""Audit settings and the sampling and usage rules of audits (pure: no I/O)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._numbers import number
from ..engines import CALL_COUNTERS  # what a call adds: one list for every path
from ..errors import ConfigurationError
from .compare import Comparison, Tolerance
from .stats import ALL_FIELDS, position_bucket

__all__ = ["AUDIT_PREFIX", "Audit", "Shuffle", "agreement_usage", "audit_call_usage", "audited_positions"]

AUDIT_PREFIX = "audit_"


@dataclass(frozen=True, slots=True)
class Audit:
    """Ask one sampled item of a sampled share of batch calls again alone and compare the answers field by field.

    `rate` is a share of batch CALLS, not of items: a call is audited with probability `rate` (seeded by its
    artifact ids) and then `per_call` of its items, chosen uniformly (so every position is sampled alike), are
    asked alone. The audit therefore adds at most `rate x per_call` calls per batch call, whatever the batch size,
    and fewer tokens than that share (a one-item call is shorter than a batch). Per-item outputs only (a report
    has no one-item answer to compare with). An audit is an ordinary one-item call of the engine: counted,
    priced and capped by the budget like any other.

    Raises:
        ConfigurationError: `rate` outside (0, 1], a bad tolerance or field list.
    """

    rate: float = 0.02
    """The share of batch calls audited (each call is sampled by a seeded hash of its items' artifact ids)."""
    per_call: int = 1
    """Items asked alone in an audited call (at most the call's items; `per_call=1000` with `rate=1.0` audits
    every item, e.g. to measure agreement on a small run)."""
    seed: int = 0
    """Seed of the sample: another seed audits other items."""
    tolerance: Tolerance = field(default_factory=Tolerance)
    """How close numbers and free text must be to agree (default `Tolerance()`)."""
    fields: tuple[str, ...] | None = None
    """Compare only these (dotted) fields; default: every field of the output type."""
    ignore: tuple[str, ...] = ()
    """Fields never compared (ids, timestamps, ...)."""
    confidence: float = 0.95
    """Of the reported intervals."""
    warmup: float = 4.0
    """With `quality=QualityTarget(...)`: while the controller has fewer than twice `audits_to_judge` audits at
    the current size (at the start and after each change), audit `rate x warmup x per_call` items per call on
    average (more than one item a call when that passes 1), so a bad size is found within a few batches. 1.0
    turns it off."""
    reask: bool = False
    """Position-bias guard: a batch whose audit disagrees is asked once more in another order (rotated by half,
    so middle items move to the ends), and each disagreeing audited item keeps its majority answer (batched,
    alone, re-asked; the one-item answer when all three differ). The re-ask is one more counted call. Under a
    quality target with `second_opinion=True` (its default) the second opinion is asked instead: it re-asks
    every item of the call, not only the audited ones."""

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0 < self.rate <= 1:
            raise ConfigurationError(f"`rate` must be a share in (0, 1], got {self.rate!r}; e.g. Audit(rate=0.02)")
        if isinstance(self.per_call, bool) or not isinstance(self.per_call, int) or self.per_call < 1:
            raise ConfigurationError(f"`per_call` must be a whole number >= 1, got {self.per_call!r}")
        if number("warmup", self.warmup, fix="e.g. Audit(warmup=4.0); 1.0 turns it off") < 1:
            raise ConfigurationError(f"`warmup` must be a number >= 1, got {self.warmup!r}")
        if not isinstance(self.tolerance, Tolerance):
            raise ConfigurationError(f"`tolerance` must be a Tolerance, got {self.tolerance!r}")
        if number("confidence", self.confidence, fix="e.g. Audit(confidence=0.95)") >= 1:
            raise ConfigurationError(f"`confidence` must be between 0 and 1, got {self.confidence!r}")
        _check_names("ignore", self.ignore)
        if self.fields is not None and not set(_check_names("fields", self.fields)) - set(self.ignore):
            raise ConfigurationError(
                f"`fields={self.fields!r}` (less `ignore`) compares nothing: every audit would count as agreement"
            )


def _check_names(name: str, names: object) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, (tuple, list)):
        raise ConfigurationError(f"`{name}` must be a tuple of field names, got {names!r}; e.g. ({names!r},)")
    if not all(isinstance(n, str) for n in names):
        raise ConfigurationError(f"`{name}` must hold field names (strings), got {names!r}")
    return tuple(names)


@dataclass(frozen=True, slots=True)
class Shuffle:
    """Shuffle the order of the items in each call (seeded by the batch's artifact ids); ids keep the
    alignment of answers to items. Guards against answers that depend on position."""

    seed: int = 0
    """Seed of the order: the same batch is shuffled the same way under the same seed."""


def _unit(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def audited_positions(audit: Audit, items: Sequence[Sequence[str]], *, warming: bool = False) -> list[int]:
    """Positions of the items of one call (each given by its artifact ids) that are asked again alone.

    On average `rate x per_call` items per call (`x warmup` while a batch-size controller lacks evidence): the
    whole part always, one more with the probability of the fraction, at most every item. Which calls and which
    items are seeded by the artifact ids: the same choice on every worker and every run, and positions are
    sampled uniformly.
    """
    if len(items) < 2:  # a one-item call answered alone already: auditing it would pay to compare it with itself
        return []
    expected = audit.rate * audit.per_call * (audit.warmup if warming else 1.0)
    keys = ["|".join(ids) for ids in items]
    whole = int(expected)
    count = whole + (_unit(audit.seed, "call:" + "/".join(keys)) < expected - whole)
    # keyed apart from Shuffle's order: under the same seed, the item shuffled first would always be audited
    order = sorted(range(len(keys)), key=lambda n: (_unit(audit.seed, "audit:" + keys[n]), n))
    return sorted(order[: min(count, len(items))])


def shuffled_order(seed: int, keys: list[str]) -> list[int]:
    """A permutation of range(len(keys)), seeded by `seed` and the keys."""
    return sorted(range(len(keys)), key=lambda n: (_unit(seed, keys[n]), n))


def audit_call_usage(usage: Mapping[str, Any]) -> dict[str, float]:
    """What an audit call's usage adds to its batch's: its calls, tokens and cost (under their own names, so
    totals and budgets include them) and the same figures again as `audit_*` (so the overhead is visible)."""
    added: dict[str, float] = {}
    for name in CALL_COUNTERS:
        value = usage.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            added[name] = added.get(name, 0) + value
            added[AUDIT_PREFIX + name] = value
    return added


def agreement_usage(comparison: Comparison, *, position: int, batch_size: int) -> dict[str, int]:
    """Usage counters for one audited item: compared/agreed overall, per field, per batch size and per position
    bucket (`metrics.agreement()` reads them back as intervals)."""
    bucket = position_bucket(position, batch_size)
    agreed = int(comparison.agreed)
    counts = {
        "audit_compared": 1,
        "audit_agreed": agreed,
        f"audit_compared:size={batch_size}": 1,
        f"audit_agreed:size={batch_size}": agreed,
        f"audit_compared:position={bucket}": 1,
        f"audit_agreed:position={bucket}": agreed,
    }
    for result in comparison.fields:
        if result.field == ALL_FIELDS:
            continue
        counts[f"audit_compared:field={result.field}"] = 1
        counts[f"audit_agreed:field={result.field}"] = int(result.agreed)
    return counts


def add_usage(total: dict[str, Any], more: Mapping[str, Any]) -> None:
    """Sum numeric figures into `total` (a None cost stays unknown only while nothing known was added)."""
    for name, value in more.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if name not in total:
                total[name] = value
            continue
        previous = total.get(name)
        total[name] = (previous if isinstance(previous, (int, float)) else 0) + value
