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

from ..._error_text import describe_transport, local_failure, missing_key
from ..._numbers import number, optional_number
from ..._redaction import mask
from ...errors import BudgetExceededError, ProviderUnavailableError

__all__ = [
    "ErrorKind",
    "RequestLimiter",
    "RetryPolicy",
    "cancelling",
    "UNREACHABLE_HINT",
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
    if missing_key(exc) or local_failure(exc):
        return "fatal"  # surfaces as a 500, but nothing was sent and retrying cannot help
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

NO_KEY_HINT = (
    "set the provider's API key (e.g. OPENAI_API_KEY, or `api_key=`; a local OpenAI-compatible server takes any "
    "key), or choose another model (`model=`, the CLI's `--model`, or FLOCK_LLM_MODEL)"
)

LOCAL_HINT = (
    "a configuration problem, not an outage (not retried): check the engine's `api_base=` (credentials in its URL "
    "cannot be combined with an `api_key=`: pass one of them), `api_key=` and `extra_headers=`"
)

UNREACHABLE_HINT = (
    "the provider has not answered once since this engine was created, so this is taken for a configuration "
    "problem, not an outage (not retried): check the model (`model=`, the CLI's `--model`, FLOCK_LLM_MODEL), "
    "its endpoint (`api_base=`, or OPENAI_API_BASE for openai/ models; is the server running?) and its API key "
    "(`api_key=`, or the provider's variable such as OPENAI_API_KEY)"
)


def describe_call_error(exc: BaseException) -> str:
    """What a failed call says, once: what happened (a refused connection or a timeout by name, else the error
    kind and the HTTP status the provider sent), where the call went (when known) and the provider's message,
    without litellm's repeated class-name prefixes."""
    notes = "; ".join(getattr(exc, "__notes__", ()) or ())
    tail = f" [{notes}]" if notes else ""
    transport = describe_transport(exc)
    if transport is not None:
        return transport + tail
    text = mask(str(exc))  # registered secrets and URL passwords (httpx quotes the URL it failed for)
    while True:
        shorter = _CLASS_PREFIX.sub("", text, count=1)
        if shorter == text:
            break
        text = shorter
    text = text.strip() or "no message"
    if missing_key(exc):
        return f"no API key, nothing was sent ({text[:200]}); {NO_KEY_HINT}" + tail
    if local_failure(exc):
        return f"the HTTP client refused the request, nothing was sent ({text[:300]}); {LOCAL_HINT}" + tail
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    head = f"{name} (HTTP {status})" if isinstance(status, int) else name
    return f"{head}: {text}" + tail


def cancelling() -> bool:
    """Whether the current task is being cancelled (a shutdown's timeout, a second Ctrl-C): then nothing is
    retried, whatever error the cancelled request raised on its way out."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False
    return task is not None and task.cancelling() > 0


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
        number("attempts", self.attempts, integer=True, fix="the calls in all, the first included, e.g. attempts=4")
        for name in ("base_delay", "max_delay", "max_retry_after"):
            number(name, getattr(self, name), bound="non_negative", unit="seconds", fix=f"e.g. {name}=1.0")

    def delay(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait before the next attempt: the provider's Retry-After (capped), else jittered backoff.

        Args:
            attempt: the attempt that failed, from 1.
            exc: its error, whose Retry-After header (if any) is honoured.
        """
        asked = retry_after_seconds(exc) if exc is not None else None
        if asked is not None:
            return min(asked, self.max_retry_after)
        backoff = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 1000))  # 2.0**1024 overflows
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
            retry=retry_if_exception(lambda e: classify_error(e) == "transient" and not cancelling()),
            before_sleep=lambda state: on_retry(state.outcome.exception()),
            reraise=True,
        )
        try:
            result: T = await retrying(call)
        except Exception:
            if cancelling():  # the request ended because its task is cancelled: cancellation wins, not its error
                raise asyncio.CancelledError from None
            raise
        return result


class RequestLimiter:
    """At most `max_concurrent` requests in flight and `per_minute` started per minute (evenly spaced)."""

    def __init__(self, max_concurrent: int | None, per_minute: float | None) -> None:
        optional_number("max_concurrent_requests", max_concurrent, integer=True, fix="e.g. 8, or None for no cap")
        optional_number("requests_per_minute", per_minute, fix="e.g. 60, or None for no limit")
        self.max_concurrent = None if max_concurrent is None else int(max_concurrent)
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
