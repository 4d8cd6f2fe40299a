"""Pure parsing of model answers: find the JSON, validate it, align per-item results by id."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["ItemResults", "extract_json", "own_ids", "parse_per_item", "parse_report", "validation_messages"]

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
    """Ids in the answer that were not asked for and could not be mapped to one that was (ignored)."""
    duplicates: list[str] = field(default_factory=list)
    """Ids answered more than once (the first valid entry wins)."""
    mapped: int = 0
    """Entries whose id was not the one asked for but named one item unambiguously (a position number, the
    item's own id from its data, the id in backticks or another case, the one entry of a one-item answer)."""
    ambiguous: list[str] = field(default_factory=list)
    """Ids in the answer that could name more than one item, or an item already answered (ignored: asked again)."""
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
        if self.ambiguous:
            lines.append(f"results whose id names no single item: {', '.join(self.ambiguous)}")
        return lines


_NO_ID = object()
"""An entry that carries no item id at all."""


def _entries(data: Any, ids: Sequence[str]) -> list[tuple[Any, Any]] | None:
    """(claimed id, payload) of each result: from `{"results": [{"item_id", "output"}]}`, the keyed
    `{"results": {"<id>": output}}`, a bare list, or (asked for ids) a bare object keyed by them."""
    if isinstance(data, dict):
        for key in ("results", "items", "outputs"):
            value = data.get(key)
            if isinstance(value, list):
                return [_claim(entry) for entry in value]
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                return list(value.items())
        if data and set(data) & set(ids) and all(isinstance(v, dict) for v in data.values()):
            return list(data.items())
        return [(_NO_ID, data)] if len(ids) == 1 else None
    return [_claim(entry) for entry in data] if isinstance(data, list) else None


def _claim(entry: Any) -> tuple[Any, Any]:
    if not isinstance(entry, dict):
        return _NO_ID, entry
    payload = entry.get("output", {k: v for k, v in entry.items() if k != "item_id"})
    return entry.get("item_id", _NO_ID), payload


_DECORATION = re.compile(r"[\s`*\"'<>\[\]#:.()]+")
_POSITION = re.compile(r"(?:item|result|review|no|number|n)?[_\-]?(\d+)")


def _name(value: Any) -> str:
    """An id as written, without markdown and quoting, lower-case."""
    return _DECORATION.sub("", str(value)).lower()


def _mapping(claimed: Any, ids: Sequence[str], shown: Sequence[str], aliases: Mapping[str, Sequence[str]]) -> list[str]:
    """The asked ids a claimed id could name: exact, decorated, a position in the prompt, or an item's own id."""
    if claimed is _NO_ID:
        return list(ids) if len(ids) == 1 else []
    if isinstance(claimed, str) and claimed in ids:
        return [claimed]
    name = _name(claimed)
    if not name:
        return list(ids) if len(ids) == 1 else []
    found = {i for i in ids if _name(i) == name}
    position = _POSITION.fullmatch(name)
    if position is not None:
        n = int(position.group(1))
        if 1 <= n <= len(shown) and shown[n - 1] in ids:
            found.add(shown[n - 1])
        found |= {i for i in ids if re.fullmatch(rf"[a-z]*0*{n}", _name(i))}  # "3" for the id "i3"
    found |= {i for i in ids if any(_name(a) == name for a in aliases.get(i, ()))}
    if not found and len(ids) == 1:
        return list(ids)  # a one-item request: whatever id it gave, the answer is that item's
    return sorted(found)


def parse_per_item(
    answer: str | Any,
    ids: Sequence[str],
    output_type: type[BaseModel],
    *,
    shown: Sequence[str] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> ItemResults:
    """Align a per-item answer to `ids`, in any order.

    Takes `{"results": [{"item_id": ..., "output": {...}}]}`, the keyed `{"results": {"<id>": {...}}}`, and what
    small models make of them: ids in backticks or another case, position numbers (in `shown`, the prompt's
    order; default `ids`), an item's own id (`aliases`: other names of each id, e.g. its data's id fields), and
    for a one-item request, one result with a missing or wrong id. An entry that could name several items, or
    names by another name an item that is answered under its own id, is ignored (the item is asked again).
    """
    results = ItemResults()
    try:
        data = extract_json(answer) if isinstance(answer, str) else answer
    except ValueError as exc:
        results.problem = str(exc)
        results.missing = list(ids)
        return results
    entries = _entries(data, ids)
    if entries is None:
        results.problem = 'the answer must be an object {"results": [{"item_id": ..., "output": {...}}, ...]}'
        results.missing = list(ids)
        return results
    exact = {c for c, _ in entries if isinstance(c, str) and c in ids}
    for claimed, payload in entries:
        targets = _mapping(claimed, ids, shown or ids, aliases or {})
        label = "(none)" if claimed is _NO_ID else str(claimed)[:40]
        if not targets:
            results.unknown.append(label)
            continue
        is_exact = claimed in exact
        if len(targets) > 1 or (not is_exact and targets[0] in exact):
            results.ambiguous.append(label)
            continue
        item_id = targets[0]
        if item_id in results.valid:
            results.duplicates.append(item_id)
            continue
        try:
            results.valid[item_id] = output_type.model_validate(payload)
            results.errors.pop(item_id, None)
            results.mapped += not is_exact
        except ValidationError as exc:
            if item_id in results.errors:
                results.duplicates.append(item_id)
            results.errors.setdefault(item_id, validation_messages(exc))
    results.missing = [i for i in ids if i not in results.valid and i not in results.errors]
    return results


def own_ids(data: str) -> list[str]:
    """An item's own ids: the values of its top-level fields named `id` or `*_id` (models quote them back)."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, RecursionError):
        return []
    if not isinstance(value, dict):
        return []
    return [
        str(v)
        for k, v in value.items()
        if (k == "id" or k.endswith("_id")) and isinstance(v, (str, int)) and not isinstance(v, bool)
    ]


_T = TypeVar("_T")


def halves(items: Sequence[_T]) -> list[list[_T]]:
    """`items` split in two (the first half the smaller one when the count is odd)."""
    middle = len(items) // 2
    return [list(items[:middle]), list(items[middle:])]


def name_artifacts(line: str, item_id: str, artifact_ids: Sequence[str]) -> str:
    """A feedback line with the prompt's internal item id replaced by the artifact ids it stands for."""
    return re.sub(rf"\b{re.escape(item_id)}\b", "/".join(artifact_ids), line)
