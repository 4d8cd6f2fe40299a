"""A provider that degrades like real ones, for the fake OpenAI server (`FakeOpenAIServer(degrade=...)`).

Published measurements (BatchPrompt, ICLR 2024; Chen et al., ACL 2026) show batched answers going wrong as
batches grow, past a model-dependent collapse point, and more in the middle of a batch than at its ends. This
model reproduces that shape: an item at position `pos` of a batch of `n` is answered wrong with probability

    error(n, pos) = min(max_error, (slope * (n - 1) + steep * max(0, n - collapse_at)) * (1 + middle * 4x(1 - x)))

where x = pos / (n - 1). A one-item call is never wrong relative to the model's own one-item answer (that answer
is the reference audits compare with). Draws are seeded hashes of (seed, item, n, pos): repeatable, independent
of request order; the same item asked again at another position is drawn again. `drift()` (or `drift_after`
answered items) switches to other parameters mid-run. It is a simulation, not a model: its numbers say how
flock_llm's audit and controller react, not how any real model behaves.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Degradation", "DegradingModel"]

_ITEM = re.compile(r'<item id="([^"]+)">\n(.*?)\n</item>', re.DOTALL)


@dataclass(frozen=True, slots=True)
class Degradation:
    """The shape of the error curve (see the module docstring)."""

    collapse_at: int = 40
    """The batch size past which errors grow steeply."""
    slope: float = 0.0005
    """Error chance added per item in the batch (n - 1), at every size."""
    steep: float = 0.02
    """Error chance added per item past `collapse_at`."""
    middle: float = 1.0
    """How much more often middle positions go wrong (x 1 + middle 4x(1-x), x the relative position)."""
    max_error: float = 0.9
    """The error chance never exceeds this."""
    wrong_numbers: float = 0.0
    """Report answers: the chance that a numeric field is off (grows like `error` past the collapse point)."""
    foreign_ids: float = 0.0
    """Report answers: the chance that an id list cites an id that is not in the batch."""

    def error(self, n: int, pos: int) -> float:
        """The chance that the item at position `pos` (0-based) of a batch of `n` is answered wrong.

        Args:
            n: the batch size.
            pos: the item's position.
        """
        if n <= 1:
            return 0.0
        x = pos / (n - 1)
        raw = (self.slope * (n - 1) + self.steep * max(0, n - self.collapse_at)) * (1 + self.middle * 4 * x * (1 - x))
        return min(self.max_error, raw)

    def agreement(self, n: int) -> float:
        """The expected share of a batch of `n` answered as the items would be alone."""
        return 1 - sum(self.error(n, pos) for pos in range(n)) / n


@dataclass
class DegradingModel:
    """Rewrites the fake server's answers: the one-item truth from `truth`, errors by `Degradation`."""

    curve: Degradation = field(default_factory=Degradation)
    """The error curve in use."""
    truth: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """An item's data -> the output fields it gets when asked alone (default: the offline model's answer)."""
    seed: int = 7
    """Seed of the hash that draws which answers go wrong."""
    drift_after: int | None = None
    """After this many answered items, `drifted` replaces `curve`."""
    drifted: Degradation | None = None
    """The curve that replaces `curve` after `drift_after` items."""
    answered: int = 0
    """Items answered so far (counted by the model)."""
    wrong: int = 0
    """Per-item answers it made wrong."""
    wrong_numbers_sent: int = 0
    """Wrong numbers it put into report answers."""
    foreign_ids_sent: int = 0
    """Ids not in the batch it put into report answers."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def drift(self, curve: Degradation | None = None, **changes: Any) -> None:
        """From now on answer with `curve` (or the current curve with `changes`).

        Args:
            curve: the new curve.
            **changes: fields of the current curve to change instead (e.g. `collapse_at=12`).
        """
        with self._lock:
            self.curve = curve or replace(self.curve, **changes)

    def _draw(self, *parts: object) -> float:
        digest = hashlib.sha256(json.dumps([self.seed, *parts], default=str).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def _current(self, items: int) -> Degradation:
        with self._lock:
            self.answered += items
            if self.drift_after is not None and self.drifted is not None and self.answered > self.drift_after:
                self.curve, self.drift_after = self.drifted, None
            return self.curve

    def apply(self, answer: Any, messages: list[dict[str, Any]]) -> Any:
        """The degraded version of the fake server's `answer` to `messages`.

        Args:
            answer: the fake server's parsed answer.
            messages: the chat messages it answered (the items are read from them).
        """
        user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
        items = dict(_ITEM.findall(user))
        if isinstance(answer, dict) and isinstance(answer.get("results"), list):
            results = answer["results"]
            curve = self._current(len(results))
            for pos, result in enumerate(results):
                self._item(result, items.get(str(result.get("item_id")), "{}"), curve, len(results), pos)
            return answer
        if isinstance(answer, dict) and isinstance(answer.get("results"), dict):  # keyed by id (pinned ids)
            keyed = answer["results"]
            curve = self._current(len(keyed))
            for pos, (item_id, output) in enumerate(keyed.items()):
                self._item({"output": output}, items.get(str(item_id), "{}"), curve, len(keyed), pos)
            return answer
        if isinstance(answer, dict):
            curve = self._current(1)
            return self._report(answer, items, curve, len(items))
        return answer

    def _item(self, result: dict[str, Any], data: str, curve: Degradation, n: int, pos: int) -> None:
        output = result.get("output")
        if not isinstance(output, dict):
            return
        if self.truth is not None:
            try:
                decoded = json.loads(data)
            except json.JSONDecodeError:
                decoded = {}
            output.update(self.truth(decoded if isinstance(decoded, dict) else {}))
        if self._draw(data, n, pos) < curve.error(n, pos):
            self._corrupt(output, data)
            with self._lock:
                self.wrong += 1

    def _corrupt(self, output: dict[str, Any], data: str) -> None:
        """Change one field so the answer differs from the one-item answer."""
        keys = sorted(output)
        if not keys:
            return
        key = keys[int(self._draw("field", data) * len(keys))]
        output[key] = _other(output[key], self._draw("value", data))

    def _report(self, answer: dict[str, Any], items: dict[str, str], curve: Degradation, n: int) -> dict[str, Any]:
        scale = 1 + curve.error(n, n // 2) * 10 if n > 1 else 1.0
        ids = list(items)
        key = json.dumps(sorted(items.items()))  # the batch's items: each batch draws its own faults
        for name, value in sorted(answer.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if self._draw("number", key, name) < min(1.0, curve.wrong_numbers * scale):
                    answer[name] = _other(value, self._draw("by", key, name))
                    self.wrong_numbers_sent += 1
            elif isinstance(value, list) and all(isinstance(v, str) for v in value) and ids:
                if self._draw("ids", key, name) < min(1.0, curve.foreign_ids * scale):
                    answer[name] = [*value, f"i{len(ids) + 7}"]
                    self.foreign_ids_sent += 1
        return answer


_LABELS = ("positive", "negative", "neutral", "mixed")


def _other(value: Any, draw: float) -> Any:
    """A different value of the same JSON type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 + int(draw * 3)
    if isinstance(value, float):
        return round(value * 1.5 + 1.0 + draw, 3)
    if isinstance(value, str):
        if value in _LABELS:
            others = [v for v in _LABELS[:3] if v != value]
            return others[int(draw * len(others))]
        return f"{value} (not quite)" if value else "unclear"
    if isinstance(value, list):
        return value[:-1] if value else ["unclear"]
    return value
