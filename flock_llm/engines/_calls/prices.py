"""What calls cost, and a budget they stay within (pure logic; litellm is asked for prices only).

A call's cost is litellm's (`response._hidden_params["response_cost"]`, computed from its price map, cached-token
discounts included) unless the engine was given `prices=`, or litellm has none (an unknown model) while its price
map names the model's per-token prices: then it is computed here from the usage:

    (prompt - cached - cache writes) x input + cached x cached input + cache writes x cache-write price
    + completion x output

A budget (`LLMEngine(budget_usd=)`, `Flock(budget_usd=)`) is checked before every call with the call's worst case
(its counted prompt and the `max_tokens` it allows, at these prices) and settled with the real cost after it: a
call that would take spending (settled, plus the worst cases of calls in flight) over the budget waits for the calls
in flight when what is spent leaves it room, else it is not made. So
the budget is passed by no more than the prompt-counting error of the calls in flight, however many there are.
A request that timed out is charged its counted prompt (see `_shell`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..._numbers import optional_number
from ...errors import BudgetExceededError

__all__ = [
    "TIER_DISCOUNT",
    "CachedTokens",
    "CostLedger",
    "TokenPrices",
    "cache_points",
    "cached_tokens_of",
    "in_tier",
    "prices_for",
]


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """US dollars per million tokens. `cached_input` defaults to `input` (no discount), `cache_write` too."""

    input: float
    """Per million prompt tokens that were not cached."""
    output: float
    """Per million completion tokens."""
    cached_input: float | None = None
    """Per million prompt tokens read from the provider's prompt cache (None: `input`)."""
    cache_write: float | None = None
    """Per million prompt tokens written to the provider's prompt cache (None: `input`)."""
    source: str = "given"
    """Where the prices come from: "given" (`prices=`) or "litellm" (its price map)."""

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input", "cache_write"):
            optional_number(
                f"prices[{name!r}]",
                getattr(self, name),
                bound="non_negative",
                unit="US dollars per million tokens",
                fix="e.g. prices={'input': 0.4, 'output': 1.6}",
            )

    def cost(self, *, prompt: int, completion: int, cached: int = 0, cache_write: int = 0) -> float:
        """What a call with these token counts costs, in US dollars.

        Args:
            prompt: all prompt tokens, cached and cache writes included.
            completion: completion tokens.
            cached: prompt tokens read from the cache.
            cache_write: prompt tokens written to the cache.
        """
        plain = max(0, prompt - cached - cache_write)
        cached_price = self.input if self.cached_input is None else self.cached_input
        write_price = self.input if self.cache_write is None else self.cache_write
        total = plain * self.input + cached * cached_price + cache_write * write_price + completion * self.output
        return total / 1_000_000


TIER_DISCOUNT = 0.5
"""The deferred tiers' price where litellm has none: OpenAI, Anthropic and Gemini bill batch jobs (and OpenAI
flex processing) at 50% of the list price."""

_TIER_SUFFIX = {"standard": "", "batch": "_batches", "flex": "_flex"}


def prices_for(model: str, litellm: Any, tier: str = "standard") -> TokenPrices | None:
    """litellm's prices for `model` (per million tokens) in `tier` ("standard", "batch", "flex"): its tier prices
    where the price map has them, else the standard ones at TIER_DISCOUNT; None when it does not know the model."""
    try:
        info = litellm.get_model_info(model)
    except Exception:  # noqa: BLE001 - unknown model: litellm raises
        return None
    suffix = _TIER_SUFFIX[tier]
    per_token_in, per_token_out = info.get(f"input_cost_per_token{suffix}"), info.get(f"output_cost_per_token{suffix}")
    source = f"litellm ({tier})" if tier != "standard" else "litellm"
    factor = 1.0
    if per_token_in is None or per_token_out is None:
        per_token_in, per_token_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        factor = 1.0 if tier == "standard" else TIER_DISCOUNT
        source = "litellm" if tier == "standard" else f"litellm standard x {TIER_DISCOUNT:g} ({tier})"
    if per_token_in is None or per_token_out is None:
        return None
    cached = info.get(f"cache_read_input_token_cost{suffix}") if suffix else None
    if cached is None and info.get("cache_read_input_token_cost") is not None:
        cached = info["cache_read_input_token_cost"] * (1.0 if tier == "standard" else TIER_DISCOUNT)
    write = info.get("cache_creation_input_token_cost")
    return TokenPrices(
        input=per_token_in * 1e6 * factor,
        output=per_token_out * 1e6 * factor,
        cached_input=None if cached is None else cached * 1e6,
        cache_write=None if write is None else write * 1e6,
        source=source,
    )


def in_tier(prices: TokenPrices, tier: str) -> TokenPrices:
    """Given prices in a deferred tier: TIER_DISCOUNT of them (there is no price map to ask)."""
    if tier == "standard":
        return prices
    scale = TIER_DISCOUNT
    return TokenPrices(
        input=prices.input * scale,
        output=prices.output * scale,
        cached_input=None if prices.cached_input is None else prices.cached_input * scale,
        cache_write=None if prices.cache_write is None else prices.cache_write * scale,
        source=f"{prices.source} x {scale:g} ({tier})",
    )


@dataclass(frozen=True, slots=True)
class CachedTokens:
    read: int = 0
    """Prompt tokens served from the provider's cache."""
    written: int = 0
    """Prompt tokens written to it (Anthropic's cache creation)."""


