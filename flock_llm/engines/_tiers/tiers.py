"""The tiers of LLMEngine, one object each, chosen once when the engine is built (`tier_for`). Every request of
every tier is one call through the call shell (`_calls/shell.py`): the same limits, breaker, budget and record.

    standard  the request as it is.
    flex      requests carry service_tier="flex" (OpenAI's batch prices on the normal endpoint, slower,
              sometimes "resource unavailable"): 429/5xx answers are waited out with backoff for `flex_wait`
              seconds (each a request counted and paced like any other), then the batch goes the standard way.
    batch     a batch's first request (and the first of each half the ladder splits it into, and of each
              per-item fallback) goes into a provider batch job (see `jobs`); repairs and reduces go the
              standard way. A line that failed or expired is asked once more in a later job, then the standard way; a
              line not answered by the policy's deadline goes the standard way at once. The line is reserved in
              the budgets before it is queued and settled when it comes back. The job's own HTTP requests
              (upload, create, poll, download, cancel) go through `CallShell.request`: paced by
              `max_concurrent_requests` and `requests_per_minute`, behind the breaker. The lines' tokens are not
              counted in `tokens_per_minute`: providers meter batch jobs in a queue of their own (OpenAI: "Batch
              API rate limits are separate from existing per-model rate limits", a per-model limit of enqueued
              prompt tokens instead; platform.openai.com/docs/guides/batch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .._base import EngineContext
from .._calls.record import Usage
from .._calls.shell import Ask, CallShell, Settled
from .._ladder.ladder import Answer
from .jobs import DeferredQueue, custom_id_of

__all__ = [
    "BatchTier",
    "ChatRequest",
    "FlexTier",
    "StandardTier",
    "Tier",
    "TierChat",
    "TIERS",
    "deferrable",
    "tier_for",
]

log = logging.getLogger("flock_llm.engines")

TIERS = ("standard", "flex", "batch")
_BODY_KEYS = ("messages", "response_format", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed")


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat request of the ladder, ready to send."""

    kwargs: dict[str, Any]
    """The litellm arguments."""
    ask: Ask
    answers: int
    """Answers it expects: its items in per-item mode, else 1 (for learning answer lengths)."""
    per_item: bool
    first: bool
    """A batch's own request (not a repair or reduce): a batch job may take it."""


class TierChat(Protocol):
    """What a tier asks with: LLMEngine's backend for one run."""

    shell: CallShell
    ctx: EngineContext
    model: str
    litellm: Any
    usage: Usage

    def answer_of(self, request: ChatRequest, reply: Any) -> Answer:
        """The ladder's answer from a chat completion (litellm's response or a JSON body); learns its length."""
        ...

    async def complete(self, kwargs: dict[str, Any]) -> Any:
        """One chat request (`litellm.acompletion`), in a structured-output form the server takes."""
        ...


class Tier(Protocol):
    name: str

    async def ask(self, chat: TierChat, request: ChatRequest) -> Answer: ...


class StandardTier:
    name = "standard"

    async def ask(self, chat: TierChat, request: ChatRequest) -> Answer:
        reply = await chat.shell.call(request.ask, lambda: chat.complete(request.kwargs), Settled.of_completion)
        return chat.answer_of(request, reply)


STANDARD = StandardTier()


class FlexUnavailableError(Exception):
    """The flex tier stayed unavailable for `flex_wait` seconds (the standard tier answers instead)."""


class FlexTier:
    name = "flex"

    def __init__(self, wait: float) -> None:
        self.wait = wait

    async def ask(self, chat: TierChat, request: ChatRequest) -> Answer:
        litellm = chat.litellm
        unavailable = (litellm.RateLimitError, litellm.ServiceUnavailableError, litellm.InternalServerError)
        deadline, delay = time.monotonic() + self.wait, 0.5

        def again(exc: BaseException) -> float | None:
            nonlocal delay
            if not isinstance(exc, unavailable):
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise FlexUnavailableError(f"flex tier unavailable for {self.wait:g} s") from exc
            wait, delay = min(delay, left), min(delay * 2, 30.0)
            log.debug("flex tier unavailable (%s); waiting %.1fs", type(exc).__name__, wait)
            return wait

        try:
            reply = await chat.shell.call(
                replace(request.ask, tier="flex"),
                lambda: chat.complete({**request.kwargs, "service_tier": "flex"}),
                Settled.of_completion,
                again=again,
            )
        except FlexUnavailableError:
            log.info("agent %r: flex tier unavailable; the standard tier answers", chat.ctx.agent_name)
            chat.usage.flex_fallbacks += 1
            return await STANDARD.ask(chat, request)
        chat.usage.flex_requests += 1
        return chat.answer_of(request, reply)


class BatchTier:
    name = "batch"

    def __init__(self, queue: Callable[[CallShell], DeferredQueue]) -> None:
        self.queue = queue
        """The engine's DeferredQueue, made on first use; its requests go through the call shell given."""

    async def ask(self, chat: TierChat, request: ChatRequest) -> Answer:
        name = deferrable(chat.model, chat.litellm) if request.first else None
        if request.first and name is None:
            _say_not_deferrable(chat.model)
        if name is not None:
            body = {"model": name, **{k: request.kwargs[k] for k in _BODY_KEYS if k in request.kwargs}}
            ask = replace(request.ask, kind="deferred", tier="batch", deferred=True)
            line = await chat.shell.call(ask, lambda: self._line(chat, body), _settled_line)
            if line is not None:
                return chat.answer_of(request, line)
            chat.usage.deferred_fallbacks += 1
        return await STANDARD.ask(chat, request)

    async def _line(self, chat: TierChat, body: dict[str, Any]) -> dict[str, Any] | None:
        """The line's chat completion from a batch job, or None: it failed or expired twice, or the deadline
        passed (the request goes the standard way)."""
        queue = self.queue(chat.shell)
        journal = chat.ctx.jobs or queue.memory_journal
        for attempt in (0, 1):
            result = await queue.ask(journal, custom_id_of(body, attempt, queue.endpoint), body)
            chat.usage.deferred_requests += 1
            if result.body is not None:
                return result.body
            chat.usage.deferred_failed_lines += 1
            log.info("agent %r: a deferred line came back without an answer (%s)", chat.ctx.agent_name, result.problem)
            if "deadline" in result.problem:
                break
        return None


def _settled_line(line: dict[str, Any] | None) -> Settled | None:
    return None if line is None else Settled.of_completion(line)


def tier_for(name: str, *, flex_wait: float, queue: Callable[[CallShell], DeferredQueue]) -> Tier:
    """The tier object for `LLMEngine(tier=name)` (validated by the engine)."""
    if name == "flex":
        return FlexTier(flex_wait)
    if name == "batch":
        return BatchTier(queue)
    return STANDARD


def deferrable(model: str, litellm: Any) -> str | None:
    """The provider's model name when `model` can go into OpenAI-style batch jobs, else None."""
    try:
        name, provider, _, _ = litellm.get_llm_provider(model)
    except Exception:  # noqa: BLE001 - unknown provider
        return None
    return str(name) if provider == "openai" else None


_TOLD: set[str] = set()


def _say_not_deferrable(model: str) -> None:
    """Say once per model that its tier="batch" requests go the standard way (at the list price)."""
    if model not in _TOLD:
        _TOLD.add(model)
        log.warning(
            'tier="batch" sends OpenAI-compatible models to batch jobs only; %s goes the standard way at the list '
            "price",
            model,
        )
