"""Retry policy for transient provider errors, and per-engine request limits."""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from ..errors import BudgetExceededError, ConfigurationError, ProviderUnavailableError

__all__ = [
    "ErrorKind",
    "RequestLimiter",
    "RetryPolicy",
    "classify_error",
    "describe_call_error",
    "retry_after_seconds",
]

T = TypeVar("T")
ErrorKind = Literal["transient", "context", "fatal"]


def classify_error(exc: BaseException) -> ErrorKind:
    """transient: retry it; context: the prompt is too long, split; fatal: never retry (auth, bad request, ...)."""
    import litellm  # already loaded by the engine that made the call

    if isinstance(exc, (ProviderUnavailableError, BudgetExceededError)):
        return "fatal"  # the breaker waited `max_outage` already / the budget is spent: nothing more to try
    if isinstance(exc, litellm.ContextWindowExceededError):
        return "context"
    if isinstance(
        exc,
        (
            litellm.AuthenticationError,
            litellm.PermissionDeniedError,
            litellm.NotFoundError,
            litellm.BadRequestError,
            litellm.UnprocessableEntityError,
        ),
    ):
        return "fatal"
    if "Missing credentials" in str(exc) or "api_key client option must be set" in str(exc):
        return "fatal"  # surfaces as a 500, but retrying cannot help
    if isinstance(
        exc,
        (
            litellm.RateLimitError,
            litellm.InternalServerError,
            litellm.ServiceUnavailableError,
            litellm.Timeout,
            litellm.APIConnectionError,
            TimeoutError,
            ConnectionError,
        ),
    ):
        return "transient"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and (status >= 500 or status in (408, 409, 429)):
        return "transient"
    return "fatal"


_CLASS_PREFIX = re.compile(r"^(?:litellm\.)?[A-Za-z]+(?:Error|Exception|Timeout)\s*[:\-]\s*")


def describe_call_error(exc: BaseException) -> str:
    """What a failed call says, once: the error kind, the HTTP status, where the call went (when known) and
    the provider's message, without litellm's repeated class-name prefixes."""
    name = type(exc).__name__
    text = str(exc)
    while True:
        shorter = _CLASS_PREFIX.sub("", text, count=1)
        if shorter == text:
            break
        text = shorter
    text = text.strip() or "no message"
    status = getattr(exc, "status_code", None)
    head = f"{name} (HTTP {status})" if isinstance(status, int) else name
    notes = "; ".join(getattr(exc, "__notes__", ()) or ())
    return f"{head}: {text}" + (f" [{notes}]" if notes else "")


def retry_after_seconds(exc: BaseException) -> float | None:
    """The provider's requested wait (retry-after-ms, retry-after seconds or HTTP date), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, float(when.timestamp()) - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient errors are retried (tenacity underneath)."""

    attempts: int = 4
    """Calls in all, the first included."""
    base_delay: float = 0.5
    """Exponential backoff start, in seconds (with jitter), when the provider names no wait."""
    max_delay: float = 8.0
    """Cap on the exponential backoff, in seconds."""
    max_retry_after: float = 30.0
    """Cap on a provider's Retry-After."""

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigurationError(f"`attempts` must be an integer >= 1, got {self.attempts!r}")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ConfigurationError("retry delays must be >= 0")

    def delay(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait before the next attempt: the provider's Retry-After (capped), else jittered backoff.

        Args:
            attempt: the attempt that failed, from 1.
            exc: its error, whose Retry-After header (if any) is honoured.
        """
        asked = retry_after_seconds(exc) if exc is not None else None
        if asked is not None:
            return min(asked, self.max_retry_after)
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return backoff * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography

    async def run(self, call: Callable[[], Awaitable[T]], on_retry: Callable[[BaseException], None]) -> T:
        """Run `call`, retrying transient errors; anything else (or the last error) is raised.

        Args:
            call: makes one attempt.
            on_retry: told of each transient error before its retry (the engine counts retries).
        """
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        def wait(state: object) -> float:
            outcome = getattr(state, "outcome", None)
            exc = outcome.exception() if outcome is not None else None
            return self.delay(getattr(state, "attempt_number", 1), exc)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait,
            retry=retry_if_exception(lambda e: classify_error(e) == "transient"),
            before_sleep=lambda state: on_retry(state.outcome.exception()),
            reraise=True,
        )
        result: T = await retrying(call)
        return result


class RequestLimiter:
    """At most `max_concurrent` requests in flight and `per_minute` started per minute (evenly spaced)."""

    def __init__(self, max_concurrent: int | None, per_minute: float | None) -> None:
        if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
            raise ConfigurationError(f"`max_concurrent_requests` must be a positive integer, got {max_concurrent!r}")
        if per_minute is not None and (not isinstance(per_minute, (int, float)) or per_minute <= 0):
            raise ConfigurationError(f"`requests_per_minute` must be positive, got {per_minute!r}")
        self.max_concurrent = max_concurrent
        self.interval = None if per_minute is None else 60.0 / per_minute
        self._semaphore: asyncio.Semaphore | None = None
        self._next_start = 0.0
        self.started = 0

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._semaphore is None and self.max_concurrent is not None:
            self._semaphore = asyncio.Semaphore(self.max_concurrent)
        if self._semaphore is None:
            await self._pace()
            return await call()
        async with self._semaphore:
            await self._pace()
            return await call()

    async def _pace(self) -> None:
        self.started += 1
        if self.interval is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_start)
        self._next_start = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)
