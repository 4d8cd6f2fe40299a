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
    n: float
    low: float
    high: float

    @property
    def rate(self) -> float | None:
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
    return Interval(agreed, n, max(0.0, centre - half), min(1.0, centre + half))


def position_bucket(position: int, size: int) -> Bucket:
    """Where item `position` (0-based) sits in a batch of `size`: first, early, middle, late or last ("only" when
    the batch holds one item). Middle positions are where batched answers go wrong first."""
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
    agent: str
    field: str
    """A dotted field name, or `ALL_FIELDS` for the whole answer."""
    batch_size: int
    bucket: str


@dataclass(frozen=True, slots=True)
class AgreementRow:
    key: AgreementKey
    interval: Interval


class AgreementTally:
    """Counts of audited comparisons; `rows()` and `overall()` give Wilson intervals."""

    def __init__(self, confidence: float = 0.95) -> None:
        z_for(confidence)
        self.confidence = confidence
        self._counts: dict[AgreementKey, list[int]] = {}

    def add(self, agent: str, comparison: Comparison, *, position: int, batch_size: int) -> None:
        """Count one audited item: each field and the whole answer, under its batch size and position bucket."""
        bucket = position_bucket(position, batch_size)
        outcomes = [(f.field, f.agreed) for f in comparison.fields] + [(ALL_FIELDS, comparison.agreed)]
        for name, agreed in outcomes:
            counts = self._counts.setdefault(AgreementKey(agent, name, batch_size, bucket), [0, 0])
            counts[0] += int(agreed)
            counts[1] += 1

    def rows(self) -> list[AgreementRow]:
        return [
            AgreementRow(key, wilson(agreed, n, confidence=self.confidence))
            for key, (agreed, n) in sorted(self._counts.items())
        ]

    def overall(self, *, agent: str | None = None, field: str = ALL_FIELDS, batch_size: int | None = None) -> Interval:
        """Agreement summed over the keys that match (default: whole answers, every agent, size and position)."""
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
        """Agreement per field, batch size or position bucket (whole answers, except per field)."""
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
        return [(key, a, n) for key, (a, n) in sorted(self._counts.items())]
