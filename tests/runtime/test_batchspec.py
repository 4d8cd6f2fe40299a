"""BatchSpec and JoinSpec validate at construction and say how to fix the call."""

from __future__ import annotations

import dataclasses
import warnings
from datetime import timedelta

import pytest

from flock_llm import BatchSpecWarning, ConfigurationError
from flock_llm.subscription import BatchSpec, JoinSpec


@pytest.mark.parametrize("size", [0, -1, 2.5, "25", True])
def test_bad_size_names_the_argument_and_value(size: object) -> None:
    with pytest.raises(ConfigurationError, match=r"`size` must be a positive integer, got") as info:
        BatchSpec(size=size, timeout=timedelta(seconds=1))  # type: ignore[arg-type]
    assert repr(size) in str(info.value)


@pytest.mark.parametrize("timeout", [timedelta(0), timedelta(seconds=-5)])
def test_non_positive_timeout_is_rejected(timeout: timedelta) -> None:
    with pytest.raises(ConfigurationError, match="`timeout` must be positive"):
        BatchSpec(size=5, timeout=timeout)


@pytest.mark.parametrize("timeout", [30, 30.0, "30s"])
def test_timeout_must_be_a_timedelta(timeout: object) -> None:
    with pytest.raises(ConfigurationError, match="`timeout` must be a datetime.timedelta"):
        BatchSpec(size=5, timeout=timeout)  # type: ignore[arg-type]


def test_neither_size_nor_timeout_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="needs `size=`, `timeout=` or `max_tokens=`"):
        BatchSpec()


@pytest.mark.parametrize("max_tokens", [0, -5, 2.5, True, "lots", "AUTO"])
def test_max_tokens_must_be_a_positive_int_or_auto(max_tokens: object) -> None:
    with pytest.raises(ConfigurationError, match='`max_tokens` must be a positive integer or "auto"'):
        BatchSpec(size=5, timeout=timedelta(seconds=1), max_tokens=max_tokens)  # type: ignore[arg-type]


def test_bad_by_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="`by` must be a callable"):
        BatchSpec(size=2, timeout=timedelta(seconds=1), by="customer_id")  # type: ignore[arg-type]


def test_size_without_timeout_is_allowed_but_warns() -> None:
    with pytest.warns(BatchSpecWarning, match="waits until shutdown"):
        spec = BatchSpec(size=100)
    assert spec.size == 100 and spec.timeout is None


def test_timeout_only_and_full_specs_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert BatchSpec(timeout=timedelta(seconds=5)).size is None
        spec = BatchSpec(size=25, timeout=timedelta(seconds=30))
    assert spec.timeout_seconds == 30.0


def test_batchspec_is_immutable() -> None:
    spec = BatchSpec(size=25, timeout=timedelta(seconds=30))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.size = 5  # type: ignore[misc]


@pytest.mark.parametrize("within", [0, -3, timedelta(0), "30s", True])
def test_joinspec_validates_within(within: object) -> None:
    with pytest.raises(ConfigurationError, match="`within` must be"):
        JoinSpec(by=lambda x: x, within=within)  # type: ignore[arg-type]


def test_joinspec_needs_callable_by() -> None:
    with pytest.raises(ConfigurationError, match="`by` must be a callable"):
        JoinSpec(by="device_id", within=3)  # type: ignore[arg-type]
