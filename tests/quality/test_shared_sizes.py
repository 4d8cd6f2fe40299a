"""The batch-size controller's state shared by Redis workers (in-process Flocks on one namespace): a shrink seen
by one worker applies to the next batch of another and survives the worker that made it (a worker that takes
over its batch runs it at the shared size); it is logged, counted and traced where it happened; concurrent
audits from two workers are all counted (a compare-and-set script: no change is lost)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import references
from test_audit_engine import FAST, Snippet, SnippetLabel, engine, snippets, truth

from flock_llm import Flock
from flock_llm.engines import EngineContext, EvalInputs, EvalResult
from flock_llm.engines._calls.models import load_litellm
from flock_llm.engines.llm import LLMEngine
from flock_llm.quality import ControllerState, QualityTarget
from flock_llm.quality.audit import Audit
from flock_llm.quality.shared import SizeStates
from flock_llm.quality.steering import SizeSteering
from flock_llm.stores.redis import RedisStore
from flock_llm.subscription import BatchSpec
from flock_llm.testing import Degradation, DegradingModel, FakeOpenAIServer
from flock_llm.tracing import TracingConfig

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")
TARGET = QualityTarget(0.95, min_audits=8)


@pytest.fixture
def degrading() -> Iterator[FakeOpenAIServer]:
    model = DegradingModel(Degradation(collapse_at=4, steep=0.08), truth=truth, seed=3)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as fake:
        yield fake


class Stalling(LLMEngine):
    """An LLMEngine whose batches hang once `stall` is set (a worker that stops answering)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stall = False
        self.stalled = asyncio.Event()

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        if self.stall:
            self.stalled.set()
            await asyncio.Event().wait()
        return await super().evaluate_batch(ctx, inputs)


def worker(url: str, agent_engine: LLMEngine, **flock_args: Any) -> Flock:
    flock = Flock(store=url, env={}, **flock_args)
    spec = BatchSpec(size=16, timeout=timedelta(seconds=30), quality=TARGET)
    flock.agent("labels").consumes(Snippet, batch=spec).publishes(SnippetLabel).with_engines(agent_engine)
    return flock


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def answered(flock: Flock, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await flock.store.get_by_type(SnippetLabel)) >= n

    return check


async def test_a_shrink_is_shared_by_the_workers_and_survives_the_one_that_made_it(
    redis_single_url: str, degrading: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load_litellm()  # imported before the workers read Redis: a slow import would stall their reads
    trace = tmp_path / "a.duckdb"
    settings = {"per_item": True, "api_base": degrading.api_base, "api_key": "sk-local-fake"}
    first = Stalling(model="openai/fake-model", retry=FAST, structured_output=True, audit=Audit(rate=1.0), **settings)
    a = worker(redis_single_url, first, tracing=TracingConfig(duckdb_path=str(trace)))
    items = snippets(32)
    with caplog.at_level(logging.INFO, logger="flock_llm.quality"):
        await a.publish_many(items[:16])
        await until(answered(a, 16))
    assert isinstance(a.store, RedisStore)
    stored = ControllerState.from_json(await a.store.size_states().get("0:labels") or "")
    assert stored.size == 8 and stored.max_size == 16 and "below 95%" in stored.reason
    # where it happened: logged, counted and traced with its reason (on the shared path)
    assert any("batch size 16 -> 8" in r.getMessage() and stored.reason in r.getMessage() for r in caplog.records)
    assert a.metrics().usage["labels"]["batch_size_shrinks"] == 1
    first.stall = True  # A takes the next batch and never finishes it: it dies with the batch claimed
    await a.publish_many(items[16:])
    await asyncio.wait_for(first.stalled.wait(), 60)
    await a.shutdown(timeout=0.05)  # (this hung before: a Redis worker's shutdown ignored its timeout)
    import duckdb

    with duckdb.connect(str(trace), read_only=True) as db:
        traced = db.execute(
            "SELECT attributes->>'$.new_size', attributes->>'$.reason', attributes->>'$.shared' "
            "FROM spans WHERE name = 'flock.quality.batch_size'"
        ).fetchall()
    assert traced == [("8", stored.reason, "true")]
    second = engine(degrading, audit=Audit(rate=1.0))  # another process: knows nothing but the store
    b = worker(redis_single_url, second)
    await b.start()
    await until(answered(b, 32))  # B takes A's batch over (claim_timeout=1 s)
    batched = [c.items for c in second.calls if c.items > 1]
    assert batched and max(batched) <= 8  # at the shared size, not the configured 16
    assert second.quality is not None and second.quality.states[("labels", 0)].max_size == 16
    counts = await references(b, "labels")
    assert len(counts) == 32 and set(counts.values()) == {1}
    await b.shutdown()


async def test_concurrent_audits_from_two_workers_are_all_counted(redis_url: str) -> None:
    a, b = Flock(store=redis_url, env={}), Flock(store=redis_url, env={})
    await a.start()
    await b.start()
    assert isinstance(a.store, RedisStore) and isinstance(b.store, RedisStore)
    states: list[SizeStates] = [a.store.size_states(), b.store.size_states()]
    assert await states[0].swap("0:labels", None, "not a state")  # a foreign text: ignored, then replaced
    target = QualityTarget(0.95, grow_after=10_000)  # all agree, no change: every audit stays in the evidence
    steerings = [SizeSteering(), SizeSteering()]
    contexts = [EngineContext(agent_name="labels", configured_size=50, size_states=s) for s in states]
    usage: dict[str, Any] = {}
    await asyncio.gather(
        *(steerings[k % 2].steer(target, contexts[k % 2], 50, 3, 3, usage) for k in range(40))
    )  # 20 batches per worker, 3 audits each, all at once
    state = ControllerState.from_json(await states[1].get("0:labels") or "")
    assert state.since_change == 120 and state.size == 50 and not usage
    assert steerings[0].states[("labels", 0)].since_change <= 120
    await a.shutdown()
    await b.shutdown()
