"""Entries of the Redis streams as the runtime sees them: decoded (or recorded as undecodable, as visible as
the entry), checked again when a flushed batch is taken, and turned into a Flush."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from ..._runtime.batching import BatchKey, Flush
from ..._runtime.ledger import Receipt
from ...agent import Agent
from ...artifact import Artifact, FailureRecord
from ...subscription import Subscription
from ...visibility import combine_visibilities
from ..codec import artifact_from_json
from .support import id_of, visibility_of

if TYPE_CHECKING:
    from ..._runtime.ports import IntakeServices

__all__ = ["decode_entry", "flush_of", "recheck_groups"]

log = logging.getLogger("flock_llm.redis")


def decode_entry(services: IntakeServices, agent: Agent, receipt: Receipt, docs: list[str]) -> list[Artifact] | None:
    """The artifacts of an entry; None when they cannot be read here (a failure record names them)."""
    try:
        return [artifact_from_json(doc) for doc in docs]
    except Exception as exc:  # noqa: BLE001 - foreign or corrupt data: any error is possible; record it
        ids = [id_of(doc) for doc in docs]
        services.metrics.counters.undecodable_entries += 1
        log.error(
            "entry %s of %s cannot be read here (%s): recorded as failed",
            receipt.entry_id,
            receipt.stream,
            type(exc).__name__,
        )
        with services.ledger.unit(receipt):
            record = FailureRecord.from_exception(exc, agent=agent.name, input_ids=ids, stage="decode")
            # as visible as the entries (their visibility is readable even when their payload is not)
            visibility = combine_visibilities(visibility_of(doc, agent.name) for doc in docs)
            services.outcomes.failure_record(agent, [], record, visibility=visibility)
        return None


def _recheck(
    services: IntakeServices, agent: Agent, sub: Subscription, receipt: Receipt, items: list[Artifact]
) -> list[Artifact]:
    """The items of a taken batch that this process's agent may run: visibility and `where` are checked
    again by the router (another process, defining the agent otherwise, may have filled the batch). The
    others become failure records as visible as they are."""
    allowed: list[Artifact] = []
    with services.ledger.unit():
        for artifact in items:
            refusal = services.router.refusal(agent, sub, artifact)
            if refusal in ("", "self", "origin"):  # (origin and self were checked when it was read)
                allowed.append(artifact)
            elif refusal != "raised":  # (a raising `where` recorded its failure already)
                services.metrics.counters.refused_batch_items += 1
                why = "may not see it" if refusal == "visibility" else "does not take it (`where`)"
                error = PermissionError(f"agent {agent.name!r} as defined in this worker {why}")
                services.outcomes.failure(agent, [artifact], error, stage="visibility")
    if len(allowed) < len(items):
        log.warning(
            "batch %s of %s: %d of %d items refused here",
            receipt.entry_id,
            receipt.stream,
            len(items) - len(allowed),
            len(items),
        )
    return allowed


def recheck_groups(
    services: IntakeServices,
    agent: Agent,
    sub: Subscription,
    receipt: Receipt,
    artifacts: list[Artifact],
    sizes: list[int],
) -> list[tuple[Artifact, ...]]:
    """The items of a taken batch (single artifacts, or a gate's or join's sets) that may run here (`_recheck`):
    a set keeps running only if every member passes; the passing members of a set that lost one become
    failure records too (as visible as they are). When nothing is left, the batch is acknowledged with them."""
    allowed = {id(a) for a in _recheck(services, agent, sub, receipt, artifacts)}
    kept: list[tuple[Artifact, ...]] = []
    start = 0
    with services.ledger.unit() as commit:
        for size in sizes:
            members = tuple(artifacts[start : start + size])
            start += size
            if all(id(a) in allowed for a in members):
                kept.append(members)
                continue
            orphans = [a for a in members if id(a) in allowed]
            if orphans:
                error = PermissionError(f"agent {agent.name!r}: another member of this set was refused here")
                services.outcomes.failure(agent, orphans, error, stage="visibility")
        if not kept:
            commit.receipt = receipt  # nothing left to run: the refusals finish the entry
    return kept


def flush_of(
    namespace: str, agent: Agent, sub: Subscription, fields: dict[str, str], items: list[tuple[Artifact, ...]]
) -> Flush:
    """The Flush a ready-stream entry stands for (its id, reason and times come from the FLUSH script)."""
    assert sub.batch is not None
    key: BatchKey = (agent.name, sub.index)
    if sub.batch.by is not None:
        partition = json.loads(fields["key"])[3]
        key = (agent.name, sub.index, tuple(partition) if isinstance(partition, list) else partition)
    return Flush(
        key=key,
        batch_id=f"{namespace}-{fields['batch']}",
        items=tuple(items),
        reason=fields["reason"],  # type: ignore[arg-type]
        configured_size=sub.batch.size,
        opened_at=int(fields["opened"]) / 1000,
        flushed_at=int(fields["flushed"]) / 1000,
        tokens=int(fields.get("tokens") or 0),
    )
