"""Nothing is lost: engine errors, bad outputs and raising user code become failure records."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from conftest import references
from domain import Echo, Order, PaymentBatchReport, TemperatureSensor, Transaction

from flock_llm import FailureRecord, Flock
from flock_llm.engines import EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec, JoinSpec
from flock_llm.testing import FunctionEngine


def boom(ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
    raise RuntimeError("bulk payment API is down")


async def test_engine_error_publishes_a_failure_record_naming_every_input(flock: Flock) -> None:
    (
        flock.agent("payments")
        .consumes(Transaction, batch=BatchSpec(size=5, timeout=timedelta(seconds=30)))
        .publishes(PaymentBatchReport)
        .with_engines(FunctionEngine(batch=boom))
    )
    published = await flock.publish_many(Transaction(transaction_id=f"t{i}") for i in range(5))
    await flock.run_until_idle()
    (failure,) = await flock.store.artifacts_by_type(FailureRecord)
    record = failure.as_type(FailureRecord)
    assert record.agent == "payments" and record.stage == "engine" and record.flush_reason == "size"
    assert record.input_ids == [a.id for a in published]
    assert record.error_type == "RuntimeError" and "bulk payment API is down" in record.error
    assert failure.produced_by == "payments" and failure.derived_from == tuple(record.input_ids)
    assert flock.metrics().count("engine_errors") == 1
    assert await references(flock, "payments") == {a.id: 1 for a in published}


async def test_output_of_an_undeclared_type_becomes_a_failure_record(flock: Flock) -> None:
    (
        flock.agent("confused")
        .consumes(Transaction, batch=BatchSpec(size=2, timeout=timedelta(seconds=30)))
        .publishes(PaymentBatchReport)
        .with_engines(FunctionEngine(batch=lambda ctx, inputs: [Echo(source="wrong type")]))
    )
    published = await flock.publish_many(Transaction(transaction_id=f"t{i}") for i in range(2))
    await flock.run_until_idle()
    assert await flock.store.get_by_type(Echo) == []
    (record,) = await flock.store.get_by_type(FailureRecord)
    assert record.stage == "output" and "publishes PaymentBatchReport" in record.error
    assert record.input_ids == [a.id for a in published]


async def test_engine_returning_something_else_than_an_eval_result_is_a_failure(flock: Flock) -> None:
    class Sloppy(FunctionEngine):
        async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
            return [Echo(source="x")]  # type: ignore[return-value]

    flock.agent("sloppy").consumes(Order, batch=BatchSpec(size=1, timeout=timedelta(seconds=1))).publishes(
        Echo
    ).with_engines(Sloppy())
    await flock.publish(Order(order_id="o", amount=1))
    await flock.run_until_idle()
    (record,) = await flock.store.get_by_type(FailureRecord)
    assert "expected an EvalResult" in record.error


async def test_default_evaluate_batch_isolates_the_failing_item(flock: Flock) -> None:
    def per_item(ctx: EngineContext, inputs: EvalInputs) -> Echo:
        order = inputs.first_as(Order)
        assert order is not None
        if order.amount < 0:
            raise ValueError(f"negative amount in {order.order_id}")
        return Echo(source=order.order_id)

    (
        flock.agent("per_item")
        .consumes(Order, batch=BatchSpec(size=3, timeout=timedelta(seconds=30)))
        .publishes(Echo)
        .with_engines(FunctionEngine(item=per_item))
    )
    published = await flock.publish_many(
        [Order(order_id="a", amount=1), Order(order_id="b", amount=-1), Order(order_id="c", amount=3)]
    )
    await flock.run_until_idle()
    assert sorted(e.source for e in await flock.store.get_by_type(Echo)) == ["a", "c"]
    (record,) = await flock.store.get_by_type(FailureRecord)
    assert record.input_ids == [published[1].id] and "negative amount in b" in record.error
    echoes = await flock.store.artifacts_by_type(Echo)
    assert {e.derived_from for e in echoes} == {(published[0].id,), (published[2].id,)}
    assert await references(flock, "per_item") == {a.id: 1 for a in published}


async def test_predicate_that_raises_is_logged_counted_and_recorded(
    flock: Flock, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FunctionEngine(batch=lambda ctx, inputs: [Echo(source=str(len(inputs)))])
    (
        flock.agent("picky")
        .consumes(Order, where=lambda o: 100 / o.amount > 1, batch=BatchSpec(size=2, timeout=timedelta(seconds=9)))
        .publishes(Echo)
        .with_engines(engine)
    )
    with caplog.at_level(logging.WARNING, logger="flock_llm"):
        bad = await flock.publish(Order(order_id="zero", amount=0))
        await flock.publish_many([Order(order_id="a", amount=1), Order(order_id="b", amount=2)])
        await flock.run_until_idle()
    assert flock.metrics().count("predicate_errors") == 1
    assert any(
        "`where` raised ZeroDivisionError" in r.getMessage() and bad.id in r.getMessage() for r in caplog.records
    )
    (record,) = await flock.store.get_by_type(FailureRecord)
    assert (record.stage, record.input_ids, record.error_type) == ("where", [bad.id], "ZeroDivisionError")
    assert [e.source for e in await flock.store.get_by_type(Echo)] == ["2"]


async def test_batch_key_that_raises_is_recorded(flock: Flock) -> None:
    def key(t: Transaction) -> str:
        if t.customer_id == "bad":
            raise KeyError("no region")
        return t.customer_id

    (
        flock.agent("regional")
        .consumes(Transaction, batch=BatchSpec(size=5, timeout=timedelta(seconds=9), by=key))
        .publishes(Echo)
        .with_engines(FunctionEngine(batch=lambda ctx, inputs: None))
    )
    bad = await flock.publish(Transaction(transaction_id="x", customer_id="bad"))
    (record,) = await flock.store.get_by_type(FailureRecord)
    assert (record.stage, record.input_ids) == ("batch_by", [bad.id])
    assert flock.metrics().count("batch_key_errors") == 1


async def test_join_key_that_raises_is_recorded_not_swallowed(flock: Flock) -> None:
    from domain import PressureSensor

    def device(x: TemperatureSensor | PressureSensor) -> str:
        if not x.device_id:
            raise ValueError("sensor without device id")
        return x.device_id

    (
        flock.agent("qc")
        .consumes(TemperatureSensor, PressureSensor, join=JoinSpec(by=device, within=timedelta(seconds=30)))
        .publishes(Echo)
        .with_engines(FunctionEngine(item=lambda ctx, inputs: None))
    )
    bad = await flock.publish(TemperatureSensor(device_id="", celsius=1))
    (record,) = await flock.store.get_by_type(FailureRecord)
    assert (record.stage, record.input_ids, record.error_type) == ("join_by", [bad.id], "ValueError")
    assert flock.metrics().count("join_key_errors") == 1
