"""The deferred tier (`LLMEngine(tier="batch")`): requests go into provider batch jobs (the Batch API, half
price) instead of being sent one by one. A second level of batching: a job closes at `job_size` requests,
`job_wait` seconds after its first one, or `quiet` seconds after its last one; it is uploaded (litellm
`acreate_file`, `acreate_batch`), polled with backoff (`aretrieve_batch`) and its output and error files read
(`afile_content`). Each request gets its line back: the chat completion, or why it failed or
expired. Jobs are recorded in a journal before they are submitted (see `_journal`), so a restarted process polls
the job it had submitted instead of paying again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from ._journal import JobJournal, MemoryJournal

__all__ = ["DeferredPolicy", "DeferredQueue", "LineResult", "custom_id_of"]

log = logging.getLogger("flock_llm.engines")

_DONE = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True, slots=True)
class DeferredPolicy:
    """How requests are grouped into provider batch jobs and how long they may wait."""

    job_size: int = 500
    """A job closes when it holds this many requests..."""
    job_wait: float = 30.0
    """...or this many seconds after its first request arrived..."""
    quiet: float = 2.0
    """...or this many seconds after the last one, when no more came (the end of a stream)."""
    poll_interval: float = 5.0
    """The first poll of a job; each next one waits 1.5 times longer, up to `max_poll_interval`."""
    max_poll_interval: float = 120.0
    """The longest wait between two polls of a job."""
    deadline: float = 24 * 3600.0
    """A request not answered this long after its job was submitted goes the synchronous way."""

    def __post_init__(self) -> None:
        if not isinstance(self.job_size, int) or isinstance(self.job_size, bool) or self.job_size < 1:
            raise ConfigurationError(f"`job_size` must be a positive integer, got {self.job_size!r}")
        for name in ("job_wait", "quiet", "poll_interval", "max_poll_interval", "deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"`{name}` must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class LineResult:
    """One request's line of a finished job."""

    body: dict[str, Any] | None = None
    """The chat completion (when the line was answered)."""
    problem: str = ""
    """Why it was not: the line's error, "expired", or the job's final status."""


def custom_id_of(body: dict[str, Any], attempt: int = 0, endpoint: str = "") -> str:
    """A request's id: a hash of its body and where it goes (the same batch asks the same request again after a
    restart; attempt 1 is the same request asked again in a later job)."""
    text = json.dumps(
        {"body": body, "attempt": attempt, "to": endpoint}, sort_keys=True, ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:40]


@dataclass
class _Pending:
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    quiet: asyncio.TimerHandle | None = None


