"""The built-in offline model: a litellm custom provider that needs no network.

It answers every request with schema-valid, deterministic placeholder JSON
generated from the requested `response_format` schema (one result per item
id in per-item mode), and reports token usage counted from the prompt, so
runs on a fresh machine exercise the whole pipeline. Imported only by
`load_litellm()`, after litellm itself.
"""

from __future__ import annotations

import json
import time
from typing import Any

import litellm
from litellm import CustomLLM
from litellm.types.utils import ModelResponse

from ._placeholder import placeholder_for

__all__ = ["OfflineLLM"]


def _schema_of(optional_params: dict[str, Any]) -> dict[str, Any]:
    response_format = optional_params.get("response_format") or {}
    if isinstance(response_format, dict):
        schema = response_format.get("json_schema", {}).get("schema")
        if isinstance(schema, dict):
            return schema
    return {"type": "object", "properties": {"note": {"type": "string"}}}


class OfflineLLM(CustomLLM):  # type: ignore[misc]  # litellm is untyped to mypy here
    """Placeholder answers for `flock-offline/...` models."""

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self._answer(kwargs)

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self._answer(kwargs)

    @staticmethod
    def _answer(kwargs: dict[str, Any]) -> ModelResponse:
        messages = kwargs.get("messages") or []
        content = json.dumps(placeholder_for(_schema_of(kwargs.get("optional_params") or {})))
        prompt_tokens = litellm.token_counter(model="gpt-4o-mini", messages=messages)
        completion_tokens = litellm.token_counter(model="gpt-4o-mini", text=content)
        return ModelResponse(
            model=kwargs.get("model", "placeholder"),
            created=int(time.time()),
            choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        )
