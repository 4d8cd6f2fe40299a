"""Audits, the shuffle guard and the batch-size controller in LLMEngine, against the degrading fake provider
over loopback HTTP: audit calls are ordinary calls (counted, priced, budget-capped), agreement reaches metrics
and spans, the effective batch size follows the target."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import references
from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.engines.llm import LLMEngine
from flock_llm.errors import ConfigurationError
from flock_llm.quality import QualityTarget
from flock_llm.quality.audit import Audit, Shuffle
from flock_llm.subscription import BatchSpec
from flock_llm.testing import Degradation, DegradingModel, FakeOpenAIServer
from flock_llm.tracing import TracingConfig

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")
FAST = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0, max_retry_after=0.05)


@flock_type
class Snippet(BaseModel):
    snippet_id: str
    text: str


@flock_type
class SnippetLabel(BaseModel):
    snippet_id: str
    label: Literal["positive", "negative", "neutral"]


def truth(data: dict[str, Any]) -> dict[str, Any]:
    text = str(data.get("text", ""))
    return {"label": "positive" if "good" in text else "negative" if "bad" in text else "neutral"}


def snippets(n: int) -> list[Snippet]:
    words = ("good", "bad", "plain")
    return [Snippet(snippet_id=f"s{k}", text=f"snippet {k} is {words[k % 3]}") for k in range(n)]


@pytest.fixture
def degrading() -> Iterator[FakeOpenAIServer]:
    model = DegradingModel(Degradation(collapse_at=4, steep=0.08), truth=truth, seed=3)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as fake:
        yield fake


def engine(server: FakeOpenAIServer, **kwargs: Any) -> LLMEngine:
    settings: dict[str, Any] = {"per_item": True, "api_base": server.api_base, "api_key": "sk-local-fake"}
    return LLMEngine("openai/fake-model", retry=FAST, structured_output=True, **{**settings, **kwargs})


def labeller(agent_engine: LLMEngine, size: int, **flock_args: Any) -> Flock:
    flock = Flock(env={}, **flock_args)
    spec = BatchSpec(size=size, timeout=timedelta(seconds=30))
    flock.agent("labels").consumes(Snippet, batch=spec).publishes(SnippetLabel).with_engines(agent_engine)
    return flock


async def run(flock: Flock, items: list[Snippet]) -> None:
    await flock.publish_many(items)
    await flock.run_until_idle()
    await flock.shutdown()


async def test_audited_items_are_asked_alone_compared_and_counted(degrading: FakeOpenAIServer) -> None:
    llm = engine(degrading, audit=Audit(rate=0.5, per_call=10, seed=1), prices={"input": 1.0, "output": 2.0})
    flock = labeller(llm, size=20)
    await run(flock, snippets(40))
    usage = flock.metrics().usage["labels"]
    assert usage["audit_compared"] == 10  # 0.5 x 10 = 5 items in each of the 2 calls
    assert usage["audit_llm_calls"] == usage["audit_compared"]  # one call per audited item
    assert usage["llm_calls"] == 2 + usage["audit_llm_calls"] == degrading.requests
    assert usage["prompt_tokens"] == degrading.prompt_tokens_total  # audit tokens are in the totals
    assert usage["audit_cost_usd"] > 0 and usage["cost_usd"] == pytest.approx(llm.costs.ledger.spent_usd)
    assert usage["audit_agreed"] < usage["audit_compared"]  # batches of 20 collapse past 4 items
    agreement = flock.metrics().agreement("labels")
    overall = agreement["all"]
    assert overall.n == usage["audit_compared"] and overall.low <= overall.rate <= overall.high  # type: ignore[operator]
    assert agreement["field=label"].n == overall.n and agreement["field=label"].agreed >= usage["audit_agreed"]
    assert "field=snippet_id" in agreement
    assert agreement["size=20"].n == overall.n and "position=middle" in agreement
    assert sum(i.n for label, i in agreement.items() if label.startswith("position=")) == overall.n
    assert llm.quality is not None and llm.quality.tally.overall().n == overall.n
    counts = await references(flock, "labels")
    assert len(counts) == 40 and set(counts.values()) == {1}  # audits publish nothing of their own


async def test_without_degradation_every_audit_agrees(degrading: FakeOpenAIServer) -> None:
    assert degrading.degrade is not None
    degrading.degrade.drift(collapse_at=1000, slope=0.0, steep=0.0)
    flock = labeller(engine(degrading, audit=Audit(rate=1.0, per_call=100)), size=10)
    await run(flock, snippets(20))
    agreement = flock.metrics().agreement()["all"]
    assert agreement.n == 20 and agreement.agreed == 20 and agreement.low > 0.8


async def test_a_budget_stop_during_audits_keeps_the_batch_answers(degrading: FakeOpenAIServer) -> None:
    # each call holds its worst case (prompt + max_tokens) until it is settled: the batch fits, not every audit
    llm = engine(
        degrading, audit=Audit(rate=1.0, per_call=100), prices={"input": 1000.0, "output": 1000.0}, budget_usd=2.5
    )
    flock = labeller(llm, size=10)
    await run(flock, snippets(10))
    usage = flock.metrics().usage["labels"]
    assert usage["audit_errors"] >= 1  # the budget stopped audit calls: counted, not published as failures
    assert llm.costs.ledger.spent_usd <= 2.5 and flock.metrics().count("failure_records") == 0
    outputs = await flock.store.get_by_type(SnippetLabel)
    assert len(outputs) == 10


async def test_audit_spans_are_queryable_in_the_trace(degrading: FakeOpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "trace.duckdb"
    flock = labeller(
        engine(degrading, audit=Audit(rate=1.0, per_call=100)), size=8, tracing=TracingConfig(duckdb_path=str(path))
    )
    await run(flock, snippets(8))
    import duckdb

    with duckdb.connect(str(path), read_only=True) as db:
        rows = db.execute(
            "SELECT attributes->>'$.position', attributes->>'$.agreed', attributes->>'$.batch_size' "
            "FROM spans WHERE name = 'flock.quality.audit'"
        ).fetchall()
    assert len(rows) == 8 and {r[2] for r in rows} == {"8"} and {r[0] for r in rows} == {str(n) for n in range(8)}


async def test_the_effective_batch_size_shrinks_below_the_collapse_point(degrading: FakeOpenAIServer) -> None:
    llm = engine(degrading, audit=Audit(rate=1.0, per_call=100), quality=QualityTarget(0.95, min_audits=8))
    flock = labeller(llm, size=16)
    items = snippets(64)
    await flock.publish_many(items[:32])
    await flock.run_until_idle()
    assert llm.quality is not None
    changes = [event.change for event in llm.quality.events]
    assert changes and changes[0].old == 16 and changes[0].new == 8 and "below 95%" in changes[0].reason
    size = llm.quality.size_for("labels")
    assert size is not None and size <= 8
    calls_before = len(llm.calls)
    await run(flock, items[32:])
    later = [c.items for c in list(llm.calls)[calls_before:] if c.items > 1]
    assert later and max(later) <= size  # the flushed batches of 16 went out in chunks of the effective size
    usage = flock.metrics().usage["labels"]
    assert usage["batch_size_shrinks"] == len(llm.quality.events)
    assert len(await references(flock, "labels")) == 64


async def test_shuffled_calls_keep_answers_aligned_to_their_items(degrading: FakeOpenAIServer) -> None:
    assert degrading.degrade is not None
    degrading.degrade.drift(collapse_at=1000, slope=0.0, steep=0.0)
    seen: list[list[str]] = []
    original = degrading.answer

    def spy(request: dict[str, Any]) -> tuple[str, int]:
        user = next(m["content"] for m in request["messages"] if m["role"] == "user")
        seen.append([json.loads(line)["snippet_id"] for line in user.splitlines() if line.startswith("{")])
        return original(request)

    degrading.answer = spy  # type: ignore[method-assign]
    flock = labeller(engine(degrading, shuffle=Shuffle(seed=5)), size=12)
    items = snippets(12)
    await run(flock, items)
    assert sorted(seen[0]) == sorted(s.snippet_id for s in items) and seen[0] != [s.snippet_id for s in items]
    by_id = {s.snippet_id: s for s in items}
    for label in await flock.store.get_by_type(SnippetLabel):
        assert label.label == truth({"text": by_id[label.snippet_id].text})["label"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"audit": 0.02}, "must be an Audit"),
        ({"quality": QualityTarget()}, "per_item=True"),
        ({"audit": Audit(), "quality": 0.95}, "must be a QualityTarget"),
        ({"shuffle": "yes"}, "`shuffle` must be"),
    ],
)
def test_quality_arguments_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LLMEngine("openai/x", **kwargs)


def test_audit_rate_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="rate"):
        Audit(rate=0)


async def test_reask_keeps_the_majority_answer_of_disagreeing_items(degrading: FakeOpenAIServer) -> None:
    llm = engine(degrading, audit=Audit(rate=1.0, per_call=100, reask=True))
    flock = labeller(llm, size=12)
    items = snippets(12)
    await run(flock, items)
    usage = flock.metrics().usage["labels"]
    assert usage["audit_agreed"] < usage["audit_compared"] == 12
    assert usage["reask_calls"] == 1 and usage["reask_replaced"] >= 1
    assert usage["llm_calls"] == 1 + 12 + 1 == degrading.requests  # batch, audits, one re-ask: all counted
    stored = {a.id: a for a in await flock.store.list()}
    outputs = [a for a in stored.values() if a.type_name == "SnippetLabel"]
    wrong = 0
    for output in outputs:
        source = stored[output.derived_from[0]].as_type(Snippet)
        expected = SnippetLabel(snippet_id=source.snippet_id, **truth({"text": source.text}))
        wrong += output.as_type(SnippetLabel) != expected
    assert len(outputs) == 12 and wrong == 12 - usage["audit_agreed"] - usage["reask_replaced"]


def test_rotation_moves_the_middle_to_the_ends() -> None:
    from flock_llm.quality.reask import rotated

    assert rotated(6) == [3, 4, 5, 0, 1, 2] and rotated(1) == [0]
