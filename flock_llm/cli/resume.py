"""Resuming `flock-llm reviews --store`: what a store was made from, and what of it still holds for this input.

A reviews store is a SQLite store (see `flock_llm.stores.sqlite`) with one more table of its own,
`flock_cli_reviews`, that names the command that made it and its settings (mode, model, batch size). Each
stored review carries its fields, so its fingerprint (a hash of id, rating and text) is known without a second
copy. A resumed run compares that with the input:

- a review whose fingerprint the store has finished (an output that covers only reviews still in the input) or
  still holds pending is not published again;
- a review that changed, is new, ended in a failure record, or shared a report with a review that changed or
  is gone, is published again (a fresh artifact, so the old one keeps its history);
- what the store holds for reviews that are not in the input (or changed) is neither written nor run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifact import Artifact
from ..stores.memory import ArtifactStore
from ..stores.sqlite import SQLiteStore
from .review_types import Review

__all__ = [
    "Plan",
    "RunSettings",
    "StoreLock",
    "accepts",
    "anything_left",
    "fingerprint",
    "plan_from_store",
    "plan_resume",
    "quiet_refused_restores",
    "store_path",
    "store_problem",
    "write_settings",
]

TABLE = "flock_cli_reviews"
COMMAND = "flock-llm reviews"


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What a reviews store was made with; a resumed run must match (see `mismatch`)."""

    mode: str
    model: str
    batch_size: int

    def rows(self) -> list[tuple[str, str]]:
        return [("command", COMMAND), ("mode", self.mode), ("model", self.model), ("batch_size", str(self.batch_size))]

    def mismatch(self, stored: dict[str, str], where: str) -> str:
        """Why this run cannot continue the store made with `stored`, or ""."""
        if stored.get("mode", self.mode) != self.mode:
            flag = "--per-item" if stored["mode"] == "per-item" else "no --per-item"
            return (
                f"--store {where} holds a {stored['mode']} run; this run is {self.mode}: run with {flag}, "
                "or give a new --store file"
            )
        if stored.get("model", self.model) != self.model:
            return (
                f"--store {where} was made with model {stored['model']!r}, this run uses {self.model!r}: run with "
                f"--model {stored['model']}, or give a new --store file"
            )
        if self.mode == "report" and stored.get("batch_size", str(self.batch_size)) != str(self.batch_size):
            return (
                f"--store {where} holds trend reports over batches of {stored['batch_size']}; this run asks for "
                f"{self.batch_size}: run with --batch-size {stored['batch_size']}, or give a new --store file"
            )
        return ""


def store_path(url: str) -> Path:
    """The file of a `sqlite:///path` URL."""
    return Path(url[len("sqlite:///") :])


def fingerprint(review: Review) -> bytes:
    """What a review is made of (id, rating, text), as 16 bytes; any change to a field changes it."""
    fields = json.dumps([review.review_id, review.rating, review.text], ensure_ascii=True)
    return hashlib.blake2b(fields.encode("ascii"), digest_size=16).digest()


def store_problem(url: str, settings: RunSettings) -> tuple[str, bool]:
    """(why `url` cannot be this run's store or "", whether it already holds a reviews run). Reads only."""
    path = store_path(url)
    if path.is_dir():
        return f"--store {url!r} is a directory; give a file, e.g. sqlite:///run.db", False
    directory = path.parent
    if directory.is_dir() and not os.access(directory, os.W_OK | os.X_OK):
        return f"--store {url!r}: the directory {str(directory)!r} is not writable (SQLite keeps its WAL there)", False
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return "", False
    if not path.is_file():
        return f"--store {url!r} is not a regular file; give a file, e.g. sqlite:///run.db", False
    try:
        return _check(path, url, settings)
    except sqlite3.Error as exc:
        return f"--store {url!r} cannot be read as a SQLite database ({exc}); give a new --store file", False


def _check(path: Path, url: str, settings: RunSettings) -> tuple[str, bool]:
    with _read_only(path) as connection:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return "", False
        if "flock_meta" not in tables:
            return f"--store {url!r} is a SQLite database of something else; give the command a file of its own", False
        version = connection.execute("SELECT value FROM flock_meta WHERE key='schema_version'").fetchone()
        if version is not None and not str(version[0]).isdigit():
            return (
                f"--store {url!r} has a damaged schema version {version[0]!r}; restore the file from a backup or "
                "give a new --store file"
            ), False
        if TABLE not in tables:
            held = sum(connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _STORE_TABLES & tables)
            if held:
                return (
                    f"--store {url!r} is the flock_llm store of another application (it was not made by "
                    f"`{COMMAND}`); give the command a file of its own"
                ), False
            return "", False
        stored = dict(connection.execute(f"SELECT key, value FROM {TABLE}").fetchall())
    if stored.get("command") != COMMAND:
        return f"--store {url!r} was made by {stored.get('command')!r}, not `{COMMAND}`; give a new --store file", True
    return settings.mismatch(stored, repr(url)), True


_STORE_TABLES = {"artifacts", "deliveries", "consumed"}


