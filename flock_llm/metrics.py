"""Run metrics: flush history, error counters and engine usage, read as frozen snapshots."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._vocabulary import CounterName

__all__ = ["BatchStats", "Counters", "FlushRecord", "JoinExpiry", "Metrics", "MetricsRecorder"]

FLUSH_HISTORY = 10_000
"""How many recent flush (and join-expiry) records a Flock keeps; counters cover everything."""


@dataclass(frozen=True, slots=True)
class FlushRecord:
    """One batch flush."""

    agent: str
    subscription_index: int
    partition: Hashable | None
    batch_id: str
    batch_size: int
    configured_size: int | None
    reason: str
    efficiency: float | None
    """batch_size / configured_size (None for a timeout-only BatchSpec)."""
    waited_s: float
    """Seconds from the batch's first item to the flush."""
    tokens: int = 0
    """The batch's item tokens, as counted when they entered (0 unless its BatchSpec has `max_tokens`)."""

    def span_attributes(self) -> dict[str, Any]:
        """The attributes of the `flock.batch.flush` span (the names the guide's trace query uses)."""
        return {
            "agent": self.agent,
            "subscription": self.subscription_index,
            "batch_id": self.batch_id,
            "batch_size": self.batch_size,
            "configured_size": self.configured_size,
            "flush_reason": self.reason,
            "efficiency": self.efficiency,
            "wait_ms": self.waited_s * 1000,
            "partition": None if self.partition is None else str(self.partition),
            "item_tokens": self.tokens,
        }


@dataclass(frozen=True, slots=True)
class JoinExpiry:
    """A join group that closed incomplete; its artifacts were not processed by the agent."""

    agent: str
    subscription_index: int
    key: Hashable
    artifact_ids: tuple[str, ...]
    missing_types: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class BatchStats:
    """A batch that is accumulating now."""

    agent: str
    subscription_index: int
    partition: Hashable | None
    pending: int
    oldest_age_s: float
    flush_in_s: float | None
    """Seconds until the timeout flush (None without a timeout)."""


@dataclass(frozen=True, slots=True)
class Metrics:
    """A snapshot of a Flock's counters."""

    artifacts_published: int
    flushes: tuple[FlushRecord, ...]
    """The most recent flushes (up to 10,000)."""
    flush_counts: Mapping[str, int]
    """All flushes so far, by reason."""
    counters: Mapping[str, int]
    """The non-zero fields of `Counters` (engine_runs, failure_records, predicate_errors, ...)."""
    join_expiries: tuple[JoinExpiry, ...]
    usage: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Engine usage figures summed per agent (e.g. llm_calls, prompt_tokens, cost_usd)."""

    def count(self, name: str) -> int:
        return self.counters.get(name, 0)


@dataclass(slots=True)
class Counters:
    """What the runtime counts, one typed field per counter (`metrics().counters` shows the non-zero ones)."""

    engine_runs: int = 0
    engine_errors: int = 0
    failure_records: int = 0
    rejected_outputs: int = 0
    cancelled_runs: int = 0
    predicate_errors: int = 0
    batch_key_errors: int = 0
    join_key_errors: int = 0
    join_groups_expired: int = 0
    restored_deliveries: int = 0
    refused_restored_deliveries: int = 0
    orphan_deliveries: int = 0
    unknown_type_artifacts: int = 0
    store_write_failures: int = 0
    undecodable_entries: int = 0
    refused_batch_items: int = 0
    handed_to_peers: int = 0
    budget_stopped_runs: int = 0

    def add(self, name: CounterName, n: int = 1) -> None:
        """Count `n` more of `name` (for callers that pass the counter along, e.g. user-code failures)."""
        setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


UsageValue = int | float | str
"""An engine usage figure: a count or amount (summed per agent), or a label such as the model (kept)."""


class MetricsRecorder:
    """The mutable side: the runtime records here; users read `snapshot()`."""

    def __init__(self) -> None:
        self.published = 0
        self.counters = Counters()
        self.flush_counts: Counter[str] = Counter()
        self.flushes: deque[FlushRecord] = deque(maxlen=FLUSH_HISTORY)
        self.join_expiries: deque[JoinExpiry] = deque(maxlen=FLUSH_HISTORY)
        self.usage: dict[str, dict[str, UsageValue]] = {}

    def record_flush(self, record: FlushRecord) -> None:
        self.flushes.append(record)
        self.flush_counts[record.reason] += 1

    def record_usage(self, agent: str, usage: Mapping[str, object]) -> None:
        """Add an engine run's usage figures to the agent's totals (numbers are summed, labels kept)."""
        totals = self.usage.setdefault(agent, {})
        for name, value in usage.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                previous = totals.get(name, 0)
                totals[name] = (previous if isinstance(previous, (int, float)) else 0) + value
            elif isinstance(value, str):
                totals[name] = value

    def snapshot(self) -> Metrics:
        return Metrics(
            artifacts_published=self.published,
            flushes=tuple(self.flushes),
            flush_counts=dict(self.flush_counts),
            counters=self.counters.as_dict(),
            join_expiries=tuple(self.join_expiries),
            usage={agent: dict(values) for agent, values in self.usage.items()},
        )
