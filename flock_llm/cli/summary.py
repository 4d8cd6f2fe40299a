"""What a `flock-llm reviews` run reports: counts, flush reasons, calls, tokens, cost and failures."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..artifact import Artifact, FailureRecord
from ..quality.stats import Interval

__all__ = ["RunSummary"]


@dataclass
class RunSummary:
    """What a review run did; printed as a table or as JSON."""

    model: str
    offline: bool
    mode: str
    items: int = 0
    bad_rows: int = 0
    batches: int = 0
    flush_reasons: dict[str, int] = field(default_factory=dict)
    outputs: int = 0
    failed_items: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cost_usd: float | None = None
    budget_usd: float | None = None
    tier: str = "standard"
    jobs_submitted: int = 0
    """Provider batch jobs (tier "batch")."""
    per_item_prompt_tokens: int = 0
    calls_saved: int = 0
    prompt_tokens_saved: int = 0
    retries: int = 0
    fallbacks: int = 0
    answer_fixes: dict[str, int] = field(default_factory=dict)
    """How answers were aligned: ids mapped, missing (asked again), unknown, repeated; format fallbacks."""
    wall_s: float = 0.0
    resumed: int = 0
    """Reviews a resumed run found in its store already (not published, not paid for again)."""
    retried: int = 0
    """Reviews of a resumed run's input that the store held as failed (or whose report covered a review that
    changed): run again."""
    stale: int = 0
    """Reviews a resumed run's store holds that are not in the input, or changed: not written, not run."""
    unwritten: int = 0
    """Records (outputs, failure records) that could not be written to the output (a full disk, say)."""
    interrupted: bool = False
    deadline_reached: bool = False
    audit_rate: float | None = None
    """--audit RATE: the share of calls that had one review asked again alone (None: no audit)."""
    audit_calls: int = 0
    audit_tokens: int = 0
    """Prompt and answer tokens of the audit calls (in the totals above too)."""
    agreement: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Audited agreement with one-item answers, by "all", "field=...", "size=...", "position=...": rate, low and
    high (95% Wilson interval), n (audited) and agreed."""
    agreement_intervals: dict[str, Interval] = field(default_factory=dict)
    """The same as `Metrics.agreement()` gives it (for the report; not in `as_dict`)."""

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        del values["agreement_intervals"]
        return values

    def set_agreement(self, intervals: dict[str, Interval]) -> None:
        self.agreement_intervals = intervals
        self.agreement = {
            label: {"rate": i.rate, "low": i.low, "high": i.high, "n": i.n, "agreed": i.agreed}
            for label, i in intervals.items()
        }

    def count(self, published: Iterable[Artifact]) -> None:
        """Count what a finished batch published: outputs, and the reviews its failure records cover."""
        for artifact in published:
            if artifact.type_name == "FailureRecord":
                self.failed_items += len(artifact.as_type(FailureRecord).input_ids)
            else:
                self.outputs += 1
