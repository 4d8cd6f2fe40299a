"""The deferred tier (`LLMEngine(tier="batch")`): requests go into provider batch jobs (the Batch API, half
price) instead of being sent one by one. A second level of batching: a job closes at `job_size` requests,
`job_wait` seconds after its first one, or `quiet` seconds after its last one; it is uploaded (litellm
`acreate_file`, `acreate_batch`), polled with backoff (`aretrieve_batch`) and its output and error files streamed
(`afile_content`). Each request gets its line back: the chat completion, or why it failed or expired.

The promises (README, "Choosing a tier"): one line per request id (a request already on its way in this process
is waited for, never sent twice); jobs journaled step by step, so a restart polls the job it created or creates
the one job of a file it uploaded; a 404 job, a malformed line, a line in both files cost only their own lines;
the deadline cancels the job first and uses what it still answers. The provider's request ids are trusted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from .job_create import batch_for_file, create_job
from .job_lines import LineResult, custom_id_of, file_lines, line_result
from .job_policy import DeferredPolicy
from .journal import JobJournal, JobRecord, MemoryJournal

__all__ = ["DeferredPolicy", "DeferredQueue", "JobRequests", "LineResult", "custom_id_of"]

T = TypeVar("T")


class JobRequests(Protocol):
    """How a job's own HTTP requests are sent: `CallShell.request` (paced by the engine's request limits and
    behind its breaker)."""

    def __call__(self, send: Callable[[], Awaitable[T]]) -> Awaitable[T]: ...


async def _direct(send: Callable[[], Awaitable[T]]) -> T:
    return await send()


log = logging.getLogger("flock_llm.engines")

_DONE = frozenset({"completed", "failed", "expired", "cancelled"})
_LEFT = "left: nobody waits for its lines"
_QUIET = {"batch_ignore_default_logging": True}
"""Without it, litellm's success logging downloads a finished job's whole output file (to price it) on the poll
that sees it finish: a second download, held in memory at once. Costs are counted per line here."""


def _unknown(exc: BaseException) -> bool:
    """The provider answered 404: it does not know the job or file (litellm passes openai's NotFoundError
    through for the Batch API, not its own)."""
    return getattr(exc, "status_code", None) == 404


@dataclass
class _Pending:
    journal: JobJournal
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    quiet: asyncio.TimerHandle | None = None


@dataclass
class _Job:
    key: str
    journal: JobJournal
    waiting: set[str] = field(default_factory=set)
    """Request ids of this job that still wait for their line."""


class DeferredQueue:
    """One engine's provider batch jobs: requests in, lines out."""

    def __init__(
        self, policy: DeferredPolicy, litellm: Any, settings: dict[str, Any], requests: JobRequests = _direct, *,
        timeout: float = 60.0,
    ) -> None:  # fmt: skip
        """`settings`: what the job's requests need of the engine's (`api_base`, `api_key`, `extra_headers`,
        `organization`, ...); `requests` sends each of them (the engine's call shell); `timeout`: the engine's."""
        self.policy, self.litellm, self.timeout = policy, litellm, timeout
        self.settings = {"custom_llm_provider": "openai", **settings, "max_retries": 0, "timeout": timeout}
        """With every job request: no OpenAI SDK retries (around the engine's limits: `requests` retries), a timeout."""
        self.requests = requests
        """Every request of a job (upload, create, list, poll, download, cancel) goes through it."""
        self.jobs_submitted = 0
        self.jobs_done = 0
        self.memory_journal = MemoryJournal()
        """The journal when the Flock's store keeps none (in memory: jobs are not resumed after a restart)."""
        self.endpoint = str(settings.get("api_base") or "")
        self._pending: _Pending | None = None
        self._lines: dict[str, list[asyncio.Future[LineResult]]] = {}
        """Every request on its way in this process, with everyone waiting for its line."""
        self._jobs: dict[str, _Job] = {}
        self._resumes: dict[str, asyncio.Task[str | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._submits: dict[asyncio.Task[Any], set[str]] = {}
        """Jobs being uploaded and created, with their requests' ids."""
        self._owner = uuid.uuid4().hex  # this queue's name in the journal's claims (`JobJournal.claim`)

    async def ask(self, journal: JobJournal, custom_id: str, body: dict[str, Any]) -> LineResult:
        """The line for one request: from the job it is already in (in this process or, by the journal, before a
        restart), else from a new job."""
        future: asyncio.Future[LineResult] = asyncio.get_running_loop().create_future()
        waiting = self._lines.get(custom_id)
        if waiting is not None:  # the same request is on its way: its one line answers both
            waiting.append(future)
        else:
            self._lines[custom_id] = [future]
            self._spawn(self._route(journal, custom_id, body), [custom_id])
        try:
            return await future
        finally:
            if future.cancelled():  # a Ctrl-C: a job not yet submitted that nobody waits for any more is dropped
                for task, ids in list(self._submits.items()):
                    if custom_id in ids and not any(self._waited(c) for c in ids):
                        task.cancel()  # (the journal knows how far it got: a later ask resumes it)

    @property
    def jobs_running(self) -> int:
        """Jobs this process is polling now."""
        return len(self._jobs)

    # -- requests -------------------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None], custom_ids: list[str]) -> asyncio.Task[Any]:
        """Run `work` apart from the callers (a caller cancelled never strands the others who wait for the same
        lines); if it fails, everyone waiting for `custom_ids` gets its error."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            exc = None if task.cancelled() else task.exception()
            if exc is not None and custom_ids:
                self._fail(custom_ids, exc)
            elif exc is not None:
                log.error("a batch job's poller failed (%s)", type(exc).__name__, exc_info=exc)

        task.add_done_callback(done)
        return task

    async def _route(self, journal: JobJournal, custom_id: str, body: dict[str, Any]) -> None:
        record = await journal.job_of(custom_id)
        if record is not None and record.batch_id is None and record.file_id is not None:
            batch_id = await self._resume(journal, record, custom_id)
            record = None if batch_id is None else JobRecord(record.key, record.file_id, batch_id)
            if record is None:
                await journal.forget([custom_id])
        if record is not None and record.batch_id is not None:
            self._follow(record.batch_id, record.key, journal, [custom_id])
            return
        if record is not None:
            await journal.forget([custom_id])  # recorded, but the process died before the upload: a new job
        self._enqueue(journal, custom_id, body)

    def _enqueue(self, journal: JobJournal, custom_id: str, body: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = _Pending(journal)
        pending = self._pending
        pending.requests[custom_id] = body
        if len(pending.requests) >= self.policy.job_size:
            self._close_now()
            return
        if pending.timer is None:
            pending.timer = loop.call_later(self.policy.job_wait, self._close_now)
        if pending.quiet is not None:
            pending.quiet.cancel()
        pending.quiet = loop.call_later(self.policy.quiet, self._close_now)

    def _answer(self, custom_id: str, result: LineResult) -> None:
        for future in (f for f in self._lines.pop(custom_id, []) if not f.done()):
            future.set_result(result)

    def _fail(self, custom_ids: list[str], exc: BaseException) -> None:
        for future in (f for c in custom_ids for f in self._lines.pop(c, []) if not f.done()):
            future.set_exception(exc)

    # -- jobs -----------------------------------------------------------------------------------------------

    def _close_now(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        for timer in (pending.timer, pending.quiet):
            if timer is not None:
                timer.cancel()
        waited = {c: body for c, body in pending.requests.items() if self._waited(c)}  # a Ctrl-C: none, or some
        if waited:
            task = self._spawn(self._submit(pending.journal, waited), list(waited))
            self._submits[task] = set(waited)
            task.add_done_callback(lambda done: self._submits.pop(done, None))

    def _waited(self, custom_id: str) -> bool:
        """Whether a request is still waited for (the runs that asked it may all have been cancelled meanwhile)."""
        if any(not future.done() for future in self._lines.get(custom_id, [])):
            return True
        self._lines.pop(custom_id, None)
        return False

    async def _submit(self, journal: JobJournal, requests: dict[str, dict[str, Any]]) -> None:
        ids, key = list(requests), uuid.uuid4().hex
        try:
            await journal.begin(key, ids)
            lines = "".join(
                json.dumps({"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": b}) + "\n"
                for c, b in requests.items()
            )
            upload = ("requests.jsonl", lines.encode(), "application/jsonl")
            uploaded = await self.requests(
                lambda: self.litellm.acreate_file(file=upload, purpose="batch", **self.settings)
            )
            await journal.submitted(key, file_id=uploaded.id)
            batch_id = await self._create(key, uploaded.id)
            await journal.submitted(key, batch_id=batch_id)
        except Exception as exc:  # noqa: BLE001 - provider or journal failed: those requests go synchronous
            log.warning(
                "a batch job could not be submitted (%s); its requests go the synchronous way", type(exc).__name__
            )
            await journal.forget(ids)
            await journal.finished(key, time.time())  # a dead record: pruned like a finished job
            for custom_id in ids:
                self._answer(custom_id, LineResult(problem=f"job not submitted: {type(exc).__name__}"))
            return
        self._follow(batch_id, key, journal, ids)

    async def _resume(self, journal: JobJournal, record: JobRecord, custom_id: str) -> str | None:
        """The one job for a file uploaded before a restart (found, or created now), shared by every request of
        that file; None: the file cannot be used, its requests go into a new job."""
        task = self._resumes.get(record.key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._create_for(journal, record, custom_id))
            self._resumes[record.key] = task
        try:
            return await task
        except Exception:
            if self._resumes.get(record.key) is task:  # the journal failed: the next request tries again
                del self._resumes[record.key]
            raise

    async def _create_for(self, journal: JobJournal, record: JobRecord, custom_id: str) -> str | None:
        assert record.file_id is not None
        claim = max(60.0, 4 * self.policy.poll_interval)
        while not await journal.claim(record.key, self._owner, time.time() + claim):
            await asyncio.sleep(self.policy.poll_interval)  # another process creates this job: wait for its id
            if (now := await journal.job_of(custom_id)) is None or now.key != record.key:
                return None  # its requests moved on to a new job
            if now.batch_id is not None:
                return now.batch_id
        if (now := await journal.job_of(custom_id)) is not None and now.key == record.key and now.batch_id:
            return now.batch_id  # created by the process that held the claim before this one
        try:
            batch_id = await self._batch_for_file(record.key, record.file_id) or await self._create(
                record.key, record.file_id
            )
        except Exception as exc:  # noqa: BLE001 - the provider refused the file (gone, expired): upload anew
            log.warning(
                "the input file of an unfinished batch job could not be submitted after a restart (%s); its "
                "requests go into a new job",
                type(exc).__name__,
            )
            await journal.finished(record.key, time.time())  # a dead record: pruned like a finished job
            return None
        await journal.submitted(record.key, batch_id=batch_id)
        return batch_id

    async def _create(self, key: str, file_id: str) -> str:
        """Create the job for an uploaded file, once (a creation whose answer was lost is found, not repeated)."""
        batch_id = await create_job(self.litellm, self.settings, self.requests, key, file_id)
        self.jobs_submitted += 1
        return batch_id

    async def _batch_for_file(self, key: str, file_id: str) -> str | None:
        """A job already created from `file_id` (the process died before it recorded the job's id)."""
        return await batch_for_file(self.litellm, self.settings, self.requests, key, file_id)

    def _follow(self, batch_id: str, key: str, journal: JobJournal, custom_ids: list[str]) -> None:
        job = self._jobs.get(batch_id)
        if job is None:
            job = self._jobs[batch_id] = _Job(key, journal)
            self._spawn(self._poll(batch_id, job), [])
        job.waiting.update(custom_ids)

    # -- polling --------------------------------------------------------------------------------------------

    async def _poll(self, batch_id: str, job: _Job) -> None:
        status = "unpolled"
        try:
            status = await self._watch(batch_id, job)
        finally:
            self._jobs.pop(batch_id, None)
            for custom_id in job.waiting:
                self._answer(custom_id, LineResult(problem=f"no line: the job ended {status}"))
        if status != _LEFT:  # a job left by its runs stays unfinished in the journal: a later ask polls it again
            await self._housekeeping(job)

    async def _watch(self, batch_id: str, job: _Job) -> str:
        """Poll until the job ends and its lines are read, or it is lost; its final status for the lines
        without an answer ("deadline..." sends them the synchronous way at once)."""
        policy = self.policy
        interval, now = policy.poll_interval, time.monotonic()
        until, cancelled = now + policy.deadline, False
        while True:
            if not any(self._waited(custom_id) for custom_id in job.waiting):
                return _LEFT  # every run that asked its lines was cancelled: not polled (nor read) for nobody
            if now >= until:
                if cancelled:
                    log.warning(
                        "batch job %s did not end within `cancel_wait` after its cancellation; its unanswered "
                        "requests go the synchronous way (the provider may still bill them)",
                        batch_id,
                    )
                    return "deadline: not cancelled in time"
                cancelled, until = True, now + policy.cancel_wait
                if not await self._cancel(batch_id):
                    return "deadline: lost (the provider does not know it)"
            await asyncio.sleep(max(0.0, min(interval, until - now)))
            interval, now = min(policy.max_poll_interval, interval * 1.5), time.monotonic()
            try:  # a poll that hangs is given up after the engine's timeout (and retried), at the latest at the
                # deadline: by its HTTP timeout, so that litellm's request is never cancelled half-way; a poll still
                # waiting behind the breaker or the request limits a second after the deadline is given up too
                left = max(until - now, policy.poll_interval)
                settings = {**self.settings, "timeout": min(left, self.timeout)}
                retrieve = self.litellm.aretrieve_batch
                polling = self.requests(partial(retrieve, batch_id=batch_id, litellm_metadata=_QUIET, **settings))
                batch = await asyncio.wait_for(polling, left + 1.0)
                if batch.status not in _DONE:
                    continue
                await self._read(batch_id, batch, job)
            except Exception as exc:  # noqa: BLE001 - a failed poll or read is tried again at the next interval
                if _unknown(exc):
                    return "lost (the provider does not know it)"
                log.info("polling batch job %s failed (%s); trying again", batch_id, type(exc).__name__)
                now = time.monotonic()
                continue
            self.jobs_done += 1
            return f"deadline: {batch.status} after its cancellation" if cancelled else str(batch.status)

    async def _cancel(self, batch_id: str) -> bool:
        """Cancel a job past its deadline; False when the provider does not know it."""
        log.info("batch job %s passed its deadline; cancelling it", batch_id)
        try:
            cancelling = self.requests(lambda: self.litellm.acancel_batch(batch_id=batch_id, **self.settings))
            await asyncio.wait_for(cancelling, self.policy.cancel_wait)
        except Exception as exc:  # noqa: BLE001 - cancellation failed: the job is still polled until cancel_wait
            if _unknown(exc):
                return False
            log.warning("cancelling batch job %s failed (%s)", batch_id, type(exc).__name__)
        return True

    async def _read(self, batch_id: str, batch: Any, job: _Job) -> None:
        """Answer the job's waiting requests from its output file, then its error file: an answer wins over an
        error for the same request, in either file and in any order. Lines of requests nobody waits for are
        skipped."""
        problems: dict[str, LineResult] = {}  # errors of waiting requests, settled once no answer came
        for file_id, kind in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
            if not file_id or not job.waiting:
                continue
            malformed = 0
            async for raw in file_lines(self.litellm, str(file_id), self.settings, self.requests):
                if (parsed := line_result(raw)) is None:
                    malformed += 1
                elif parsed[0] in job.waiting and parsed[1].body is None:
                    problems.setdefault(parsed[0], parsed[1])
                elif parsed[0] in job.waiting:
                    job.waiting.discard(parsed[0])
                    self._answer(*parsed)
            if malformed:
                message = "%d line(s) of the %s file of batch job %s are not JSON lines with a request id; asked again"
                log.warning(message, malformed, kind, batch_id)
        for custom_id in problems.keys() & job.waiting:
            job.waiting.discard(custom_id)
            self._answer(custom_id, problems[custom_id])

    async def _housekeeping(self, job: _Job) -> None:
        """Mark the job finished and prune the journal's finished jobs older than `keep_finished`."""
        now = time.time()
        try:
            await job.journal.finished(job.key, now)
            await job.journal.prune(now - self.policy.keep_finished)
        except Exception as exc:  # noqa: BLE001 - housekeeping: a failure leaves records for the next prune
            log.warning("the batch job journal could not be pruned (%s)", type(exc).__name__)
