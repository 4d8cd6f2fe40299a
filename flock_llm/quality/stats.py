"""Agreement statistics: counts per (agent, field, batch size, position bucket) and Wilson intervals (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigurationError
from .compare import Comparison

__all__ = ["ALL_FIELDS", "AgreementKey", "AgreementRow", "AgreementTally", "Interval", "position_bucket", "wilson"]

Bucket = Literal["first", "early", "middle", "late", "last", "only"]
ALL_FIELDS = "*"
"""The field name of whole-answer agreement (every compared field agrees)."""


@dataclass(frozen=True, slots=True)
class Interval:
    """A share with its Wilson score interval."""

    agreed: float
    """How many agreed (a decayed count may be fractional)."""
    n: float
    """How many were compared."""
    low: float
    """The interval's lower bound."""
    high: float
    """The interval's upper bound."""

    @property
    def rate(self) -> float | None:
        """The point estimate `agreed / n`; None when nothing was compared."""
        return None if self.n == 0 else self.agreed / self.n

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (nothing audited)"
        return f"{self.rate:.1%} [{self.low:.1%}, {self.high:.1%}] (n={self.n:g})"


def z_for(confidence: float) -> float:
    """The two-sided normal quantile for `confidence` (0.95 -> 1.96)."""
    if not 0 < confidence < 1:
        raise ConfigurationError(f"`confidence` must be between 0 and 1 (exclusive), got {confidence!r}")
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(agreed: float, n: float, *, confidence: float = 0.95) -> Interval:
    """The Wilson score interval of `agreed` successes in `n` trials (fractional counts allowed).

    With n == 0 the interval is [0, 1]: nothing is known.

    Args:
        agreed: the successes.
        n: the trials.
        confidence: two-sided confidence of the interval.
    """
    if n < 0 or agreed < 0 or agreed > n * (1 + 1e-9):
        raise ConfigurationError(f"need 0 <= agreed <= n, got agreed={agreed!r}, n={n!r}")
    if n == 0:
        return Interval(0.0, 0.0, 0.0, 1.0)
    z = z_for(confidence)
    p = min(1.0, agreed / n)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # the bounds always hold the point estimate (rounding put the lower bound of 0 of 10 at 2.8e-17, above 0.0)
    low, high = min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))
    return Interval(agreed, n, low, high)


def position_bucket(position: int, size: int) -> Bucket:
    """Where item `position` (0-based) sits in a batch of `size`: first, early, middle, late or last ("only" when
    the batch holds one item). Middle positions are where batched answers go wrong first.

    Args:
        position: the item's 0-based position.
        size: the batch size.
    """
    if size < 1 or not 0 <= position < size:
        raise ConfigurationError(f"position {position!r} is outside a batch of {size!r}")
    if size == 1:
        return "only"
    if position == 0:
        return "first"
    if position == size - 1:
        return "last"
    share = position / (size - 1)
    return "early" if share < 1 / 3 else "middle" if share <= 2 / 3 else "late"


@dataclass(frozen=True, slots=True, order=True)
class AgreementKey:
    """What one tally of audited comparisons counts: an agent's field at a batch size and position bucket."""

    agent: str
    """The agent's name."""
    field: str
    """A dotted field name, or `ALL_FIELDS` for the whole answer."""
    batch_size: int
    """The size of the batch the item was answered in."""
    bucket: str
    """The position bucket (`position_bucket()`)."""


@dataclass(frozen=True, slots=True)
class AgreementRow:
    """One tally with its Wilson interval."""

    key: AgreementKey
    """What was counted."""
    interval: Interval
    """Its agreement."""


class AgreementTally:
    """Counts of audited comparisons; `rows()` and `overall()` give Wilson intervals.

    Args:
        confidence: two-sided confidence of the intervals it gives.
    """

    def __init__(self, confidence: float = 0.95) -> None:
        z_for(confidence)
        self.confidence = confidence
        self._counts: dict[AgreementKey, list[int]] = {}

    def add(self, agent: str, comparison: Comparison, *, position: int, batch_size: int) -> None:
        """Count one audited item: each field and the whole answer, under its batch size and position bucket.

        Args:
            agent: the agent's name.
            comparison: the item's batched answer compared with its one-item answer.
            position: the item's 0-based position in its batch.
            batch_size: the size of that batch.
        """
        bucket = position_bucket(position, batch_size)
        outcomes = [(f.field, f.agreed) for f in comparison.fields] + [(ALL_FIELDS, comparison.agreed)]
        for name, agreed in outcomes:
            counts = self._counts.setdefault(AgreementKey(agent, name, batch_size, bucket), [0, 0])
            counts[0] += int(agreed)
            counts[1] += 1

    def rows(self) -> list[AgreementRow]:
        """Every tally with its interval, sorted by key."""
        return [
            AgreementRow(key, wilson(agreed, n, confidence=self.confidence))
            for key, (agreed, n) in sorted(self._counts.items())
        ]

    def overall(self, *, agent: str | None = None, field: str = ALL_FIELDS, batch_size: int | None = None) -> Interval:
        """Agreement summed over the keys that match (default: whole answers, every agent, size and position).

        Args:
            agent: only this agent's audits.
            field: a dotted field name, or `ALL_FIELDS` for whole answers.
            batch_size: only audits at this batch size.
        """
        agreed = n = 0
        for key, (a, count) in self._counts.items():
            if key.field != field or (agent is not None and key.agent != agent):
                continue
            if batch_size is not None and key.batch_size != batch_size:
                continue
            agreed, n = agreed + a, n + count
        return wilson(agreed, n, confidence=self.confidence)

    def by(
        self, dimension: Literal["field", "batch_size", "bucket"], *, agent: str | None = None
    ) -> dict[str, Interval]:
        """Agreement per field, batch size or position bucket (whole answers, except per field).

        Args:
            dimension: "field", "batch_size" or "bucket".
            agent: only this agent's audits.
        """
        sums: dict[str, list[int]] = {}
        for key, (a, count) in self._counts.items():
            if agent is not None and key.agent != agent:
                continue
            if dimension != "field" and key.field != ALL_FIELDS:
                continue
            label = str(getattr(key, dimension))
            pair = sums.setdefault(label, [0, 0])
            pair[0] += a
            pair[1] += count
        return {label: wilson(a, n, confidence=self.confidence) for label, (a, n) in sums.items()}

    def merge(self, counts: Iterable[tuple[AgreementKey, int, int]]) -> None:
        """Add counts kept elsewhere (another worker's, or a restored snapshot)."""
        for key, agreed, n in counts:
            pair = self._counts.setdefault(key, [0, 0])
            pair[0] += agreed
            pair[1] += n

    def counts(self) -> list[tuple[AgreementKey, int, int]]:
        """The raw tallies as (key, agreed, n), for `merge()` elsewhere."""
        return [(key, a, n) for key, (a, n) in sorted(self._counts.items())]
