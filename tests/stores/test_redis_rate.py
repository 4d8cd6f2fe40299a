"""Rate windows are one provider quota each: one account (endpoint and API key) on one model. Two accounts on one
model never share a window (in Redis or in one process), the key itself never names one, and workers that
disagree about a shared window's limit are refused instead of filling it past the smaller limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from domain import CustomerReview, ReviewSentiment
from test_redis_store import until

from flock_llm import ConfigurationError, Flock
from flock_llm.engines._calls.rate import LocalWindows, account_of, window_name
from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.engines.llm import LLMEngine
from flock_llm.stores import RedisStore
from flock_llm.stores.redis import rate
from flock_llm.testing import FakeOpenAIServer

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")

FAST = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0, max_retry_after=0.05)
LIMIT = 50
"""Tokens per minute: less than one call takes, so one answered call fills its window for a minute."""


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as fake:
        yield fake


def labeller(server: FakeOpenAIServer, api_key: str, store: str | None) -> Flock:
    flock = Flock(env={}, store=store)
    engine = LLMEngine(
        "openai/fake-model",
        api_base=server.api_base,
        api_key=api_key,
        per_item=True,
        structured_output=True,
        retry=FAST,
        tokens_per_minute=LIMIT,
    )
    flock.agent("sentiment").consumes(CustomerReview).publishes(ReviewSentiment).with_engines(engine)
    return flock


async def label_one(flock: Flock, review_id: str, labelled_before: int = 0) -> None:
    await flock.publish(CustomerReview(review_id=review_id, rating=4, text="a solid kettle, quick delivery"))
    if isinstance(flock.store, RedisStore):
        store = flock.store

        async def labelled() -> bool:
            return await store.count(ReviewSentiment) > labelled_before

        await until(labelled, timeout=60)
    else:
        await flock.run_until_idle()
        assert len(await flock.store.get_by_type(ReviewSentiment)) == 1


async def test_two_accounts_on_one_model_have_their_own_redis_window(server: FakeOpenAIServer, redis_url: str) -> None:
    """Account A's answered call fills its window for a minute; account B (another key, same model, same Redis)
    is not held back by it (before: one window per model name, and B waited the whole minute)."""
    first = labeller(server, "sk-account-a-0123456789", redis_url)
    await first.start()
    await asyncio.wait_for(label_one(first, "a1"), timeout=60)  # (litellm loads on first use)
    await first.shutdown()
    second = labeller(server, "sk-account-b-0123456789", redis_url)
    await second.start()
    try:
        await asyncio.wait_for(label_one(second, "b1", 1), timeout=30)  # not a minute behind account A's tokens
        store = second.store
        assert isinstance(store, RedisStore)
        names = [
            window_name(account_of({"api_base": server.api_base, "api_key": key}), "openai/fake-model", "tokens")
            for key in ("sk-account-a-0123456789", "sk-account-b-0123456789")
        ]
        assert names[0] != names[1] and not any("sk-account" in name for name in names)  # never the key itself
        assert [await store.client.exists(store.key(f"rate:{name}")) for name in names] == [1, 1]
    finally:
        await second.shutdown(timeout=1)


async def test_two_accounts_on_one_model_have_their_own_window_in_one_process(server: FakeOpenAIServer) -> None:
    first, second = labeller(server, "sk-local-a-0123456789", None), labeller(server, "sk-local-b-0123456789", None)
    try:
        await asyncio.wait_for(label_one(first, "a1"), timeout=60)  # (litellm loads on first use)
        await asyncio.wait_for(label_one(second, "b1"), timeout=30)  # before: the same window, a minute's wait
    finally:
        for flock in (first, second):
            await flock.shutdown(timeout=1)


async def test_a_worker_with_another_limit_for_a_shared_window_is_refused(redis_url: str) -> None:
    """Before, the worker with the larger limit took 900,000 tokens into a 1,000-token window."""
    strict, loose = RedisStore.from_url(redis_url), RedisStore.from_url(redis_url)
    for store in (strict, loose):
        await store.connect()
    name = "acct/openai/x:tokens"
    await strict.rate_windows().window(name, 1_000).acquire(600)
    with pytest.raises(ConfigurationError, match=r"limit of 1,000 per minute.*`tokens_per_minute=1,000,000`"):
        await loose.rate_windows().window(name, 1_000_000).acquire(900_000)
    await loose.rate_windows().window(name, 1_000).acquire(300)  # the same limit: it shares the window
    with pytest.raises(TimeoutError):  # and the window is full: 600 + 300 + 200 > 1,000
        await asyncio.wait_for(loose.rate_windows().window(name, 1_000).acquire(200), timeout=0.3)
    for store in (strict, loose):
        await store.aclose()


async def test_a_cancelled_waiter_on_a_full_shared_minute_stops_at_once(redis_url: str) -> None:
    """Python 3.11's `asyncio.wait_for` (inside redis-py's commands) can swallow a cancellation that arrives as the
    command's reply does: the waiter then slept out the minute and its DSPy call went out ~58 s after it was
    cancelled. A waiter whose task is being cancelled now stops before sleeping."""
    store = RedisStore.from_url(redis_url)
    await store.connect()
    window = store.rate_windows().window("acct/openai/x:cancelled:tokens", 1_000)
    await window.acquire(1_000)  # the minute is full

    async def waiter_whose_cancel_was_swallowed() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what wait_for does when the awaited command finished as the cancel came
        return await window.acquire(1)

    task = asyncio.create_task(waiter_whose_cancel_was_swallowed())
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), timeout=5)
    finally:
        task.cancel()
        await store.aclose()


async def test_a_waiter_on_a_full_shared_window_takes_the_room_a_settled_call_frees(redis_url: str) -> None:
    """A call holds its worst case (prompt + max_tokens) and settles for what it took. Before, a waiter on the full
    shared minute slept until the oldest entry expired (up to a minute) although the settle had freed the room:
    a waiter in the same process now looks again at once, one in another worker within RECHECK_S."""
    here, there = RedisStore.from_url(redis_url), RedisStore.from_url(redis_url)
    for store in (here, there):
        await store.connect()
    try:
        windows = here.rate_windows()
        name = "acct/openai/x:settle:tokens"
        held = await windows.window(name, 1_000).acquire(1_000)  # the minute is full
        same_process = asyncio.create_task(windows.window(name, 1_000).acquire(500))
        other_worker = asyncio.create_task(there.rate_windows().window(name, 1_000).acquire(300))
        await asyncio.sleep(0.1)
        assert not same_process.done() and not other_worker.done()
        await windows.window(name, 1_000).settle(held, 150)  # it took 150 of the 1,000 it held
        await asyncio.wait_for(asyncio.gather(same_process, other_worker), timeout=10)  # was: ~60 s
        with pytest.raises(TimeoutError):  # 150 + 500 + 300 taken: 100 left
            await asyncio.wait_for(windows.window(name, 1_000).acquire(200), timeout=0.3)
    finally:
        for store in (here, there):
            await store.aclose()


def test_a_shared_window_kept_across_two_event_loops_still_waits(redis_single_url: str) -> None:
    """The waiter's wake-up was an asyncio.Event kept by the windows object: bound to the loop of the first
    `asyncio.run` that waited on it, so a wait in a second `asyncio.run` raised RuntimeError ("bound to a
    different event loop") instead of waiting for room."""
    store = RedisStore.from_url(redis_single_url)
    windows = store.rate_windows()
    name = "acct/openai/x:loops:tokens"

    async def waits_on_the_full_window(fill: bool) -> None:
        await store.connect()
        try:
            if fill:
                await windows.window(name, 1_000).acquire(1_000)
            with pytest.raises(TimeoutError):  # it waits for room, in either loop
                await asyncio.wait_for(windows.window(name, 1_000).acquire(10), timeout=0.2)
        finally:
            await store.aclose()

    asyncio.run(waits_on_the_full_window(True))
    asyncio.run(waits_on_the_full_window(False))  # was: RuntimeError


async def test_a_settle_while_a_waiter_is_looking_wakes_it(
    redis_single_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call of this process that settles while a waiter's look at the window is in flight (the script ran on
    the full window, its reply is on the way): the settle woke only waiters already asleep, so this one slept
    RECHECK_S (here 30 s) although the room was there."""
    monkeypatch.setattr(rate, "RECHECK_S", 30.0)
    store = RedisStore.from_url(redis_single_url)
    await store.connect()
    try:
        windows = store.rate_windows()
        name = "acct/openai/x:inflight:tokens"
        held = await windows.window(name, 1_000).acquire(1_000)  # the minute is full
        real, looks = store.retrying, 0

        async def retrying(operation: Any, *, limit: float | None) -> Any:
            nonlocal looks
            result = await real(operation, limit=limit)
            looks += 1
            if looks == 1:  # the waiter's first look found the window full; before its reply is read:
                await windows.window(name, 1_000).settle(held, 100)
            return result

        monkeypatch.setattr(store, "retrying", retrying)
        assert await asyncio.wait_for(windows.window(name, 1_000).acquire(500), timeout=5)  # was: 30 s
    finally:
        await store.aclose()


async def test_many_waiters_on_a_full_window_look_again_only_when_room_was_freed_for_them(
    redis_single_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty waiters of one process on a full minute. Before, every settle woke every waiter and each ran the
    take script again (O(window) in Redis): a call that settled for what it held (every requests-window settle,
    most token settles) freed nothing and cost forty looks. Now settles that free nothing wake nobody, and one
    that frees 300 wakes the three 100-token waiters it can serve; nothing passes the limit and
    cancelling the others leaves nothing behind."""
    monkeypatch.setattr(rate, "RECHECK_S", 30.0)  # (only the settles wake them)
    store = RedisStore.from_url(redis_single_url)
    await store.connect()
    looks = 0
    script = store.script

    def counting(name: str) -> Any:
        def run(**kwargs: Any) -> Any:
            nonlocal looks
            looks += name == "RATE_TAKE"
            return script(name)(**kwargs)

        return run

    try:
        windows = store.rate_windows()
        name = "acct/openai/x:herd:tokens"
        held = [await windows.window(name, 1_000).acquire(100) for _ in range(10)]
        monkeypatch.setattr(store, "script", counting)
        waiters = [asyncio.create_task(windows.window(name, 1_000).acquire(100)) for _ in range(40)]
        await until_true(lambda: looks == 40)
        for entry in held[:5]:
            await windows.window(name, 1_000).settle(entry, 100)  # took what it held: frees nothing
        for entry in held[5:8]:
            await windows.window(name, 1_000).settle(entry, 0)  # refused: frees its 100
        # the three it can serve take their room (each a look at Redis: a fixed 0.5 s raced a busy machine), then a
        # moment for any waiter woken wrongly to take some too
        await until_true(lambda: sum(task.done() for task in waiters) >= 3, timeout=30)
        done, pending = await asyncio.wait(waiters, timeout=0.3)
        assert (len(done), len(pending)) == (3, 37)
        assert looks == 43  # was 40 + 8 x 40
        used = [int(v) for v in (await store.client.hvals(store.key(f"rate:{name}:amounts")))]
        assert sum(used) == 1_000 - 300 + 300
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert all(task.cancelled() for task in pending)
    finally:
        await store.aclose()


async def until_true(condition: Any, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def test_a_process_window_kept_across_two_event_loops_still_waits() -> None:
    """The same for the process's own windows (PROCESS_WINDOWS lives as long as the process: a script that runs
    `asyncio.run` twice, a notebook): the second run's wait on a full window raised RuntimeError."""
    window = LocalWindows().window("acct/openai/x:loops:tokens", 1_000)

    async def waits_on_the_full_window(fill: bool) -> None:
        if fill:
            await window.acquire(1_000)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(window.acquire(10), timeout=0.1)

    asyncio.run(waits_on_the_full_window(True))
    asyncio.run(waits_on_the_full_window(False))  # was: RuntimeError
