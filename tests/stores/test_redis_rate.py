"""Rate windows are one provider quota each: one account (endpoint and API key) on one model. Two accounts on one
model never share a window (in Redis or in one process), the key itself never names one, and workers that
disagree about a shared window's limit are refused instead of filling it past the smaller limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from domain import CustomerReview, ReviewSentiment
from test_redis_store import until

from flock_llm import ConfigurationError, Flock
from flock_llm.engines._calls.rate import account_of, window_name
from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.engines.llm import LLMEngine
from flock_llm.stores import RedisStore
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
