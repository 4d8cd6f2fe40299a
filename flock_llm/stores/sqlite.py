"""A durable store: artifacts, pending deliveries and consumption marks in SQLite (WAL).

    Flock(store="sqlite:///path/to/flock.db")

Every write goes through one writer thread, so disk work stays off the event
loop. Writes arrive as *units* (a publish call; or an agent run's outputs
together with the marks that its inputs were consumed) and each unit is
committed atomically; the writer groups many units into one transaction.
Reads are served from memory. On start, `load()` returns what was published
but not yet consumed by each subscription, so the Flock can restore its
pending batches and queued work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import BaseModel

from .._runtime.ledger import Unit
from ..artifact import Artifact
from ..errors import ConfigurationError, StoreError
from .codec import artifact_from_row, artifact_to_row
from .memory import InMemoryStore

if TYPE_CHECKING:
    from .sqlite_journal import SQLiteJournal
    from .sqlite_sizes import SQLiteSizeStates

__all__ = ["PendingDelivery", "Recovered", "SQLiteStore", "Unit"]

log = logging.getLogger("flock_llm.store")

T = TypeVar("T", bound=BaseModel)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS flock_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type_name TEXT NOT NULL,
    payload TEXT NOT NULL, produced_by TEXT, derived_from TEXT NOT NULL, correlation_id TEXT,
    tags TEXT NOT NULL, visibility TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    agent TEXT NOT NULL, sub INTEGER NOT NULL, artifact_id TEXT NOT NULL, entered_at REAL NOT NULL,
    PRIMARY KEY (agent, sub, artifact_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumed (
    agent TEXT NOT NULL, sub INTEGER NOT NULL, artifact_id TEXT NOT NULL,
    PRIMARY KEY (agent, sub, artifact_id)) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    agent: str
    sub: int
    artifact: Artifact
    entered_at: float


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a store held at start."""

    artifacts: int
    pending: list[PendingDelivery]
    """Delivered but not consumed, in publication order."""
    unknown_types: dict[str, int]
    """Type names no longer registered, and how many stored artifacts have them (kept, not loaded)."""


def open_database(path: Path, *, busy_timeout: float = 1.0) -> sqlite3.Connection:
    """Open (or create) a flock_llm database; refuse foreign files and newer schemas with a clear error.

    Raises:
        ConfigurationError: the file is not a flock_llm database, or was written by a newer version.
        StoreError: the file cannot be opened or written (read-only, damaged, a directory, locked).
    """
    try:
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the flock_llm database {str(path)!r}: {exc}; check the path") from None
    try:
        _prepare(connection, path)
    except BaseException:
        connection.close()
        raise
    return connection


