"""The deferred tiers of LLMEngine: "batch" (provider batch jobs, see `_deferred`) and "flex" (OpenAI's
`service_tier="flex"`: batch prices on the normal endpoint, slower, sometimes "resource unavailable").

    batch   a batch's first request (and the first of each half the ladder splits it into) goes into a
            provider batch job; repairs, reduces and per-item fallbacks go the synchronous (standard) way.
            A line that failed or expired is asked once more in a later job, then synchronously; a line not
            answered by the policy's deadline goes synchronously at once.
    flex    requests carry service_tier="flex"; 429/503 answers (resource unavailable) are waited out with
            backoff for `flex_wait` seconds, then the batch goes the standard way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ._deferred import custom_id_of
from ._ladder import Answer, LadderItem

if TYPE_CHECKING:
    from .llm import LLMEngine

__all__ = ["ask_deferred", "ask_flex", "deferrable", "TIERS"]

log = logging.getLogger("flock_llm.engines")

TIERS = ("standard", "flex", "batch")
_BODY_KEYS = ("messages", "response_format", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed")


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


async def ask_deferred(
    call: Any, items: Sequence[LadderItem], *, per_item: bool, kwargs: dict[str, Any], prompt_tokens: int
) -> Answer | None:
    """The answer from a provider batch job, or None: the request goes the synchronous way (its line failed or
    expired twice, the deadline passed, or the model cannot be deferred). `call` is LLMEngine's call backend."""
    engine: LLMEngine = call.engine
    name = deferrable(call.model, call.litellm)
    if name is None:
        _say_not_deferrable(call.model)
        return None
    body = {"model": name, **{k: kwargs[k] for k in _BODY_KEYS if k in kwargs}}
    expected = call.plan.expected(len(items) if per_item else 1, per_item=per_item)
    ticket = engine.costs.reserve(call.ctx, call.model, call.litellm, prompt_tokens, expected, tier="batch")
    queue = engine.deferred_queue(call.litellm)
    journal = call.ctx.jobs or queue.memory_journal
    for attempt in (0, 1):
        started, started_ns = time.perf_counter(), time.time_ns()
        result = await queue.ask(journal, custom_id_of(body, attempt, queue.endpoint), body)
        call.usage.deferred_requests += 1
        if result.body is not None:
            call.usage.llm_calls += 1
            choice = (result.body.get("choices") or [{}])[0]
            content = str((choice.get("message") or {}).get("content") or "")
            truncated = choice.get("finish_reason") == "length"
            line = LineResponse(result.body)
            outcome = "truncated" if truncated else "ok"
            call.record("deferred", items, kwargs, started, started_ns, 1, outcome, line, ticket)
            if not truncated:
                call.plan.learn(len(items) if per_item else 1, line.usage.completion_tokens, per_item=per_item)
            return Answer(content, truncated=truncated)
        call.usage.deferred_failed_lines += 1
        log.info("agent %r: a deferred line came back without an answer (%s)", call.ctx.agent_name, result.problem)
        if "deadline" in result.problem:
            break
    engine.costs.release(ticket)
    call.usage.deferred_fallbacks += 1
    return None


async def ask_flex(call: Any, kwargs: dict[str, Any], items: int, per_item: bool, prompt_tokens: int) -> Any:
    """A response from the flex tier, or None after `flex_wait` seconds of "resource unavailable"."""
    engine: LLMEngine = call.engine
    litellm = call.litellm
    expected = call.plan.expected(items if per_item else 1, per_item=per_item)
    ticket = engine.costs.reserve(call.ctx, call.model, litellm, prompt_tokens, expected, tier="flex")
    deadline, delay = time.monotonic() + engine.flex_wait, 0.5
    while True:
        call.usage.llm_calls += 1
        try:
            response = await litellm.acompletion(**kwargs, service_tier="flex")
        except (litellm.RateLimitError, litellm.ServiceUnavailableError, litellm.InternalServerError) as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                log.info("agent %r: flex tier unavailable; the standard tier answers", call.ctx.agent_name)
                engine.costs.release(ticket)
                call.usage.flex_fallbacks += 1
                return None
            call.usage.retries += 1
            log.debug("flex tier unavailable (%s); waiting %.1fs", type(exc).__name__, min(delay, left))
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 30.0)
            continue
        except Exception:
            engine.costs.release(ticket)
            raise
        call.usage.flex_requests += 1
        return response, ticket


class LineResponse:
    """A batch job line's chat completion, shaped like litellm's response for the call record."""

    def __init__(self, body: dict[str, Any]) -> None:
        usage = body.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        self.usage = SimpleNamespace(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            prompt_tokens_details=SimpleNamespace(cached_tokens=details.get("cached_tokens")),
        )
        self._hidden_params: dict[str, Any] = {}