def cached_tokens_of(usage: Any) -> CachedTokens:
    """Cached prompt tokens from a litellm usage object: OpenAI's `prompt_tokens_details.cached_tokens`,
    Anthropic's `cache_read_input_tokens` and `cache_creation_input_tokens`."""
    if usage is None:
        return CachedTokens()
    details = getattr(usage, "prompt_tokens_details", None)
    read = _int(getattr(details, "cached_tokens", None) if details is not None else None)
    if isinstance(details, dict):
        read = _int(details.get("cached_tokens"))
    read = max(read, _int(getattr(usage, "cache_read_input_tokens", None)))
    return CachedTokens(read=read, written=_int(getattr(usage, "cache_creation_input_tokens", None)))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


_ROUNDING_USD = 1e-12
"""Less in flight is float rounding, not a hold ($0.0001 and $0.0002 held and settled left 2.7e-20, and a call of
exactly the budget's room waited for it to settle, forever): a ten-thousandth of a token at $0.01 per million."""


@dataclass
class CostLedger:
    """Spending against a budget (None: no cap), shared by every call that holds it (one engine's, or a
    Flock's). Single event loop: no locking needed."""

    budget_usd: float | None = None
    """The cap in US dollars (None: no cap)."""
    spent_usd: float = 0.0
    """What settled calls cost."""
    in_flight_usd: float = 0.0
    """What calls still in flight hold (their worst case)."""
    refused_calls: int = 0
    """Calls refused because they would have passed the budget."""
    calls: int = field(default=0)
    """Calls that held a reservation."""
    probes_beyond: int = 0
    """Breaker probes held beyond what waiting calls hold: from then on a call re-checks before it is sent."""
    _settled: asyncio.Event | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        optional_number("budget_usd", self.budget_usd, unit="US dollars", fix="e.g. budget_usd=5.0, or None for no cap")

    def room(self, estimate_usd: float) -> str:
        """Whether `estimate_usd` fits: "now", "later" (once the calls in flight settle, at their worst case taking
        only what they hold) or "never" (what is spent leaves no room for it)."""
        if self.budget_usd is None or self.spent_usd + self.in_flight_usd + estimate_usd <= self.budget_usd:
            return "now"
        if self.in_flight_usd > 0 and self.spent_usd + estimate_usd <= self.budget_usd:
            return "later"
        return "never"

    async def settled(self) -> None:
        """Wait until a call holding part of this budget settles."""
        if self._settled is None:
            self._settled = asyncio.Event()
        self._settled.clear()
        await self._settled.wait()

    def reserve(self, estimate_usd: float, *, beyond_holds: bool = False) -> None:
        """Hold `estimate_usd` for a call about to be made (`beyond_holds`: a breaker probe, which the calls holding
        the rest wait for, needs only room beyond what is spent; the calls then re-check before they are sent).

        Args:
            estimate_usd: the call's worst case.
            beyond_holds: a breaker probe's hold: checked against what is spent only.

        Raises:
            BudgetExceededError: the call would take spending over the budget.
        """
        held = 0.0 if beyond_holds else self.in_flight_usd
        if self.budget_usd is not None and self.spent_usd + held + estimate_usd > self.budget_usd:
            self.refused_calls += 1
            raise BudgetExceededError(
                f"the next call (about ${estimate_usd:.4f}) would pass the budget of ${self.budget_usd:.4f} "
                f"(spent ${self.spent_usd:.4f}, in flight ${self.in_flight_usd:.4f}); calls stopped"
            )
        if beyond_holds and self.budget_usd is not None and self.over_held(estimate_usd):
            self.probes_beyond += 1
        self.in_flight_usd += estimate_usd
        self.calls += 1

    def over_held(self, more_usd: float = 0.0) -> bool:
        """Whether what is spent and held (and `more_usd`) passes the budget: only after a probe held beyond."""
        return self.budget_usd is not None and self.spent_usd + self.in_flight_usd + more_usd > self.budget_usd

    def settle(self, estimate_usd: float, actual_usd: float) -> None:
        """The call that held `estimate_usd` cost `actual_usd` (0 when it failed before an answer).

        Args:
            estimate_usd: what the call held (its reservation).
            actual_usd: what it cost.
        """
        left = self.in_flight_usd - estimate_usd
        self.in_flight_usd = left if left > _ROUNDING_USD else 0.0  # what sums of holds leave is not a hold
        self.spent_usd += actual_usd
        if self._settled is not None:
            self._settled.set()


_SELF_CACHING = frozenset({"openai", "azure", "deepseek", "xai", "text-completion-openai"})
"""Providers that cache prompt prefixes themselves (no `cache_control` marker)."""


def cache_points(model: str, litellm: Any) -> list[dict[str, str]] | None:
    """A `cache_control` breakpoint after the system message, for providers that take one (litellm's
    `cache_control_injection_points`), when litellm says the model supports prompt caching."""
    if model.startswith("flock-offline/"):
        return None
    try:
        from litellm.utils import supports_prompt_caching

        _, provider, _, _ = litellm.get_llm_provider(model)
        if provider in _SELF_CACHING or not supports_prompt_caching(model=model):
            return None
    except Exception:  # noqa: BLE001 - unknown model or provider: no marker
        return None
    return [{"location": "message", "role": "system"}]
