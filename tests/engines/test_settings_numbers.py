"""Numeric settings refuse what they cannot mean (NaN, infinities, booleans, fractions of a whole number) with a
ConfigurationError that names the setting and the value."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from flock_llm import Flock
from flock_llm._numbers import number
from flock_llm.engines.dspy import DSPyEngine
from flock_llm.engines.llm import BreakerPolicy, LLMEngine, RetryPolicy, TokenPrices
from flock_llm.errors import ConfigurationError

NAN, INF = math.nan, math.inf

CASES: list[tuple[str, Callable[[], object], str]] = [
    ("price nan", lambda: TokenPrices(input=NAN, output=1.0), "prices['input']"),
    ("price inf", lambda: TokenPrices(input=0.4, output=INF), "prices['output']"),
    ("price bool", lambda: TokenPrices(input=True, output=1.0), "prices['input']"),
    ("prices mapping nan", lambda: LLMEngine(prices={"input": NAN, "output": 1.0}), "prices['input']"),
    ("engine budget nan", lambda: LLMEngine(budget_usd=NAN), "budget_usd"),
    ("engine budget inf", lambda: LLMEngine(budget_usd=INF), "budget_usd"),
    ("dspy budget nan", lambda: DSPyEngine(budget_usd=NAN), "budget_usd"),
    ("flock budget nan", lambda: Flock(budget_usd=NAN), "budget_usd"),
    ("flock budget inf", lambda: Flock(budget_usd=INF), "budget_usd"),
    ("flock budget bool", lambda: Flock(budget_usd=True), "budget_usd"),
    ("tpm half", lambda: LLMEngine(tokens_per_minute=0.5), "tokens_per_minute"),  # type: ignore[arg-type]
    ("tpm nan", lambda: LLMEngine(tokens_per_minute=NAN), "tokens_per_minute"),  # type: ignore[arg-type]
    ("tpm inf", lambda: LLMEngine(tokens_per_minute=INF), "tokens_per_minute"),  # type: ignore[arg-type]
    ("rpm bool", lambda: LLMEngine(requests_per_minute=True), "requests_per_minute"),
    ("rpm nan", lambda: LLMEngine(requests_per_minute=NAN), "requests_per_minute"),
    ("rpm inf", lambda: LLMEngine(requests_per_minute=INF), "requests_per_minute"),
    ("concurrency bool", lambda: LLMEngine(max_concurrent_requests=True), "max_concurrent_requests"),
    ("timeout nan", lambda: LLMEngine(timeout=NAN), "timeout"),
    ("timeout bool", lambda: LLMEngine(timeout=True), "timeout"),
    ("breaker nan", lambda: BreakerPolicy(max_outage=NAN), "max_outage"),
    ("breaker inf probe", lambda: BreakerPolicy(probe_interval=INF), "probe_interval"),
    ("retry attempts bool", lambda: RetryPolicy(attempts=True), "attempts"),
    ("retry delay nan", lambda: RetryPolicy(base_delay=NAN), "base_delay"),
    ("retry after inf", lambda: RetryPolicy(max_retry_after=INF), "max_retry_after"),
]


@pytest.mark.parametrize(("case", "build", "name"), CASES, ids=[c[0] for c in CASES])
def test_numeric_settings_refuse_values_they_cannot_mean(case: str, build: Callable[[], object], name: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        build()
    message = str(refused.value)
    assert f"`{name}`" in message and "got " in message, message


def test_a_fraction_of_a_whole_number_says_what_it_would_become() -> None:
    with pytest.raises(ConfigurationError, match=r"`tokens_per_minute` must be a whole number > 0, got 0.5 \(it would"):
        LLMEngine(tokens_per_minute=0.5)  # type: ignore[arg-type]


def test_sensible_values_still_work() -> None:
    LLMEngine(tokens_per_minute=60_000, requests_per_minute=0.5, budget_usd=5, timeout=30.0)
    TokenPrices(input=0, output=1.6, cached_input=0.1)
    BreakerPolicy(max_outage=3, probe_interval=0.5)
    RetryPolicy(attempts=1, base_delay=0, max_delay=0, max_retry_after=0)
    assert number("x", 3) == 3.0 and number("y", 0, bound="non_negative") == 0.0
    assert number("z", 60000.0, integer=True) == 60000.0
