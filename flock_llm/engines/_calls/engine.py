"""`ModelEngine`: the base of every engine that calls a model. It holds what the call shell needs of an engine
(its retries, circuit breaker, concurrency and per-minute limits, prices and budget, recent call records) and
hands a run its `CallShell`; LLMEngine and DSPyEngine are ModelEngines, and so is a third engine."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._base import Engine, EngineContext
from .breaker import BreakerPolicy, ProviderGuard
from .models import engine_secrets, load_litellm, redact
from .prices import TokenPrices
from .rate import account_of
from .record import CallRecord, Usage
from .retry import RequestLimiter, RetryPolicy
from .shell import CallShell
from .spend import CallCosts

__all__ = ["PROBE_SETTINGS", "ModelEngine"]

PROBE_SETTINGS = frozenset(
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
"""What a breaker probe (and a provider batch job's requests) take over from the engine's settings: where to go
and how to authenticate."""


class ModelEngine(Engine):
    """Base of an engine that calls a model: every call goes through `self.shell(ctx, model).call(...)`, which paces
    it by `max_concurrent_requests`, `requests_per_minute` and `tokens_per_minute` (with the Flock's shared
    windows when its store has them), holds its worst case against `budget_usd` and the Flock's budget, retries it
    behind the circuit breaker and records it (usage, `calls`, a `flock.llm.call` span).

    `settings` are the litellm arguments the engine sends with its requests: where to go and how to authenticate
    (`api_base`, `api_key`, `extra_headers`, ...). They choose the per-minute windows' account, are masked in logs,
    and are what the breaker's probe sends with (see `probe_for`).

    Args:
        max_concurrent_requests: requests in flight at once (None: no cap).
        requests_per_minute: requests started per minute, evenly spaced (None: no limit).
        tokens_per_minute: prompt + `max_tokens` per minute, what providers count (None: no limit).
        retry: how failed requests are retried (default `RetryPolicy()`).
        breaker: how long calls wait for a provider that is down (default `BreakerPolicy()`).
        prices: USD per million tokens (a TokenPrices or {"input": ..., "output": ...}); default: litellm's.
        budget_usd: this engine's budget in US dollars (None: no budget).
        timeout: seconds one request may take.
        settings: the litellm arguments of the engine's requests (`api_base`, `api_key`, ...).
    """

    engine_name = "ModelEngine"

    def __init__(
        self,
        *,
        max_concurrent_requests: int | None = 8,
        requests_per_minute: float | None = None,
        tokens_per_minute: int | None = None,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        prices: TokenPrices | Mapping[str, float] | None = None,
        budget_usd: float | None = None,
        timeout: float = 60.0,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        settings = dict(settings or {})
        self.retry = retry or RetryPolicy()
        """How a failed request is retried (transient errors only)."""
        self.guard = ProviderGuard(breaker or BreakerPolicy())
        """This engine's circuit breaker and shared back-off (every agent using the engine shares them)."""
        self.limiter = RequestLimiter(max_concurrent_requests, requests_per_minute)
        """`max_concurrent_requests` and `requests_per_minute` of this engine."""
        self.costs = CallCosts(
            prices=prices,
            budget_usd=budget_usd,
            tokens_per_minute=tokens_per_minute,
            requests_per_minute=requests_per_minute,
            account=account_of(settings),
        )
        """Prices, this engine's budget (`costs.ledger.spent_usd`) and its per-minute limits."""
        self.timeout = float(timeout)
        """Seconds one request may take (the probe takes at most 30)."""
        self.calls: deque[CallRecord] = deque(maxlen=1000)
        """The most recent model calls, one record each (breaker probes included, as kind "probe")."""
        self._secrets = engine_secrets(self, settings)
        self._passthrough = settings

    def shell(self, ctx: EngineContext, model: str, *, usage: Usage | None = None, label: str = "") -> CallShell:
        """The call shell for one run of this engine (one `evaluate`/`evaluate_batch`).

        Args:
            ctx: the run's context (its agent, the Flock's budget and shared rate windows, the tracer).
            model: the litellm model string the run's calls go to (windows and prices are per model).
            usage: the run's usage counters (default: a new Usage; read it back as `shell.usage`).
            label: the engine's name on spans (e.g. "dspy").
        """
        return CallShell(self, ctx, usage if usage is not None else Usage(), model, load_litellm(), label=label)

    def probe_for(self, model: str) -> Callable[[], Awaitable[object]]:
        """A tiny request to `model`'s provider (one token), which the circuit breaker sends while it is open (the
        shell makes it a call of its own: budgeted, paced and recorded as a probe). Override it when the engine's
        provider is not reached through litellm."""
        settings = {k: v for k, v in self._passthrough.items() if k in PROBE_SETTINGS}

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
