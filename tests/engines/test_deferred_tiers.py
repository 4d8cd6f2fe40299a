"""The deferred tiers against the fake server's Batch API and flex capacity: half price, nothing lost, no job
paid twice after a SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import references
from deferred_support import QUICK_JOBS, killed_between_upload_and_creation, labeller, quick_batch_server, reviews, run
from domain import CustomerReview, ReviewSentiment

from flock_llm import ConfigurationError, FailureRecord, Flock
from flock_llm.engines import JobRecord
from flock_llm.engines.llm import BreakerPolicy, DeferredPolicy, LLMEngine
from flock_llm.stores.sqlite_journal import SQLiteJournal
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer

TESTS = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("litellm_clients_closed")


server = pytest.fixture(quick_batch_server, name="server")


async def test_batch_tier_goes_through_jobs_at_half_price_and_failed_and_expired_lines_recover(
    server: FakeOpenAIServer,
) -> None:
    standard_usage, _ = await run(labeller(server), 30)
    server.batches.failed_line_rate = 0.3
    server.batches.expire_next = 1  # the first job expires: all its lines come back "batch_expired"
    flock = labeller(server, tier="batch", deferred=QUICK_JOBS)
    usage, _ = await run(flock, 30)
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 30
    assert await flock.store.get_by_type(FailureRecord) == []
    assert server.batches.jobs_created >= 2 and server.batches.lines_expired > 0
    assert usage["deferred_failed_lines"] > 0  # and they were asked again, then answered somewhere
    assert usage["deferred_requests"] >= 6 + usage["deferred_failed_lines"] - usage["deferred_fallbacks"]
    per_call = usage["cost_usd"] / usage["llm_calls"], standard_usage["cost_usd"] / standard_usage["llm_calls"]
    # lines that went synchronous cost full price; a line answered in a job costs half
    assert per_call[0] < per_call[1]


async def test_an_all_deferred_run_costs_half_of_the_standard_one(server: FakeOpenAIServer) -> None:
    standard, _ = await run(labeller(server), 30)
    batch, _ = await run(labeller(server, tier="batch", deferred=QUICK_JOBS), 30)
    assert batch["deferred_fallbacks"] == 0 and batch["llm_calls"] == standard["llm_calls"] == 6
    assert batch["cost_usd"] == pytest.approx(standard["cost_usd"] / 2, rel=0.05)
    assert max(server.batches.line_submissions.values()) == 1


async def test_flex_falls_back_to_the_standard_tier_after_its_wait(server: FakeOpenAIServer) -> None:
    server.flex_unavailable_until = time.monotonic() + 60
    flock = labeller(server, tier="flex", flex_wait=0.3)
    usage, _ = await run(flock, 10)
    assert server.flex_refused >= 2 and usage["flex_fallbacks"] == 2 and usage["flex_requests"] == 0
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 10
    server.flex_unavailable_until = 0.0
    standard, _ = await run(labeller(server), 10)
    flexed, _ = await run(labeller(server, tier="flex", flex_wait=0.3), 10)
    assert flexed["flex_requests"] == 2 and flexed["cost_usd"] == pytest.approx(standard["cost_usd"] / 2, rel=0.05)


async def test_a_model_that_cannot_go_into_batch_jobs_says_so_once_and_goes_the_standard_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = LLMEngine(per_item=True, tier="batch")  # the offline model: not an OpenAI-compatible provider
    flock = Flock(env={})
    spec = BatchSpec(size=5, timeout=timedelta(seconds=5))
    flock.agent("sentiment").consumes(CustomerReview, batch=spec).publishes(ReviewSentiment).with_engines(engine)
    with caplog.at_level("WARNING", logger="flock_llm.engines"):
        usage, _ = await run(flock, 10)
    said = [r.getMessage() for r in caplog.records if "batch jobs only" in r.getMessage()]
    assert said == ['tier="batch" sends OpenAI-compatible models to batch jobs only; flock-offline/placeholder goes '
                    "the standard way at the list price"]  # fmt: skip
    assert usage["llm_calls"] == 2 and usage["deferred_requests"] == 0


def test_tier_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="`tier` must be one of standard, flex, batch"):
        LLMEngine(tier="cheap")
    with pytest.raises(ConfigurationError, match="job_size"):
        DeferredPolicy(job_size=0)


def test_a_process_killed_after_submitting_polls_the_same_job_after_a_restart(tmp_path: Path) -> None:
    """1,000 reviews: 10 published first (their batch flushes by timeout), then 990 (39 full batches and one of
    15): 41 requests, the first 40 in one job. Killed while that job runs; the restart re-forms the same batches
    from the store (the 10 alone again), finds their requests in the journal and polls the same job."""
    db = tmp_path / "run.db"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    worker = [sys.executable, str(TESTS / "deferred_worker.py"), str(db)]
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as server:
        server.batches.completion_delay_s = 3600.0  # the job runs until the worker is killed (a fixed 4 s cost 4 s)
        first = subprocess.Popen(
            [*worker, server.api_base, "publish", "1000", "10"], stdout=subprocess.DEVNULL, env=env
        )
        try:
            deadline = time.monotonic() + 120  # a worker that starts slowly on a busy machine
            while server.batches.jobs_created < 1 and time.monotonic() < deadline and first.poll() is None:
                time.sleep(0.05)
            # (the second job, of the 41st request, may be created before the kill too: it closes as soon as the
            # worker is idle, and under load both creations finished within one poll of this loop)
            assert server.batches.jobs_created >= 1, "the job was never submitted"
        finally:
            first.send_signal(signal.SIGKILL)  # between submission and retrieval (and on failure: none left running)
            first.wait(timeout=30)
        server.batches.completion_delay_s = 0.0  # the jobs are done when they are next polled
        second = subprocess.run([*worker, server.api_base, "recover"], capture_output=True, text=True, env=env,
                                timeout=120)  # fmt: skip
        assert second.returncode == 0, second.stderr
    assert "done labels=1000 failed=0" in second.stdout
    # the restarted process polled the job it had submitted; the 41st request went into a second job (before
    # or after the kill), and no request was submitted twice
    assert server.batches.jobs_created == 2
    assert len(server.batches.line_submissions) == 41 and set(server.batches.line_submissions.values()) == {1}
    assert server.requests == 0  # nothing went the synchronous way either


def test_a_process_killed_between_upload_and_job_creation_bills_each_line_once_after_a_restart(
    tmp_path: Path,
) -> None:
    """Killed after it uploaded the job's input file, before the provider created the job: the restart creates
    the one job for that file (or uploads anew), never one job per request of it (K requests were billed K x K
    times). Every one of the 41 requests is billed once."""
    db = tmp_path / "run.db"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    worker = [sys.executable, str(TESTS / "deferred_worker.py"), str(db)]
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as server:
        killed_between_upload_and_creation(server, [*worker, server.api_base, "publish", "1000", "10"], env)
        assert server.batches.jobs_created == 0
        second = subprocess.run([*worker, server.api_base, "recover"], capture_output=True, text=True, env=env,
                                timeout=120)  # fmt: skip
        assert second.returncode == 0, second.stderr
    assert "done labels=1000 failed=0" in second.stdout
    assert len(server.batches.line_bills) == 41 and set(server.batches.line_bills.values()) == {1}
    assert server.batches.lines_billed == 41 and server.batches.duplicated_ids == 0
    assert server.requests == 0  # nothing went the synchronous way either


async def test_a_job_polled_through_an_outage_is_still_answered(server: FakeOpenAIServer) -> None:
    """Polls that fail while the provider is down are tried again; the job's answers arrive after it."""
    server.batches.completion_delay_s = 0.3
    quick = BreakerPolicy(probe_interval=0.1, max_probe_interval=0.2)  # failed polls open it like any call
    flock = labeller(server, tier="batch", deferred=QUICK_JOBS, breaker=quick)
    published = await flock.publish_many(reviews(10))
    deadline = time.monotonic() + 10
    while server.batches.jobs_created < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    server.outage(0.6)  # the job was submitted; now every poll fails for a while
    await flock.run_until_idle()
    await flock.shutdown()
    assert server.batches.failed_calls >= 1 and server.batches.jobs_created == 1
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 10
    assert server.requests == server.probes  # nothing went the synchronous way (the breaker's probes may)
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}


