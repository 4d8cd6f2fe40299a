"""Provider outages cost time once: one outage clock per engine, no per-item fan-out whatever the probe says,
a Ctrl-C that cancels instead of retrying, error texts that say what happened, and a provider that was never
reachable reported at the first failure."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import pytest
import respx
from domain import CustomerReview, ReviewSentiment
from llm_fakes import MODEL, OPENAI_URL, body, chat, error, item_ids
from test_llm_engine import FAST_RETRY, KEY, assert_accounted_once, reviews, run_batch

from flock_llm import FailureRecord, Flock, ProviderUnavailableError
from flock_llm.engines._calls.breaker import ProviderGuard
from flock_llm.engines.llm import BreakerPolicy, LLMEngine, RetryPolicy
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer


async def records(flock: Flock) -> list[FailureRecord]:
    return await flock.store.get_by_type(FailureRecord)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on, held for the test (bound, not listening: connections are refused): a port
    given back at once could be taken meanwhile by another test's server or an outgoing connection's local end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def unavailable() -> Exception:
    import litellm

    return litellm.ServiceUnavailableError(message="down", llm_provider="openai", model="m")


async def waves(engine: LLMEngine, batches: int, size: int = 5, concurrency: int = 4) -> tuple[Flock, float]:
    """`batches` batches of `size` reviews, `concurrency` at a time; the seconds until all were processed (the
    first model call included, which loads much of litellm)."""
    flock = Flock(env={})
    (
        flock.agent("sentiment")
        .consumes(CustomerReview, batch=BatchSpec(size=size, timeout=timedelta(seconds=30)))
        .publishes(ReviewSentiment)
        .with_engines(engine)
        .max_concurrency(concurrency)
    )
    started = time.perf_counter()
    await flock.publish_many(reviews(batches * size))
    await flock.run_until_idle()
    elapsed = time.perf_counter() - started
    await flock.shutdown()
    return flock, elapsed


# -- 26.15: one outage clock per provider ------------------------------------------------------------------------


async def test_batches_that_start_while_the_provider_is_down_share_one_outage_clock(openai: respx.MockRouter) -> None:
    first_request: list[float] = []

    def down(request: httpx.Request) -> httpx.Response:
        first_request.append(time.perf_counter())
        return error(503, "overloaded")

    route = openai.post(OPENAI_URL).mock(side_effect=down)
    outage = BreakerPolicy(max_outage=1.0, probe_interval=0.1, max_probe_interval=0.2)
    engine = LLMEngine(MODEL, per_item=True, api_key=KEY, retry=FAST_RETRY, breaker=outage)
    flock, _ = await waves(engine, batches=12)  # 3 waves of 4 batches
    failing_for = time.perf_counter() - first_request[0]
    failed = await records(flock)
    assert len(failed) == 12 and {f.stage for f in failed} == {"provider_unavailable"}
    # one max_outage in all, not one per wave (was >= 3 x 1 s: each wave waited its own 1 s)
    assert failing_for < 2 * outage.max_outage, failing_for
    batch_calls = [c for c in route.calls if body(c.request).get("max_tokens") != 1]
    assert len(batch_calls) <= 4 * FAST_RETRY.attempts  # only the first wave sent anything


async def test_once_the_clock_ran_out_later_calls_fail_at_once_until_a_probe_gets_through() -> None:
    guard = ProviderGuard(BreakerPolicy(max_outage=0.2, probe_interval=0.05, max_probe_interval=0.1))
    provider_up = False
    sent: list[str] = []

    async def probe() -> str:
        sent.append("probe")
        if not provider_up:
            raise unavailable()
        return "ok"

    async def attempt() -> str:
        sent.append("call")
        if not provider_up:
            raise unavailable()
        return "answer"

    with pytest.raises(ProviderUnavailableError, match="max_outage"):
        await guard.call(FAST_RETRY, attempt, lambda exc: None, probe)
    assert guard.state == "down"
    calls_before = sent.count("call")
    turns: list[int] = []
    asyncio.get_running_loop().call_soon(turns.append, 1)  # runs at the loop's next turn
    with pytest.raises(ProviderUnavailableError, match="no further request"):
        await guard.call(FAST_RETRY, attempt, lambda exc: None, probe)
    assert not turns  # no wait: it failed without giving the loop a turn (a wall-clock < 0.05 s raced busy machines)
    assert sent.count("call") == calls_before  # and nothing sent
    provider_up = True
    await asyncio.sleep(0.15)  # past the probe interval: the next call starts a probe
    with contextlib.suppress(ProviderUnavailableError):
        await guard.call(FAST_RETRY, attempt, lambda exc: None, probe)
    await asyncio.sleep(0.05)
    assert guard.is_closed() and guard.recoveries == 1
    assert await guard.call(FAST_RETRY, attempt, lambda exc: None, probe) == "answer"
    assert guard.stats().failing_for_s is None  # a real answer stops the clock


async def test_a_probe_under_way_when_the_last_waiting_call_gives_up_is_cancelled_not_left_running() -> None:
    """A probe outliving its run held its budget after the run ended (CI: in_flight_usd 0.01 after the run)."""
    guard = ProviderGuard(BreakerPolicy(max_outage=0.15, probe_interval=0.01, max_probe_interval=0.01))
    probe_started, probe_ended = asyncio.Event(), asyncio.Event()

    async def probe() -> str:
        probe_started.set()
        try:
            await asyncio.sleep(30)  # a provider that reads the probe and never answers
        finally:
            probe_ended.set()
        return "ok"

    async def attempt() -> str:
        raise unavailable()

    with pytest.raises(ProviderUnavailableError, match="max_outage"):
        await guard.call(FAST_RETRY, attempt, lambda exc: None, probe)
    assert probe_started.is_set() and probe_ended.is_set()  # cancelled before the call returned
    assert guard._prober is None


# -- 26.16: transport failures never fan out, whatever the probe says --------------------------------------------


async def test_a_probe_that_passes_while_real_calls_get_429_costs_one_call_per_recovery(
    openai: respx.MockRouter,
) -> None:
    def quota(request: httpx.Request) -> httpx.Response:
        if body(request).get("max_tokens") == 1:
            return chat("ok")  # the one-token probe fits the quota
        return error(429, "tokens per minute exceeded", headers={"retry-after-ms": "10"})

    route = openai.post(OPENAI_URL).mock(side_effect=quota)
    engine = LLMEngine(
        MODEL, per_item=True, api_key=KEY, retry=FAST_RETRY,
        breaker=BreakerPolicy(max_outage=1.0, probe_interval=0.05, max_probe_interval=0.2),
    )  # fmt: skip
    flock, published = await run_batch(engine, reviews(25), per_item=True)
    batch_calls = [c for c in route.calls if body(c.request).get("max_tokens") != 1]
    assert engine.guard.recoveries >= 1
    assert len(batch_calls) <= FAST_RETRY.attempts + engine.guard.recoveries  # was 171 requests
    assert all(len(item_ids(c.request)) == 25 for c in batch_calls)  # never split or asked per item
    usage = flock.metrics().usage["sentiment"]
    assert usage["fallbacks"] == 0 and usage["splits"] == 0
    (record,) = await records(flock)
    assert record.stage == "provider_unavailable" and len(record.input_ids) == 25
    assert "HTTP 429" in record.error
    await assert_accounted_once(flock, published)


# -- 26.17: cancellation wins over retry -------------------------------------------------------------------------


async def test_a_request_cancelled_on_its_way_is_not_retried_even_if_the_library_turns_it_into_a_timeout() -> None:
    import litellm

    started = asyncio.Event()
    attempts = 0

    async def hung_request() -> str:
        nonlocal attempts
        attempts += 1
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:  # an HTTP library that reports its cancelled read as a timeout
            raise litellm.Timeout(message="Request timed out.", model="m", llm_provider="openai") from None
        return "late"

    retry = RetryPolicy(attempts=4, base_delay=0.0, max_delay=0.0)
    task = asyncio.create_task(retry.run(hung_request, lambda exc: None))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, list[int]]]:
    """An HTTP endpoint on 127.0.0.1 that accepts requests and never answers; yields its API base and a list
    that gets one entry per request received."""
    received: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                if line.startswith(b"POST"):
                    received.append(1)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", received
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


async def test_one_ctrl_c_after_the_input_was_read_cancels_a_hung_request_within_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flock_llm.cli.reviews import Review, run_reviews
    from flock_llm.engines import load_litellm

    load_litellm()  # seconds when this test runs first in its process: not part of the grace measured below
    async with silent_server() as (api_base, received):
        monkeypatch.setenv("OPENAI_API_BASE", api_base)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
        stop = asyncio.Event()
        written: list[dict[str, object]] = []

        stopped: list[float] = []

        async def ctrl_c_once_the_request_hangs() -> None:
            while not received:
                await asyncio.sleep(0.01)
            stopped.append(time.perf_counter())
            stop.set()  # what the CLI's first Ctrl-C does

        interrupt = asyncio.create_task(ctrl_c_once_the_request_hangs())
        summary = await asyncio.wait_for(
            run_reviews(
                [Review(review_id=f"r{i}", rating=4, text="fine") for i in range(3)],
                on_records=written.extend,
                batch_size=3,
                model="openai/fake-model",
                env={},
                stop=stop,
                request_timeout=3.0,
                grace_s=0.3,
            ),
            timeout=30,
        )
        elapsed = time.perf_counter() - stopped[0]  # from the Ctrl-C: the run's start-up is no part of the grace
        interrupt.cancel()
    assert elapsed < 2.5, elapsed  # the grace, not the request timeout (3 s) and its retries
    assert len(received) == 1  # cancelled, not retried
    assert summary.interrupted
    # the request went out and its prompt was read: counted (a run cancelled at shutdown returned no usage)
    assert summary.llm_calls == 1 and summary.prompt_tokens > 0
    (failure,) = written
    assert failure["type"] == "FailureRecord" and failure["data"]["stage"] == "cancelled"  # type: ignore[index]


# -- 26.18: error texts say what happened ------------------------------------------------------------------------


async def test_a_refused_connection_reads_connection_refused_not_http_500(closed_port: int) -> None:
    port = closed_port
    engine = LLMEngine(
        MODEL, api_key=KEY, api_base=f"http://127.0.0.1:{port}/v1", retry=FAST_RETRY,
        breaker=BreakerPolicy(max_outage=0.5, probe_interval=0.1),
    )  # fmt: skip
    flock, _ = await run_batch(engine, reviews(2))
    (record,) = await records(flock)
    assert f"connection refused by 127.0.0.1:{port}" in record.error, record.error
    assert "HTTP 500" not in record.error and "InternalServerError" not in record.error


async def test_a_client_side_timeout_reads_no_answer_within_not_http_408() -> None:
    async with silent_server() as (api_base, received):
        engine = LLMEngine(
            MODEL, api_key=KEY, api_base=api_base, timeout=0.3, retry=RetryPolicy(attempts=1),
            breaker=BreakerPolicy(max_outage=0.1, probe_interval=0.05),
        )  # fmt: skip
        flock, _ = await run_batch(engine, reviews(2))
    (record,) = await records(flock)
    assert "no answer within 0.3 s" in record.error, record.error
    assert "HTTP 408" not in record.error and "APITimeoutError" not in record.error


# -- 23.4: a provider that was never reachable is reported at the first failure ----------------------------------


async def test_an_endpoint_that_never_answered_and_refuses_connections_fails_at_once_saying_what_to_set(
    closed_port: int,
) -> None:
    port = closed_port
    engine = LLMEngine(
        "openai/local-model", api_key=KEY, api_base=f"http://127.0.0.1:{port}/v1",
        breaker=BreakerPolicy(max_outage=60),
    )  # fmt: skip
    flock, published = await asyncio.wait_for(run_batch(engine, reviews(3)), timeout=30)  # not after 60 s
    (record,) = await records(flock)
    assert record.stage == "provider_unavailable"
    assert f"connection refused by 127.0.0.1:{port}" in record.error
    for what in ("--model", "OPENAI_API_BASE", "OPENAI_API_KEY", "not an outage"):
        assert what in record.error, (what, record.error)
    assert engine.guard.opened == 0 and engine.guard.probes == 0
    assert flock.metrics().usage["sentiment"]["retries"] == 0
    await assert_accounted_once(flock, published)


async def test_a_hosted_model_without_a_key_says_to_set_the_key_or_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engine = LLMEngine("openai/gpt-4.1-mini", breaker=BreakerPolicy(max_outage=60))
    flock, _ = await asyncio.wait_for(run_batch(engine, reviews(2)), timeout=30)
    (record,) = await records(flock)
    assert "no API key" in record.error and "OPENAI_API_KEY" in record.error and "--model" in record.error
    assert "HTTP 500" not in record.error


async def test_a_provider_that_answered_and_then_refuses_connections_is_an_outage() -> None:
    with FakeOpenAIServer(latency_s=0.0) as server:
        engine = LLMEngine(
            "openai/fake-model", per_item=True, api_key=KEY, api_base=server.api_base, retry=FAST_RETRY,
            breaker=BreakerPolicy(max_outage=0.5, probe_interval=0.1),
        )  # fmt: skip
        first, _ = await run_batch(engine, reviews(2), per_item=True)
        assert await records(first) == []
    flock, _ = await run_batch(engine, reviews(2), per_item=True)  # the server is gone: nothing listens now
    (record,) = await records(flock)
    assert engine.guard.opened == 1  # waited for the provider, as in an outage
    assert record.stage == "provider_unavailable" and "max_outage" in record.error
    assert "connection refused by 127.0.0.1" in record.error
    assert "not an outage" not in record.error
