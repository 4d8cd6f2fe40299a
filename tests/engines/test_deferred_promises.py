"""The batch tier's promises on its side paths, against the fake server's Batch API: identical requests share a
line, a lost job ends at once, a malformed line costs one line, the deadline cancels the job first, an answer
wins over an error for the same line, output files stream in bounded memory, finished jobs are pruned."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import references
from deferred_support import QUICK_JOBS, labeller, queue_settled, quick_batch_server, reviews, run
from domain import ReviewSentiment

from flock_llm.engines import JobJournal
from flock_llm.engines._calls.models import load_litellm
from flock_llm.engines._tiers.job_lines import LineResult, line_result, lines_of
from flock_llm.engines._tiers.jobs import DeferredQueue, custom_id_of
from flock_llm.engines._tiers.journal import MemoryJournal
from flock_llm.stores.sqlite_journal import SQLiteJournal
from flock_llm.testing import FakeOpenAIServer

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")


server = pytest.fixture(quick_batch_server, name="server")


def queue(server: FakeOpenAIServer, **policy: float) -> DeferredQueue:
    settings = {"api_base": server.api_base, "api_key": "sk-local-fake"}
    return DeferredQueue(replace(QUICK_JOBS, **policy), load_litellm(), settings)


def body(n: int) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": f"request {n}"}]}


async def test_identical_items_in_two_batches_share_one_line_and_both_are_answered(server: FakeOpenAIServer) -> None:
    """Two batches with the same items make the same request (the same id): one line in one job answers both."""
    flock = labeller(server, tier="batch", deferred=QUICK_JOBS)
    first = await flock.publish_many(reviews(5))
    second = await flock.publish_many(reviews(5))  # the same payloads: a second, identical batch
    await asyncio.wait_for(flock.run_until_idle(), timeout=120)  # a hang fails, not a slow machine
    await flock.shutdown()
    assert await references(flock, "sentiment") == {a.id: 1 for a in first + second}
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 10
    assert server.batches.duplicated_ids == 0 and set(server.batches.line_bills.values()) == {1}
    assert len(server.batches.line_bills) == 1 and server.requests == 0


async def test_every_waiter_of_a_shared_request_is_answered_even_when_one_gives_up(server: FakeOpenAIServer) -> None:
    jobs = queue(server)
    journal = MemoryJournal()
    first = asyncio.create_task(jobs.ask(journal, "same", body(1)))
    second = asyncio.create_task(jobs.ask(journal, "same", body(1)))
    third = asyncio.create_task(jobs.ask(journal, "other", body(2)))
    await asyncio.sleep(0)
    first.cancel()  # the caller that started the request leaves; the others still get the line
    answers = await asyncio.wait_for(asyncio.gather(second, third), timeout=120)
    assert all(a.body is not None for a in answers)
    assert server.batches.duplicated_ids == 0 and sorted(server.batches.line_bills.values()) == [1, 1]


async def test_a_job_the_provider_does_not_know_ends_its_lines_at_once(server: FakeOpenAIServer) -> None:
    """A 404 for the job (litellm raises openai's NotFoundError here) ends it at the first poll: its lines are
    asked again in a later job, not polled for the 24 h deadline."""
    server.batches.lose_next = 1
    flock = labeller(server, tier="batch", deferred=replace(QUICK_JOBS, deadline=3.0))
    usage, _ = await run(flock, 10)
    lost = "batch_2"  # file-1, then the first job
    assert server.batches.retrievals[lost] == 1  # its first poll got the 404; no second one
    assert server.batches.jobs_created == 2 and usage["deferred_failed_lines"] == 2
    # asked again in a later job, not sent the synchronous way at the deadline
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 10 and server.requests == 0


async def test_a_malformed_output_line_retries_only_its_own_request(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.batches.malformed_next = 1
    flock = labeller(server, tier="batch", deferred=QUICK_JOBS)
    with caplog.at_level("WARNING"):
        usage, _ = await run(flock, 30)  # 6 requests, one job
        gc.collect()
    assert server.batches.lines_billed == 7  # the 6 requests, and the malformed one again
    assert usage["deferred_failed_lines"] == 1 and len(await flock.store.get_by_type(ReviewSentiment)) == 30
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "never retrieved" in m]
    assert any("1 line(s) of the output file" in m for m in said)


async def test_at_the_deadline_the_job_is_cancelled_and_answers_that_arrive_anyway_are_used(
    server: FakeOpenAIServer,
) -> None:
    server.batches.completion_delay_s = 2.0  # well after the deadline, even on a slow machine
    server.batches.ignore_cancel = True  # too far along: the job completes although it was cancelled
    policy = replace(QUICK_JOBS, deadline=0.2)
    flock = labeller(server, tier="batch", deferred=policy)
    usage, _ = await run(flock, 30)
    assert server.batches.cancels == 1 and server.requests == 0  # nothing went the synchronous way
    assert set(server.batches.line_bills.values()) == {1} and usage["deferred_fallbacks"] == 0
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 30


async def test_a_job_cancelled_at_its_deadline_bills_each_line_once(server: FakeOpenAIServer) -> None:
    """The job answered 2 lines before it was cancelled: those are used, the other 4 go synchronous."""
    server.batches.completion_delay_s = 60.0
    server.batches.answered_before_cancel = 2
    policy = replace(QUICK_JOBS, deadline=0.2)
    flock = labeller(server, tier="batch", deferred=policy)
    usage, _ = await run(flock, 30)
    assert server.batches.cancels == 1 and server.batches.lines_billed == 2 and server.requests == 4
    assert usage["deferred_fallbacks"] == 4 and len(await flock.store.get_by_type(ReviewSentiment)) == 30


async def test_a_line_in_both_the_output_and_the_error_file_counts_as_answered(server: FakeOpenAIServer) -> None:
    server.batches.duplicate_in_errors = 3
    flock = labeller(server, tier="batch", deferred=QUICK_JOBS)
    usage, _ = await run(flock, 30)
    assert usage["deferred_failed_lines"] == 0 and server.requests == 0
    assert set(server.batches.line_submissions.values()) == {1} and server.batches.lines_billed == 6


async def test_a_large_output_file_is_read_in_bounded_memory(server: FakeOpenAIServer) -> None:
    """2,000 lines of 5 KB (a 10 MB output file): reading it and answering every request holds at most a few
    chunks at a time, not the file, its lines and their parsed answers at once (not timing-based: traced bytes)."""
    n, padding = 2_000, 5_000
    server.batches.output_padding = padding
    jobs = queue(server, job_size=n, poll_interval=0.3, max_poll_interval=0.3)
    journal = MemoryJournal()
    answered = 0

    async def ask(i: int) -> None:
        nonlocal answered
        result = await jobs.ask(journal, f"req-{i}", body(i))
        answered += result.body is not None

    asking = [asyncio.create_task(ask(i)) for i in range(n)]
    deadline = time.monotonic() + 120
    while server.batches.jobs_created < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    server.batches.completion_delay_s = 0.0
    assert server.batches.get("/v1/batches/batch_2")[0] == 200  # the fake builds its output file now, untraced
    tracemalloc.start()
    try:
        await asyncio.wait_for(asyncio.gather(*asking), timeout=300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = n * padding
    assert answered == n
    assert peak < size / 3, f"reading a {size / 1e6:.0f} MB output file peaked at {peak / 1e6:.1f} MB"


@pytest.fixture(params=["memory", "sqlite"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobJournal]:
    if request.param == "memory":
        yield MemoryJournal()
        return
    sqlite = SQLiteJournal(tmp_path / "jobs.db")
    yield sqlite
    sqlite.close()


async def prune_checks(journal: JobJournal) -> None:
    """What every journal does: only jobs finished before the cutoff go, with their requests."""
    await journal.begin("old", ["a", "b"])
    await journal.submitted("old", file_id="file-1")
    await journal.submitted("old", batch_id="batch_1")
    await journal.begin("recent", ["c"])
    await journal.begin("running", ["d"])
    await journal.finished("old", 1_000.0)
    await journal.finished("recent", 2_000.0)
    assert await journal.prune(1_500.0) == 1
    assert await journal.job_of("a") is None and await journal.job_of("b") is None
    assert (await journal.job_of("c")) is not None and (await journal.job_of("d")) is not None
    assert await journal.prune(1_500.0) == 0
    assert await journal.prune(3_000.0) == 1 and await journal.job_of("c") is None
    assert await journal.job_of("d") is not None  # never finished: kept


async def test_finished_jobs_are_pruned_from_the_journal(journal: JobJournal) -> None:
    await prune_checks(journal)


async def test_finished_jobs_are_pruned_from_the_redis_journal(redis_url: str) -> None:
    from flock_llm import Flock

    flock = Flock(store=redis_url, env={})
    await flock.start()
    await prune_checks(flock.store.job_journal())  # type: ignore[attr-defined]
    await flock.shutdown()


async def test_the_queue_prunes_jobs_finished_longer_than_keep_finished_ago(server: FakeOpenAIServer) -> None:
    jobs = queue(server, job_size=1, keep_finished=0.05)
    journal = MemoryJournal()
    assert (await jobs.ask(journal, custom_id_of(body(1)), body(1))).body is not None
    await queue_settled(jobs)  # the poller marks the job finished (and prunes) after it answered
    assert await journal.job_of(custom_id_of(body(1))) is not None  # finished, kept for keep_finished
    await asyncio.sleep(0.1)
    assert (await jobs.ask(journal, custom_id_of(body(2)), body(2))).body is not None
    await queue_settled(jobs)
    assert await journal.job_of(custom_id_of(body(1))) is None
    assert await journal.job_of(custom_id_of(body(2))) is not None


async def test_the_requests_of_a_file_uploaded_before_a_restart_go_into_one_job(server: FakeOpenAIServer) -> None:
    """The journal says: uploaded, no job yet (the process died in between). Every request of that file asks at
    once after the restart; the file gets one job, each line is billed once."""
    bodies = [body(i) for i in range(8)]
    ids = [custom_id_of(b) for b in bodies]
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
    journal = MemoryJournal()
    await journal.begin("job-1", ids)
    await journal.submitted("job-1", file_id=uploaded.id)
    await journal.begin("job-2", ["gone"])
    await journal.submitted("job-2", file_id="file-the-provider-forgot")
    jobs = queue(server)
    answers = await asyncio.wait_for(
        asyncio.gather(
            *(jobs.ask(journal, c, b) for c, b in zip(ids, bodies, strict=True)), jobs.ask(journal, "gone", body(9))
        ),
        timeout=120,
    )
    assert all(a.body is not None for a in answers)
    # one job for the uploaded file; the request whose file is gone was uploaded anew into a job of its own
    assert server.batches.jobs_created == 2 and server.batches.files_uploaded == 2
    assert server.batches.lines_billed == 9 and set(server.batches.line_bills.values()) == {1}
    assert (await journal.job_of(ids[0])) is not None and (await journal.job_of(ids[0])).batch_id is not None  # type: ignore[union-attr]


async def test_lines_are_split_across_chunks_and_each_line_is_read_alone() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (
            b'{"custom_id": "a", "response": {"status_code": 200, "body": {"x"',
            b": 1}}}\n\n{not json\n",
            b"[1]",
        ):
            yield chunk

    lines = [line async for line in lines_of(chunks())]
    assert lines == [b'{"custom_id": "a", "response": {"status_code": 200, "body": {"x": 1}}}', b"{not json", b"[1]"]
    assert line_result(lines[0]) == ("a", LineResult(body={"x": 1}))
    assert line_result(lines[1]) is None and line_result(lines[2]) is None
    expired = b'{"custom_id": "b", "response": null, "error": {"code": "batch_expired"}}'
    assert line_result(expired) == ("b", LineResult(problem="batch_expired"))
    failed = b'{"custom_id": "c", "response": {"status_code": 500, "body": {"error": {}}}, "error": null}'
    assert line_result(failed) == ("c", LineResult(problem="HTTP 500"))
