"""What an answer consumed, as its provider reported it (`Settled`), read from a chat completion: litellm's
response or a batch-job line's JSON body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .prices import CachedTokens, cached_tokens_of

__all__ = ["Settled", "completion_choice", "is_timeout"]


@dataclass(frozen=True, slots=True)
class Settled:
    """What an answer consumed, as its provider reported it: the shell settles the budgets with it."""

    prompt_tokens: int = 0
    """Prompt tokens the provider counted."""
    completion_tokens: int = 0
    """Answer tokens the provider counted."""
    cached: CachedTokens = field(default_factory=CachedTokens)
    """Prompt tokens read from or written to the provider's cache."""
    cost_usd: float | None = None
    """The provider's (litellm's) price for it, when known; else it is computed from the engine's prices."""
    requests: int = 1
    """Model requests the answer took (a DSPy module may call its LM several times)."""
    outcome: str = "ok"
    """"ok", "truncated" or "unparsed"."""

    @classmethod
    def of_completion(cls, reply: Any) -> Settled:
        """A chat completion's usage: litellm's response, or a batch-job line's JSON body."""
        usage = _field(reply, "usage")
        hidden = getattr(reply, "_hidden_params", None) or {}
        cost = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
        finish = completion_choice(reply)[1]
        return cls(
            prompt_tokens=_count(_field(usage, "prompt_tokens")),
            completion_tokens=_count(_field(usage, "completion_tokens")),
            cached=cached_tokens_of(usage if not isinstance(usage, Mapping) else _Attrs(usage)),
            cost_usd=None if cost is None else float(cost),
            outcome="truncated" if finish == "length" else "ok",
        )


def completion_choice(reply: Any) -> tuple[str, str | None]:
    """(content, finish_reason) of a chat completion's first choice (litellm's response or a JSON body)."""
    choices = _field(reply, "choices") or [{}]
    choice = choices[0]
    message = _field(choice, "message")
    return str(_field(message, "content") or ""), _field(choice, "finish_reason")


def is_timeout(exc: BaseException) -> bool:
    """Whether a request timed out on our side (the provider read its prompt; we never saw the answer)."""
    import litellm  # already loaded by the engine that made the call

    return isinstance(exc, (litellm.Timeout, TimeoutError))


class _Attrs:
    """A mapping read by attribute (a batch-job line's usage, for `cached_tokens_of`)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        value = self._values.get(name)
        return _Attrs(value) if isinstance(value, Mapping) else value


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
