"""The review job streams: reviews are read lazily with backpressure, and each batch's outputs leave as it
finishes, so memory is bounded by the batches in flight, not by the file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from flock_llm.cli.reviews import CONCURRENCY, Review, run_reviews


def test_reviews_are_pulled_only_as_batches_finish_and_each_batch_is_handed_on_once() -> None:
    pulled = 0

    def reviews() -> Iterator[Review]:
        nonlocal pulled
        for n in range(2_000):
            pulled += 1
            yield Review(review_id=f"r{n}", rating=1 + n % 5, text=f"Review {n}: the kettle is fine, delivery slow.")

    handed: list[list[dict[str, Any]]] = []
    ahead: list[int] = []

    def on_records(records: list[dict[str, Any]]) -> None:
        handed.append(records)
        covered = sum(len(r["review_ids"]) for batch in handed for r in batch)
        ahead.append(pulled - covered)

    summary = asyncio.run(
        run_reviews(reviews(), on_records=on_records, batch_size=50, env={"FLOCK_LLM_MODEL": ""}, timeout_s=5)
    )
    window = 50 * (CONCURRENCY + 1)
    assert summary.items == 2_000 and summary.outputs == 40 and summary.failed_items == 0
    assert all(len(batch) == 1 for batch in handed)  # one trend report per batch, handed on as it finished
    ids = [i for batch in handed for r in batch for i in r["review_ids"]]
    assert len(ids) == len(set(ids)) == 2_000
    # never more than the backpressure window read ahead of what finished (plus the one review being published)
    assert max(ahead) <= window + 1, max(ahead)
    assert {r["data"]["review_count"] for batch in handed for r in batch} == {50}
