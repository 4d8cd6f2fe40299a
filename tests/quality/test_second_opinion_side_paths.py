"""A quality target's second opinion on its side paths: cancelled in flight, re-asks that fail or are stopped by
the budget, items the batch already failed; every item ends with one output or failure record and every call
that went out is counted."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import references
from test_audit_engine import SnippetLabel, labeller, snippets, truth
from test_second_opinion import CLIFF, engine

from flock_llm.artifact import Artifact
from flock_llm.engines import EngineContext, EvalInputs, EvalResult, ItemFailure, Output
from flock_llm.errors import BudgetExceededError
from flock_llm.quality import QualityTarget, observe
from flock_llm.quality.audit import Audit
from flock_llm.quality.controller import ControllerState
from flock_llm.quality.second_opinion import ask_second_opinion
from flock_llm.stores.sqlite import SQLiteStore
from flock_llm.testing import DegradingModel, FakeOpenAIServer

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")


async def until(condition: Any) -> None:
    """Wait (in short event-loop turns, at most ~10 s) until `condition()` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_a_shutdown_that_cancels_a_second_opinion_counts_the_calls_the_batch_and_its_audits_made() -> None:
    # the batch's call (1) and its 4 audits answer; the second opinion's 2 calls hang until shutdown's timeout
    model = DegradingModel(CLIFF, truth=truth, seed=3)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model, stall_after=5, stall_s=60) as fake:
        flock = labeller(engine(fake, audit=Audit(rate=1.0), quality=QualityTarget(0.95, min_audits=8)), size=16)
        await flock.publish_many(snippets(16))
        running = asyncio.create_task(flock.run_until_idle())
        await until(lambda: fake.requests == 7)
        await flock.shutdown(timeout=0.2)
        await running
        usage = flock.metrics().usage["labels"]
        assert usage["llm_calls"] == fake.requests == 7  # was 2: only the calls still in flight were counted
        assert usage["prompt_tokens"] >= fake.prompt_tokens_total  # the answered calls and the in-flight prompts
        counts = await references(flock, "labels")
        assert len(counts) == 16 and set(counts.values()) == {1}  # each item: one failure record ("cancelled")
        assert {a.type_name for a in await flock.store.list() if a.produced_by == "labels"} == {"FailureRecord"}


def chunk_of(n: int) -> EvalInputs:
    return EvalInputs.of(*(Artifact(type_name="Snippet", payload=s) for s in snippets(n)))


def labelled(items: list[tuple[Artifact, ...]], label: str) -> tuple[Output, ...]:
    return tuple(
        Output(SnippetLabel(snippet_id=item[0].payload.snippet_id, label=label), (item[0].id,)) for item in items
    )  # type: ignore[attr-defined]


CTX = EngineContext(agent_name="labels", publishes=(SnippetLabel,), batch_size=6)
REFERENCE = {0: SnippetLabel(snippet_id="s0", label="negative")}


async def test_items_the_batch_already_failed_are_not_asked_again() -> None:
    chunk = chunk_of(6)
    failure = ItemFailure(("x",), "ModelOutputError", "no answer for this item")
    failure = replace(failure, artifact_ids=(chunk.items[5][0].id,))
    batch = EvalResult(labelled(list(chunk.items[:5]), "neutral"), (failure,), {"llm_calls": 1})
    asked: list[str] = []

    async def ladder(ctx: EngineContext, part: EvalInputs) -> EvalResult:
        asked.extend(item[0].id for item in part.items)
        return EvalResult(labelled(list(part.items), "positive"), usage={"llm_calls": 1})

    second = await ask_second_opinion(CTX, chunk, batch, REFERENCE, [0], ladder, Audit())
    assert chunk.items[5][0].id not in asked  # its answer could only be thrown away: the failure record stands
    assert asked == [item[0].id for item in chunk.items[1:5]]
    assert second.result.failures == (failure,) and len(second.result.outputs) == 5
    assert second.compared == 4