class DeferredQueue:
    """One engine's provider batch jobs: requests in, lines out."""

    def __init__(self, policy: DeferredPolicy, litellm: Any, settings: dict[str, Any]) -> None:
        self.policy = policy
        self.litellm = litellm
        self.settings = {"custom_llm_provider": "openai", **settings}
        self.jobs_submitted = 0
        self.jobs_done = 0
        self.memory_journal = MemoryJournal()
        """The journal when the Flock's store keeps none (in memory: jobs are not resumed after a restart)."""
        self.endpoint = str(settings.get("api_base") or "")
        self._pending = _Pending()
        self._journal: JobJournal | None = None
        self._waiters: dict[str, dict[str, list[asyncio.Future[LineResult]]]] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def ask(self, journal: JobJournal, custom_id: str, body: dict[str, Any]) -> LineResult:
        """The line for one request: from the job the journal knows it was in, else from a new job."""
        self._journal = journal
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LineResult] = loop.create_future()
        record = await journal.job_of(custom_id)
        if record is not None and record.batch_id is None and record.file_id is not None:
            batch_id = await self._batch_for_file(record.file_id)
            if batch_id is None:  # uploaded, never submitted: submit that same file now
                batch_id = await self._create(record.key, record.file_id)
            await journal.submitted(record.key, batch_id=batch_id)
            record = await journal.job_of(custom_id)
        if record is not None and record.batch_id is not None:
            self._wait(record.batch_id, custom_id, future)
            return await future
        if record is not None:
            await journal.forget([custom_id])  # recorded, but the process died before the upload: a new job
        self._pending.requests.append((custom_id, body))
        self._waiters.setdefault(f"pending:{custom_id}", {}).setdefault(custom_id, []).append(future)
        pending = self._pending
        if len(pending.requests) >= self.policy.job_size:
            self._close_now()
        else:
            if pending.timer is None:
                pending.timer = loop.call_later(self.policy.job_wait, self._close_now)
            if pending.quiet is not None:
                pending.quiet.cancel()
            pending.quiet = loop.call_later(self.policy.quiet, self._close_now)
        return await future

    # -- jobs -------------------------------------------------------------------------------------------------

    def _close_now(self) -> None:
        pending, self._pending = self._pending, _Pending()
        for timer in (pending.timer, pending.quiet):
            if timer is not None:
                timer.cancel()
        if pending.requests:
            task = asyncio.get_running_loop().create_task(self._submit(pending.requests))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _submit(self, requests: list[tuple[str, dict[str, Any]]]) -> None:
        journal = self._journal
        assert journal is not None
        futures = {c: self._waiters.pop(f"pending:{c}", {}).get(c, []) for c, _ in requests}
        key = uuid.uuid4().hex
        try:
            await journal.begin(key, [c for c, _ in requests])
            lines = "".join(
                json.dumps({"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": b}) + "\n"
                for c, b in requests
            )
            uploaded = await self.litellm.acreate_file(
                file=("requests.jsonl", lines.encode(), "application/jsonl"), purpose="batch", **self.settings
            )
            await journal.submitted(key, file_id=uploaded.id)
            batch_id = await self._create(key, uploaded.id)
            await journal.submitted(key, batch_id=batch_id)
        except Exception as exc:  # noqa: BLE001 - upload or creation failed: those requests go synchronous
            log.warning(
                "a batch job could not be submitted (%s); its requests go the synchronous way", type(exc).__name__
            )
            await journal.forget([c for c, _ in requests])
            for waiting in futures.values():
                for future in waiting:
                    if not future.done():
                        future.set_result(LineResult(problem=f"job not submitted: {type(exc).__name__}"))
            return
        for custom_id, waiting in futures.items():
            for future in waiting:
                self._wait(batch_id, custom_id, future)

    async def _create(self, key: str, file_id: str) -> str:
        batch = await self.litellm.acreate_batch(
            completion_window="24h",
            endpoint="/v1/chat/completions",
            input_file_id=file_id,
            metadata={"flock_job": key},
            **self.settings,
        )
        self.jobs_submitted += 1
        return str(batch.id)

    async def _batch_for_file(self, file_id: str) -> str | None:
        """A job already created from `file_id` (the process died before it recorded the job's id)."""
        try:
            listed = await self.litellm.alist_batches(**self.settings)
        except Exception:  # noqa: BLE001 - listing is a best effort; a new job is created otherwise
            return None
        for batch in getattr(listed, "data", None) or []:
            if getattr(batch, "input_file_id", None) == file_id:
                return str(batch.id)
        return None

    @property
    def jobs_running(self) -> int:
        return len(self._pollers)

    def _wait(self, batch_id: str, custom_id: str, future: asyncio.Future[LineResult]) -> None:
        self._waiters.setdefault(batch_id, {}).setdefault(custom_id, []).append(future)
        if batch_id not in self._pollers:
            self._pollers[batch_id] = asyncio.get_running_loop().create_task(self._poll(batch_id))

    async def _poll(self, batch_id: str) -> None:
        interval, started = self.policy.poll_interval, time.monotonic()
        results: dict[str, LineResult] = {}
        final = "deadline"
        try:
            while time.monotonic() - started < self.policy.deadline:
                await asyncio.sleep(interval)
                interval = min(self.policy.max_poll_interval, interval * 1.5)
                try:
                    batch = await self.litellm.aretrieve_batch(batch_id=batch_id, **self.settings)
                except self.litellm.NotFoundError:
                    final = "lost (the provider does not know it)"
                    break
                except Exception as exc:  # noqa: BLE001 - a failed poll is tried again at the next interval
                    log.info("polling batch job %s failed (%s); trying again", batch_id, type(exc).__name__)
                    continue
                if batch.status in _DONE:
                    final = str(batch.status)
                    results = await self._read(batch)
                    self.jobs_done += 1
                    break
        finally:
            self._pollers.pop(batch_id, None)
            for custom_id, waiting in self._waiters.pop(batch_id, {}).items():
                result = results.get(custom_id) or LineResult(problem=f"no line: the job ended {final}")
                for future in waiting:
                    if not future.done():
                        future.set_result(result)

    async def _read(self, batch: Any) -> dict[str, LineResult]:
        results: dict[str, LineResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self.litellm.afile_content(file_id=file_id, **self.settings)
            for raw in getattr(content, "content", b"").splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                response, error = line.get("response") or {}, line.get("error")
                if error or response.get("status_code") != 200:
                    code = (error or {}).get("code") or f"HTTP {response.get('status_code')}"
                    results[str(line.get("custom_id"))] = LineResult(problem=str(code))
                else:
                    results[str(line.get("custom_id"))] = LineResult(body=response.get("body"))
        return results
