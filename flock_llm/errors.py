"""Every exception flock_llm raises, split by who must act.

    FlockError                      base of everything flock_llm raises
    ├── ConfigurationError          the calling code passed something invalid; fix the call
    │                               (also a ValueError)
    ├── ClosedError                 the Flock was shut down; create a new one (also a RuntimeError)
    ├── StoreError                  a store failed at run time (a database locked past its limit, unreadable
    │   │                           or read-only); the write it names was not done
    │   └── StoreUnavailableError   the shared store (Redis) could not be reached in time; nothing
    │                               unacknowledged was kept (also a ConnectionError)
    └── EngineError                 a model call or its output failed at run time
        ├── ModelCallError          the provider refused or failed the call (after retries)
        │   └── ProviderUnavailableError  the provider stayed down longer than `max_outage`
        │       └── ProviderUnreachableError  it never answered and refuses connections: fix the model,
        │                                     its endpoint or key (a configuration problem, not an outage)
        └── ModelOutputError        the answer could not be parsed/validated; carries `raw`
                                    and `item_ids`, so no input is lost

Warnings:

    FlockWarning(UserWarning)
    └── BatchSpecWarning            a BatchSpec that is valid but probably not what you want
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BatchSpecWarning",
    "BudgetExceededError",
    "ClosedError",
    "ConfigurationError",
    "EngineError",
    "FlockError",
    "FlockWarning",
    "ModelCallError",
    "ModelOutputError",
    "ProviderUnavailableError",
    "ProviderUnreachableError",
    "StoreError",
    "StoreUnavailableError",
]


class FlockError(Exception):
    """Base of everything flock_llm raises."""


class ConfigurationError(FlockError, ValueError):
    """The calling code passed something invalid; fix the call."""


class ClosedError(FlockError, RuntimeError):
    """The Flock was shut down and accepts no more work."""


class StoreError(FlockError):
    """A store failed at run time; the write (or read) it names was not done. Not a configuration error:
    the same call can succeed once the store is usable again."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The store could not be reached (after reconnecting with backoff); the call was not acknowledged."""


class EngineError(FlockError):
    """A model call or its output failed at run time."""


class ModelCallError(EngineError):
    """The provider refused or failed the call, after any retries.

    Args:
        message: what happened (with the endpoint, never a key).
        retryable: whether the same call may succeed later (429, 5xx, timeouts, connection errors).
        status_code: the HTTP status, when there was one.
    """

    def __init__(self, message: str, *, retryable: bool = False, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


class ProviderUnavailableError(ModelCallError):
    """The provider failed every call (5xx, timeouts, refused connections) for longer than `max_outage`.

    Args:
        message: what happened (with the endpoint, never a key).
        status_code: the HTTP status of the last failure, when there was one.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message, retryable=True, status_code=status_code)


class ProviderUnreachableError(ProviderUnavailableError):
    """The provider has not answered since the engine was created and its first call found nothing to connect to
    (connection refused, unknown host, no network): the model, its endpoint or its key is wrong. Reported at
    the first failure, without retries or the breaker's outage wait.

    Args:
        message: the endpoint and what to check (`model=`/`--model`, `api_base=`, the API key), never a key.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=None)
        self.retryable = False


class BudgetExceededError(ModelCallError):
    """A call would pass the cost budget (`budget_usd`); it was not made. Its items stay pending in a durable
    store (the next run continues them) or become failure records with stage "budget" in memory."""


class ModelOutputError(EngineError):
    """The model's answer could not be parsed or validated.

    Args:
        message: what was wrong with the answer.
        raw: the answer text (kept truncated to 2,000 characters).
        item_ids: the engine item ids the answer was meant to cover.

    Attributes:
        raw: the answer text (possibly truncated to 2,000 characters).
        item_ids: the engine item ids the answer was meant to cover.
    """

    def __init__(self, message: str, *, raw: str = "", item_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.raw = raw[:2000]
        self.item_ids = tuple(item_ids)


class FlockWarning(UserWarning):
    """Base of the warnings flock_llm issues."""


class BatchSpecWarning(FlockWarning):
    """A BatchSpec that is valid but probably not what you want."""
