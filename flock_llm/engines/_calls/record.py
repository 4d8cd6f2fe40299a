"""What every model call records, the same way for every engine (the call shell, `_shell`, records each call
once): usage counters for the run, a CallRecord on the engine, and a `flock.llm.call` span with the same
attributes."""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from typing import Any

from .._base import EngineContext

__all__ = ["CallRecord", "Usage", "cancelled_run", "cancelled_usage", "prompt_text", "record_call"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One model call (retried attempts included in `attempts`)."""

    agent: str
    """The agent the call served."""
    model: str
    """The litellm model string."""
    kind: str
    """"batch", "repair" or "reduce"."""
    items: int
    """How many items the request carried."""
    prompt_tokens: int
    """Prompt tokens, as the provider reported them."""
    completion_tokens: int
    """Completion tokens, as the provider reported them."""
    cost_usd: float | None
    """What the call cost (None when no price is known)."""
    latency_s: float
    """Seconds from the first attempt to the answer."""
    attempts: int
    """HTTP attempts, retries included."""
    outcome: str
    """"ok", "truncated", "unparsed" or the error type."""


@dataclass
class Usage:
    """Counters for one engine run; summed into the Flock's metrics."""

    items: int = 0
    """Items the run was given."""
    llm_calls: int = 0
    """Requests the provider received (retries and probes included)."""
    prompt_tokens: int = 0
    """Prompt tokens, as the provider reported them."""
    completion_tokens: int = 0
    """Completion tokens, as the provider reported them."""
    cached_prompt_tokens: int = 0
    """Prompt tokens the provider served from its cache (billed at its cached-input price)."""
    cache_write_tokens: int = 0
    """Prompt tokens written to the provider's cache (Anthropic's cache creation)."""
    cost_usd: float = 0.0
    """What the run's calls cost (priced calls only; see `cost_known_calls`)."""
    cost_known_calls: int = 0
    """Calls whose cost is known."""
    latency_s: float = 0.0
    """Seconds spent in calls, summed."""
    retries: int = 0
    """Requests sent again after a transient failure."""
    repairs: int = 0
    """Requests asking again for what an answer left out or got wrong."""
    splits: int = 0
    """Batches the ladder split in halves."""
    overflow_splits: int = 0
    """Splits because a batch did not fit the context (prompt and expected answer), before sending or as the
    provider said; also counted in `splits`."""
    truncated_answers: int = 0
    """Answers the model cut off at the length limit."""
    reduces: int = 0
    """Calls merging the halves' reports into one."""
    fallbacks: int = 0
    """Items that went to the per-item rung."""
    deferred_requests: int = 0
    """Requests put into provider batch jobs (tier "batch"), a line asked again included."""
    deferred_failed_lines: int = 0
    """Batch job lines that came back failed or expired (asked again in a later job, then synchronously)."""
    deferred_fallbacks: int = 0
    """Deferred requests that went the synchronous way in the end."""
    flex_requests: int = 0
    """Flex-tier requests answered."""
    flex_fallbacks: int = 0
    """Flex-tier requests answered, and batches that went to the standard tier after `flex_wait`."""
    probes: int = 0
    """Circuit-breaker probes (one-token requests) this run waited for; also counted in `llm_calls`."""
    failed_items: int = 0
    """Items that ended in failure records."""
    unknown_ids: int = 0
    """Results under an id that was not asked for, or that could name several items (ignored)."""
    duplicate_ids: int = 0
    """Results given twice for the same item (the first kept)."""
    mapped_ids: int = 0
    """Results whose id was not the one asked for but named one item unambiguously (a position number, the
    item's own id, an id in backticks, the one result of a one-item request): kept."""
    missing_ids: int = 0
    """Items an answer gave no result for (asked again)."""
    format_fallbacks: int = 0
    """Requests a server rejected for their `response_format`, asked again at once in the next mode."""
    per_item_prompt_tokens: int = 0
    """Prompt tokens the same items would have needed one call each (rendered and counted)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Engine-specific figures, merged into `as_dict()`."""

    def absorb(self, other: dict[str, Any]) -> None:
        """Add the calls, tokens and cost of another run (the per-item fallback's) to these counters."""
        for name in CALL_COUNTERS:
            value = other.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a dict (an EvalResult's `usage`); `cost_usd` is None when no call's cost is known."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if not self.cost_known_calls:
            values["cost_usd"] = None
        return {**values, **self.extra}


CALL_COUNTERS = (
    "llm_calls",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cache_write_tokens",
    "cost_usd",
    "cost_known_calls",
    "latency_s",
    "retries",
    "repairs",
    "splits",
    "overflow_splits",
    "truncated_answers",
    "reduces",
    "probes",
    "deferred_requests",
    "deferred_failed_lines",
    "deferred_fallbacks",
    "flex_requests",
    "flex_fallbacks",
)
"""The usage counters every model call adds to (calls, tokens, cost, latency, retries, ...): one list for
every path, so a caller that adds a call\'s usage (an audit, a fallback) adds exactly these."""
"""What a nested run (the per-item fallback) adds to its batch's usage; its item counts are the batch's own."""


def record_call(
    *,
    usage: Usage,
    calls: deque[CallRecord],
    ctx: EngineContext,
    model: str,
    kind: str,
    items: int,
    started: float,
    started_ns: int,
    attempts: int,
    outcome: str,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: float | None = None,
    prompt: Callable[[], str] | None = None,
    engine: str = "",
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> CallRecord:
    """Count one call's tokens, cost and latency in `usage` (the calls themselves are counted per attempt by
    the caller), keep a CallRecord in `calls`, and record its span. `prompt` (redacted text) is put on the span
    only when the tracer records prompts."""
    latency = time.perf_counter() - started
    usage.prompt_tokens += prompt_tokens
    usage.completion_tokens += completion_tokens
    usage.cached_prompt_tokens += cached_tokens
    usage.cache_write_tokens += cache_write_tokens
    usage.latency_s += latency
    if cost is not None:
        usage.cost_usd += float(cost)
        usage.cost_known_calls += 1
    record = CallRecord(
        ctx.agent_name,
        model,
        kind,
        items,
        prompt_tokens,
        completion_tokens,
        None if cost is None else float(cost),
        latency,
        attempts,
        outcome,
    )
    calls.append(record)
    tracer = ctx.tracer
    if tracer is not None:
        failed = outcome not in ("ok", "truncated", "unparsed")
        attributes: dict[str, Any] = {
            "agent": ctx.agent_name,
            "model": model,
            "kind": kind,
            "items": items,
            "attempts": attempts,
            "retries": max(0, attempts - 1),
            "outcome": outcome,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": cached_tokens,
            "cache_write_tokens": cache_write_tokens,
            "cost_usd": record.cost_usd,
            "latency_ms": latency * 1000,
        }
        if engine:
            attributes["engine"] = engine
        if prompt is not None and tracer.config.record_prompts:
            attributes["prompt"] = prompt()
        tracer.record(
            "flock.llm.call",
            start_ns=started_ns,
            end_ns=time.time_ns(),
            parent=ctx.trace_parent,
            error=outcome if failed else None,
            **attributes,
        )
    return record


def prompt_text(messages: Any, redact: Callable[[str], str]) -> Callable[[], str]:
    """The redacted prompt, rendered only if a span asks for it."""
    return lambda: redact(json.dumps(messages, ensure_ascii=False, default=str))


_CANCELLED: ContextVar[Usage | None] = ContextVar("flock_llm_cancelled_usage", default=None)


@contextlib.contextmanager
def cancelled_usage() -> Iterator[Usage]:
    """Counts what engine runs cancelled inside the block (in tasks started in it too) had used: their calls,
    tokens and cost (CALL_COUNTERS) are added to the Usage it yields. A cancelled run returns no EvalResult, so
    its usage would be lost; a caller that cancels a run and reports it as failed instead (the CLI's watch on its
    local model server) puts this usage in its result, so every call that went out is counted once."""
    usage = Usage()
    token = _CANCELLED.set(usage)
    try:
        yield usage
    finally:
        _CANCELLED.reset(token)


def cancelled_run(usage: Usage) -> None:
    """An engine run was cancelled with `usage` (its own calls; a nested run it waited for reports its own):
    counted by the enclosing `cancelled_usage()` block, if any."""
    counted = _CANCELLED.get()
    if counted is not None:
        counted.absorb(usage.as_dict())
