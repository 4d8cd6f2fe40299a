"""Attacks on the batch-size controller's public inputs and on its shared state (findings/wake.md): each test
here failed before its fix."""

from __future__ import annotations

import pytest

from flock_llm import ConfigurationError
from flock_llm.quality import QualityTarget
from flock_llm.quality.controller import observe


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
    _, change = observe(target, state, 10**12 - 5, 10**12)  # the latest 20 hold 5 disagreements
    assert change is not None and change.new == 5 and "latest 20 audits" in change.reason


@pytest.mark.parametrize("agreed, n", [(2.0, 3), (2, 3.0), (True, 2), (2, "3")])
def test_audit_counts_that_are_not_integers_are_refused_clearly(agreed: object, n: object) -> None:
    """A float count reached `"1" * agreed` and failed with TypeError ("can't multiply sequence")."""
    target = QualityTarget(0.95)
    with pytest.raises(ConfigurationError, match="integers"):
        observe(target, target.start(10), agreed, n)  # type: ignore[arg-type]
