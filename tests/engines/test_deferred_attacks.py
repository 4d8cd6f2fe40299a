"""The batch tier against hostile side paths found by an outside test: output lines built to break the parser,
and journals that must not grow without bound while the provider refuses jobs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from deferred_support import QUICK_JOBS, killed_between_upload_and_creation, queue_settled, quick_batch_server

from flock_llm.engines import JobJournal
from flock_llm.engines._calls.models import load_litellm
from flock_llm.engines._tiers.job_lines import line_result
from flock_llm.engines._tiers.jobs import DeferredQueue
from flock_llm.engines._tiers.journal import MemoryJournal
from flock_llm.stores.sqlite_journal import SQLiteJournal
from flock_llm.testing import FakeOpenAIServer

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")

server = pytest.fixture(quick_batch_server, name="server")


def body(n: int) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": f"request {n}"}]}


def test_a_deeply_nested_output_line_is_a_malformed_line_not_a_failed_read() -> None:
    """json.loads raises RecursionError (not ValueError) on deep nesting: that line alone is malformed; before,
    the error ended the read of the whole file, which was read again at every poll until the 24 h deadline."""
    assert line_result(b"[" * 200_000) is None
    assert line_result(b'{"custom_id": "a", "response": ' + b"{" * 200_000) is None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_job_that_could_not_be_submitted_is_pruned_from_the_journal(
    server: FakeOpenAIServer, kind: str, tmp_path: object
) -> None:
    """A provider that refuses uploads (an outage) must not leave one journal record per failed job forever."""
    from pathlib import Path

    journal = MemoryJournal() if kind == "memory" else SQLiteJournal(Path(str(tmp_path)) / "j.db")
    server.fail_status = 500
    settings = {"api_base": server.api_base, "api_key": "sk-local-fake"}
    jobs = DeferredQueue(replace(QUICK_JOBS, job_size=1), load_litellm(), settings)
    for n in range(3):
        answer = await asyncio.wait_for(jobs.ask(journal, f"req-{n}", body(n)), timeout=60)
        assert answer.body is None and "not submitted" in answer.problem
    assert await journal.prune(time.time() + 1) == 3  # every failed job is finished: pruned in time
    if isinstance(journal, SQLiteJournal):
        journal.close()


async def test_a_journaled_file_the_provider_forgot_is_pruned_after_its_requests_moved_on(
    server: FakeOpenAIServer,
) -> None:
    """After a restart, a journaled upload the provider no longer knows sends its requests into a new job; the
    old record is dead and must be pruned, not kept forever."""
    journal = MemoryJournal()
    await journal.begin("old-job", ["req-1"])
    await journal.submitted("old-job", file_id="file-the-provider-forgot")
    settings = {"api_base": server.api_base, "api_key": "sk-local-fake"}
    jobs = DeferredQueue(replace(QUICK_JOBS, job_size=1), load_litellm(), settings)
    answer = await asyncio.wait_for(jobs.ask(journal, "req-1", body(1)), timeout=60)
    assert answer.body is not None and server.batches.jobs_created == 1
    await queue_settled(jobs)  # the poller marks its job finished after it answered
    assert await journal.prune(time.time() + 1) == 2  # the new job and the dead one
    assert await journal.job_of("req-1") is None


async def upload(server: FakeOpenAIServer, ids: list[str], bodies: list[dict[str, object]]) -> str:
    lines = "".join(
        json.dumps({"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": b}) + "\n"
        for c, b in zip(ids, bodies, strict=True)
    )
    uploaded = await load_litellm().acreate_file(
        file=("requests.jsonl", lines.encode(), "application/jsonl"),
        purpose="batch",
        custom_llm_provider="openai",
        api_base=server.api_base,
        api_key="sk-local-fake",
    )
    return str(uploaded.id)


async def test_two_processes_resuming_one_uploaded_file_create_one_job(
    server: FakeOpenAIServer, tmp_path: object
) -> None:
    """A worker died between upload and job creation; its requests were taken over by two workers at once (a
    shared store reclaims them). Each resumes the journaled file: one job must be created, not one per worker
    (every line of the file billed twice)."""
    from pathlib import Path

    path = Path(str(tmp_path)) / "journal.db"
    bodies = [body(i) for i in range(4)]
    ids = [f"req-{i}" for i in range(4)]
    first, second = SQLiteJournal(path), SQLiteJournal(path)  # two processes' connections to one file
    await first.begin("died", ids)
    await first.submitted("died", file_id=await upload(server, ids, bodies))
    settings = {"api_base": server.api_base, "api_key": "sk-local-fake"}
    a = DeferredQueue(QUICK_JOBS, load_litellm(), settings)
    b = DeferredQueue(QUICK_JOBS, load_litellm(), settings)
    answers = await asyncio.wait_for(
        asyncio.gather(
            a.ask(first, ids[0], bodies[0]), a.ask(first, ids[1], bodies[1]),
            b.ask(second, ids[2], bodies[2]), b.ask(second, ids[3], bodies[3]),
        ),
        timeout=60,
    )  # fmt: skip
    assert all(x.body is not None for x in answers)
    assert server.batches.jobs_created == 1 and set(server.batches.line_bills.values()) == {1}
    first.close()
    second.close()


async def claim_checks(journal: JobJournal) -> None:
    await journal.begin("k", ["r1"])
    await journal.submitted("k", file_id="file-1")
    later = time.time() + 60
    assert await journal.claim("k", "a", later)
    assert not await journal.claim("k", "b", later)  # held by a
    assert await journal.claim("k", "a", later)  # a again: extended
    assert await journal.claim("k", "a", time.time() - 1)  # a's claim lapses at once
    await asyncio.sleep(1.1 if not isinstance(journal, (MemoryJournal, SQLiteJournal)) else 0.01)
    assert await journal.claim("k", "b", later)  # lapsed: b takes it over (a died)
    await journal.finished("k", 1.0)
    assert await journal.prune(2.0) == 1
    await journal.begin("k", ["r1"])  # the same key again (a test's choice): no claim survived the prune
    await journal.submitted("k", file_id="file-1")
    assert await journal.claim("k", "c", later)


async def test_a_resumed_job_is_claimed_by_one_process_at_a_time(journal: JobJournal) -> None:
    await claim_checks(journal)


async def test_a_resumed_job_is_claimed_by_one_process_at_a_time_in_redis(redis_url: str) -> None:
    from flock_llm import Flock

    flock = Flock(store=redis_url, env={})
    await flock.start()
    await claim_checks(flock.store.job_journal())  # type: ignore[attr-defined]
    await flock.shutdown()


@pytest.fixture(params=["memory", "sqlite"])
def journal(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[JobJournal]:
    from pathlib import Path

    if request.param == "memory":
        yield MemoryJournal()
        return
    sqlite = SQLiteJournal(Path(str(tmp_path)) / "jobs.db")
    yield sqlite
    sqlite.close()


async def test_a_provider_that_stops_answering_polls_does_not_hold_the_job_past_its_deadline(
    server: FakeOpenAIServer,
) -> None:
    """Every poll hangs without a byte (litellm's own timeout for the Batch API is 10 minutes): the deadline
    still cancels the job and its requests go the synchronous way soon after it, not after the hang."""
    server.batches.hang_retrievals = 30.0
    settings = {"api_base": server.api_base, "api_key": "sk-local-fake"}
    policy = replace(QUICK_JOBS, job_size=1, deadline=0.5, cancel_wait=0.5)
    jobs = DeferredQueue(policy, load_litellm(), settings)
    started = time.monotonic()
    answer = await asyncio.wait_for(jobs.ask(MemoryJournal(), "req-1", body(1)), timeout=60)
    assert answer.body is None and answer.problem.startswith("no line: the job ended deadline")
    assert server.batches.cancels == 1
    assert time.monotonic() - started < 20  # bounded by the deadline, not by the 30 s hang


def test_a_process_killed_between_upload_and_job_creation_with_a_redis_journal_bills_each_line_once(
    redis_single_url: str,
) -> None:
    """The SQLite test of this path (test_deferred_tiers), with the Redis store's journal: after the kill the
    restarted worker reclaims the dead one's items, resumes the journaled file and bills each line once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(tests), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    worker = [sys.executable, str(tests / "deferred_worker.py"), redis_single_url]
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as fake:
        killed_between_upload_and_creation(fake, [*worker, fake.api_base, "publish", "100", "10"], env)
        second = subprocess.run(
            [*worker, fake.api_base, "recover"], capture_output=True, text=True, env=env, timeout=120
        )
        assert second.returncode == 0, second.stderr
    assert "done labels=100 failed=0" in second.stdout
    assert set(fake.batches.line_bills.values()) == {1} and fake.batches.duplicated_ids == 0
    assert fake.requests == 0  # nothing went the synchronous way either


async def test_an_id_listed_twice_in_the_output_file_gets_its_answer_not_its_error() -> None:
    """A provider lists one request twice (a retried line): first with a 500, then answered. The answer was
    billed and is used; before, the first line settled the request with its error and it was paid again."""
    from types import SimpleNamespace

    from flock_llm.engines._tiers.jobs import _Job

    answered = {"custom_id": "a", "response": {"status_code": 200, "body": {"choices": []}}}
    failed = {"custom_id": "a", "response": {"status_code": 500, "body": {}}}
    stranger = {"custom_id": "never-sent", "response": {"status_code": 200, "body": {"choices": []}}}
    output = "\n".join(json.dumps(line) for line in (failed, stranger, answered)).encode()

    async def afile_content(**_: object) -> SimpleNamespace:
        return SimpleNamespace(content=output)

    jobs = DeferredQueue(QUICK_JOBS, SimpleNamespace(afile_content=afile_content), {})
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    jobs._lines["a"] = [future]  # type: ignore[list-item]
    job = _Job("k", MemoryJournal(), {"a"})
    await jobs._read("batch_1", SimpleNamespace(output_file_id="out", error_file_id=None), job)
    assert future.done() and future.result().body == {"choices": []}  # type: ignore[attr-defined]
    assert job.waiting == set()
