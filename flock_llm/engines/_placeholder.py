"""Schema-valid, deterministic placeholder data generated from a JSON schema (for the offline model)."""

from __future__ import annotations

from typing import Any

__all__ = ["placeholder_for"]

_MAX_DEPTH = 8


def placeholder_for(
    schema: dict[str, Any], *, defs: dict[str, Any] | None = None, name: str = "value", depth: int = 0
) -> Any:
    """A value that validates against `schema`.

    An array of objects with an `item_id` enum (the per-item answer shape)
    gets one element per id, so every item of a batch is answered.
    """
    defs = schema.get("$defs", defs) or {}
    if "$ref" in schema:
        return placeholder_for(_deref(schema, defs), defs=defs, name=name, depth=depth + 1)
    for fixed in ("const", "default"):
        if fixed in schema:
            return schema[fixed]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(combinator, []) if o.get("type") != "null"] or schema.get(combinator, [])
        if options:
            return placeholder_for(options[0], defs=defs, name=name, depth=depth + 1)
    kind = _kind(schema)
    if depth > _MAX_DEPTH:
        return _EMPTY.get(kind)
    if kind == "object":
        properties = schema.get("properties", {})
        return {key: placeholder_for(sub, defs=defs, name=key, depth=depth + 1) for key, sub in properties.items()}
    if kind == "array":
        return _array(schema, defs, name, depth)
    return _scalar(kind, schema, name)


_EMPTY: dict[str, Any] = {"object": {}, "array": [], "string": "", "integer": 0, "number": 0.0, "boolean": False}


def _kind(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return str(kind)


def _deref(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    return defs.get(schema["$ref"].rsplit("/", 1)[-1], {}) if "$ref" in schema else schema


def _scalar(kind: str, schema: dict[str, Any], name: str) -> Any:
    if kind == "string":
        return _string(schema, name)
    if kind == "integer":
        return max(int(schema.get("minimum", 0)), int(schema.get("exclusiveMinimum", -1)) + 1, 0)
    if kind == "number":
        return float(max(schema.get("minimum", 0.0), 0.0))
    if kind == "boolean":
        return False
    return None


def _array(schema: dict[str, Any], defs: dict[str, Any], name: str, depth: int) -> list[Any]:
    items = schema.get("items", {})
    resolved = _deref(items, defs)
    item_id = resolved.get("properties", {}).get("item_id", {})
    if item_id.get("enum"):
        answers = []
        for value in item_id["enum"]:
            element = placeholder_for(resolved, defs=defs, name=name, depth=depth + 1)
            element["item_id"] = value
            answers.append(element)
        return answers
    count = max(int(schema.get("minItems", 1)), 1)
    return [placeholder_for(items, defs=defs, name=name, depth=depth + 1) for _ in range(count)]


def _string(schema: dict[str, Any], name: str) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2026-01-01T00:00:00Z"
    if fmt == "date":
        return "2026-01-01"
    text = f"placeholder {name}"
    min_length = int(schema.get("minLength", 0))
    if len(text) < min_length:
        text = text.ljust(min_length, "x")
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])]
    return text