async def test_a_dead_provider_fails_the_batch_tier_into_failure_records_not_losses(server: FakeOpenAIServer) -> None:
    """Jobs cannot even be uploaded: the requests go the synchronous way, where the circuit breaker gives up
    after `max_outage` and every review gets a failure record."""
    server.fail_status = 500
    flock = labeller(
        server, tier="batch", deferred=QUICK_JOBS, breaker=BreakerPolicy(max_outage=0.5, probe_interval=0.1)
    )
    published = await flock.publish_many(reviews(10))
    await flock.run_until_idle()
    await flock.shutdown()
    failures = await flock.store.get_by_type(FailureRecord)
    assert {f.stage for f in failures} == {"provider_unavailable"}
    assert sorted(i for f in failures for i in f.input_ids) == sorted(a.id for a in published)
    assert server.batches.jobs_created == 0 and server.batches.failed_calls >= 1
    assert flock.metrics().usage["sentiment"]["deferred_fallbacks"] == 2


async def test_the_sqlite_job_journal_waits_for_a_held_lock_without_stalling_the_loop(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    journal = SQLiteJournal(db)
    holder = sqlite3.connect(str(db), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    running = asyncio.create_task(ticker())
    writing = asyncio.create_task(journal.begin("job-1", ["req-a"]))
    for _ in range(3000):  # ten turns of the loop (not a fixed 0.3 s, in which a busy machine may turn it fewer times)
        if ticks >= 10 or writing.done():
            break
        await asyncio.sleep(0.01)
    assert not writing.done() and ticks >= 10  # waiting for the lock; the event loop goes on
    holder.execute("COMMIT")
    await asyncio.wait_for(writing, timeout=5)
    running.cancel()
    assert await journal.job_of("req-a") == JobRecord("job-1")
    short = SQLiteJournal(db, busy_timeout=0.2)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # held too long: a clear error (requests go sync)
        await short.begin("job-2", ["req-b"])
    holder.execute("ROLLBACK")
    assert await short.job_of("req-b") is None  # nothing half-written
    await short.begin("job-2", ["req-b"])
    assert await journal.job_of("req-b") == JobRecord("job-2")
    holder.close()
    journal.close()
    short.close()
