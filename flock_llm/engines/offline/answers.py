"""The offline model's answers: schema-valid and deterministic, derived from the items where the field allows
(see `_derive`), placeholders elsewhere."""

from __future__ import annotations

import json
import re
from typing import Any

from .derive import derive_value

__all__ = ["placeholder_answer", "placeholder_for"]

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


_ITEM = re.compile(r'<item id="([^"]+)">\n(.*?)\n</item>', re.DOTALL)
_SCHEMA_HEADING = re.compile(r"JSON schema of \w+:\n")


def placeholder_answer(messages: list[dict[str, Any]], response_format: Any) -> Any:
    """A schema-valid answer to one of flock_llm's prompts.

    Reads the `<item id=...>` blocks to answer every item id (per-item mode)
    or count the items (report mode); fields named like an item's fields are
    copied from it, integer fields ending in "count" get the item count. The
    schema comes from `response_format`, else from the system prompt.
    """
    user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
    system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
    if _DSPY_OUTPUTS in system:
        return _dspy_answer(system, user)
    items = []
    for item_id, data in _ITEM.findall(user):
        try:
            items.append((item_id, json.loads(data)))
        except json.JSONDecodeError:
            items.append((item_id, {}))
    schema = _requested_schema(response_format) or _schema_in_prompt(system) or {"type": "object"}
    if '{"results": [' in system and "results" not in schema.get("properties", {}):
        return {"results": [{"item_id": i, "output": _filled(schema, [data], per_item=True)} for i, data in items]}
    results = schema.get("properties", {}).get("results")
    if results is not None and results.get("type") == "object" and results.get("required"):  # keyed by item id
        data_of = dict(items)
        defs = schema.get("$defs", {})
        return {
            "results": {
                i: _filled({**_deref(sub, defs), "$defs": defs}, [data_of.get(i, {})], per_item=True)
                for i, sub in results.get("properties", {}).items()
            }
        }
    if results is not None and "output" in results.get("items", {}).get("properties", {}):
        output = {**results["items"]["properties"]["output"], "$defs": schema.get("$defs", {})}
        return {"results": [{"item_id": i, "output": _filled(output, [data], per_item=True)} for i, data in items]}
    return _filled(schema, [data for _, data in items], per_item=False)


def _requested_schema(response_format: Any) -> dict[str, Any] | None:
    if isinstance(response_format, dict):
        schema = response_format.get("schema") or (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
    return None


def _schema_in_prompt(system: str) -> dict[str, Any] | None:
    match = _SCHEMA_HEADING.search(system)
    if match is None:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(system, match.end())
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _filled(schema: dict[str, Any], sources: list[Any], *, per_item: bool) -> Any:
    """A schema-valid object: an item's own matching fields copied (per item), the rest derived from the items
    (counts, aggregates, sentiment, keywords, extracted sentences; see `_derive`), else placeholders."""
    value = placeholder_for(schema)
    if not isinstance(value, dict):
        return value
    items = [s for s in sources if isinstance(s, dict)]
    source = items[0] if per_item and items else {}
    properties, defs = schema.get("properties", {}), schema.get("$defs", {})
    for key in value:
        if key in source and isinstance(source[key], type(value[key])):
            value[key] = source[key]
            continue
        field = _deref(properties.get(key, {}), defs)
        derived = derive_value(key, field, items)
        if derived is not None and _fits(derived, field, value[key]):
            value[key] = derived
        elif key.endswith("count") and isinstance(value[key], int):
            value[key] = len(sources)
    return value


def _fits(derived: Any, field: dict[str, Any], placeholder: Any) -> bool:
    """Whether a derived value may replace the placeholder: the same JSON type, inside enum and bounds."""
    if isinstance(placeholder, bool) or not isinstance(derived, type(placeholder)):
        return isinstance(placeholder, float) and isinstance(derived, int)
    if field.get("enum") and derived not in field["enum"]:
        return False
    if isinstance(derived, (int, float)):
        return bool(field.get("minimum", derived) <= derived <= field.get("maximum", derived))
    return True


_DSPY_OUTPUTS = "Outputs will be a JSON object with the following fields."
_DSPY_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)", re.DOTALL)


def _dspy_answer(system: str, user: str) -> dict[str, Any]:
    """An answer to a DSPy JSONAdapter prompt: one value per output field, from the schema it states."""
    start = system.index(_DSPY_OUTPUTS) + len(_DSPY_OUTPUTS)
    try:
        fields, _ = json.JSONDecoder().raw_decode(system[start:].lstrip())
    except json.JSONDecodeError:
        return {}
    inputs: list[Any] = []
    for _, value in _DSPY_FIELD.findall(user):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            continue
        if isinstance(decoded, list):
            inputs = decoded
            break
    answer: dict[str, Any] = {}
    for name, note in fields.items():
        schema_text = str(note).split("JSON schema: ", 1)
        schema = json.loads(schema_text[1]) if len(schema_text) == 2 else {"type": "string"}
        answer[name] = _dspy_value(schema, inputs, name)
    return answer


def _dspy_value(schema: dict[str, Any], inputs: list[Any], name: str) -> Any:
    if schema.get("type") == "array":
        element = _deref(schema.get("items", {}), schema.get("$defs", {}))
        element = {**element, "$defs": schema.get("$defs", {})}
        if inputs:  # one answer per input item, ids and matching fields copied from it, the rest derived
            return [_dspy_item(element, _flat(source)) for source in inputs]
    if schema.get("type") == "object" or "$ref" in schema or "properties" in schema:
        return _filled(
            _deref(schema, schema.get("$defs", {})) | {"$defs": schema.get("$defs", {})},
            [_flat(source) for source in inputs],
            per_item=False,
        )
    return placeholder_for(schema, name=name)


def _dspy_item(element: dict[str, Any], source: dict[str, Any]) -> Any:
    """One per-item result: {item_id, output} with the output derived from its own item."""
    value = _filled(element, [source], per_item=True)
    output = element.get("properties", {}).get("output")
    if isinstance(value, dict) and isinstance(output, dict):
        defs = element.get("$defs", {})
        value["output"] = _filled({**_deref(output, defs), "$defs": defs}, [source], per_item=True)
    return value


def _flat(source: Any) -> dict[str, Any]:
    """An input item's fields, with a nested `data` object's fields alongside its own."""
    if not isinstance(source, dict):
        return {}
    data = source.get("data")
    return {**(data if isinstance(data, dict) else {}), **source}
