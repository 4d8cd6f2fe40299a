"""The SQLite store's batch-size controller states (`BatchSpec(quality=)`): a table in the store's file, with its
own connection; each swap is a compare-and-set committed at once, so a restarted process resumes from the size
the controller last held (see `flock_llm.quality.shared`)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

__all__ = ["SQLiteSizeStates"]


class SQLiteSizeStates:
    """`SizeStates` in a SQLite file (the SQLite store's)."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None  # opened on first use: most Flocks never steer a size
        self._lock = threading.Lock()

    @property
    def _db(self) -> sqlite3.Connection:  # (called with the lock held)
        if self._connection is None:
            db = sqlite3.connect(
                str(self._path), timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS size_states (key TEXT PRIMARY KEY, state TEXT NOT NULL)")
            self._connection = db
        return self._connection

    # Each call runs in a worker thread: a write lock held by another connection (the store's writer, another
    # process) makes it wait up to the busy timeout without stalling the event loop.

    async def get(self, key: str) -> str | None:
        return await asyncio.to_thread(self._get, key)

    async def swap(self, key: str, expected: str | None, new: str) -> bool:
        return await asyncio.to_thread(self._swap, key, expected, new)

    def _get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM size_states WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

    def _swap(self, key: str, expected: str | None, new: str) -> bool:
        with self._lock:
            if expected is None:
                cursor = self._db.execute(
                    "INSERT INTO size_states (key, state) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, new)
                )
            else:
                cursor = self._db.execute(
                    "UPDATE size_states SET state = ? WHERE key = ? AND state = ?", (new, key, expected)
                )
            return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
