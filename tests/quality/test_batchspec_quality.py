"""BatchSpec(quality=QualityTarget(...)) through the public API (Flock + agent + BatchSpec), against the degrading
fake provider over loopback HTTP: the flushes the user sees shrink to the effective size, every change is
logged, counted and traced with its reason, settings that cannot work are refused when the agent is defined,
and the controller's state is kept by the durable stores (a SQLite restart resumes from it; a stored state that
is not one is ignored with a warning, never a crash that loses items; Redis workers share one state: a shrink
one worker saw applies to the next batch of another and survives the worker that made it, and concurrent
audits from two workers are all counted)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
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
from flock_llm.errors import ConfigurationError
from flock_llm.quality import ControllerState, QualityTarget
from flock_llm.quality.audit import Audit
from flock_llm.quality.shared import SizeStates
from flock_llm.quality.steering import SizeSteering
from flock_llm.stores.redis import RedisStore
from flock_llm.stores.sqlite import SQLiteStore
from flock_llm.subscription import BatchSpec
from flock_llm.testing import Degradation, DegradingModel, FakeOpenAIServer, FunctionEngine
from flock_llm.tracing import TracingConfig

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")
TARGET = QualityTarget(0.95, min_audits=8)


@pytest.fixture
def degrading() -> Iterator[FakeOpenAIServer]:
    model = DegradingModel(Degradation(collapse_at=4, steep=0.08), truth=truth, seed=3)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as fake:
        yield fake


def steered(agent_engine: LLMEngine, size: int = 16, target: QualityTarget = TARGET, **flock_args: Any) -> Flock:
    flock = Flock(env={}, **flock_args)
    spec = BatchSpec(size=size, timeout=timedelta(seconds=30), quality=target)
    flock.agent("labels").consumes(Snippet, batch=spec).publishes(SnippetLabel).with_engines(agent_engine)
    return flock


async def test_the_flushes_shrink_to_the_size_that_holds_the_target(
    degrading: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    llm = engine(degrading, audit=Audit(rate=1.0, per_call=1000))  # no quality= on the engine: the BatchSpec's steers
    path = tmp_path / "trace.duckdb"
    flock = steered(llm, tracing=TracingConfig(duckdb_path=str(path)))
    items = snippets(64)
    with caplog.at_level(logging.INFO, logger="flock_llm.quality"):
        for start in range(0, 64, 16):
            await flock.publish_many(items[start : start + 16])
            await flock.run_until_idle()
        await flock.shutdown()
    sizes = [f.batch_size for f in flock.metrics().flushes]
    assert sizes[0] == 16 and max(sizes[1:]) <= 8  # the user sees the effective size, not the configured one
    assert sum(sizes) == 64 and {f.configured_size for f in flock.metrics().flushes} == {16}
    assert llm.quality is not None and llm.quality.size_for("labels") == llm.effective_batch_size("labels", 0)
    changes = [event.change for event in llm.quality.events]
    assert changes[0].old == 16 and changes[0].new == 8 and "below 95%" in changes[0].reason
    usage = flock.metrics().usage["labels"]
    assert usage["batch_size_shrinks"] == sum(c.direction == "shrink" for c in changes) >= 1  # counted
    logged = [r.getMessage() for r in caplog.records if "batch size 16 -> 8" in r.getMessage()]
    assert logged and changes[0].reason in logged[0]  # logged with its reason
    import duckdb

    with duckdb.connect(str(path), read_only=True) as db:
        traced = db.execute(
            "SELECT attributes->>'$.old_size', attributes->>'$.new_size', attributes->>'$.reason' "
            "FROM spans WHERE name = 'flock.quality.batch_size' ORDER BY start_time"
        ).fetchall()
    assert traced[0] == ("16", "8", changes[0].reason) and len(traced) == len(changes)  # traced with its reason
    counts = await references(flock, "labels")
    assert len(counts) == 64 and set(counts.values()) == {1}


async def test_a_batchspec_target_without_audit_audits_with_the_default(degrading: FakeOpenAIServer) -> None:
    llm = engine(degrading)  # neither audit= nor quality=: BatchSpec(quality=) brings Audit(rate=0.25) (warm-up x4)
    flock = steered(llm, size=25)
    await flock.publish_many(snippets(100))
    await flock.run_until_idle()
    await flock.shutdown()
    usage = flock.metrics().usage["labels"]
    assert 1 <= usage["audit_compared"] <= 25  # one item of each of the 4 calls while warming up
    assert len(await references(flock, "labels")) == 100


def _define(flock: Flock, spec: BatchSpec, agent_engine: Any, *, engine_first: bool) -> None:
    agent = flock.agent("labels")
    if engine_first:
        agent.with_engines(agent_engine).consumes(Snippet, batch=spec)
    else:
        agent.consumes(Snippet, batch=spec).with_engines(agent_engine)


@pytest.mark.parametrize("engine_first", [True, False])
@pytest.mark.parametrize(
    ("agent_engine", "message"),
    [
        (LLMEngine("openai/x", per_item=True, quality=QualityTarget(0.9)), "differ; set the target in one place"),
        (LLMEngine("openai/x"), "per_item=True"),
        (FunctionEngine(batch=lambda ctx, inputs: None), "does not measure"),
    ],
)
def test_a_target_that_cannot_hold_is_refused_when_the_agent_is_defined(
    agent_engine: Any, message: str, engine_first: bool
) -> None:
    spec = BatchSpec(size=10, timeout=timedelta(seconds=1), quality=QualityTarget(0.95))
    with pytest.raises(ConfigurationError, match=message):
        _define(Flock(env={}), spec, agent_engine, engine_first=engine_first)


def test_the_same_target_on_engine_and_batchspec_is_accepted() -> None:
    target = QualityTarget(0.95)
    flock = Flock(env={})
    spec = BatchSpec(size=10, timeout=timedelta(seconds=1), quality=target)
    _define(flock, spec, LLMEngine("openai/x", per_item=True, quality=QualityTarget(0.95)), engine_first=False)


async def test_a_target_on_the_default_engine_is_refused_before_the_first_publish() -> None:
    flock = Flock(env={})
    spec = BatchSpec(size=10, timeout=timedelta(seconds=1), quality=QualityTarget(0.95))
    flock.agent("labels").consumes(Snippet, batch=spec).publishes(SnippetLabel)
    with pytest.raises(ConfigurationError, match=r"with_engines\(LLMEngine\(per_item=True\)\)"):
        await flock.publish(Snippet(snippet_id="s1", text="good"))
    assert await flock.store.list() == []  # refused before anything was stored


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 10, "quality": 0.95}, "must be a QualityTarget"),
        ({"timeout": timedelta(seconds=1), "quality": QualityTarget()}, "give it the largest size"),
        ({"size": 10, "quality": QualityTarget(min_size=50)}, "min_size=50 is above"),  # finding F24
    ],
)
def test_batchspec_quality_is_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BatchSpec(**kwargs)


def test_quality_arguments_are_declared_not_passed_through() -> None:
    llm = LLMEngine("openai/x", per_item=True, audit=Audit(), quality=QualityTarget(), shuffle=True, temperature=0)
    assert llm.litellm_kwargs == {"temperature": 0}  # never sent to litellm
    from flock_llm.engines.dspy import DSPyEngine

    dspy_engine = DSPyEngine("openai/x", per_item=True, audit=Audit(), shuffle=True, temperature=0)
    assert dspy_engine.lm_kwargs == {"temperature": 0} and dspy_engine.quality is not None


async def test_a_sqlite_restart_resumes_from_the_stored_size(degrading: FakeOpenAIServer, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flock.db'}"
    first = engine(degrading, audit=Audit(rate=1.0, per_call=1000))
    flock = steered(first, store=url)
    await flock.publish_many(snippets(16))
    await flock.run_until_idle()
    await flock.shutdown()
    held = first.effective_batch_size("labels", 0)
    assert held is not None and held < 16
    again = engine(degrading, audit=Audit(rate=1.0, per_call=1000))  # a new process: nothing in memory
    flock = steered(again, store=url)
    calls_before = degrading.requests
    items = snippets(48)[16:]
    await flock.publish_many(items)
    await flock.run_until_idle()
    await flock.shutdown()
    batched = [c.items for c in again.calls if c.items > 1]
    assert batched and max(batched) <= held  # the first batch already went out at the stored size
    assert degrading.requests > calls_before
    states = again.quality.states if again.quality is not None else {}
    assert states[("labels", 0)].max_size == 16 and states[("labels", 0)].size <= held


async def test_a_corrupt_stored_state_is_ignored_with_a_warning_and_replaced(
    degrading: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "flock.db"
    store = SQLiteStore(path)
    assert await store.size_states().swap("0:labels", None, '{"size": -3, "max_size": "x"}')
    store.close()
    llm = engine(degrading, audit=Audit(rate=1.0, per_call=1000))
    flock = steered(llm, store=f"sqlite:///{path}")
    with caplog.at_level(logging.WARNING, logger="flock_llm.quality"):
        await flock.publish_many(snippets(16))
        await flock.run_until_idle()
        await flock.shutdown()
    assert any("ignoring the stored batch-size state" in r.getMessage() for r in caplog.records)
    assert len(await references(flock, "labels")) == 16  # nothing lost
    with sqlite3.connect(path) as db:
        (text,) = db.execute("SELECT state FROM size_states WHERE key = '0:labels'").fetchone()
    from flock_llm.quality import ControllerState

    assert ControllerState.from_json(text).max_size == 16  # overwritten by a valid state


def test_an_engine_target_whose_min_size_is_above_the_batch_size_is_refused() -> None:
    """Finding F24 (atkquality): QualityTarget(min_size=50) with batches of 10 never shrank, silently."""
    llm = LLMEngine("openai/x", per_item=True, quality=QualityTarget(min_size=50))
    spec = BatchSpec(size=10, timeout=timedelta(seconds=1))
    with pytest.raises(ConfigurationError, match="min_size=50 is above the batch size 10"):
        _define(Flock(env={}), spec, llm, engine_first=False)


async def test_audits_of_one_item_calls_are_no_evidence_to_grow() -> None:
    """Finding F24 (atkquality): at size 1 an audit compares a one-item answer with a one-item answer, which
    always agrees; counted, it grew the size back 1 -> 2 on evidence that measured nothing (a 1 <-> 2 cycle)."""
    from flock_llm.engines import EngineContext
    from flock_llm.quality import ControllerState
    from flock_llm.quality.steering import SizeSteering

    steering = SizeSteering()
    steering.states[("labels", 0)] = ControllerState(size=1, max_size=16)
    ctx = EngineContext(agent_name="labels", configured_size=16)
    usage: dict[str, Any] = {}
    for _ in range(300):  # far past grow_after (104)
        await steering.steer(QualityTarget(0.95), ctx, 1, 1, 1, usage)
    assert steering.size_for("labels") == 1 and usage == {"audit_other_size": 300}
    assert steering.states[("labels", 0)].n == 0


# -- Redis: one state shared by the workers ---------------------------------------------------------------


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
    first = Stalling(
        model="openai/fake-model", retry=FAST, structured_output=True, audit=Audit(rate=1.0, per_call=1000), **settings
    )
    a = steered(first, store=redis_single_url, tracing=TracingConfig(duckdb_path=str(trace)))
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
    second = engine(degrading, audit=Audit(rate=1.0, per_call=1000))  # another process: knows nothing but the store
    b = steered(second, store=redis_single_url)
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
