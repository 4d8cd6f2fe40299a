"""Run metrics: flush history, error counters and engine usage, read as frozen snapshots."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._vocabulary import CounterName
    from .quality.stats import Interval

__all__ = ["BatchStats", "Counters", "FlushRecord", "JoinExpiry", "Metrics", "MetricsRecorder"]

FLUSH_HISTORY = 10_000
"""How many recent flush (and join-expiry) records a Flock keeps; counters cover everything."""


@dataclass(frozen=True, slots=True)
class FlushRecord:
    """One batch flush."""

    agent: str
    """The agent whose batch flushed."""
    subscription_index: int
    """Which of its subscriptions (0 for the first `consumes()`)."""
    partition: Hashable | None
    """The `BatchSpec(by=...)` key of the batch (None without `by`)."""
    batch_id: str
    """The batch's id (`ctx.batch_id` in the engine)."""
    batch_size: int
    """How many items it held."""
    configured_size: int | None
    """The BatchSpec's `size` (None without one)."""
    reason: str
    """Why it flushed: "size", "timeout", "tokens", "shutdown" or "manual"."""
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
    """The agent of the join or gate."""
    subscription_index: int
    """Which of its subscriptions."""
    key: Hashable
    """The group's correlation key (a gate's sets have no key of their own)."""
    artifact_ids: tuple[str, ...]
    """The artifacts the group held."""
    missing_types: tuple[str, ...]
    """The types of the slots still empty."""
    reason: str
    """Why it closed: "window" (its time or count window passed) or "shutdown"."""


@dataclass(frozen=True, slots=True)
class BatchStats:
    """A batch that is accumulating now."""

    agent: str
    """The agent whose batch it is."""
    subscription_index: int
    """Which of its subscriptions."""
    partition: Hashable | None
    """The `BatchSpec(by=...)` key (None without `by`)."""
    pending: int
    """Items in the batch now."""
    oldest_age_s: float
    """Seconds since its first item arrived."""
    flush_in_s: float | None
    """Seconds until the timeout flush (None without a timeout)."""


@dataclass(frozen=True, slots=True)
class Metrics:
    """A snapshot of a Flock's counters."""

    artifacts_published: int
    """Artifacts published so far (by `publish()` and by agents)."""
    flushes: tuple[FlushRecord, ...]
    """The most recent flushes (up to 10,000)."""
    flush_counts: Mapping[str, int]
    """All flushes so far, by reason."""
    counters: Mapping[str, int]
    """The non-zero fields of `Counters` (engine_runs, failure_records, predicate_errors, ...)."""
    join_expiries: tuple[JoinExpiry, ...]
    """The most recent join groups and gate sets that closed incomplete (up to 10,000)."""
    usage: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Engine usage figures summed per agent (e.g. llm_calls, prompt_tokens, cost_usd)."""

    def count(self, name: str) -> int:
        """The counter `name` (a field of `Counters`, e.g. "predicate_errors"); 0 when it never counted."""
        return self.counters.get(name, 0)

    def agreement(self, agent: str | None = None, *, confidence: float = 0.95) -> dict[str, Interval]:
        """Audited agreement of batched with one-item answers (`LLMEngine(audit=Audit(...))`), with Wilson
        intervals: "all" (whole answers), "field=<name>", "size=<batch size>", "position=<bucket>"; summed over
        every agent unless `agent` is given. Empty when nothing was audited.

        Args:
            agent: only this agent's audits (default: every agent's).
            confidence: two-sided confidence of the intervals.
        """
        from .quality.stats import wilson

        sums: dict[str, list[float]] = {}
        for name, values in self.usage.items():
            if agent is not None and name != agent:
                continue
            for key, value in values.items():
                kind, _, label = key.partition(":")
                if kind not in ("audit_compared", "audit_agreed") or not isinstance(value, (int, float)):
                    continue
                pair = sums.setdefault(label or "all", [0.0, 0.0])
                pair[0 if kind == "audit_agreed" else 1] += value
        return {label: wilson(agreed, n, confidence=confidence) for label, (agreed, n) in sums.items() if n}


@dataclass(slots=True)
class Counters:
    """What the runtime counts, one typed field per counter (`metrics().counters` shows the non-zero ones)."""

    engine_runs: int = 0
    """Engine runs (one per item, or per flushed batch)."""
    engine_errors: int = 0
    """Engine runs that raised."""
    failure_records: int = 0
    """Failure records published."""
    rejected_outputs: int = 0
    """Outputs an agent may not publish (a type it did not declare, or too large for the store)."""
    cancelled_runs: int = 0
    """Runs cancelled by `shutdown(timeout=)`, a deadline or a second Ctrl-C."""
    predicate_errors: int = 0
    """`where=` predicates that raised."""
    batch_key_errors: int = 0
    """`BatchSpec(by=...)` key functions that raised."""
    join_key_errors: int = 0
    """`JoinSpec(by=...)` key functions that raised."""
    join_groups_expired: int = 0
    """Join groups and gate sets that closed incomplete."""
    restored_deliveries: int = 0
    """Deliveries restored from a durable store on start."""
    refused_restored_deliveries: int = 0
    """Restored deliveries the agent, as defined now, may no longer see (kept for whoever may)."""
    orphan_deliveries: int = 0
    """Stored deliveries to an agent subscription that no longer exists (kept in the store)."""
    unknown_type_artifacts: int = 0
    """Stored artifacts of types no longer registered (kept in the store, skipped)."""
    store_write_failures: int = 0
    """Agent runs whose outputs the store could not save (their inputs stay pending)."""
    undecodable_entries: int = 0
    """Stored entries that no longer decode (each becomes a failure record with stage "decode")."""
    refused_batch_items: int = 0
    """Items of a shared Redis batch its agent may not see (each becomes a failure record)."""
    handed_to_peers: int = 0
    """Artifacts handed to another Redis worker whose definition of the agent may see them."""
    budget_stopped_runs: int = 0
    """Runs stopped by a budget before any answer (their items stay pending in a durable store)."""

    def add(self, name: CounterName, n: int = 1) -> None:
        """Count `n` more of `name` (for callers that pass the counter along, e.g. user-code failures).

        Args:
            name: the counter (a field of this class).
            n: how many more.
        """
        setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        """The non-zero counters by name."""
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
        """Keep a flush in the history and count its reason."""
        self.flushes.append(record)
        self.flush_counts[record.reason] += 1

    def record_usage(self, agent: str, usage: Mapping[str, object]) -> None:
        """Add an engine run's usage figures to the agent's totals (numbers are summed, labels kept).

        Args:
            agent: the agent whose engine ran.
            usage: the run's figures (`EvalResult.usage`).
        """
        totals = self.usage.setdefault(agent, {})
        for name, value in usage.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                previous = totals.get(name, 0)
                totals[name] = (previous if isinstance(previous, (int, float)) else 0) + value
            elif isinstance(value, str):
                totals[name] = value

    def snapshot(self) -> Metrics:
        """A frozen copy of everything recorded so far (what `Flock.metrics()` returns)."""
        return Metrics(
            artifacts_published=self.published,
            flushes=tuple(self.flushes),
            flush_counts=dict(self.flush_counts),
            counters=self.counters.as_dict(),
            join_expiries=tuple(self.join_expiries),
            usage={agent: dict(values) for agent, values in self.usage.items()},
        )
