"""The batch tier against hostile side paths found by an outside test: output lines built to break the parser,
and journals that must not grow without bound while the provider refuses jobs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from deferred_support import QUICK_JOBS, quick_batch_server

from flock_llm.engines._deferred import DeferredQueue
from flock_llm.engines._job_lines import line_result
from flock_llm.engines._journal import MemoryJournal, SQLiteJournal
from flock_llm.engines._models import load_litellm
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
    await asyncio.sleep(0.05)  # the poller marks its job finished after it answered
    assert await journal.prune(time.time() + 1) == 2  # the new job and the dead one
    assert await journal.job_of("req-1") is None