class StoreLock:
    """One run at a time on a store file: two runs at once would each run (and pay for) every review and write
    the other's outputs too. An exclusive `flock` on the file itself (SQLite's own locks are `fcntl` locks, which
    Linux keeps apart), held until `release`, so the kernel drops it with a killed process."""

    def __init__(self, url: str) -> None:
        self.path = store_path(url)
        self._fd = -1
        self._created = False

    def acquire(self) -> bool:
        """Take the store; False when another run holds it (a file that cannot be opened is left to the store's
        own checks)."""
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            self._created = True
        except FileExistsError:
            try:
                self._fd = os.open(self.path, os.O_RDWR)
            except OSError:
                return True
        except OSError:
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            self.release(refused=True)
            return False
        return True

    def release(self, *, refused: bool = False) -> None:
        """Let the store go (after the run closed it); a file this run created and never used is removed."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            if refused and self._created and os.fstat(self._fd).st_size == 0:
                self.path.unlink()
        os.close(self._fd)
        self._fd = -1


class _read_only:  # noqa: N801 - used as a context manager, like a function
    def __init__(self, path: Path) -> None:
        uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
        self.connection = sqlite3.connect(uri, uri=True, timeout=5.0)

    def __enter__(self) -> sqlite3.Connection:
        return self.connection

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


def write_settings(path: Path, settings: RunSettings) -> None:
    """Mark the store at `path` (already created by the SQLite store) as this command's, with its settings."""
    connection = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.executemany(f"INSERT OR IGNORE INTO {TABLE} VALUES (?, ?)", settings.rows())
    finally:
        connection.close()


@dataclass
class Plan:
    """What a resumed run takes from its store."""

    done: set[bytes] = field(default_factory=set)
    """Fingerprints of input reviews the store finished (outputs written) or holds pending (restored)."""
    outputs: list[Artifact] = field(default_factory=list)
    """Stored outputs to write: those whose reviews are all in the input unchanged (failure records never:
    their reviews run again)."""
    review_ids: dict[str, str] = field(default_factory=dict)
    """Stored review artifact id -> review id."""
    stale: int = 0
    """Stored reviews not in the input, or changed: neither written nor run."""
    retried: int = 0
    """Stored reviews of this input that ended in failure records, or whose report covered a stale review."""


def plan_resume(
    reviews: Iterable[Artifact], outputs: Iterable[Artifact], consumed: set[str], current: set[bytes]
) -> Plan:
    """Decide what of a store still holds for the input whose fingerprints are `current` (pure).

    Args:
        reviews: the stored Review artifacts.
        outputs: the stored outputs and failure records of the review agent.
        consumed: ids of stored reviews the agent consumed (the others are pending and restored).
    """
    plan = Plan()
    prints: dict[str, bytes] = {}
    for artifact in reviews:
        review = artifact.as_type(Review)
        prints[artifact.id] = fingerprint(review)
        plan.review_ids[artifact.id] = review.review_id
    covered: set[str] = set()
    for output in outputs:
        inputs = output.derived_from
        if output.type_name != "FailureRecord" and all(prints.get(i) in current for i in inputs):
            plan.outputs.append(output)
            covered.update(inputs)
    finished: set[bytes] = set()
    for artifact_id, print_ in prints.items():
        if print_ not in current:
            plan.stale += 1
        elif artifact_id not in consumed or artifact_id in covered:
            finished.add(print_)
    plan.done = finished
    plan.retried = len({p for i, p in prints.items() if p in current and i in consumed} - finished)
    return plan


async def plan_from_store(store: ArtifactStore, agent: str, current: set[bytes]) -> Plan:
    """`plan_resume` for what `store` holds of the review agent `agent`."""
    consumed = store.consumed_ids(agent) if isinstance(store, SQLiteStore) else set()
    outputs = [a for a in await store.list() if a.produced_by == agent]
    return plan_resume(await store.artifacts_by_type(Review), outputs, consumed, current)


def anything_left(url: str, agent: str, current: set[bytes]) -> bool:
    """Whether a resumed run on the reviews store at `url` has anything to ask the model: a review of the input
    (whose fingerprints are `current`) the store has not finished (`plan_resume` decides, as the run will), or one
    it holds pending (the run restores and runs it). Reads the store; the caller holds it (`StoreLock`), so the run
    finds it as it was read here."""
    store = SQLiteStore(store_path(url))
    try:
        pending = store.load().pending
        plan = asyncio.run(plan_from_store(store, agent, current))
    finally:
        store.close()
    if not current <= plan.done:
        return True
    return any(
        p.agent == agent and isinstance(p.artifact.payload, Review) and fingerprint(p.artifact.payload) in current
        for p in pending
    )


class _RefusedRestore(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("stored delivery of artifact")


@contextlib.contextmanager
def quiet_refused_restores() -> Iterator[None]:
    """A resumed run does not restore stored reviews that left the input or changed (the agent's `where`
    refuses them); the summary counts them once (`stale`) instead of a warning for each."""
    quiet = _RefusedRestore()
    logger = logging.getLogger("flock_llm")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def accepts(current: set[bytes]) -> Any:
    """The review agent's `where` on a resumed run: a restored review must still be in the input, unchanged."""
    return lambda review: fingerprint(review) in current