def _prepare(connection: sqlite3.Connection, path: Path) -> None:
    try:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise ConfigurationError(
            f"{str(path)!r} is not a flock_llm database, or it is damaged (SQLite says: {exc}); give flock_llm "
            "a file of its own, or restore this one from a backup"
        ) from None
    if tables and "flock_meta" not in tables:
        raise ConfigurationError(
            f"{str(path)!r} is a SQLite database of something else (tables {sorted(tables)!r}); "
            "give flock_llm a file of its own"
        )
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; fsync at checkpoints
        connection.executescript(_SCHEMA)
        found = connection.execute("SELECT value FROM flock_meta WHERE key='schema_version'").fetchone()
        if found is None:
            connection.execute("INSERT INTO flock_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    except sqlite3.Error as exc:
        raise StoreError(f"the flock_llm database {str(path)!r} cannot be used: {_explain(exc)}") from None
    if found is not None and int(found[0]) > SCHEMA_VERSION:
        raise ConfigurationError(
            f"{str(path)!r} has schema version {found[0]}, written by a newer flock_llm; this version reads "
            f"up to {SCHEMA_VERSION}: upgrade flock_llm"
        )


def _explain(exc: sqlite3.Error) -> str:
    """SQLite's message, with what to do about it."""
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return f"{text}; the file (and its directory, for the WAL files) must be writable by this process"
    if "locked" in text or "busy" in text:
        return f"{text}; another process holds a lock on it"
    if "malformed" in text or "not a database" in text:
        return f"{text}; the file is damaged: restore it from a backup, or start a new file"
    return text


def _is_lock(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class _Writer(threading.Thread):
    """Commits units in order, many per transaction; resolves each unit's future after its commit.

    A lock held by another connection is waited out (SQLite's busy timeout, then retries with backoff) for up
    to `lock_timeout` seconds; after that the units of that transaction fail with a StoreError, and the writer
    goes on with the next ones (it recovers as soon as the database is writable again).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, lock_timeout: float) -> None:
        super().__init__(name="flock_llm-sqlite-writer", daemon=True)
        self.connection = connection
        self.path = path
        self.lock_timeout = lock_timeout
        self.units: queue.SimpleQueue[tuple[Unit, asyncio.Future[None] | None] | None] = queue.SimpleQueue()
        self.failures = 0
        """Transactions that could not be committed."""

    def run(self) -> None:
        while True:
            first = self.units.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < 5_000:
                try:
                    more = self.units.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._commit(batch)
                    return
                batch.append(more)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Unit, asyncio.Future[None] | None]]) -> None:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            try:
                self._write([unit for unit, _ in batch])
            except sqlite3.Error as exc:
                if _is_lock(exc) and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                self.failures += 1
                error = StoreError(
                    f"writing to the flock_llm database {str(self.path)!r} failed: {_explain(exc)}"
                    + (f" (for {self.lock_timeout:g} s)" if _is_lock(exc) else "")
                    + "; these writes were not saved"
                )
                log.error("%s", error)
                self._resolve(batch, error)
                return
            self._resolve(batch, None)
            return

    def _write(self, units: list[Unit]) -> None:
        consumed = [c for u in units for c in u.consumed]
        finished = set(consumed)
        with self.connection:  # one transaction for the whole batch of units
            self.connection.execute("BEGIN IMMEDIATE")
            self.connection.executemany(
                "INSERT INTO artifacts (id, type_name, payload, produced_by, derived_from, "
                "correlation_id, tags, visibility, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                [artifact_to_row(a) for u in units for a in u.artifacts],
            )
            # pending = delivered and not consumed (an anti-join at start); a delivery consumed within
            # this same transaction was never pending, so it needs no row
            self.connection.executemany(
                "INSERT OR IGNORE INTO deliveries VALUES (?,?,?,?)",
                [d for u in units for d in u.deliveries if d[:3] not in finished],
            )
            self.connection.executemany("INSERT OR IGNORE INTO consumed VALUES (?,?,?)", consumed)

    @staticmethod
    def _resolve(batch: list[tuple[Unit, asyncio.Future[None] | None]], exc: BaseException | None) -> None:
        for _, future in batch:
            if future is not None:
                future.get_loop().call_soon_threadsafe(_settle, future, exc)


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


class SQLiteStore(InMemoryStore):
    """Durable artifacts and delivery state in a SQLite file; reads come from memory.

    Args:
        path: the database file (created when missing). In a URL: `sqlite:///relative/flock.db`, or
            `sqlite:////absolute/flock.db` (four slashes).
        ack: "commit" (default): `publish()` returns once its writes are committed; "enqueue": it returns at
            once and the write commits within milliseconds (faster; a crash can lose the last few ms).
        lock_timeout: how long a write waits while another process holds a lock on the database (default 30 s);
            then the write fails with StoreError (a publish raises it; nothing of it is processed).
    """

    def __init__(
        self, path: str | Path, *, ack: Literal["commit", "enqueue"] = "commit", lock_timeout: float = 30.0
    ) -> None:
        super().__init__()
        if ack not in ("commit", "enqueue"):
            raise ConfigurationError(f"`ack` must be 'commit' or 'enqueue', got {ack!r}")
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or lock_timeout <= 0:
            raise ConfigurationError(f"`lock_timeout` must be a positive number of seconds, got {lock_timeout!r}")
        if str(path) in ("", ":memory:") or str(path).startswith("file::memory:"):
            raise ConfigurationError(
                f"the SQLite store needs a file, got {str(path)!r}: an in-memory database would not survive a "
                "crash; use Flock() without a store for in-memory runs"
            )
        self.path = Path(path)
        self._journal: SQLiteJournal | None = None
        self._sizes: SQLiteSizeStates | None = None
        self.ack = ack
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = open_database(self.path, busy_timeout=min(1.0, float(lock_timeout)))
        self._writer = _Writer(self._connection, self.path, float(lock_timeout))
        self._writer.start()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db` (the path follows the third slash)."""
        if not url.startswith("sqlite:///"):
            raise ConfigurationError(f"store URL must look like 'sqlite:///path/to/flock.db', got {url!r}")
        return cls(url[len("sqlite:///") :])

    @property
    def write_failures(self) -> int:
        """Transactions that could not be committed so far."""
        return self._writer.failures

    def write(self, unit: Unit) -> asyncio.Future[None] | None:
        """Apply `unit` in memory now and persist it; the future resolves after its commit (or fails with
        StoreError; the unit's artifacts are then forgotten from memory too)."""
        for artifact in unit.artifacts:
            self.add(artifact)
        if not unit:
            return None
        future: asyncio.Future[None] | None = None
        if self.ack == "commit":
            future = asyncio.get_running_loop().create_future()
            if unit.artifacts:
                future.add_done_callback(partial(self._forget_if_failed, [a.id for a in unit.artifacts]))
        self._writer.units.put((unit, future))
        return future

    def _forget_if_failed(self, ids: list[str], future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.discard(ids)

    async def sync(self) -> None:
        """Wait until everything written so far is committed."""
        future = asyncio.get_running_loop().create_future()
        self._writer.units.put((Unit(), future))
        await future

    def load(self) -> Recovered:
        """Every stored artifact into memory; the deliveries still pending, in publication order.

        Raises:
            StoreError: the file cannot be read (damaged or truncated).
        """
        try:
            return self._load()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the flock_llm database {str(self.path)!r} failed: {_explain(exc)}") from None

    def _load(self) -> Recovered:
        rows = self._connection.execute(
            "SELECT id, type_name, payload, produced_by, derived_from, correlation_id, tags, visibility, "
            "created_at FROM artifacts ORDER BY seq"
        ).fetchall()
        unknown: dict[str, int] = {}
        by_id: dict[str, Artifact] = {}
        for row in rows:
            try:
                artifact = artifact_from_row(row)
            except ConfigurationError:
                unknown[str(row[1])] = unknown.get(str(row[1]), 0) + 1
                continue
            by_id[artifact.id] = artifact
            self.add(artifact)
        order = {artifact_id: n for n, artifact_id in enumerate(by_id)}
        rows = self._connection.execute(
            "SELECT d.agent, d.sub, d.artifact_id, d.entered_at FROM deliveries d WHERE NOT EXISTS "
            "(SELECT 1 FROM consumed c WHERE c.agent = d.agent AND c.sub = d.sub AND c.artifact_id = d.artifact_id)"
        ).fetchall()
        pending = sorted(
            (
                PendingDelivery(agent, sub, by_id[artifact_id], entered_at)
                for agent, sub, artifact_id, entered_at in rows
                if artifact_id in by_id
            ),
            key=lambda p: (order[p.artifact.id], p.agent, p.sub),
        )
        if unknown:
            log.warning(
                "the store holds artifacts of types no longer registered (kept, not loaded): %s",
                ", ".join(f"{name} x{count}" for name, count in sorted(unknown.items())),
            )
        return Recovered(len(by_id), pending, unknown)

    def consumed_ids(self, agent: str) -> set[str]:
        """The ids of the artifacts `agent` has finished with (committed as consumed)."""
        return {r[0] for r in self._connection.execute("SELECT artifact_id FROM consumed WHERE agent=?", (agent,))}

    def job_journal(self) -> SQLiteJournal:
        """Provider batch jobs (`LLMEngine(tier="batch")`), recorded in this file before they are submitted."""
        if self._journal is None:
            from .sqlite_journal import SQLiteJournal

            self._journal = SQLiteJournal(self.path)
        return self._journal

    def size_states(self) -> SQLiteSizeStates:  # type: ignore[override]  # kept in the file, not in memory
        """Batch-size controller states (`BatchSpec(quality=)`), kept in this file: a restart resumes from them."""
        if self._sizes is None:
            from .sqlite_sizes import SQLiteSizeStates

            self._sizes = SQLiteSizeStates(self.path)
        return self._sizes

    def close(self) -> None:
        """Commit what is queued and close the file."""
        if self._writer.is_alive():
            self._writer.units.put(None)
            self._writer.join()
        self._connection.close()
        if self._journal is not None:
            self._journal.close()
        if self._sizes is not None:
            self._sizes.close()
