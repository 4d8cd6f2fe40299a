"""Where deferred (provider batch) jobs are recorded before they are submitted, so a process killed between
submission and retrieval polls the same job after a restart instead of paying again.

Every method is a coroutine (the Redis journal talks to Redis). A request is known by its custom id (a hash of
its body: the same batch asks the same request again after a restart). A job's steps are recorded one by one:
`begin()` its requests before anything is sent, `submitted(file_id=)` its uploaded input file, then
`submitted(batch_id=)` the job the provider created from that file, and `finished()` once its lines were read.
A restart therefore knows which step a job reached: nothing uploaded (the requests go into a new job), uploaded
but not created (the one job is created from that file, by one process at a time: `claim()`), or created (it
is polled). `prune()` forgets jobs that
finished before a time, with their requests.

`MemoryJournal` lives as long as the process; the SQLite store's journal is `flock_llm.stores.sqlite_journal` (a
table in the store's file) and the Redis store's is in `flock_llm.stores.redis.journal`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["JobJournal", "JobRecord", "MemoryJournal"]


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What the journal knows of one job: its key, and its input file and provider id once it has them."""

    key: str
    """Ours, chosen before submission (sent as the job's metadata)."""
    file_id: str | None = None
    """The uploaded input file, once uploaded."""
    batch_id: str | None = None
    """The provider's job id, once created."""


class JobJournal(Protocol):
    """Where provider batch jobs are recorded, step by step (requests, upload, creation, finish), so a restarted
    process polls or creates the one job instead of paying again (memory, SQLite and Redis implement it)."""

    async def job_of(self, custom_id: str) -> JobRecord | None:
        """The job a request was put in, if any."""
        ...

    async def begin(self, key: str, custom_ids: list[str]) -> None:
        """Record a job's requests before it is submitted.

        Args:
            key: the job's key.
            custom_ids: its requests' ids.
        """
        ...

    async def submitted(self, key: str, *, file_id: str | None = None, batch_id: str | None = None) -> None:
        """Record a step of job `key`: its input file was uploaded (`file_id`), or the job created (`batch_id`).

        Args:
            key: the job's key.
            file_id: the uploaded input file's id.
            batch_id: the provider's job id.
        """
        ...

    async def forget(self, custom_ids: list[str]) -> None:
        """These requests go to another job (their first one failed or expired)."""
        ...

    async def claim(self, key: str, owner: str, until: float) -> bool:
        """Take the creation of job `key` (from its uploaded file, after a restart) for `owner` until `until`
        (seconds since the epoch); False while another owner holds it. Two processes resuming one file create
        one job: the other waits for the job's id in the journal, or for the claim to lapse (its owner died).

        Args:
            key: the job's key.
            owner: who claims it (a process's id).
            until: when the claim lapses (seconds since the epoch).
        """
        ...

    async def finished(self, key: str, at: float) -> None:
        """The job ended at `at` (seconds since the epoch) and its lines were read.

        Args:
            key: the job's key.
            at: when it ended (seconds since the epoch).
        """
        ...

    async def prune(self, before: float) -> int:
        """Forget the jobs that finished before `before`, and their requests; how many jobs were forgotten."""
        ...


class MemoryJournal:
    def __init__(self) -> None:
        self._requests: dict[str, str] = {}
        self._jobs: dict[str, JobRecord] = {}
        self._members: dict[str, set[str]] = {}
        self._finished: dict[str, float] = {}
        self._claims: dict[str, tuple[str, float]] = {}

    async def job_of(self, custom_id: str) -> JobRecord | None:
        key = self._requests.get(custom_id)
        return None if key is None else self._jobs.get(key)

    async def begin(self, key: str, custom_ids: list[str]) -> None:
        self._jobs[key] = JobRecord(key)
        self._members[key] = set(custom_ids)
        for custom_id in custom_ids:
            self._requests[custom_id] = key

    async def submitted(self, key: str, *, file_id: str | None = None, batch_id: str | None = None) -> None:
        old = self._jobs.get(key, JobRecord(key))
        self._jobs[key] = JobRecord(key, file_id or old.file_id, batch_id or old.batch_id)

    async def forget(self, custom_ids: list[str]) -> None:
        for custom_id in custom_ids:
            self._requests.pop(custom_id, None)

    async def claim(self, key: str, owner: str, until: float) -> bool:
        holder, held_until = self._claims.get(key, (owner, 0.0))
        if holder != owner and held_until > time.time():
            return False
        self._claims[key] = (owner, until)
        return True

    async def finished(self, key: str, at: float) -> None:
        if key in self._jobs:
            self._finished[key] = at

    async def prune(self, before: float) -> int:
        done = [key for key, at in self._finished.items() if at < before]
        for key in done:
            del self._finished[key]
            self._jobs.pop(key, None)
            self._claims.pop(key, None)
            for custom_id in self._members.pop(key, set()):
                if self._requests.get(custom_id) == key:
                    del self._requests[custom_id]
        return len(done)
