"""BatchSpec(max_tokens=): a third trigger, counted through the consuming engine as items enter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from domain import PaymentBatchReport, PressureSensor, TemperatureSensor, Transaction

from flock_llm import ConfigurationError, Flock
from flock_llm.artifact import Artifact
from flock_llm.engines import EngineContext, EvalInputs, EvalResult
from flock_llm.engines.llm import LLMEngine
from flock_llm.subscription import BatchSpec, JoinSpec
from flock_llm.testing import FunctionEngine, ManualClock


@dataclass
class Weighed(FunctionEngine):
    """Counts a transaction's `amount` as its tokens (a temperature reading: its celsius)."""

    def item_tokens(self, ctx: EngineContext, artifact: Artifact) -> int:
        payload = artifact.payload
        return int(payload.amount if isinstance(payload, Transaction) else getattr(payload, "celsius", 1))


def batches(engine: FunctionEngine) -> list[list[str]]:
    return [[a.as_type(Transaction).transaction_id for a in call.inputs.artifacts] for call in engine.batch_calls]


def report(ctx: EngineContext, inputs: EvalInputs) -> PaymentBatchReport:
    return PaymentBatchReport(batch_id=ctx.batch_id or "", transaction_count=len(inputs), total_amount=0.0)


async def test_a_batch_flushes_before_an_item_would_take_it_over_the_budget_and_a_big_item_goes_alone() -> None:
    flock = Flock(clock=ManualClock())
    engine = Weighed(batch=report)
    (
        flock.agent("payments")
        .consumes(Transaction, batch=BatchSpec(size=10, timeout=timedelta(seconds=30), max_tokens=100))
        .publishes(PaymentBatchReport)
        .with_engines(engine)
    )
    amounts = {"a": 40, "b": 50, "c": 20, "huge": 250, "d": 10, "e": 90, "f": 5}
    for transaction_id, amount in amounts.items():
        await flock.publish(Transaction(transaction_id=transaction_id, amount=amount))
    await flock.run_until_idle()
    # a+b = 90; c would make 110: a,b flush first. c alone (20); huge (250) would pass 100: c flushes, huge goes
    # alone at once (never dropped). d+e = 100 reaches the budget exactly: flushed.
    assert batches(engine) == [["a", "b"], ["c"], ["huge"], ["d", "e"]]
    metrics = flock.metrics()
    assert metrics.flush_counts == {"tokens": 4}
    assert [f.tokens for f in metrics.flushes] == [90, 20, 250, 100]
    await flock.shutdown()
    assert batches(engine)[-1] == ["f"] and flock.metrics().flush_counts["shutdown"] == 1


async def test_the_budget_holds_per_partition_and_a_join_group_counts_its_members_tokens() -> None:
    clock = ManualClock()
    flock = Flock(clock=clock)
    engine = Weighed(batch=report)
    (
        flock.agent("per_customer")
        .consumes(
            Transaction, batch=BatchSpec(timeout=timedelta(seconds=30), max_tokens=50, by=lambda t: t.customer_id)
        )
        .publishes(PaymentBatchReport)
        .with_engines(engine)
    )
    for n, (customer, amount) in enumerate([("x", 30), ("y", 30), ("x", 30), ("y", 10)]):
        await flock.publish(Transaction(transaction_id=f"t{n}", customer_id=customer, amount=amount))
    await flock.run_until_idle()
    assert batches(engine) == [["t0"]]  # x: 30 + 30 would pass 50; y holds 40, under budget
    clock.advance(30)
    await flock.run_until_idle()
    assert sorted(batches(engine)[1:]) == [["t1", "t3"], ["t2"]]

    joined = Weighed(batch=lambda ctx, inputs: EvalResult.empty())
    (
        flock.agent("pairs")
        .consumes(
            TemperatureSensor,
            PressureSensor,
            join=JoinSpec(by=lambda r: r.device_id, within=timedelta(seconds=60)),
            batch=BatchSpec(timeout=timedelta(seconds=30), max_tokens=45),
        )
        .with_engines(joined)
    )
    for device, celsius in [("d1", 20), ("d2", 20), ("d3", 4)]:
        await flock.publish(TemperatureSensor(device_id=device, celsius=celsius))
        await flock.publish(PressureSensor(device_id=device, bar=1.0))  # counts 1 token
    await flock.run_until_idle()
    # d1 = 21 tokens, d2 = 21 (42), d3 = 5 would make 47 > 45: the first two pairs flush together
    assert [len(call.inputs) for call in joined.batch_calls] == [2]
    await flock.shutdown()


async def test_restored_items_are_counted_again_as_they_enter(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'run.db'}"

    def define(flock: Flock, engine: FunctionEngine) -> None:
        (
            flock.agent("payments")
            .consumes(Transaction, batch=BatchSpec(timeout=timedelta(minutes=5), max_tokens=100))
            .publishes(PaymentBatchReport)
            .with_engines(engine)
        )

    first = Flock(store=url)
    define(first, Weighed(batch=report))
    for n in range(3):
        await first.publish(Transaction(transaction_id=f"t{n}", amount=30))  # 90: pending, under budget
    await first.run_until_idle()
    first.store.close()  # type: ignore[attr-defined]  # the process dies here: no flush, no shutdown
    restarted = Flock(store=url)
    engine = Weighed(batch=report)
    define(restarted, engine)
    await restarted.start()
    assert restarted.batch_stats()[0].pending == 3
    await restarted.publish(Transaction(transaction_id="t3", amount=30))  # 120 would pass 100
    await restarted.run_until_idle()
    assert batches(engine) == [["t0", "t1", "t2"]]
    await restarted.shutdown()
    assert batches(engine)[-1] == ["t3"]


def test_auto_needs_an_engine_that_knows_its_context() -> None:
    flock = Flock()
    agent = flock.agent("x").consumes(Transaction, batch=BatchSpec(timeout=timedelta(seconds=1), max_tokens="auto"))
    with pytest.raises(ConfigurationError, match='max_tokens="auto"\\) needs an engine that knows its context'):
        agent.with_engines(FunctionEngine())
    agent.with_engines(LLMEngine(max_input_tokens=8_000))  # fine


async def test_auto_is_the_context_minus_the_fixed_prompt_and_the_answer_room() -> None:
    engine = LLMEngine(per_item=True, max_input_tokens=8_000, max_output_tokens=4_000)
    ctx = EngineContext(agent_name="labeller", publishes=(PaymentBatchReport,))
    budget = engine.batch_token_budget(ctx, 20)
    assert budget is not None
    plan = engine.answer_plan
    assert plan is not None
    fixed = fixed_of(engine, ctx)
    assert budget == 8_000 - fixed - 16 - 160  # per item, the answer is in each item's tokens
    item = Artifact(type_name="Transaction", payload=Transaction(transaction_id="t1", amount=2.5))
    prompt_only = LLMEngine(per_item=False, max_input_tokens=8_000).item_tokens(ctx, item)
    assert 10 < prompt_only < 60
    assert engine.item_tokens(ctx, item) == prompt_only + plan.item_share()  # plus the answer expected for it
    report = LLMEngine(per_item=False, max_input_tokens=8_000, max_output_tokens=4_000)
    report_budget = report.batch_token_budget(ctx, None)
    assert report_budget is not None and report.answer_plan is not None
    assert report_budget == 8_000 - fixed_of(report, ctx) - report.answer_plan.expected(1, per_item=False) - 160


def fixed_of(engine: LLMEngine, ctx: EngineContext) -> int:
    """The fixed prompt tokens the formula subtracts: a call's prompt with no items."""
    return engine.estimate_call(ctx, EvalInputs(()))[0]
