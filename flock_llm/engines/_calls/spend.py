"""Around each LLM call (used by the call shell, `_shell`): its cost against the budgets (the engine's and the
Flock's) and its tokens and request against the per-minute limits. Before: reserve the worst case (the prompt and
the `max_tokens` the request allows), wait for room. After: settle with the real figures."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..._numbers import optional_number
from ...errors import BudgetExceededError, ConfigurationError
from .._base import EngineContext
from .models import is_offline
from .prices import CachedTokens, CostLedger, TokenPrices, in_tier, prices_for
from .rate import PROCESS_WINDOWS, RateWindow, window_name

__all__ = ["CallCosts", "Ticket", "parse_prices"]

OFFLINE_PRICES = TokenPrices(input=0.0, output=0.0, source="offline")


def parse_prices(prices: TokenPrices | Mapping[str, float] | None) -> TokenPrices | None:
    """`prices=` as given: a TokenPrices or a mapping with its fields (USD per million tokens)."""
    if prices is None or isinstance(prices, TokenPrices):
        return prices
    if isinstance(prices, Mapping):  # the values are checked by TokenPrices
        unknown = set(prices) - {"input", "output", "cached_input", "cache_write"}
        if unknown or not {"input", "output"} <= set(prices):
            raise ConfigurationError(
                "`prices` needs `input` and `output` (USD per million tokens), optionally `cached_input` and "
                f"`cache_write`; got {sorted(prices)}"
            )
        return TokenPrices(
            input=prices["input"],
            output=prices["output"],
            cached_input=prices.get("cached_input"),
            cache_write=prices.get("cache_write"),
        )
    raise ConfigurationError(f"`prices` must be a TokenPrices or a mapping, got {type(prices).__name__}")


def _positive(name: str, value: object, *, integer: bool = False) -> None:
    kind = "positive whole" if integer else "positive"
    optional_number(name, value, integer=integer, fix=f"pass a {kind} number, or None for no limit")


@dataclass
class Ticket:
    """What one call holds: its cost estimate in the ledgers, and its window entries (per attempt)."""

    estimate_usd: float
    ledgers: list[CostLedger]
    tokens: int
    tier: str = "standard"
    """Where the call went: "standard", "flex" or "batch" (its price)."""
    entries: list[tuple[RateWindow, str, bool]] = field(default_factory=list)
    """(window, entry, counts tokens: else one request)"""
    worst_usd: float = 0.0
    """One attempt's worst case (the first estimate): a retry after a charged attempt holds it again."""
    probe: bool = False
    """A breaker probe's (held beyond what waiting calls hold)."""


