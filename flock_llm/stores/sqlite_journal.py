"""The SQLite store's journal of deferred (provider batch) jobs: a table in the store's file, with its own
connection; each write is committed at once (see `flock_llm.engines.JobJournal` for what a journal records)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..engines import JobRecord

__all__ = ["SQLiteJournal"]


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
            for column, kind in (("claimed_by", "TEXT"), ("claimed_until", "REAL")):
                if column not in columns:  # a file written before resumed jobs were claimed
                    self._db.execute(f"ALTER TABLE deferred_jobs ADD COLUMN {column} {kind}")
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

    async def claim(self, key: str, owner: str, until: float) -> bool:
        return await asyncio.to_thread(self._claim, key, owner, until)

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

    def _claim(self, key: str, owner: str, until: float) -> bool:
        with self._lock:
            taken = self._db.execute(
                "UPDATE deferred_jobs SET claimed_by = ?, claimed_until = ? WHERE key = ? AND (claimed_by IS NULL "
                "OR claimed_by = ? OR claimed_until < ?)",
                (owner, until, key, owner, time.time()),
            ).rowcount
            return bool(taken)

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
