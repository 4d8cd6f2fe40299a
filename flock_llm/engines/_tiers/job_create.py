"""Creating a provider batch job from an uploaded input file, once: a creation whose answer was lost (a 5xx or a
timeout after the provider made the job) is looked for before it is sent again, so one file never makes two jobs
(each would bill every line)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["batch_for_file", "create_job"]

Requests = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


async def create_job(litellm: Any, settings: dict[str, Any], requests: Requests, key: str, file_id: str) -> str:
    """The id of the job for `file_id` (`key`: the journal's, kept in the job's metadata). Each attempt after the
    first (`requests` retries a failed creation) first looks for a job of that file, in the same request slot; a
    creation that failed for good is looked for too (the provider may have made the job and lost only its answer).

    Raises:
        Exception: the creation's last error, when no job of the file exists.
    """
    attempts = 0

    async def create() -> Any:
        nonlocal attempts
        attempts += 1
        if attempts > 1 and (found := await _listed(litellm, settings, key, file_id)) is not None:
            return found  # the last attempt made it; only its answer was lost
        return await litellm.acreate_batch(
            completion_window="24h",
            endpoint="/v1/chat/completions",
            input_file_id=file_id,
            metadata={"flock_job": key},
            **settings,
        )

    try:
        batch = await requests(create)
    except Exception:
        found = await batch_for_file(litellm, settings, requests, key, file_id)
        if found is None:
            raise
        return found
    return str(batch.id)


async def batch_for_file(
    litellm: Any, settings: dict[str, Any], requests: Requests, key: str, file_id: str
) -> str | None:
    """The id of a job already created from `file_id` (the process died, or the answer was lost, before its id was
    recorded); None when there is none or the provider cannot say."""
    try:
        batch = await requests(lambda: _listed(litellm, settings, key, file_id))
    except Exception:  # noqa: BLE001 - listing is a best effort; a new job is created otherwise
        return None
    return None if batch is None else str(batch.id)


async def _listed(litellm: Any, settings: dict[str, Any], key: str, file_id: str) -> Any:
    listed = await litellm.alist_batches(limit=100, **settings)
    for batch in getattr(listed, "data", None) or []:
        metadata = getattr(batch, "metadata", None) or {}
        if getattr(batch, "input_file_id", None) == file_id or metadata.get("flock_job") == key:
            return batch
    return None
