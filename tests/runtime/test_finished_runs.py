"""Streaming results out: `Flock.on_finished_run` and an in-memory store that forgets what was consumed."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from domain import Echo, PaymentBatchReport, Transaction

from flock_llm import FailureRecord, FinishedRun, Flock
from flock_llm.engines import EngineContext, EvalInputs, EvalResult
from flock_llm.stores import InMemoryStore
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FunctionEngine


def report(ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
    items = inputs.all_as(Transaction)
    if any(t.transaction_id.endswith("bad") for t in items):
        raise RuntimeError("bulk API refused the batch")
    return EvalResult.from_object(PaymentBatchReport(batch_id="b", transaction_count=len(items), total_amount=0.0))


def payments(flock: Flock, size: int = 5) -> None:
    (
        flock.agent("payments")
        .consumes(Transaction, batch=BatchSpec(size=size, timeout=timedelta(seconds=30)))
        .publishes(PaymentBatchReport)
        .with_engines(FunctionEngine(batch=report))
    )


async def test_each_finished_run_is_reported_with_its_inputs_and_outputs_and_the_store_forgets_them() -> None:
    store = InMemoryStore(keep_consumed=False)
    flock = Flock(store=store)
    payments(flock)
    finished: list[FinishedRun] = []
    held: list[int] = []

    def written(run: FinishedRun) -> None:
        finished.append(run)
        held.append(len(store))
        store.discard(a.id for a in run.published)  # written out: nothing needs it any more

    flock.on_finished_run(written)
    ids = [f"t{i}" for i in range(23)] + ["t-bad", *(f"u{i}" for i in range(4))]
    for transaction_id in ids:
        await flock.publish(Transaction(transaction_id=transaction_id))
        await flock.run_until_idle()
    await flock.shutdown()
    # 28 inputs: 5 full batches (one with the raising item) and a partial one flushed at shutdown
    assert [len(run.inputs) for run in finished] == [5, 5, 5, 5, 5, 3]
    reports = [a for run in finished for a in run.published if a.type_name != "FailureRecord"]
    failures = [a.as_type(FailureRecord) for run in finished for a in run.published if a.type_name == "FailureRecord"]
    assert len(reports) == 5 and len(failures) == 1 and failures[0].stage == "engine"
    covered = [i for run in finished for i in (a.id for a in run.inputs)]
    assert len(covered) == len(set(covered)) == 28  # every input in exactly one finished run
    assert all(run.published[0].derived_from == tuple(a.id for a in run.inputs) for run in finished)
    # when a run is reported its inputs are forgotten already; only its own output is held until written
    assert held == [1, 1, 1, 1, 1, 1] and len(store) == 0


async def test_an_artifact_two_subscriptions_take_is_forgotten_only_when_both_consumed_it() -> None:
    store = InMemoryStore(keep_consumed=False)
    flock = Flock(store=store)
    payments(flock, size=2)
    seen: list[str] = []
    (
        flock.agent("auditor")
        .consumes(Transaction, batch=BatchSpec(size=3, timeout=timedelta(seconds=30)))
        .publishes(Echo)
        .with_engines(FunctionEngine(batch=lambda ctx, inputs: EvalResult.empty()))
    )
    flock.on_finished_run(lambda run: seen.append(run.agent))
    first = await flock.publish(Transaction(transaction_id="t1"))
    await flock.publish(Transaction(transaction_id="t2"))
    await flock.run_until_idle()
    assert seen == ["payments"]  # the auditor still waits for a third transaction
    assert await store.get(first.id) is not None
    await flock.publish(Transaction(transaction_id="t3"))
    await flock.run_until_idle()
    assert await store.get(first.id) is None  # both subscriptions consumed it
    assert [a.type_name for a in await store.list()] == ["PaymentBatchReport", "Transaction"]  # output, t3
    await flock.shutdown()


async def test_with_a_durable_store_runs_are_reported_after_their_commit_and_a_raising_listener_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flock = Flock(store=f"sqlite:///{tmp_path / 'run.db'}")
    payments(flock)
    committed: list[int] = []

    def listener(run: FinishedRun) -> None:
        # reported once committed: a second Flock on the same file sees the run's outputs already
        committed.append(len(run.published))
        raise ValueError("the listener's own bug")

    flock.on_finished_run(listener)
    with caplog.at_level(logging.ERROR, logger="flock_llm"):
        await flock.publish_many(Transaction(transaction_id=f"t{i}") for i in range(10))
        await flock.run_until_idle()
    await flock.shutdown()
    assert committed == [1, 1]
    assert "finished-run listener raised" in caplog.text
    restarted = Flock(store=f"sqlite:///{tmp_path / 'run.db'}")
    payments(restarted)
    await restarted.start()
    assert len(await restarted.store.get_by_type(PaymentBatchReport)) == 2  # the runs stood despite the listener
    await restarted.shutdown()


def test_a_listener_must_be_callable() -> None:
    from flock_llm import ConfigurationError

    with pytest.raises(ConfigurationError, match="callable"):
        Flock().on_finished_run("write it somewhere")  # type: ignore[arg-type]
