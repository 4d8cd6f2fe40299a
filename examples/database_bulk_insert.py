"""Database bulk insert: 500 log rows per executemany() instead of 500 round-trips.

Writes into a real SQLite database and measures the speed-up over row-by-row inserts in the same run.
Run: python examples/database_bulk_insert.py
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from _timescale import scaled
from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec

ROWS = 2_000


@flock_type
class LogEntry(BaseModel):
    timestamp: str
    level: str
    message: str
    source: str


@flock_type
class WriteConfirmation(BaseModel):
    rows_written: int
    flush_reason: str


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS logs (timestamp TEXT, level TEXT, message TEXT, source TEXT)")
    return db


class BulkInsertEngine(Engine):
    """One executemany() and one commit per flushed batch."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        rows = [(e.timestamp, e.level, e.message, e.source) for e in inputs.all_as(LogEntry)]
        with self.db:
            self.db.executemany("INSERT INTO logs VALUES (?, ?, ?, ?)", rows)
        return EvalResult.from_object(WriteConfirmation(rows_written=len(rows), flush_reason=ctx.flush_reason or ""))


def entries(n: int) -> list[LogEntry]:
    return [
        LogEntry(
            timestamp=f"2026-11-27T10:{i // 60 % 60:02d}:{i % 60:02d}",
            level="INFO" if i % 9 else "ERROR",
            message=f"request {i} served",
            source=f"web-{i % 4}",
        )
        for i in range(n)
    ]


async def batched(path: Path) -> float:
    db = connect(path)
    start = time.perf_counter()
    async with Flock() as flock:
        (
            flock.agent("log_writer")
            .consumes(
                LogEntry,
                batch=BatchSpec(
                    size=500,  # Bulk insert 500 rows
                    timeout=scaled(timedelta(seconds=10)),  # Flush every 10 sec
                ),
            )
            .publishes(WriteConfirmation)
            .with_engines(BulkInsertEngine(db))
        )
        await flock.publish_many(entries(ROWS))
        await flock.run_until_idle()
    elapsed = time.perf_counter() - start
    confirmations = await flock.store.get_by_type(WriteConfirmation)
    print(f"batched: {len(confirmations)} bulk inserts of {confirmations[0].rows_written} rows")
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == ROWS
    db.close()
    return elapsed


def row_by_row(path: Path) -> float:
    db = connect(path)
    start = time.perf_counter()
    for e in entries(ROWS):
        with db:  # one statement and one commit per row: the unbatched way
            db.execute("INSERT INTO logs VALUES (?, ?, ?, ?)", (e.timestamp, e.level, e.message, e.source))
    elapsed = time.perf_counter() - start
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == ROWS
    db.close()
    return elapsed


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        fast = await batched(Path(folder) / "batched.db")
        slow = row_by_row(Path(folder) / "row_by_row.db")
    print(
        f"{ROWS} rows: batched {fast:.3f} s (publish, batch, insert), row by row {slow:.3f} s; "
        f"speed-up {slow / fast:.1f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
