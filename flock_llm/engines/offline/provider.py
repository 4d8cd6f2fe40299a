"""The built-in offline model: a litellm custom provider that needs no network.

It answers every request with schema-valid, deterministic JSON for the
requested schema (one result per item id in per-item mode), derived from the
items where a field allows it (counts, aggregates, VADER sentiment, YAKE
keywords, extracted sentences: see `_derive`), placeholders elsewhere, and
reports token usage counted from the prompt, so
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

from .answers import placeholder_answer
from .tokens import OFFLINE_TOKEN_MODEL

__all__ = ["OfflineLLM"]


class OfflineLLM(CustomLLM):  # type: ignore[misc]  # litellm is untyped to mypy here
    """Placeholder answers for `flock-offline/...` models."""

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self._answer(kwargs)

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self._answer(kwargs)

    @staticmethod
    def _answer(kwargs: dict[str, Any]) -> ModelResponse:
        messages = kwargs.get("messages") or []
        response_format = (kwargs.get("optional_params") or {}).get("response_format")
        content = json.dumps(placeholder_answer(messages, response_format), ensure_ascii=False)
        prompt_tokens = litellm.token_counter(model=OFFLINE_TOKEN_MODEL, messages=messages)
        completion_tokens = litellm.token_counter(model=OFFLINE_TOKEN_MODEL, text=content)
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
