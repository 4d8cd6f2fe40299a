"""Stores under faults: a SQLite lock held past the busy timeout, read-only and damaged files, in-memory URLs,
Redis credentials in query strings, oversized Redis artifacts."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from flock_llm import ConfigurationError, FailureRecord, Flock, StoreError, StoreUnavailableError, flock_type
from flock_llm.stores.redis import RedisStore
from flock_llm.stores.sqlite import SQLiteStore
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FunctionEngine


@flock_type
class Fault(BaseModel):
    n: int
    text: str = ""


@flock_type
class FaultDone(BaseModel):
    n: int


def echo_agent(flock: Flock, engine: FunctionEngine) -> None:
    flock.agent("echo").consumes(Fault).publishes(FaultDone).with_engines(engine)


# -- 6: a lock held longer than the busy timeout ------------------------------------------------------


async def test_a_publish_during_a_long_lock_raises_store_error_is_not_run_and_the_writer_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "flock.db"
    ran: list[int] = []
    flock = Flock(store=SQLiteStore(db, lock_timeout=0.3), env={})
    echo_agent(flock, FunctionEngine(item=lambda ctx, inputs: ran.append(inputs.all_as(Fault)[0].n) or FaultDone(n=0)))
    await flock.start()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the database
    with pytest.raises(StoreError, match="locked.*0.3 s.*not saved"):
        await flock.publish(Fault(n=1))
    await flock.run_until_idle()
    assert ran == [] and await flock.store.get_by_type(Fault) == []  # not processed in memory either

    other.execute("COMMIT")  # the lock is gone: the same Flock writes again
    await flock.publish(Fault(n=2))
    await flock.run_until_idle()
    assert ran == [2]
    await flock.shutdown()
    other.close()
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT count(*) FROM artifacts WHERE type_name='Fault'").fetchone() == (1,)
    assert "Task exception was never retrieved" not in caplog.text


async def test_a_lock_shorter_than_the_limit_is_waited_out(tmp_path: Path) -> None:
    db = tmp_path / "flock.db"
    flock = Flock(store=SQLiteStore(db, lock_timeout=10), env={})
    echo_agent(flock, FunctionEngine(item=lambda ctx, inputs: FaultDone(n=inputs.all_as(Fault)[0].n)))
    await flock.start()
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    loop = asyncio.get_running_loop()
    loop.call_later(1.5, other.execute, "COMMIT")  # longer than SQLite's own busy timeout (1 s)
    await flock.publish(Fault(n=5))
    await flock.run_until_idle()
    assert [d.n for d in await flock.store.get_by_type(FaultDone)] == [5]
    await flock.shutdown()
    other.close()


async def test_shutdown_reports_runs_whose_outputs_could_not_be_saved(tmp_path: Path) -> None:
    db = tmp_path / "flock.db"
    release = asyncio.Event()

    async def slow(ctx: object, inputs: object) -> FaultDone:
        await release.wait()
        return FaultDone(n=1)

    flock = Flock(store=SQLiteStore(db, lock_timeout=0.2), env={})
    echo_agent(flock, FunctionEngine(item=slow))
    await flock.publish(Fault(n=1))
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    release.set()
    await flock.run_until_idle()
    for _ in range(1000):  # the run's commit fails after the lock timeout (a fixed 0.6 s raced a busy machine)
        if flock.metrics().counters.get("store_write_failures"):
            break
        await asyncio.sleep(0.01)
    assert flock.metrics().counters["store_write_failures"] == 1
    other.execute("COMMIT")
    other.close()
    with pytest.raises(StoreError, match="1 agent run.*run again on the next start"):
        await flock.shutdown()
    # and indeed: the input is still pending, so the next start runs it again
    again = Flock(store=f"sqlite:///{db}", env={})
    echo_agent(again, FunctionEngine(item=lambda ctx, inputs: FaultDone(n=2)))
    await again.start()
    await again.run_until_idle()
    assert [d.n for d in await again.store.get_by_type(FaultDone)] == [2]
    await again.shutdown()


# -- 7: read-only, damaged and in-memory databases ----------------------------------------------------


def _make_read_only(path: Path) -> bool:
    if os.geteuid() != 0:
        path.chmod(0o444)
        path.parent.chmod(0o555)
        return True
    return shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(path)]).returncode == 0


def _undo_read_only(path: Path) -> None:
    if os.geteuid() != 0:
        path.parent.chmod(0o755)
        path.chmod(0o644)
    else:
        subprocess.run(["chattr", "-i", str(path)], check=False)


async def test_a_read_only_database_is_a_store_error_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    sqlite3.connect(db).close()  # an empty SQLite file (no WAL yet)
    if not _make_read_only(db):
        pytest.skip("cannot make a file read-only here (root without chattr)")
    try:
        with pytest.raises(StoreError, match=r"ro\.db.*readonly.*must be writable"):
            SQLiteStore(db)
    finally:
        _undo_read_only(db)


async def test_a_truncated_database_is_a_clear_error_not_a_raw_sqlite_error(tmp_path: Path) -> None:
    db = tmp_path / "flock.db"
    flock = Flock(store=f"sqlite:///{db}", env={})
    await flock.publish_many([Fault(n=n, text="x" * 2000) for n in range(200)])
    await flock.shutdown()
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with pytest.raises((StoreError, ConfigurationError), match=r"flock\.db.*(damaged|malformed)") as caught:
        broken = Flock(store=f"sqlite:///{db}", env={})
        await broken.start()
    assert not isinstance(caught.value, sqlite3.Error)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:///"])
def test_an_in_memory_sqlite_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="needs a file"):
        Flock(store=url, env={})


def test_a_database_path_that_is_a_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open|cannot be used"):
        SQLiteStore(tmp_path)


# -- 8: Redis credentials in the query string ------------------------------------------------------------


async def test_a_password_given_as_a_query_parameter_is_never_shown() -> None:
    store = RedisStore("redis://127.0.0.1:1/0?password=hunter2secret", reconnect_timeout=0.2)
    assert "hunter2secret" not in repr(store)
    with pytest.raises(StoreUnavailableError) as caught:
        await store.connect()
    assert "hunter2secret" not in str(caught.value) and "password=***" in str(caught.value)
    userinfo = RedisStore("redis://user:pw-in-userinfo@127.0.0.1:1/0")
    assert "pw-in-userinfo" not in repr(userinfo)


# -- 9: a size limit for Redis artifacts ---------------------------------------------------------------


async def test_an_artifact_over_the_size_limit_is_refused_at_publish_and_reads_are_sized(redis_url: str) -> None:
    flock = Flock(store=redis_url + "&max_artifact_bytes=4096", env={})
    store = flock.store
    assert isinstance(store, RedisStore)
    assert store.max_artifact_bytes == 4096
    assert store.read_count == 500  # 128 MiB / 4 KiB is more than the cap
    assert RedisStore(max_artifact_bytes=1024 * 1024).read_count == 128
    with pytest.raises(ConfigurationError, match="over the Redis store's `max_artifact_bytes`"):
        await flock.publish_many([Fault(n=1), Fault(n=2, text="x" * 5000)])
    assert await store.count(Fault) == 0  # nothing of that call was published
    await flock.publish(Fault(n=3, text="small"))
    assert await store.count(Fault) == 1
    await flock.shutdown()


async def test_an_agent_output_over_the_size_limit_becomes_a_failure_record(redis_url: str) -> None:
    flock = Flock(store=redis_url + "&max_artifact_bytes=2048", env={})
    (
        flock.agent("bloat")
        .consumes(Fault, batch=BatchSpec(size=1, timeout=timedelta(seconds=5)))
        .publishes(Fault)
        .with_engines(FunctionEngine(batch=lambda ctx, inputs: Fault(n=9, text="y" * 4000)))
    )
    await flock.publish(Fault(n=1))
    store = flock.store
    assert isinstance(store, RedisStore)
    for _ in range(200):
        if await store.count(FailureRecord):
            break
        await asyncio.sleep(0.02)
    (record,) = await store.get_by_type(FailureRecord)
    assert record.stage == "output" and "max_artifact_bytes" in record.error and len(record.input_ids) == 1
    await flock.shutdown()


def test_redis_store_settings_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="max_artifact_bytes"):
        RedisStore(max_artifact_bytes=10)
    logging.getLogger(__name__).debug("validated")
