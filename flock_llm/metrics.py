"""Run metrics: flush history, error counters and engine usage, read as frozen snapshots."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchStats", "FlushRecord", "JoinExpiry", "Metrics", "MetricsRecorder"]

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
    """predicate_errors, join_key_errors, batch_key_errors, join_groups_expired, failure_records,
    engine_runs, engine_errors, rejected_outputs."""
    join_expiries: tuple[JoinExpiry, ...]
    usage: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Engine usage figures summed per agent (e.g. llm_calls, prompt_tokens, cost_usd)."""

    def count(self, name: str) -> int:
        return self.counters.get(name, 0)


class MetricsRecorder:
    """The mutable side: the orchestrator records here; users read `snapshot()`."""

    def __init__(self) -> None:
        self.published = 0
        self.counters: Counter[str] = Counter()
        self.flush_counts: Counter[str] = Counter()
        self.flushes: deque[FlushRecord] = deque(maxlen=FLUSH_HISTORY)
        self.join_expiries: deque[JoinExpiry] = deque(maxlen=FLUSH_HISTORY)
        self.usage: dict[str, dict[str, Any]] = {}

    def record_flush(self, record: FlushRecord) -> None:
        self.flushes.append(record)
        self.flush_counts[record.reason] += 1

    def record_usage(self, agent: str, usage: Mapping[str, Any]) -> None:
        totals = self.usage.setdefault(agent, {})
        for name, value in usage.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[name] = totals.get(name, 0) + value
            elif value is not None:
                totals[name] = value

    def snapshot(self) -> Metrics:
        return Metrics(
            artifacts_published=self.published,
            flushes=tuple(self.flushes),
            flush_counts=dict(self.flush_counts),
            counters=dict(self.counters),
            join_expiries=tuple(self.join_expiries),
            usage={agent: dict(values) for agent, values in self.usage.items()},
        )
