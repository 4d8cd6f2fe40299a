"""What one call is (`Ask`), as the budget and the record see it, checked where an engine builds it; `Resend`, a
transport's way to have its request sent again at once; and `settled_of`, what an answer consumed, read with the
engine's function and checked. Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..._numbers import number
from ...errors import ConfigurationError, ModelCallError
from .settled import Settled

__all__ = ["MAX_RESENDS", "Ask", "Resend", "resent", "settled_of"]

MAX_RESENDS = 4
"""Resends in a row one attempt may take (LLMEngine falls back through at most 2 structured-output forms)."""

R = TypeVar("R")
_TIERS = ("standard", "flex", "batch")


@dataclass(frozen=True, slots=True)
class Ask:
    """One call to make, as the budget and the record see it.

    Raises:
        ConfigurationError: a kind that is not a non-empty string, a tier other than "standard", "flex" or "batch",
            or counts that are not whole numbers >= 0 (a negative prompt would free budget for other calls).
    """

    kind: str
    """"batch", "repair", "reduce", "deferred" (a batch-job line), "probe" (the breaker's) or an engine's own."""
    items: int
    """How many items the call carries."""
    prompt_tokens: int
    """The prompt, counted before sending."""
    max_tokens: int
    """The longest answer the request allows: with the prompt, the worst case reserved in the budgets."""
    tier: str = "standard"
    """The price tier: "standard", "flex" or "batch"."""
    prompt: Callable[[], str] | None = None
    """The redacted prompt text, for spans that record prompts."""
    deferred: bool = False
    """A provider batch-job line: not paced, not behind the breaker (see the call shell's docstring)."""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ConfigurationError(f"Ask(kind=...) must be a non-empty string such as 'batch', got {self.kind!r}")
        if self.tier not in _TIERS:
            raise ConfigurationError(f"Ask(tier=...) must be one of {_TIERS}, got {self.tier!r}")
        for name in ("items", "prompt_tokens", "max_tokens"):
            fix = "count it before sending (the budgets hold the prompt and max_tokens)"
            number(f"Ask({name}=...)", getattr(self, name), bound="non_negative", integer=True, fix=fix)


class Resend(Exception):
    """Raised by a transport whose request the server refused in a way it has adapted to (a structured-output form
    the server does not take): the shell sends it again at once, paced and counted as a request, not a retry."""


def resent(times: int, exc: Resend) -> int:
    """One more `Resend` of an attempt that was resent `times` times in a row: so a transport that always raises
    Resend cannot loop forever against the provider.

    Raises:
        ModelCallError: past MAX_RESENDS in a row.
    """
    if times >= MAX_RESENDS:
        raise ModelCallError(
            f"the call's transport raised Resend {times + 1} times in a row ({str(exc)[:120]}); a transport may "
            f"ask to resend at most {MAX_RESENDS} times (e.g. once per structured-output form it falls back "
            "through): raise the request's error instead"
        ) from exc
    return times + 1


def settled_of(read: Callable[[R], Settled | None], reply: R) -> Settled | None:
    """What `reply` consumed, by the engine's `settled` function (None: nothing was answered).

    Raises:
        TypeError: `settled` returned something other than a Settled or None (what it raised is raised as is).
    """
    used = read(reply)
    if used is not None and not isinstance(used, Settled):
        raise TypeError(
            f"the call's `settled` function returned a {type(used).__name__}, not a Settled or None: return "
            "Settled(prompt_tokens=..., completion_tokens=...) or use Settled.of_completion for a chat completion"
        )
    return used
