"""The SQLite store: pending batches and unprocessed artifacts survive SIGKILL; outputs commit once."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from domain import Echo

from flock_llm import ConfigurationError, Flock
from flock_llm.stores.sqlite import SQLiteStore

WORKER = Path(__file__).resolve().parents[1] / "durable_worker.py"


def start(db: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(db), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(process: subprocess.Popen[str], *lines: str, timeout: float = 60) -> list[str]:
    """Read stdout until a line starting with each of `lines` was seen (in any order); return what was read."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = process.stdout.readline()
        if not text:
            break
        seen.append(text.strip())
        if all(any(s.startswith(line) for s in seen) for line in lines):
            return seen
    raise AssertionError(
        f"worker never printed {lines!r}; got {seen}; stderr: {process.stderr.read() if process.stderr else ''}"
    )


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)  # reaps it and closes its pipes


def finish(db: Path, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(WORKER), str(db), "recover", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def reports(db: Path) -> list[dict[str, object]]:
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT payload FROM artifacts WHERE type_name='DurableReport' ORDER BY seq")
        return [json.loads(payload) for (payload,) in rows]


def published_ids(db: Path) -> set[int]:
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT payload FROM artifacts WHERE type_name='DurableTxn'")
        return {json.loads(payload)["txn_id"] for (payload,) in rows}


def test_killed_before_the_flush_the_next_process_flushes_exactly_those_artifacts_once(tmp_path: Path) -> None:
    db = tmp_path / "flock.db"
    worker = start(db, "publish", "0", "10", "--hold")
    wait_for(worker, "published")
    kill(worker)  # 10 of 25 collected, 30 s window still open
    output = finish(db)
    assert "restored 10" in output
    (report,) = reports(db)
    assert sorted(report["txn_ids"]) == list(range(10))  # type: ignore[arg-type]
    assert report["flush_reason"] == "shutdown"
    assert "restored 0" in finish(db)  # a third start finds nothing pending
    assert len(reports(db)) == 1


def test_killed_during_an_engine_run_the_batch_is_processed_once(tmp_path: Path) -> None:
    db = tmp_path / "flock.db"
    worker = start(db, "publish", "0", "25", "--hold", "--engine-delay", "30")
    wait_for(worker, "published", "engine started 25")  # acknowledged, and the size flush is running
    kill(worker)
    assert reports(db) == []
    output = finish(db)
    assert "restored 25" in output
    (report,) = reports(db)
    assert sorted(report["txn_ids"]) == list(range(25)) and report["flush_reason"] == "size"  # type: ignore[arg-type]


def test_a_deadline_that_passed_while_down_flushes_at_once_on_restart(tmp_path: Path) -> None:
    db = tmp_path / "flock.db"
    worker = start(db, "publish", "100", "7", "--hold", "--timeout", "0.5")
    wait_for(worker, "published")
    kill(worker)
    time.sleep(0.6)  # the batch's deadline passes while no process runs
    finish(db, "--timeout", "0.5")
    (report,) = reports(db)
    assert report["flush_reason"] == "timeout" and sorted(report["txn_ids"]) == list(range(100, 107))  # type: ignore[arg-type]


def test_10000_artifacts_over_5_kill_restart_cycles_each_processed_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "flock.db"
    rng = random.Random(42)
    for cycle in range(5):
        worker = start(db, "publish", str(cycle * 2000), "2000", "--hold", "--engine-delay", "0.01")
        wait_for(worker, "published")
        time.sleep(rng.uniform(0.0, 0.3))  # kill somewhere in the middle of processing
        kill(worker)
    finish(db)
    assert published_ids(db) == set(range(10_000))
    processed = Counter(i for r in reports(db) for i in r["txn_ids"])  # type: ignore[attr-defined]
    assert set(processed) == set(range(10_000))
    assert max(processed.values()) == 1


def test_foreign_unreadable_and_newer_databases_are_refused_clearly(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ConfigurationError, match="is not a flock_llm database"):
        SQLiteStore(garbage)
    foreign = tmp_path / "foreign.db"
    with closing(sqlite3.connect(foreign)) as connection, connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(ConfigurationError, match="a SQLite database of something else"):
        SQLiteStore(foreign)
    newer = tmp_path / "newer.db"
    SQLiteStore(newer).close()
    with closing(sqlite3.connect(newer)) as connection, connection:
        connection.execute("UPDATE flock_meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(ConfigurationError, match="schema version 99, written by a newer flock_llm"):
        SQLiteStore(newer)
    with pytest.raises(ConfigurationError, match="store URL must start with .sqlite:///. or .redis://."):
        Flock(store="postgres://x")


async def test_artifacts_of_unregistered_types_are_kept_reported_and_skipped(tmp_path: Path) -> None:
    db = tmp_path / "flock.db"
    flock = Flock(store=f"sqlite:///{db}", env={})
    await flock.publish(Echo(source="kept"))
    await flock.shutdown()
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE artifacts SET type_name='RetiredType'")
    flock = Flock(store=f"sqlite:///{db}", env={})
    await flock.start()
    assert flock.metrics().count("unknown_type_artifacts") == 1
    assert await flock.store.get_by_type(Echo) == []
    await flock.shutdown()
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("SELECT count(*) FROM artifacts WHERE type_name='RetiredType'").fetchone() == (1,)


async def test_a_half_filled_gate_and_join_survive_sigkill(tmp_path: Path) -> None:
    import durable_worker

    db = tmp_path / "flock.db"
    worker = start(db, "publish", "0", "1", "--sets", "--hold")
    wait_for(worker, "published")
    kill(worker)  # DurableTxn 0 sits in the gate's set and in the join group of key 0
    flock = durable_worker.build(str(db), 30.0, 0.0, sets=True)
    await flock.start()
    await flock.publish(durable_worker.DurableHalf(txn_id=0))  # completes the gate's set
    await flock.publish(durable_worker.DurableTxn(txn_id=1))  # completes the join group (1 // 2 == 0)
    await flock.run_until_idle()
    sets = sorted(s.members for s in await flock.store.get_by_type(durable_worker.DurableSet))
    await flock.shutdown()
    assert sets == [["DurableTxn:0", "DurableHalf:0"], ["DurableTxn:0", "DurableTxn:1"]]
