"""BatchSpec on a Flock: the dual trigger, timers, shutdown, independence, scale."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from conftest import references
from domain import Echo, Order, PaymentBatchReport, Transaction

from flock_llm import Flock, FlushRecord
from flock_llm.engines import EngineContext, EvalInputs, EvalResult
from flock_llm.engines.examples import BatchItem, BatchSummary, SimpleBatchEngine
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FunctionEngine, ManualClock


def report(ctx: EngineContext, inputs: EvalInputs) -> PaymentBatchReport:
    txns = inputs.all_as(Transaction)
    return PaymentBatchReport(
        batch_id=ctx.batch_id or "", transaction_count=len(txns), total_amount=sum(t.amount for t in txns)
    )


def payments(flock: Flock, spec: BatchSpec, name: str = "payment_processor") -> FunctionEngine:
    engine = FunctionEngine(batch=report)
    flock.agent(name).consumes(Transaction, batch=spec).publishes(PaymentBatchReport).with_engines(engine)
    return engine


def txns(n: int, start: int = 0, **fields: object) -> list[Transaction]:
    return [Transaction(transaction_id=f"t{i}", **fields) for i in range(start, start + n)]  # type: ignore[arg-type]


async def test_simple_batch_engine_summarises_each_flush_of_three(flock: Flock) -> None:
    (
        flock.agent("simple_batch")
        .consumes(BatchItem, batch=BatchSpec(size=3, timeout=timedelta(seconds=10)))
        .publishes(BatchSummary)
        .with_engines(SimpleBatchEngine())
    )
    await flock.publish_many([BatchItem(value=v) for v in range(7)])
    await flock.run_until_idle()
    summaries = await flock.store.get_by_type(BatchSummary)
    assert [(s.batch_size, s.values) for s in summaries] == [(3, [0, 1, 2]), (3, [3, 4, 5])]
    await flock.shutdown()
    summaries = await flock.store.get_by_type(BatchSummary)
    assert summaries[-1].values == [6]


async def test_guide_timeline_on_an_injected_clock(flock: Flock, clock: ManualClock) -> None:
    engine = payments(flock, BatchSpec(size=10, timeout=timedelta(seconds=30)))
    await flock.publish_many(txns(5))  # t=0: 5 arrive
    clock.advance(10)
    await flock.publish_many(txns(3, 5))  # t=10: 8 total
    clock.advance(10)
    await flock.publish_many(txns(2, 8))  # t=20: 10 -> size flush
    await flock.run_until_idle()
    assert [len(c.inputs) for c in engine.batch_calls] == [10]
    assert engine.batch_calls[0].ctx.flush_reason == "size"

    clock.advance(5)
    await flock.publish_many(txns(3, 10))  # t=25: 3 arrive
    clock.advance(29.5)
    await flock.run_until_idle()
    assert len(engine.batch_calls) == 1  # not yet: the deadline is t=55
    clock.advance(0.5)  # t=55: timeout flush
    await flock.run_until_idle()
    assert [len(c.inputs) for c in engine.batch_calls] == [10, 3]
    last = engine.batch_calls[1].ctx
    assert (last.flush_reason, last.batch_size, last.configured_size, last.efficiency) == ("timeout", 3, 10, 0.3)
    records = flock.metrics().flushes
    assert [(r.reason, r.batch_size, r.waited_s) for r in records] == [("size", 10, 20.0), ("timeout", 3, 30.0)]


async def test_timer_starts_again_with_the_next_batch(flock: Flock, clock: ManualClock) -> None:
    engine = payments(flock, BatchSpec(size=100, timeout=timedelta(seconds=30)))
    await flock.publish(txns(1)[0])
    clock.advance(30)  # first batch flushes at t=30
    clock.advance(20)
    await flock.publish(txns(1, 1)[0])  # second batch opens at t=50
    clock.advance(29)
    await flock.run_until_idle()
    assert len(engine.batch_calls) == 1
    clock.advance(1)  # t=80
    await flock.run_until_idle()
    assert len(engine.batch_calls) == 2
    assert [r.waited_s for r in flock.metrics().flushes] == [30.0, 30.0]


async def test_real_timeout_flush_fires_on_its_own_without_polling() -> None:
    async with Flock(env={}) as flock:
        engine = payments(flock, BatchSpec(size=25, timeout=timedelta(milliseconds=40)))
        await flock.publish_many(txns(3))
        await flock.run_until_idle()  # returns at once; the timer stays armed
        assert engine.batch_calls == []
        for _ in range(50):
            await asyncio.sleep(0.01)
            if engine.batch_calls:
                break
        assert [c.ctx.flush_reason for c in engine.batch_calls] == ["timeout"]
        (record,) = flock.metrics().flushes
        assert 0.04 <= record.waited_s < 0.5


async def test_shutdown_flushes_partial_batches(flock: Flock) -> None:
    engine = payments(flock, BatchSpec(size=25, timeout=timedelta(minutes=5)))
    published = await flock.publish_many(txns(7))
    await flock.run_until_idle()
    assert engine.batch_calls == []
    await flock.shutdown()
    (call,) = engine.batch_calls
    assert call.ctx.flush_reason == "shutdown" and len(call.inputs) == 7
    assert set(await references(flock, "payment_processor")) == {a.id for a in published}


async def test_shutdown_flushes_batches_filled_by_other_shutdown_flushes(flock: Flock) -> None:
    payments(flock, BatchSpec(size=25, timeout=timedelta(minutes=5)))
    audit = FunctionEngine(batch=lambda ctx, inputs: [Echo(source=f"{len(inputs)} reports")])
    (
        flock.agent("audit")
        .consumes(PaymentBatchReport, batch=BatchSpec(size=10, timeout=timedelta(hours=1)))
        .publishes(Echo)
        .with_engines(audit)
    )
    await flock.publish_many(txns(3))
    await flock.shutdown()
    assert [e.source for e in await flock.store.get_by_type(Echo)] == ["1 reports"]


async def test_several_agents_get_independent_batches(flock: Flock, clock: ManualClock) -> None:
    fast = payments(flock, BatchSpec(size=2, timeout=timedelta(seconds=5)), name="fast")
    slow = payments(flock, BatchSpec(size=5, timeout=timedelta(seconds=60)), name="slow")
    await flock.publish_many(txns(5))
    await flock.run_until_idle()
    assert [len(c.inputs) for c in fast.batch_calls] == [2, 2]
    assert [len(c.inputs) for c in slow.batch_calls] == [5]
    clock.advance(5)
    await flock.run_until_idle()
    assert [len(c.inputs) for c in fast.batch_calls] == [2, 2, 1]
    every = {a.id for a in await flock.store.list() if a.type_name == "Transaction"}
    assert set(await references(flock, "fast")) == every == set(await references(flock, "slow"))


async def test_two_subscriptions_of_one_agent_batch_separately(flock: Flock) -> None:
    engine = FunctionEngine(batch=lambda ctx, inputs: [Echo(source=f"sub{ctx.subscription_index}:{len(inputs)}")])
    (
        flock.agent("mixed")
        .consumes(Transaction, batch=BatchSpec(size=2, timeout=timedelta(seconds=5)))
        .consumes(Order, batch=BatchSpec(size=3, timeout=timedelta(seconds=5)))
        .publishes(Echo)
        .with_engines(engine)
    )
    await flock.publish_many([*txns(2), Order(order_id="o1", amount=1), Order(order_id="o2", amount=2)])
    await flock.run_until_idle()
    assert sorted(flock._batch_engine.batches) == [("mixed", 1)]
    assert [e.source for e in await flock.store.get_by_type(Echo)] == ["sub0:2"]


async def test_filter_then_batch_counts_only_matching_items(flock: Flock) -> None:
    engine = FunctionEngine(batch=lambda ctx, inputs: [Echo(source=",".join(o.order_id for o in inputs.all_as(Order)))])
    (
        flock.agent("vip_batch")
        .consumes(Order, where=lambda o: o.amount > 1000, batch=BatchSpec(size=3, timeout=timedelta(minutes=5)))
        .publishes(Echo)
        .with_engines(engine)
    )
    amounts = [5000, 10, 2000, 999, 1001, 7000]
    await flock.publish_many([Order(order_id=f"o{i}", amount=a) for i, a in enumerate(amounts)])
    await flock.run_until_idle()
    assert [e.source for e in await flock.store.get_by_type(Echo)] == ["o0,o2,o4"]
    assert [len(b.artifacts) for b in flock._batch_engine.batches.values()] == [1]


async def test_batch_by_keeps_one_batch_per_key(flock: Flock) -> None:
    engine = FunctionEngine(batch=lambda ctx, inputs: [Echo(source=inputs.all_as(Transaction)[0].customer_id)])
    (
        flock.agent("per_customer")
        .consumes(Transaction, batch=BatchSpec(size=2, timeout=timedelta(seconds=5), by=lambda t: t.customer_id))
        .publishes(Echo)
        .with_engines(engine)
    )
    await flock.publish_many(
        [*txns(1, 0, customer_id="alice"), *txns(1, 1, customer_id="bob"), *txns(1, 2, customer_id="alice")]
    )
    await flock.run_until_idle()
    for call in engine.batch_calls:
        assert len({t.customer_id for t in call.inputs.all_as(Transaction)}) == 1
    assert [e.source for e in await flock.store.get_by_type(Echo)] == ["alice"]
    assert list(flock._batch_engine.batches) == [("per_customer", 0, "bob")]
    (stats,) = flock.batch_stats()
    assert (stats.agent, stats.partition, stats.pending, stats.flush_in_s) == ("per_customer", "bob", 1, 5.0)


async def test_documented_hooks_check_timeouts_and_batches_mapping(flock: Flock, clock: ManualClock) -> None:
    engine = payments(flock, BatchSpec(size=10, timeout=timedelta(seconds=30)))
    await flock.publish_many(txns(4))
    (((agent_name, sub_index), accumulator),) = flock._batch_engine.batches.items()
    assert (agent_name, sub_index) == ("payment_processor", 0)
    assert len(accumulator.artifacts) == 4 and accumulator.batch_spec.timeout == timedelta(seconds=30)
    assert accumulator.created_at is not None
    assert await flock._check_batch_timeouts() == 0  # not expired yet
    clock._now += 31  # time passes without the timer firing
    assert await flock._check_batch_timeouts() == 1
    await flock.run_until_idle()
    assert engine.batch_calls[0].ctx.flush_reason == "timeout"
    assert flock._batch_engine.batches == {}
    clock.advance(100)  # the cancelled timer does not flush again
    await flock.run_until_idle()
    assert len(engine.batch_calls) == 1


async def test_manual_flush(flock: Flock) -> None:
    engine = payments(flock, BatchSpec(size=10, timeout=timedelta(seconds=30)))
    await flock.publish_many(txns(4))
    assert await flock.flush_batches() == 1
    await flock.run_until_idle()
    assert engine.batch_calls[0].ctx.flush_reason == "manual"
    assert flock.metrics().flush_counts == {"manual": 1}


async def test_flush_metrics_are_readable(flock: Flock, clock: ManualClock) -> None:
    payments(flock, BatchSpec(size=4, timeout=timedelta(seconds=30)))
    await flock.publish_many(txns(5))
    clock.advance(30)
    await flock.run_until_idle()
    size_flush, timeout_flush = flock.metrics().flushes
    assert isinstance(size_flush, FlushRecord)
    assert (size_flush.agent, size_flush.subscription_index, size_flush.reason, size_flush.efficiency) == (
        "payment_processor",
        0,
        "size",
        1.0,
    )
    assert (timeout_flush.reason, timeout_flush.batch_size, timeout_flush.configured_size) == ("timeout", 1, 4)
    assert timeout_flush.efficiency == 0.25 and timeout_flush.waited_s == 30.0


async def test_10000_artifacts_size_25_make_exactly_400_batches(flock: Flock) -> None:
    engine = payments(flock, BatchSpec(size=25, timeout=timedelta(seconds=30)))
    published = await flock.publish_many(txns(10_000))
    await flock.run_until_idle()
    assert len(engine.batch_calls) == 400
    assert all(len(c.inputs) == 25 for c in engine.batch_calls)
    seen = [a.id for c in engine.batch_calls for a in c.inputs.artifacts]
    assert len(seen) == len(set(seen)) == 10_000 and set(seen) == {a.id for a in published}
    assert len(await flock.store.get_by_type(PaymentBatchReport)) == 400


async def test_100000_artifacts_through_one_agent_nothing_skipped(flock: Flock) -> None:
    """The framework we replace skips matches past the 1,000th per idle cycle; we skip none."""
    seen: list[str] = []

    def count(ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        seen.extend(a.id for a in inputs.artifacts)
        return EvalResult.empty()

    flock.agent("counter").consumes(Transaction).with_engines(FunctionEngine(item=count)).max_concurrency(4)
    published = await flock.publish_many(Transaction(transaction_id=str(i)) for i in range(100_000))
    await flock.run_until_idle()
    assert len(seen) == 100_000 and set(seen) == {a.id for a in published}


async def test_lineage_records_producer_and_inputs(flock: Flock) -> None:
    payments(flock, BatchSpec(size=3, timeout=timedelta(seconds=30)))
    published = await flock.publish_many(txns(3))
    await flock.run_until_idle()
    (out,) = await flock.store.artifacts_by_type(PaymentBatchReport)
    assert out.produced_by == "payment_processor"
    assert out.derived_from == tuple(a.id for a in published)
    assert all(a.produced_by is None for a in published)


async def test_engine_context_carries_no_blackboard(flock: Flock) -> None:
    """The framework we replace copies the whole blackboard into every run's context."""
    engine = payments(flock, BatchSpec(size=2, timeout=timedelta(seconds=30)))
    await flock.publish_many(Order(order_id=str(i), amount=i) for i in range(2_000))
    await flock.publish_many(txns(2))
    await flock.run_until_idle()
    ctx = engine.batch_calls[0].ctx
    assert len(repr(ctx)) < 1_000
    assert not any(
        isinstance(getattr(ctx, f), (list, dict)) and len(getattr(ctx, f)) > 100 for f in ctx.__dataclass_fields__
    )


async def test_publish_after_shutdown_is_refused(flock: Flock) -> None:
    from flock_llm import ClosedError

    await flock.shutdown()
    with pytest.raises(ClosedError):
        await flock.publish(txns(1)[0])
