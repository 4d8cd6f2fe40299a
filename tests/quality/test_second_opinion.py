"""A quality target's second opinion: a call whose audit disagrees is asked again in halves; the halves' answers
are published instead of the call's, and their agreement with the call's answers steers the size at once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from conftest import references
from test_audit_engine import FAST, Snippet, SnippetLabel, labeller, run, snippets, truth

from flock_llm.artifact import Artifact
from flock_llm.engines import EngineContext, EvalInputs, EvalResult, Output
from flock_llm.engines.llm import LLMEngine
from flock_llm.errors import ConfigurationError
from flock_llm.quality import QualityTarget
from flock_llm.quality.audit import Audit
from flock_llm.quality.second_opinion import ask_second_opinion, halves
from flock_llm.testing import Degradation, DegradingModel, FakeOpenAIServer

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")

# safe up to 8 items (no error at all), nearly every answer wrong in a batch of 16
CLIFF = Degradation(collapse_at=8, slope=0.0, steep=0.1)


@pytest.fixture
def cliff() -> Iterator[FakeOpenAIServer]:
    model = DegradingModel(CLIFF, truth=truth, seed=3)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as fake:
        yield fake


def engine(server: FakeOpenAIServer, **kwargs: Any) -> LLMEngine:
    settings: dict[str, Any] = {"per_item": True, "api_base": server.api_base, "api_key": "sk-local-fake"}
    return LLMEngine("openai/fake-model", retry=FAST, structured_output=True, **{**settings, **kwargs})


async def wrong_answers(flock: Any) -> int:
    stored = {a.id: a for a in await flock.store.list()}
    wrong = 0
    for output in (a for a in stored.values() if a.type_name == "SnippetLabel"):
        source = stored[output.derived_from[0]].as_type(Snippet)
        wrong += output.as_type(SnippetLabel) != SnippetLabel(
            snippet_id=source.snippet_id, **truth({"text": source.text})
        )
    return wrong


async def test_a_call_whose_audit_disagrees_publishes_its_halves_answers_and_gives_up_its_size(
    cliff: FakeOpenAIServer,
) -> None:
    llm = engine(cliff, audit=Audit(rate=1.0), quality=QualityTarget(0.95, min_audits=8))
    flock = labeller(llm, size=16)
    await run(flock, snippets(16))
    usage = flock.metrics().usage["labels"]
    audits = usage["audit_compared"]  # 4 while the controller warms up: fewer than min_audits, no change alone
    assert audits == 4 and usage["audit_agreed"] < audits
    assert usage["second_opinion_calls"] == 2 and usage["second_opinion_compared"] == 16 - audits  # 8 + 4 items
    assert usage["llm_calls"] == 1 + audits + 2 == cliff.requests  # batch, audits, halves: all counted
    assert usage["second_opinion_agreed"] < usage["second_opinion_compared"] / 2
    # the halves (8 and 4 items) answer right; disagreeing audited items keep their one-item answer
    assert await wrong_answers(flock) == 0
    assert usage["second_opinion_replaced"] == 16 - usage["second_opinion_agreed"] - usage["audit_agreed"]
    assert llm.quality is not None
    (change,) = [event.change for event in llm.quality.events]
    assert (change.old, change.new) == (16, 8) and "second opinion disagreed" in change.reason  # after one call
    counts = await references(flock, "labels")
    assert len(counts) == 16 and set(counts.values()) == {1}  # one answer per item, nothing twice


async def test_without_a_second_opinion_the_calls_answers_stand_and_one_call_changes_nothing(
    cliff: FakeOpenAIServer,
) -> None:
    llm = engine(cliff, audit=Audit(rate=1.0), quality=QualityTarget(0.95, min_audits=8, second_opinion=False))
    flock = labeller(llm, size=16)
    await run(flock, snippets(16))
    usage = flock.metrics().usage["labels"]
    assert "second_opinion_calls" not in usage and usage["llm_calls"] == 1 + 4 == cliff.requests
    assert await wrong_answers(flock) >= 16 - 4 - usage["audit_agreed"]  # the batch's wrong answers are published
    assert llm.quality is not None and not llm.quality.events


async def test_agreeing_audits_ask_no_second_opinion_after_the_first_call_at_the_configured_size(
    cliff: FakeOpenAIServer,
) -> None:
    # the configured size is a guess until measured: its first call gets a second opinion whatever its audits say
    llm = engine(cliff, audit=Audit(rate=1.0), quality=QualityTarget(0.95))
    flock = labeller(llm, size=8)  # at the safe size every audit agrees
    items = snippets(24)
    await flock.publish_many(items[:8])  # (flushes running at once would each be a first call)
    await flock.run_until_idle()
    await run(flock, items[8:])
    usage = flock.metrics().usage["labels"]
    assert usage["audit_agreed"] == usage["audit_compared"] == 12  # 4 a call while warming up
    assert usage["second_opinion_calls"] == 1 and usage["second_opinion_compared"] == 8 - 4  # the first call only
    assert usage["second_opinion_agreed"] == usage["second_opinion_compared"]
    assert usage["llm_calls"] == 3 + 12 + 1 == cliff.requests
    assert llm.quality is not None and not llm.quality.events  # a size that holds stays


async def test_the_first_call_at_a_collapsed_configured_size_is_given_up_even_when_its_audit_agrees(
    cliff: FakeOpenAIServer,
) -> None:
    llm = engine(cliff, audit=Audit(rate=1.0, per_call=1, warmup=1.0), quality=QualityTarget(0.95))
    flock = labeller(llm, size=16)
    await run(flock, snippets(16))
    usage = flock.metrics().usage["labels"]
    assert usage["second_opinion_calls"] == 2 and usage["second_opinion_compared"] == 15
    assert llm.quality is not None and [(e.change.old, e.change.new) for e in llm.quality.events] == [(16, 8)]
    assert await wrong_answers(flock) <= 16 - usage["second_opinion_compared"]  # only an audited item may be wrong


def test_second_opinion_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="second_opinion"):
        QualityTarget(second_opinion="yes")  # type: ignore[arg-type]


def test_halves_split_the_unaudited_positions_by_half_the_call() -> None:
    assert halves([0, 1, 3, 4, 5, 6, 7], 8) == [[0, 1, 3, 4], [5, 6, 7]]
    assert halves([1], 2) == [[1]] and halves([], 8) == []


def items(n: int) -> EvalInputs:
    return EvalInputs.of(*(Artifact(type_name="Snippet", payload=s) for s in snippets(n)))


def answered(inputs: EvalInputs, label: str) -> EvalResult:
    outputs = tuple(
        Output(SnippetLabel(snippet_id=item[0].payload.snippet_id, label=label), (item[0].id,))  # type: ignore[arg-type,attr-defined]
        for item in inputs.items
    )
    return EvalResult(outputs, usage={"llm_calls": 1, "prompt_tokens": 10 * len(inputs), "cost_usd": 0.5})


async def test_a_failed_re_ask_keeps_the_batch_answers_of_its_items_and_is_counted() -> None:
    chunk = items(6)
    batch = answered(chunk, "neutral")
    asked: list[int] = []

    async def ladder(ctx: EngineContext, part: EvalInputs) -> EvalResult:
        asked.append(len(part))
        if len(asked) == 1:
            raise RuntimeError("provider down")
        return answered(part, "positive")

    reference = SnippetLabel(snippet_id="s0", label="negative")
    ctx = EngineContext(agent_name="labels", publishes=(SnippetLabel,), batch_size=6)
    second = await ask_second_opinion(ctx, chunk, batch, {0: reference}, [0], ladder, Audit())
    labels = [o.obj.label for o in second.result.outputs]  # type: ignore[attr-defined]
    assert asked == [3, 2]  # positions 1-3 and 4-5, in calls of half the call's size
    assert labels == ["negative", "neutral", "neutral", "neutral", "positive", "positive"]
    assert (second.agreed, second.compared) == (0, 2)
    usage = second.result.usage
    assert usage["second_opinion_errors"] == 1 and usage["second_opinion_calls"] == 1
    assert usage["llm_calls"] == 2 and usage["cost_usd"] == 1.0  # the batch's and the answered re-ask's
    assert usage["second_opinion_replaced"] == 3  # two re-asked answers and the disagreeing audited one


def test_a_second_opinion_is_judged_on_its_own_when_older_evidence_at_the_size_still_agrees() -> None:
    # seen in benchmarks/quality.py (b): a size that held for 60 audits before a drift; the first second
    # opinion after it (2 of 19 answers differ) did not move the pooled evidence, and 11 windows were lost
    from flock_llm.quality import observe

    target = QualityTarget(0.95, min_audits=5)
    held = replace(target.start(40), size=20, n=60.0, agreed=60.0, since_change=60, recent="1" * 20)
    _, as_audits = observe(target, held, 17, 19)
    assert as_audits is None
    _, change = observe(target, held, 17, 19, second_opinion=True)
    assert change is not None and (change.old, change.new) == (20, 10) and "second opinion" in change.reason
    after, stray = observe(target, held, 18, 19, second_opinion=True)  # one disagreement: a stray error
    assert stray is None and after == held  # and not added to the audits' evidence: two batched answers may
    # both be a little wrong, and a pair of stray disagreements trimmed sizes that held (benchmarks/quality.py)


def test_a_doubtful_second_opinion_trims_the_size_and_a_failing_one_halves_it() -> None:
    from flock_llm.quality import observe

    target = QualityTarget(0.95, min_audits=5)
    state = target.start(50)
    _, doubtful = observe(target, state, 47, 49, second_opinion=True)  # 95.9%: its lower bound is under 95%
    assert doubtful is not None and (doubtful.old, doubtful.new) == (50, 40)
    _, failing = observe(target, state, 40, 49, second_opinion=True)
    assert failing is not None and (failing.old, failing.new) == (50, 25)
