"""The runtime's fixed vocabularies, as Literal types used everywhere they travel (the runtime, engines and
metrics import them from here, none of them from another's internals)."""

from __future__ import annotations

from typing import Literal

__all__ = ["CounterName", "FailureStage", "FlushReason"]

FlushReason = Literal["size", "timeout", "tokens", "shutdown", "manual"]
"""Why a batch flushed."""

FailureStage = Literal[
    "engine",
    "output",
    "where",
    "batch_by",
    "join_by",
    "decode",
    "visibility",
    "cancelled",
    "provider_unavailable",
    "call_budget",
    "unusable_answers",
    "budget",
]
"""Where a failure record says its inputs failed (`FailureRecord.stage`)."""

CounterName = Literal[
    "budget_stopped_runs",
    "cancelled_runs",
    "engine_errors",
    "engine_runs",
    "failure_records",
    "handed_to_peers",
    "join_groups_expired",
    "orphan_deliveries",
    "refused_batch_items",
    "refused_restored_deliveries",
    "rejected_outputs",
    "restored_deliveries",
    "store_write_failures",
    "undecodable_entries",
    "unknown_type_artifacts",
    "batch_key_errors",
    "join_key_errors",
    "predicate_errors",
]
"""What `metrics().counters` counts (see README, "Seeing what happened")."""
