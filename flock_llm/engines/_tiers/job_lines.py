"""The lines of a provider batch job: each request's id (`custom_id_of`), and the output and error files, read as
they stream in: each line's request id and what it brought (the chat completion, or why there is none). Memory
stays at about one chunk, whatever the size of the file."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LineResult", "custom_id_of", "file_lines", "line_result", "lines_of"]

_CHUNK = 256 * 1024
"""Bytes per chunk of a streamed file."""


def custom_id_of(body: dict[str, Any], attempt: int = 0, endpoint: str = "") -> str:
    """A request's id: a hash of its body and where it goes (the same batch asks the same request again after a
    restart; attempt 1 is the same request asked again in a later job)."""
    text = json.dumps(
        {"body": body, "attempt": attempt, "to": endpoint}, sort_keys=True, ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class LineResult:
    """One request's line of a finished job."""

    body: dict[str, Any] | None = None
    """The chat completion (when the line was answered)."""
    problem: str = ""
    """Why it was not: the line's error, "expired", or the job's final status."""


def line_result(raw: bytes) -> tuple[str, LineResult] | None:
    """The request id of one line and its result; None when the line is not a JSON object with a `custom_id`
    (a malformed line: its request gets no line and is asked again)."""
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse: that line alone is lost
        return None
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        return None
    response, error = line.get("response"), line.get("error")
    response = response if isinstance(response, dict) else {}
    body = response.get("body")
    if error or response.get("status_code") != 200 or not isinstance(body, dict):
        code = (error.get("code") if isinstance(error, dict) else None) or f"HTTP {response.get('status_code')}"
        return line["custom_id"], LineResult(problem=str(code))
    return line["custom_id"], LineResult(body=body)


async def lines_of(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The non-blank lines of a streamed file. After each chunk the event loop runs once, so the requests
    answered by that chunk can take their answers before the next chunk is parsed."""
    rest = b""
    async for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            if part.strip():
                yield part
        await asyncio.sleep(0)
    if rest.strip():
        yield rest


async def file_lines(
    litellm: Any, file_id: str, settings: dict[str, Any], requests: Callable[[Callable[[], Awaitable[Any]]], Any]
) -> AsyncIterator[bytes]:
    """The non-blank lines of a job's output or error file, streamed (litellm `afile_content(stream=True)`); the
    download's request is sent by `requests` (paced, behind the breaker), its stream read as the lines are used."""
    content = await requests(lambda: litellm.afile_content(file_id=file_id, stream=True, chunk_size=_CHUNK, **settings))
    chunks = getattr(content, "stream_iterator", None)
    if chunks is None:  # a litellm without streamed file content: the whole file at once
        for raw in bytes(getattr(content, "content", b"")).splitlines():
            if raw.strip():
                yield raw
        return
    try:
        async for raw in lines_of(chunks):
            yield raw
    finally:
        if hasattr(chunks, "aclose"):
            await chunks.aclose()
