"""Attacks on the batch-size controller's public inputs and on its shared state (findings/wake.md): each test
here failed before its fix."""

from __future__ import annotations

import logging

import pytest

from flock_llm import ConfigurationError
from flock_llm.engines import EngineContext
from flock_llm.quality import QualityTarget
from flock_llm.quality.controller import observe
from flock_llm.quality.steering import SizeSteering
from flock_llm.stores.redis import RedisStore


@pytest.mark.parametrize("target", [QualityTarget(0.95, memory=10**17), QualityTarget(0.9999999999999999)])
def test_a_long_memory_or_a_target_next_to_one_still_weighs_audits(target: QualityTarget) -> None:
    """Evidence decays by 1 - 1/memory per audit: past ~1e16 audits of memory that rounds to 1.0 and the update
    divided by zero (ZeroDivisionError at the first audited batch, from a target that was accepted)."""
    state, _ = observe(target, target.start(10), 3, 4)
    assert state.n == pytest.approx(4.0) and state.agreed == pytest.approx(3.0) and state.recent == "1110"


def test_a_huge_audit_count_keeps_only_the_latest_outcomes() -> None:
    """observe() built a string of every outcome before keeping the latest `recent` of them: 10**12 audits asked
    for a terabyte."""
    target = QualityTarget(0.95)
    state, change = observe(target, target.start(10), 10**12, 10**12)
    assert change is None and state.recent == "1" * 20 and state.n == pytest.approx(target.evidence_memory)
    # a block has no order: it keeps its share of disagreements among the latest 20 (at least one), not all 5
    # last (which read 99.9999999995% agreement as "75% in the latest 20 audits" and halved the size)
    state, change = observe(target, state, 10**12 - 5, 10**12)
    assert change is None and state.recent == "1" * 19 + "0"
    _, change = observe(target, state, 10**12 // 2, 10**12)  # a collapse in one block still shows at once
    assert change is not None and change.new == 5


@pytest.mark.parametrize("agreed, n", [(2.0, 3), (2, 3.0), (True, 2), (2, "3")])
def test_audit_counts_that_are_not_integers_are_refused_clearly(agreed: object, n: object) -> None:
    """A float count reached `"1" * agreed` and failed with TypeError ("can't multiply sequence")."""
    target = QualityTarget(0.95)
    with pytest.raises(ConfigurationError, match="integers"):
        observe(target, target.start(10), agreed, n)  # type: ignore[arg-type]


async def test_two_workers_with_other_batch_sizes_warn_once_instead_of_logging_every_batch(
    redis_single_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers of one Redis store steer agent 'labels' with BatchSpec(size=50) and BatchSpec(size=20) (a
    rolling deploy, one worker not updated). Each rewrites the shared state to its own size at every batch (the
    other undoes it), so the "kept for size" line came at INFO at every batch of both, forever, and nothing told
    the user why. Now each worker says once, as a warning naming both sizes and the fix, then stays quiet."""
    stores = [RedisStore.from_url(redis_single_url), RedisStore.from_url(redis_single_url)]
    for store in stores:
        await store.connect()
    try:
        target = QualityTarget(0.95, grow_after=8)
        workers = [
            (SizeSteering(), EngineContext(agent_name="labels", configured_size=size, size_states=store.size_states()))
            for size, store in zip((50, 20), stores, strict=True)
        ]
        with caplog.at_level(logging.INFO, logger="flock_llm.quality"):
            for _ in range(30):
                for steering, ctx in workers:
                    state = await steering.current(target, ctx, ctx.configured_size or 1)
                    await steering.steer(target, ctx, state.size, 4, 4, {})
        kept = [r for r in caplog.records if "kept for size" in r.getMessage() and r.levelno >= logging.INFO]
        warned = [r for r in caplog.records if "other settings" in r.getMessage()]
        assert len(kept) <= 2  # was: 2 x 30
        assert len(warned) == 2 and all(r.levelno == logging.WARNING for r in warned)
        assert all("BatchSpec(size=" in r.getMessage() for r in warned)
        assert {"50", "20"} <= set(" ".join(r.getMessage() for r in warned).replace(")", " ").replace("=", " ").split())
    finally:
        for store in stores:
            await store.aclose()
