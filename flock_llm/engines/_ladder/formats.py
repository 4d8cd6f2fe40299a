"""Structured output in the form each server understands (pure: no I/O).

`LLMEngine(structured_output=...)` takes "auto", "json_schema", "json_object" or "prompt" (True is
"json_schema", False "prompt", None "auto"). The rule for "auto":

- the offline model, and a model litellm knows to take a response schema (hosted providers, or a gateway in
  front of one): `json_schema`, as OpenAI defines it;
- a local server by its litellm provider prefix: `ollama/`, `ollama_chat/` (litellm turns the schema into
  Ollama's `format`), `hosted_vllm/`, `lm_studio/`: `json_schema`; `llamafile/` (llama.cpp): `json_object`
  with a `schema`, which llama.cpp turns into a grammar;
- any other `api_base` serving a model litellm does not know (an OpenAI-compatible server: vLLM, LM Studio,
  Ollama's `/v1`, llama.cpp's `llama-server` take `json_schema`): `json_schema`, and when the server rejects it
  (llama-cpp-python's server answers HTTP 500), `json_object` with a `schema`;
- anything else: `prompt` (the schema is in the system prompt only).

A server that rejects the format it was sent (an HTTP 4xx or 500 whose message names it) makes the engine use
the next mode in `FALLBACK` for that endpoint from then on, once, with one warning.

Local servers decode by grammar, so for them the per-item schema pins the ids and their count: `results` is an
object keyed by the item ids, every id required and no other allowed, so a small model can neither skip nor
repeat an item. Hosted providers keep the array schema, whose bytes stay the same across batches for their
prompt caches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import ConfigurationError

__all__ = [
    "FALLBACK",
    "MODES",
    "Format",
    "FormatMemory",
    "Mode",
    "StructuredOutput",
    "as_setting",
    "bounded_strings",
    "in_mode",
    "downgraded",
    "format_rejected",
    "next_mode",
    "per_item_schema",
    "request_format",
    "resolve_format",
    "schema_of",
]

StructuredOutput = Literal["auto", "json_schema", "json_object", "prompt"]
Mode = Literal["json_schema", "json_object", "prompt"]
MODES: tuple[StructuredOutput, ...] = ("auto", "json_schema", "json_object", "prompt")
FALLBACK: dict[Mode, Mode] = {"json_schema": "json_object", "json_object": "prompt"}
"""The mode to try when a server rejects one."""

LOCAL_PROVIDERS: dict[str, tuple[str, Mode]] = {
    "ollama": ("Ollama", "json_schema"),
    "ollama_chat": ("Ollama", "json_schema"),
    "hosted_vllm": ("vLLM", "json_schema"),
    "lm_studio": ("LM Studio", "json_schema"),
    "llamafile": ("llama.cpp", "json_object"),
}
"""litellm provider prefixes of servers that run on your own machines, and the mode each takes."""

STRING_LIMIT = 160
"""The longest string a grammar lets a model write into a field without its own limit: a small model that
never closes its quote would otherwise write until the token limit, and every other item of the call is lost."""


@dataclass(frozen=True, slots=True)
class Format:
    """How one engine asks a server for structured output."""

    mode: Mode
    pinned: bool
    """Whether per-item results are an object keyed by the item ids (for grammar-constrained decoding)."""
    server: str
    """What the rule took the server for (for messages): "hosted", "offline", "llama.cpp", "OpenAI-compatible"."""


def as_setting(value: object) -> StructuredOutput:
    """`structured_output` as one of MODES (True, False and None are aliases).

    Raises:
        ConfigurationError: anything else.
    """
    if value is None:
        return "auto"
    if value is True:
        return "json_schema"
    if value is False:
        return "prompt"
    if isinstance(value, str) and value in MODES:
        return value
    raise ConfigurationError(
        f"`structured_output` must be one of {', '.join(repr(m) for m in MODES)} (or True/False/None), got {value!r}"
    )


def resolve_format(
    setting: StructuredOutput, model: str, *, api_base: str | None, litellm_takes_schema: bool, offline: bool
) -> Format:
    """The format an engine starts with (see the module docstring for the rule)."""
    provider = model.split("/", 1)[0] if "/" in model else ""
    local = LOCAL_PROVIDERS.get(provider)
    if offline:
        return Format("prompt" if setting == "prompt" else "json_schema", False, "offline")
    if setting == "prompt":
        return Format("prompt", False, local[0] if local else "hosted")
    if local is not None:
        return Format(local[1] if setting == "auto" else setting, True, local[0])
    if setting == "json_object":  # llama.cpp's form: a schema with it means a grammar
        return Format("json_object", True, "OpenAI-compatible" if api_base else "hosted")
    if setting == "json_schema":
        return Format("json_schema", False, "OpenAI-compatible" if api_base else "hosted")
    if api_base and not litellm_takes_schema:
        return Format("json_schema", True, "OpenAI-compatible")
    return Format("json_schema" if litellm_takes_schema else "prompt", False, "hosted")


def next_mode(mode: Mode) -> Mode | None:
    """What to try after a server rejected `mode` (None: nothing; "prompt" cannot be rejected)."""
    return FALLBACK.get(mode)


_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "grammar", "'format'", '"format"')
_REJECTING_STATUS = frozenset({400, 415, 422, 500, 501})


def format_rejected(status_code: object, message: str) -> bool:
    """Whether an error is a server refusing the requested format: a 4xx (rate limits, auth and missing models
    aside) or a 500, whose message names the format."""
    if not isinstance(status_code, int) or status_code not in _REJECTING_STATUS:
        return False
    text = message.lower()
    return any(word in text for word in _FORMAT_WORDS)


class FormatMemory:
    """The mode each endpoint ended up with after rejections (per engine; endpoints as `Format.server` says)."""

    def __init__(self) -> None:
        self._modes: dict[str, Mode] = {}

    def mode(self, endpoint: str, start: Mode) -> Mode:
        return self._modes.get(endpoint, start)

    def reject(self, endpoint: str, rejected: Mode) -> Mode | None:
        """Note that `endpoint` rejected `rejected`; the mode to use from now on (None: nothing left to try).
        A rejection of a mode already left behind (a call that was in flight) changes nothing."""
        current = self._modes.get(endpoint)
        if current is not None and current != rejected:
            return current
        following = next_mode(rejected)
        if following is not None:
            self._modes[endpoint] = following
        return following


def per_item_schema(output: Mapping[str, Any], ids: Sequence[str] | None) -> dict[str, Any]:
    """The per-item answer schema: `{"results": [{"item_id", "output"}, ...]}`, or with `ids` (pinned)
    `{"results": {"<id>": output, ...}}` with every id required and no other allowed."""
    defs = output.get("$defs")
    body = {k: v for k, v in output.items() if k != "$defs"}
    results: dict[str, Any]
    if ids is None:
        results = {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"item_id": {"type": "string"}, "output": body},
                "required": ["item_id", "output"],
                "additionalProperties": False,
            },
        }
    else:
        bounded = bounded_strings(body)
        results = {
            "type": "object",
            "properties": {item_id: bounded for item_id in ids},
            "required": list(ids),
            "additionalProperties": False,
        }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"results": results},
        "required": ["results"],
        "additionalProperties": False,
    }
    if defs is not None:
        schema["$defs"] = bounded_strings(defs) if ids is not None else defs
    return schema


def bounded_strings(schema: Any) -> Any:
    """`schema` with a `maxLength` of STRING_LIMIT on every string that has none (for grammars)."""
    if isinstance(schema, list):
        return [bounded_strings(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {k: bounded_strings(v) for k, v in schema.items()}
    if bounded.get("type") == "string" and "maxLength" not in bounded and "enum" not in bounded:
        bounded["maxLength"] = STRING_LIMIT
    return bounded


def request_format(mode: Mode, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The `response_format` of one request in `mode` (None: send none; the prompt carries the schema)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name[:64], "schema": schema, "strict": False}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


def schema_of(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema inside a `response_format` of either form."""
    if response_format.get("type") == "json_object":
        schema = response_format.get("schema")
    else:
        schema = (response_format.get("json_schema") or {}).get("schema")
    return schema if isinstance(schema, dict) else None


def downgraded(response_format: Mapping[str, Any], mode: Mode) -> dict[str, Any] | None:
    """The same request's `response_format` in `mode` (after the server rejected the one it had)."""
    schema = schema_of(response_format)
    name = str((response_format.get("json_schema") or {}).get("name", "answer"))
    if schema is None:
        return None
    return request_format(mode, name, schema)


def in_mode(kwargs: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """`kwargs` with its `response_format` in `mode`, the endpoint's mode now (a server may have rejected the one
    the request was built with, for this call or another one)."""
    sent = kwargs.get("response_format")
    if not isinstance(sent, dict) or mode == ("json_object" if sent.get("type") == "json_object" else "json_schema"):
        return kwargs
    changed = dict(kwargs)
    changed["response_format"] = downgraded(sent, mode)
    if changed["response_format"] is None:
        del changed["response_format"]
    return changed
