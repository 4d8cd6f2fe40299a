"""Helpers for LLM engine tests: OpenAI-shaped responses and request inspection."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

OPENAI_URL = "https://api.openai.com/v1/chat/completions"
MODEL = "openai/gpt-4.1-mini"


def chat(
    content: str | dict[str, Any], *, prompt_tokens: int = 100, completion_tokens: int = 20, finish_reason: str = "stop"
) -> httpx.Response:
    text = content if isinstance(content, str) else json.dumps(content)
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4.1-mini",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    )


def error(
    status: int, message: str = "error", headers: dict[str, str] | None = None, code: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"error": {"message": message, "type": "error", "code": code}}
    return httpx.Response(status, json=body, headers=headers)


def body(request: httpx.Request) -> dict[str, Any]:
    return json.loads(request.content)


def item_ids(request: httpx.Request) -> list[str]:
    """The engine-assigned ids of the items in the request's first user message."""
    user = next(m["content"] for m in body(request)["messages"] if m["role"] == "user")
    return re.findall(r'<item id="([^"]+)">', user)


def per_item_answer(ids: list[str], label: str = "positive") -> dict[str, Any]:
    return {"results": [{"item_id": i, "output": {"review_id": f"r-{i}", "label": label}} for i in ids]}
