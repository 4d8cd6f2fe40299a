"""What LLMEngine and DSPyEngine share: settings, limits, model and output type, and the ladder run."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from ..errors import ConfigurationError
from ._base import Engine, EngineContext, EvalInputs, EvalResult
from ._breaker import BreakerPolicy, ProviderGuard
from ._calls import CallRecord, Usage
from ._ladder import (
    DEFAULT_MAX_CALLS_PER_ITEM,
    Backend,
    FallbackLadder,
    LadderItem,
    ladder_items,
    per_item_fallback,
)
from ._limits import RequestLimiter, RetryPolicy
from ._models import is_offline, load_litellm, redact, secrets_from

__all__ = ["DEFAULT_MAX_INPUT_TOKENS", "LadderBackend", "LadderEngine", "context_window"]

T = TypeVar("T")

_PROBE_SETTINGS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "extra_headers",
        "headers",
        "organization",
        "custom_llm_provider",
    }
)
"""What a breaker probe takes over from the engine's arguments: where to go and how to authenticate."""

DEFAULT_MAX_INPUT_TOKENS = 16_000
"""Context budget when litellm does not know the model and none is configured."""


class LadderBackend(Backend, Protocol):
    """A Backend that also knows its output type, counts usage, and counts a prompt's tokens."""

    output_type: type[BaseModel]
    usage: Usage

    def count_tokens(self, items: Sequence[LadderItem]) -> int: ...


def context_window(model: str, configured: int | None) -> int:
    """The prompt token budget: configured, else litellm's figure for the model, else the default."""
    if configured:
        return configured
    if is_offline(model):
        return 128_000
    try:
        window = load_litellm().get_model_info(model).get("max_input_tokens")
    except Exception:  # noqa: BLE001 - unknown model: litellm raises; fall back to the default budget
        window = None
    return int(window) if window else DEFAULT_MAX_INPUT_TOKENS


class LadderEngine(Engine):
    """Base of the LLM engines: a batch goes through the fallback ladder; `_backend()` makes the calls."""

    engine_name = "LadderEngine"

    def __init__(
        self,
        model: str | None,
        *,
        per_item: bool,
        output_type: type[BaseModel] | None,
        max_input_tokens: int | None,
        max_concurrent_requests: int | None,
        requests_per_minute: float | None,
        retry: RetryPolicy | None,
        breaker: BreakerPolicy | None,
        timeout: float,
        max_calls_per_item: float = DEFAULT_MAX_CALLS_PER_ITEM,
        passthrough: dict[str, Any],
        reserved: Sequence[str],
    ) -> None:
        for name in reserved:
            if name in passthrough:
                raise ConfigurationError(f"`{name}` is set by {self.engine_name} itself; remove it from the arguments")
        if max_input_tokens is not None and (not isinstance(max_input_tokens, int) or max_input_tokens < 100):
            raise ConfigurationError(f"`max_input_tokens` must be an integer >= 100, got {max_input_tokens!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(f"`timeout` must be a positive number of seconds, got {timeout!r}")
        self.model = model
        self.per_item = per_item
        self.output_type = output_type
        self.max_input_tokens = max_input_tokens
        if (
            isinstance(max_calls_per_item, bool)
            or not isinstance(max_calls_per_item, (int, float))
            or max_calls_per_item <= 0
        ):
            raise ConfigurationError(f"`max_calls_per_item` must be a positive number, got {max_calls_per_item!r}")
        self.max_calls_per_item = float(max_calls_per_item)
        self.retry = retry or RetryPolicy()
        self.guard = ProviderGuard(breaker or BreakerPolicy())
        """This engine's circuit breaker and shared back-off (every agent using the engine shares them)."""
        self.timeout = float(timeout)
        self.limiter = RequestLimiter(max_concurrent_requests, requests_per_minute)
        self._secrets = secrets_from(passthrough)
        self._passthrough = dict(passthrough)
        self.calls: deque[CallRecord] = deque(maxlen=1000)
        """The most recent model calls (both LLM engines record them the same way)."""

    def __repr__(self) -> str:  # never shows the passthrough arguments: they may hold keys
        return f"{type(self).__name__}(model={self.model!r}, per_item={self.per_item!r})"

    async def guarded(
        self, usage: Usage, model: str, attempt: Callable[[], Awaitable[T]], on_retry: Callable[[BaseException], None]
    ) -> T:
        """One model call with retries, behind this engine's circuit breaker and shared back-off; breaker
        probes sent while it waited are counted in `usage` (each probe once)."""
        try:
            return await self.guard.call(self.retry, attempt, on_retry, self.probe_for(model))
        finally:
            probes = self.guard.take_probes()
            usage.llm_calls += probes
            usage.probes += probes

    def probe_for(self, model: str) -> Callable[[], Awaitable[object]]:
        """A tiny request to `model`'s provider (one token), which the circuit breaker sends while it is open."""
        settings = {k: v for k, v in self._passthrough.items() if k in _PROBE_SETTINGS}

        async def probe() -> object:
            return await load_litellm().acompletion(
                model=model,
                messages=[{"role": "user", "content": "ping"}],
                max_tokens=1,
                max_retries=0,
                timeout=min(self.timeout, 30.0),
                **settings,
            )

        return probe

    def redact(self, text: str) -> str:
        """`text` without this engine's API keys (or anything shaped like one)."""
        return redact(text, self._secrets)

    def resolve_output_type(self, ctx: EngineContext) -> type[BaseModel]:
        output_type = self.output_type or (ctx.publishes[0] if ctx.publishes else None)
        if output_type is None:
            raise ConfigurationError(
                f"agent {ctx.agent_name!r} publishes nothing, so {self.engine_name} does not know what to produce; "
                f"add `.publishes(YourType)` or pass `{self.engine_name}(output_type=...)`"
            )
        return output_type

    def _backend(self, ctx: EngineContext, inputs: EvalInputs) -> LadderBackend:
        raise NotImplementedError

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return await self._run(ctx, inputs, fallback=False)

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return await self._run(ctx, inputs, fallback=True)

    async def _run(self, ctx: EngineContext, inputs: EvalInputs, *, fallback: bool) -> EvalResult:
        backend = self._backend(ctx, inputs)
        items = ladder_items(inputs)
        backend.usage.items = len(items)
        backend.usage.per_item_prompt_tokens = sum(backend.count_tokens([item]) for item in items)
        last_rung = per_item_fallback(self, ctx, inputs) if fallback else None
        ladder = FallbackLadder(
            backend, backend.output_type, backend.usage, last_rung, max_calls_per_item=self.max_calls_per_item
        )
        result = await (ladder.per_item(items) if self.per_item else ladder.report(items))
        return replace(result, failures=tuple(replace(f, error=self.redact(f.error)) for f in result.failures))