class CallCosts:
    """One engine's prices, budget and per-minute limits."""

    def __init__(
        self,
        *,
        prices: TokenPrices | Mapping[str, float] | None,
        budget_usd: float | None,
        tokens_per_minute: int | None,
        requests_per_minute: float | None,
        account: str = "default",
    ) -> None:
        _positive("tokens_per_minute", tokens_per_minute, integer=True)
        _positive("requests_per_minute", requests_per_minute)
        self.account = account
        """Whose quota the windows are (`_rate.account_of`): windows are per (account, model)."""
        self.prices = parse_prices(prices)
        self.ledger = CostLedger(budget_usd)
        self.tokens_per_minute = None if tokens_per_minute is None else int(tokens_per_minute)
        self.requests_per_minute = None if requests_per_minute is None else max(1, math.floor(requests_per_minute))
        self._litellm_prices: dict[str, TokenPrices | None] = {}

    def prices_for(self, model: str, litellm: Any, tier: str = "standard") -> TokenPrices | None:
        """The prices to count with in `tier`: given (at the tier's discount), the offline model's (zero), else
        litellm's price map's (or None)."""
        if self.prices is not None:
            return in_tier(self.prices, tier)
        if is_offline(model):
            return OFFLINE_PRICES
        key = f"{tier}:{model}"
        if key not in self._litellm_prices:
            self._litellm_prices[key] = prices_for(model, litellm, tier)
        return self._litellm_prices[key]

    async def reserve(
        self,
        ctx: EngineContext,
        model: str,
        litellm: Any,
        prompt: int,
        answer: int,
        tier: str = "standard",
        *,
        probe: bool = False,
    ) -> Ticket:
        """Hold the call's worst case (`prompt` tokens and an `answer` of the `max_tokens` it may take) in every
        ledger (the engine's, the Flock's); a call that fits what is spent but not what calls in flight hold waits
        for them to settle (they usually cost less than they hold). A breaker `probe` does not wait for them (they
        wait for it): it needs room only beyond what is spent, and the calls re-check before they are sent.

        Raises:
            BudgetExceededError: the call would pass a budget, or a budget is set and the model's price is unknown.
        """
        ledgers = [self.ledger] + ([ctx.budget] if ctx.budget is not None else [])
        prices = self.prices_for(model, litellm, tier)
        capped = any(ledger.budget_usd is not None for ledger in ledgers)
        if prices is None and capped:
            raise BudgetExceededError(
                f"a budget is set but the price of {model} is unknown to litellm; pass "
                "LLMEngine(prices={'input': ..., 'output': ...}) (USD per million tokens)"
            )
        estimate = 0.0 if prices is None else prices.cost(prompt=prompt, completion=answer)
        if not probe:  # a probe does not wait for the calls that wait for it
            await _room_after_settling(ledgers, estimate)
        _hold(ledgers, estimate, beyond_holds=probe)
        return Ticket(estimate, ledgers, prompt + answer, tier, worst_usd=estimate, probe=probe)

    def cover(self, ticket: Ticket, spent_usd: float) -> None:
        """Before another attempt of a call whose earlier attempts cost `spent_usd` (timed-out prompts): hold that
        and the attempt's worst case, so retries in flight cannot pass a budget either.

        Raises:
            BudgetExceededError: the attempt would pass a budget (it is not sent; what the call holds is kept).
        """
        more = spent_usd + ticket.worst_usd - ticket.estimate_usd
        if more <= 0:
            return
        _hold(ticket.ledgers, more)
        ticket.estimate_usd += more

    async def make_room(self, ticket: Ticket) -> None:
        """Before an attempt, after a breaker probe was held beyond what waiting calls hold (see `reserve`): while
        what is spent and held passes a budget, this call lets go of its hold and takes it again once it fits
        (waiting for calls in flight to settle, as `reserve` does), so no call is sent that could pass a budget.

        Raises:
            BudgetExceededError: what is spent leaves no room for the call (it is not sent).
        """
        ledgers = ticket.ledgers
        if ticket.probe or not any(ledger.probes_beyond and ledger.over_held() for ledger in ledgers):
            return
        for ledger in ledgers:
            ledger.settle(ticket.estimate_usd, 0.0)
        ticket.estimate_usd = 0.0
        await _room_after_settling(ledgers, ticket.worst_usd)
        _hold(ledgers, ticket.worst_usd)
        ticket.estimate_usd = ticket.worst_usd

    async def admit(self, ctx: EngineContext, model: str, ticket: Ticket, *, tokens: bool = True) -> None:
        """Wait until the call's tokens (unless not `tokens`: a batch job's own request) and one request fit the
        per-minute limits (one attempt)."""
        windows = ctx.rate_windows or PROCESS_WINDOWS
        if tokens and self.tokens_per_minute is not None:
            window = windows.window(window_name(self.account, model, "tokens"), self.tokens_per_minute)
            ticket.entries.append((window, await window.acquire(ticket.tokens), True))
        if self.requests_per_minute is not None and ctx.rate_windows is not None:
            window = windows.window(window_name(self.account, model, "requests"), self.requests_per_minute)
            ticket.entries.append((window, await window.acquire(1), False))

    async def attempt_done(self, ticket: Ticket, tokens: int) -> None:
        """An attempt ended: its window entries now hold `tokens`, what the provider counted for it (the prompt and
        the `max_tokens` it allowed when it was answered or timed out; 0 when it was refused)."""
        entries, ticket.entries = ticket.entries, []
        for window, entry, counts_tokens in entries:
            await window.settle(entry, tokens if counts_tokens else 1)

    def price(
        self,
        ticket: Ticket,
        model: str,
        litellm: Any,
        *,
        prompt: int,
        completion: int,
        cached: CachedTokens,
        litellm_cost: float | None,
    ) -> float | None:
        """What one answer (or a timed-out prompt) cost at the ticket's tier; None when unknown."""
        cost = None if ticket.tier != "standard" else litellm_cost  # litellm prices standard calls only
        prices = self.prices_for(model, litellm, ticket.tier)
        if prices is not None and (self.prices is not None or cost is None or prices.source == "offline"):
            cost = prices.cost(prompt=prompt, completion=completion, cached=cached.read, cache_write=cached.written)
        return cost

    def close(self, ticket: Ticket, cost: float | None) -> None:
        """Settle the ledgers with the call's real cost (its estimate when the cost is unknown)."""
        for ledger in ticket.ledgers:
            ledger.settle(ticket.estimate_usd, ticket.estimate_usd if cost is None else cost)

    def release(self, ticket: Ticket) -> None:
        """The call got no answer (and did not time out): it cost nothing."""
        for ledger in ticket.ledgers:
            ledger.settle(ticket.estimate_usd, 0.0)


async def _room_after_settling(ledgers: list[CostLedger], amount: float) -> None:
    """Wait while `amount` fits what is spent in every ledger but not what calls in flight hold (they usually
    settle for less); return at once when it fits, or when it never will (`_hold` then refuses it)."""
    while (later := next((ledger for ledger in ledgers if ledger.room(amount) == "later"), None)) is not None:
        if any(ledger.room(amount) == "never" for ledger in ledgers):
            return
        await later.settled()


def _hold(ledgers: list[CostLedger], amount: float, *, beyond_holds: bool = False) -> None:
    """Hold `amount` in every ledger, or in none (BudgetExceededError from the first it would pass)."""
    held: list[CostLedger] = []
    try:
        for ledger in ledgers:
            ledger.reserve(amount, beyond_holds=beyond_holds)
            held.append(ledger)
    except BudgetExceededError:
        for ledger in held:
            ledger.settle(amount, 0.0)
        raise
