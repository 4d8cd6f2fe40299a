"""Where deferred (provider batch) jobs are recorded before they are submitted, so a process killed between
submission and retrieval polls the same job after a restart instead of paying again.

Every method is a coroutine (the Redis journal talks to Redis). A request is known by its custom id (a hash of
its body: the same batch asks the same request again after a restart). A job's steps are recorded one by one:
`begin()` its requests before anything is sent, `submitted(file_id=)` its uploaded input file, then
`submitted(batch_id=)` the job the provider created from that file, and `finished()` once its lines were read.
A restart therefore knows which step a job reached: nothing uploaded (the requests go into a new job), uploaded
but not created (the one job is created from that file), or created (it is polled). `prune()` forgets jobs that
finished before a time, with their requests.

`MemoryJournal` lives as long as the process; `SQLiteJournal` is a table in the SQLite store's file (its own
connection; each write is committed at once); the Redis store's journal is in `flock_llm.stores.redis.journal`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["JobJournal", "JobRecord", "MemoryJournal", "SQLiteJournal"]


@dataclass(frozen=True, slots=True)
class JobRecord:
    key: str
    """Ours, chosen before submission (sent as the job's metadata)."""
    file_id: str | None = None
    batch_id: str | None = None


class JobJournal(Protocol):
    async def job_of(self, custom_id: str) -> JobRecord | None:
        """The job a request was put in, if any."""
        ...

    async def begin(self, key: str, custom_ids: list[str]) -> None:
        """Record a job's requests before it is submitted."""
        ...

    async def submitted(self, key: str, *, file_id: str | None = None, batch_id: str | None = None) -> None: ...

    async def forget(self, custom_ids: list[str]) -> None:
        """These requests go to another job (their first one failed or expired)."""
        ...

    async def finished(self, key: str, at: float) -> None:
        """The job ended at `at` (seconds since the epoch) and its lines were read."""
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

    async def finished(self, key: str, at: float) -> None:
        if key in self._jobs:
            self._finished[key] = at

    async def prune(self, before: float) -> int:
        done = [key for key, at in self._finished.items() if at < before]
        for key in done:
            del self._finished[key]
            self._jobs.pop(key, None)
            for custom_id in self._members.pop(key, set()):
                if self._requests.get(custom_id) == key:
                    del self._requests[custom_id]
        return len(done)


class SQLiteJournal:
    """Deferred jobs in a SQLite file (the SQLite store's)."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self._db = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS deferred_jobs (key TEXT PRIMARY KEY, file_id TEXT, batch_id TEXT, "
                "finished_at REAL)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(deferred_jobs)")}
            if "finished_at" not in columns:  # a file written before jobs were pruned
                self._db.execute("ALTER TABLE deferred_jobs ADD COLUMN finished_at REAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS deferred_requests (custom_id TEXT PRIMARY KEY, job TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS deferred_requests_job ON deferred_requests (job)")

    # Each call runs in a worker thread: a write lock held by another connection (the store's writer, another
    # process) makes it wait up to the busy timeout without stalling the event loop.

    async def job_of(self, custom_id: str) -> JobRecord | None:
        row = await asyncio.to_thread(
            self._run,
            "SELECT j.key, j.file_id, j.batch_id FROM deferred_requests r JOIN deferred_jobs j ON j.key = r.job "
            "WHERE r.custom_id = ?",
            (custom_id,),
        )
        return None if row is None else JobRecord(row[0], row[1], row[2])

    async def begin(self, key: str, custom_ids: list[str]) -> None:
        await asyncio.to_thread(self._begin, key, custom_ids)

    async def submitted(self, key: str, *, file_id: str | None = None, batch_id: str | None = None) -> None:
        await asyncio.to_thread(
            self._run,
            "UPDATE deferred_jobs SET file_id = COALESCE(?, file_id), batch_id = COALESCE(?, batch_id) WHERE key = ?",
            (file_id, batch_id, key),
        )

    async def forget(self, custom_ids: list[str]) -> None:
        await asyncio.to_thread(self._forget, custom_ids)

    async def finished(self, key: str, at: float) -> None:
        await asyncio.to_thread(self._run, "UPDATE deferred_jobs SET finished_at = ? WHERE key = ?", (at, key))

    async def prune(self, before: float) -> int:
        return await asyncio.to_thread(self._prune, before)

    def _run(self, sql: str, parameters: tuple[Any, ...]) -> tuple[str, str | None, str | None] | None:
        with self._lock:
            row: tuple[str, str | None, str | None] | None = self._db.execute(sql, parameters).fetchone()
            return row

    def _begin(self, key: str, custom_ids: list[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO deferred_jobs (key) VALUES (?)", (key,))
                self._db.executemany(
                    "INSERT OR REPLACE INTO deferred_requests (custom_id, job) VALUES (?, ?)",
                    [(c, key) for c in custom_ids],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _forget(self, custom_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM deferred_requests WHERE custom_id = ?", [(c,) for c in custom_ids])

    def _prune(self, before: float) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                done = "SELECT key FROM deferred_jobs WHERE finished_at < ?"
                self._db.execute(f"DELETE FROM deferred_requests WHERE job IN ({done})", (before,))  # noqa: S608 - constant SQL
                count = self._db.execute("DELETE FROM deferred_jobs WHERE finished_at < ?", (before,)).rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
