"""The call shell's side paths under attack (findings in /work/wt/findings/shell2.md): a provider batch job's own
requests answered 429 (with a Retry-After, long or garbage), a breaker probe that hangs while the runs that wait for
it give up or are cancelled, budgets that must end with nothing held."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from shell_fakes import MODEL, Provider, batch, context, engine_for, provider

from flock_llm.engines import EvalResult
from flock_llm.engines._calls.breaker import BreakerPolicy
from flock_llm.engines._calls.models import load_litellm
from flock_llm.engines._calls.shell import Ask, Settled
from flock_llm.engines._ladder.engine import LadderEngine
from flock_llm.engines._tiers.journal import MemoryJournal

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")
QUICK_BREAKER = BreakerPolicy(probe_interval=0.05, max_probe_interval=0.05, max_outage=30.0)
Reply = tuple[int, Any, dict[str, str]]


async def run(engine: LadderEngine, batches: int = 2, size: int = 2) -> list[EvalResult]:
    inputs = [batch(size, first=n * size) for n in range(batches)]
    return list(await asyncio.gather(*(engine.evaluate_batch(context(), i) for i in inputs)))


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


def refuse_job_requests(fake: Provider, which: Callable[[str, str], bool], times: int, headers: dict[str, str]) -> None:
    """The fake's Batch API answers the first `times` requests `which(method, path)` picks with a 429."""
    batches, left = fake.batches, [times]
    get, post = batches.get, batches.post

    def refused(method: str, path: str) -> Reply | None:
        if which(method, path) and left[0] > 0:
            left[0] -= 1
            return 429, {"error": {"message": "Rate limit reached for batch requests", "type": "requests"}}, headers
        return None

    batches.get = lambda path: refused("GET", path) or get(path)  # type: ignore[method-assign]
    batches.post = lambda path, raw, kind: refused("POST", path) or post(path, raw, kind)  # type: ignore[method-assign]


def poll(method: str, path: str) -> bool:
    return method == "GET" and "/batches/" in path


def upload(method: str, path: str) -> bool:
    return method == "POST" and path.endswith("/files")


def download(method: str, path: str) -> bool:
    return method == "GET" and path.endswith("/content")


@pytest.mark.parametrize(
    ("which", "retry_after"),
    [(poll, "5"), (upload, "5"), (download, "not a number"), (poll, "1e308")],
    ids=["poll", "upload", "download-garbage-retry-after", "poll-huge-retry-after"],
)
async def test_a_429_on_a_job_request_is_retried_by_the_engines_policy_paced_and_every_line_answered_once(
    which: Callable[[str, str], bool], retry_after: str
) -> None:
    """Before: litellm's Batch API calls kept the OpenAI SDK's own 2 retries, which honour a Retry-After of up to
    60 s (5 s twice here, though `max_retry_after` is 0.05 s) and go around the engine's limiter and breaker."""
    with provider("batch") as fake:
        refuse_job_requests(fake, which, times=2, headers={"retry-after": retry_after})
        engine = engine_for("batch", fake, breaker=QUICK_BREAKER, prices={"input": 1.0, "output": 2.0}, budget_usd=1.0)
        load_litellm()  # (its import is not the run's time)
        started = time.monotonic()
        results = await asyncio.wait_for(run(engine), timeout=4.0)  # before: 10 s (5 s, twice)
        took = time.monotonic() - started
    assert took < 4.0 and not [f for r in results for f in r.failures]
    assert engine.limiter.started == fake.job_requests + fake.chat_requests  # every request took a limiter slot
    assert max(fake.batches.line_bills.values()) == 1 and max(fake.batches.line_submissions.values()) == 1
    assert fake.batches.jobs_created == engine.deferred_queue().jobs_done
    assert engine.costs.ledger.in_flight_usd == 0.0


async def test_a_hung_poll_holds_the_engines_only_request_slot_no_longer_than_its_timeout() -> None:
    """Before: a poll's HTTP timeout was the job's deadline (24 h by default): with max_concurrent_requests=1, a
    provider that stopped answering polls held the engine's one slot, and every standard call waited behind it."""
    with provider("standard") as fake:
        fake.batches.hang_retrievals = 5.0  # every poll hangs without a byte
        engine = engine_for("batch", fake, timeout=0.3, max_concurrent_requests=1, breaker=QUICK_BREAKER)
        shell, queue = engine.shell(context(), MODEL), engine.deferred_queue()
        queue.requests = shell.request
        line = asyncio.create_task(queue.ask(MemoryJournal(), "req-1", {"model": "fake-model", "messages": []}))
        await until(lambda: fake.batches.retrievals)  # the job was created and its first poll hangs
        started = time.monotonic()
        ask = shell.call(Ask("batch", 1, 10, 5), engine.probe_for(MODEL), Settled.of_completion)
        reply = await asyncio.wait_for(ask, timeout=4.0)
        took = time.monotonic() - started
        for task in (line, *queue._tasks):
            task.cancel()
        await asyncio.gather(line, *queue._tasks, return_exceptions=True)
    assert reply is not None and took < 4.0