async def test_a_re_ask_the_budget_stopped_is_counted_as_a_second_opinion_error() -> None:
    chunk = chunk_of(6)
    batch = EvalResult(labelled(list(chunk.items), "neutral"), usage={"llm_calls": 1})

    async def ladder(ctx: EngineContext, part: EvalInputs) -> EvalResult:  # the ladder records it, never raises
        stopped = BudgetExceededError("the budget of 0.01 USD leaves no room for this call")
        return EvalResult(
            failures=tuple(ItemFailure.from_exception(stopped, [i[0].id], stage="budget") for i in part.items)
        )

    second = await ask_second_opinion(CTX, chunk, batch, REFERENCE, [0], ladder, Audit())
    usage = second.result.usage
    assert usage["second_opinion_errors"] == 2 and usage["second_opinion_compared"] == 0  # both halves stopped
    assert [o.obj for o in second.result.outputs][1:] == [o.obj for o in batch.outputs][1:]  # the batch's stand
    assert not second.result.failures


@pytest.mark.parametrize(("agreed", "n"), [(196, 200), (97, 100), (98, 100)])
def test_a_large_second_opinion_that_holds_the_target_keeps_the_size(agreed: int, n: int) -> None:
    # its n outcomes have no order: all its disagreements put last read as "80% in the latest 20 audits"
    target = QualityTarget(0.95)
    held = replace(target.start(100), n=60.0, agreed=60.0, since_change=60, recent="1" * 20)
    for second_opinion in (True, False):
        state, change = observe(target, held, agreed, n, second_opinion=second_opinion)
        assert change is None and state.size == 100


def test_a_large_second_opinion_below_the_target_still_shrinks_the_size() -> None:
    target = QualityTarget(0.95)
    held = replace(target.start(100), n=60.0, agreed=60.0, since_change=60, recent="1" * 20)
    _, change = observe(target, held, 50, 100, second_opinion=True)  # a collapse
    assert change is not None and (change.old, change.new) == (100, 50)
    _, change = observe(target, held, 90, 100, second_opinion=True)  # 90%: judged on its own
    assert change is not None and change.new < 100
    state, _ = observe(target, held, 19, 20)  # up to `recent` outcomes: kept exactly, in order
    assert state.recent == "1" * 19 + "0"


async def test_a_shutdown_that_cancels_one_chunk_counts_the_calls_of_the_chunks_that_finished(tmp_path: Path) -> None:
    # a stored size of 8 (configured 16): a flush of 16 is two chunks of 8, each a call and 4 audits (warming);
    # the 10th request hangs: one chunk finished, the other is cancelled by shutdown's timeout
    store = SQLiteStore(tmp_path / "flock.db")
    assert await store.size_states().swap("0:labels", None, ControllerState(size=8, max_size=16).to_json())
    store.close()
    model = DegradingModel(CLIFF, truth=truth, seed=3)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model, stall_after=9, stall_s=60) as fake:
        llm = engine(fake, audit=Audit(rate=1.0), quality=QualityTarget(0.95))
        flock = labeller(llm, size=16, store=f"sqlite:///{tmp_path / 'flock.db'}")
        await flock.publish_many(snippets(16))
        running = asyncio.create_task(flock.run_until_idle())
        await until(lambda: fake.requests == 10)
        await flock.shutdown(timeout=0.2)
        await running
        assert llm.effective_batch_size("labels", 0) == 8
        assert flock.metrics().usage["labels"]["llm_calls"] == fake.requests == 10  # was 5: the finished chunk's lost


async def flushes(flock: Any, items: list[Any], size: int) -> None:
    """Publish `items` `size` at a time, each lot flushed alone (a partial one as its timeout would)."""
    for k in range(0, len(items), size):
        await flock.publish_many(items[k : k + size])
        await flock.run_until_idle()
        await flock.flush_batches()
        await flock.run_until_idle()
    await flock.shutdown()


async def test_only_the_first_call_gets_a_second_opinion_when_no_audit_is_ever_in(tmp_path: Path) -> None:
    # no audit at all (a tiny rate, no warmup): nothing ever measures the size, and every call at the configured
    # size was "the first" and paid for a second opinion (about one more call each: twice the cost, forever)
    model = DegradingModel(CLIFF, truth=truth, seed=3)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as fake:
        llm = engine(fake, audit=Audit(rate=1e-9, warmup=1.0), quality=QualityTarget(0.95))
        flock = labeller(llm, size=8)
        await flushes(flock, snippets(24), 8)
        usage = flock.metrics().usage["labels"]
        assert "audit_compared" not in usage
        assert usage["second_opinion_calls"] == 2 and usage["second_opinion_compared"] == 8  # the first call only
        assert usage["llm_calls"] == 3 + 2 == fake.requests
        counts = await references(flock, "labels")
        assert len(counts) == 24 and set(counts.values()) == {1}


