"""Pure parsing of model answers: find the JSON, validate it, align per-item results by id."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["ItemResults", "extract_json", "parse_per_item", "parse_report", "validation_messages"]

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in a model answer: bare, in a code fence, or surrounded by prose.

    Raises:
        ValueError: no JSON object or array could be found.
    """
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        if candidate:
            try:
                return json.loads(candidate)
            except json.JSONDecodeError:
                pass
            except RecursionError:
                raise ValueError(f"the answer is nested too deeply to read ({len(text)} characters)") from None
    decoder = json.JSONDecoder()
    first = len(text) - len(text.lstrip())
    # an answer that starts like JSON must be JSON (text may follow it); one that starts with prose may hold
    # JSON anywhere
    starts = [first] if text[first : first + 1] in ("{", "[") else [i for i, c in enumerate(text) if c in "{["]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        except RecursionError:
            raise ValueError(f"the answer is nested too deeply to read ({len(text)} characters)") from None
        return value
    if starts == [first]:
        raise ValueError(f"the answer is not complete JSON ({len(text)} characters; it may have been cut off)")
    raise ValueError(f"the answer holds no JSON object ({len(text)} characters, starting {text[:60]!r})")


def validation_messages(exc: ValidationError, *, prefix: str = "") -> list[str]:
    """Short, model-readable descriptions of what failed validation."""
    messages = []
    for error in exc.errors()[:20]:
        where = ".".join(str(part) for part in error["loc"]) or "(root)"
        messages.append(f"{prefix}{where}: {error['msg']}")
    return messages


def parse_report(answer: str | Any, output_type: type[BaseModel]) -> tuple[BaseModel | None, list[str]]:
    """One object of `output_type` from the answer, or (None, what was wrong)."""
    try:
        data = extract_json(answer) if isinstance(answer, str) else answer
    except ValueError as exc:
        return None, [str(exc)]
    if isinstance(data, dict) and set(data) == {"report"} and isinstance(data["report"], dict):
        data = data["report"]  # some models wrap the object once
    try:
        return output_type.model_validate(data), []
    except ValidationError as exc:
        return None, validation_messages(exc)


@dataclass
class ItemResults:
    """Per-item answers aligned to the ids that were asked for."""

    valid: dict[str, BaseModel] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    """Ids whose entry was present but invalid, with what was wrong."""
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    """Ids in the answer that were not asked for (ignored)."""
    duplicates: list[str] = field(default_factory=list)
    """Ids answered more than once (the first valid entry wins)."""
    problem: str | None = None
    """Why the answer as a whole was unusable, if it was."""

    def feedback(self) -> list[str]:
        lines = [self.problem] if self.problem else []
        for item_id, messages in self.errors.items():
            lines += [f"item {item_id}: {m}" for m in messages[:5]]
        if self.missing:
            lines.append(f"no result for item ids: {', '.join(self.missing)}")
        if self.unknown:
            lines.append(f"results for ids that do not exist: {', '.join(self.unknown)}")
        return lines


def _entries(data: Any) -> list[Any] | None:
    if isinstance(data, dict):
        for key in ("results", "items", "outputs"):
            if isinstance(data.get(key), list):
                return list(data[key])
        return None
    return list(data) if isinstance(data, list) else None


def parse_per_item(answer: str | Any, ids: Sequence[str], output_type: type[BaseModel]) -> ItemResults:
    """Align `{"results": [{"item_id": ..., "output": {...}}]}` to `ids`, in any order."""
    results = ItemResults()
    try:
        data = extract_json(answer) if isinstance(answer, str) else answer
    except ValueError as exc:
        results.problem = str(exc)
        results.missing = list(ids)
        return results
    entries = _entries(data)
    if entries is None:
        results.problem = 'the answer must be an object {"results": [{"item_id": ..., "output": {...}}, ...]}'
        results.missing = list(ids)
        return results
    wanted = set(ids)
    for entry in entries:
        item_id = str(entry.get("item_id", "")) if isinstance(entry, dict) else ""
        if item_id not in wanted:
            results.unknown.append(item_id or repr(entry)[:40])
            continue
        if item_id in results.valid:
            results.duplicates.append(item_id)
            continue
        payload = entry.get("output", {k: v for k, v in entry.items() if k != "item_id"})
        try:
            results.valid[item_id] = output_type.model_validate(payload)
            results.errors.pop(item_id, None)
        except ValidationError as exc:
            if item_id in results.errors:
                results.duplicates.append(item_id)
            results.errors.setdefault(item_id, validation_messages(exc))
    results.missing = [i for i in ids if i not in results.valid and i not in results.errors]
    return results
