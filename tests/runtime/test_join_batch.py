"""JoinSpec with and without BatchSpec: groups are batch items; incomplete groups are reported."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from conftest import references
from domain import Echo, PressureSensor, QualityReport, TemperatureSensor

from flock_llm import Flock
from flock_llm.engines import EngineContext, EvalInputs
from flock_llm.subscription import BatchSpec, JoinSpec
from flock_llm.testing import FunctionEngine, ManualClock


def quality(ctx: EngineContext, inputs: EvalInputs) -> QualityReport:
    return QualityReport(devices=[group[0].payload.device_id for group in inputs.groups])  # type: ignore[attr-defined]


def qc_agent(flock: Flock, within: timedelta | int, batch: BatchSpec | None) -> FunctionEngine:
    engine = FunctionEngine(batch=quality, item=quality)
    (
        flock.agent("qc")
        .consumes(
            TemperatureSensor, PressureSensor, join=JoinSpec(by=lambda x: x.device_id, within=within), batch=batch
        )
        .publishes(QualityReport)
        .with_engines(engine)
    )
    return engine


async def test_batch_size_counts_correlated_groups_not_artifacts(flock: Flock) -> None:
    engine = qc_agent(flock, timedelta(seconds=30), BatchSpec(size=5, timeout=timedelta(seconds=45)))
    for d in range(5):
        await flock.publish(TemperatureSensor(device_id=f"d{d}", celsius=20 + d))
    for d in reversed(range(5)):
        await flock.publish(PressureSensor(device_id=f"d{d}", bar=1.0))
    await flock.run_until_idle()
    (call,) = engine.batch_calls
    assert len(call.inputs) == 5 and len(call.inputs.artifacts) == 10
    assert call.ctx.batch_size == 5 and call.ctx.flush_reason == "size"
    for group in call.inputs.groups:
        temp, pres = group
        assert isinstance(temp.payload, TemperatureSensor) and isinstance(pres.payload, PressureSensor)
        assert temp.payload.device_id == pres.payload.device_id
    (report,) = await flock.store.get_by_type(QualityReport)
    assert report.devices == ["d4", "d3", "d2", "d1", "d0"]
    sensors = [a.id for a in await flock.store.list() if a.produced_by is None]
    assert await references(flock, "qc") == {i: 1 for i in sensors}


async def test_join_without_batch_runs_once_per_group(flock: Flock) -> None:
    engine = qc_agent(flock, 4, None)
    await flock.publish_many([TemperatureSensor(device_id="a", celsius=1), PressureSensor(device_id="a", bar=2)])
    await flock.run_until_idle()
    (call,) = engine.calls
    assert call.kind == "item" and len(call.inputs.artifacts) == 2


async def test_expired_time_window_group_is_reported_not_silently_dropped(
    flock: Flock, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    qc_agent(flock, timedelta(seconds=30), BatchSpec(size=5, timeout=timedelta(seconds=45)))
    lonely = await flock.publish(TemperatureSensor(device_id="d9", celsius=30))
    with caplog.at_level(logging.WARNING, logger="flock_llm"):
        clock.advance(30)
    (expiry,) = flock.metrics().join_expiries
    assert (expiry.agent, expiry.key, expiry.artifact_ids, expiry.missing_types, expiry.reason) == (
        "qc",
        "d9",
        (lonely.id,),
        ("PressureSensor",),
        "window",
    )
    assert flock.metrics().count("join_groups_expired") == 1
    assert any("closed incomplete" in r.getMessage() and lonely.id in r.getMessage() for r in caplog.records)


async def test_count_window_counts_only_arrivals_at_its_own_subscription(flock: Flock) -> None:
    engine = qc_agent(flock, 2, None)
    other = FunctionEngine(item=lambda ctx, inputs: None)
    flock.agent("echo").consumes(Echo).with_engines(other)
    await flock.publish(TemperatureSensor(device_id="a", celsius=1))
    await flock.publish_many([Echo(source=str(i)) for i in range(10)])  # arrivals elsewhere do not count
    await flock.publish(PressureSensor(device_id="a", bar=1))
    await flock.run_until_idle()
    assert len(engine.calls) == 1 and flock.metrics().count("join_groups_expired") == 0


async def test_shutdown_reports_open_join_groups(flock: Flock) -> None:
    qc_agent(flock, timedelta(minutes=5), BatchSpec(size=5, timeout=timedelta(seconds=45)))
    await flock.publish(PressureSensor(device_id="p", bar=1))
    await flock.shutdown()
    (expiry,) = flock.metrics().join_expiries
    assert expiry.reason == "shutdown" and expiry.missing_types == ("TemperatureSensor",)