async def test_a_remainder_under_the_configured_size_gets_no_first_call_second_opinion() -> None:
    # flushes of 5 with a configured 16 (a trickle flushed by its timeout): not the configured size, and their
    # audits are evidence about another size, so none ever measured it: each one paid for a second opinion
    model = DegradingModel(CLIFF, truth=truth, seed=3)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as fake:
        llm = engine(fake, audit=Audit(rate=1.0), quality=QualityTarget(0.95))
        flock = labeller(llm, size=16)
        await flushes(flock, snippets(15), 5)
        usage = flock.metrics().usage["labels"]
        assert "second_opinion_calls" not in usage
        assert usage["llm_calls"] == 3 + usage["audit_llm_calls"] == fake.requests
        assert llm.quality is not None and not llm.quality.events


class OneItemAnswers:
    """An engine's audit side: a per-item engine whose one-item calls answer "positive"."""

    per_item = True

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return EvalResult(labelled(list(inputs.items), "positive"), usage={"llm_calls": 1})


async def test_a_first_call_that_failed_every_item_leaves_the_first_call_second_opinion_to_the_next() -> None:
    # the provider failed the first call's every item: nothing to re-ask, so nothing measured the configured size;
    # the next call at it, the first one answered, gets the second opinion
    from flock_llm.quality.guard import QualityGuard

    guard = QualityGuard(Audit(rate=1e-9, warmup=1.0), QualityTarget(0.95), None)
    ctx = replace(CTX, is_batch=True, configured_size=6)
    asked: list[int] = []

    async def ladder(run_ctx: EngineContext, part: EvalInputs) -> EvalResult:
        asked.append(len(part))
        if len(asked) == 1:
            down = RuntimeError("provider down")
            return EvalResult(failures=tuple(ItemFailure.from_exception(down, [i[0].id]) for i in part.items))
        return EvalResult(labelled(list(part.items), "neutral"), usage={"llm_calls": 1})

    failed = await guard.run(OneItemAnswers(), ctx, chunk_of(6), ladder)  # type: ignore[arg-type]
    assert len(failed.failures) == 6 and asked == [6]
    answered = await guard.run(OneItemAnswers(), ctx, chunk_of(6), ladder)  # type: ignore[arg-type]
    assert asked == [6, 6, 3, 3] and answered.usage["second_opinion_compared"] == 6
    again = await guard.run(OneItemAnswers(), ctx, chunk_of(6), ladder)  # type: ignore[arg-type]
    assert asked == [6, 6, 3, 3, 6] and "second_opinion_calls" not in again.usage


async def test_a_chunk_that_raises_cancels_the_flush_s_other_chunks_before_the_error_goes_on() -> None:
    # a flush cut into chunks (the effective size is under the batch): engine code raising in one chunk fails the
    # flush, and the chunk still in flight is cancelled, not left spending on a call whose answers nobody publishes
    from flock_llm.quality.guard import QualityGuard

    guard = QualityGuard(None, QualityTarget(0.95), None)
    guard.states[(CTX.agent_name, 0)] = ControllerState(size=3, max_size=6, n=40, agreed=40)
    ctx = replace(CTX, is_batch=True, configured_size=6)
    started, ended = asyncio.Event(), list[str]()

    async def ladder(run_ctx: EngineContext, part: EvalInputs) -> EvalResult:
        if not started.is_set():  # the first chunk waits, as a slow call does
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise
        await started.wait()
        raise RuntimeError("engine code failed")

    with pytest.raises(RuntimeError, match="engine code failed"):
        await asyncio.wait_for(guard.run(OneItemAnswers(), ctx, chunk_of(6), ladder), 10)  # type: ignore[arg-type]
    assert ended == ["cancelled"]  # before the error reached the runtime (was: still running after it)
