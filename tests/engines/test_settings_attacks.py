"""Numeric settings at the edges an outside test tried: whole numbers too large for a float, and retry counts
high enough that the exponential backoff leaves the range of a float."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flock_llm.engines._tiers.jobs import DeferredPolicy
from flock_llm.engines.llm import BreakerPolicy, RetryPolicy
from flock_llm.errors import ConfigurationError

HUGE = 10**400  # a Python int no float can hold

CASES: list[tuple[str, Callable[[], object], str]] = [
    ("retry attempts", lambda: RetryPolicy(attempts=HUGE), "attempts"),
    ("retry max_delay", lambda: RetryPolicy(max_delay=HUGE), "max_delay"),
    ("breaker max_outage", lambda: BreakerPolicy(max_outage=HUGE), "max_outage"),
    ("deferred job_wait", lambda: DeferredPolicy(job_wait=HUGE), "job_wait"),
    ("deferred deadline", lambda: DeferredPolicy(deadline=HUGE), "deadline"),
    ("deferred job_size", lambda: DeferredPolicy(job_size=HUGE), "job_size"),
]


@pytest.mark.parametrize(("make", "name"), [(make, name) for _, make, name in CASES], ids=[c[0] for c in CASES])
def test_a_whole_number_too_large_for_a_float_is_a_configuration_error(make: Callable[[], object], name: str) -> None:
    """Before: an OverflowError from float() (RetryPolicy, BreakerPolicy), or accepted and an OverflowError at
    the first request (DeferredPolicy: `loop.call_later(10**400)`)."""
    with pytest.raises(ConfigurationError, match=rf"`{name}`.*{str(HUGE)[:12]}"):
        make()


def test_the_backoff_of_a_late_attempt_stays_within_max_delay() -> None:
    """2.0 ** 1100 overflows: a policy with many attempts raised OverflowError from tenacity's wait instead of
    waiting `max_delay`."""
    policy = RetryPolicy(attempts=5_000, base_delay=0.5, max_delay=8.0)
    assert 4.0 <= policy.delay(1_100, None) <= 8.0
    assert 4.0 <= policy.delay(4_999, None) <= 8.0
