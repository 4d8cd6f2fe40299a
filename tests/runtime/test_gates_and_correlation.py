"""Flock's subscription forms: AND gates, count gates, joins over one type, and correlation ids."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from flock_llm import ConfigurationError, FailureRecord, Flock, flock_type
from flock_llm.subscription import BatchSpec, JoinSpec
from flock_llm.testing import FunctionEngine, ManualClock
from flock_llm.visibility import TenantVisibility


@flock_type
class GateA(BaseModel):
    n: int


@flock_type
class GateB(BaseModel):
    n: int


@flock_type
class GateC(BaseModel):
    n: int


@flock_type
class GateSet(BaseModel):
    parts: list[str]


@flock_type
class Reading(BaseModel):
    device_id: str
    kind: str
    value: float


@flock_type
class DevicePairs(BaseModel):
    pairs: list[list[str]]


def describe(inputs) -> list[str]:  # noqa: ANN001 - EvalInputs
    return [f"{type(a.payload).__name__[-1]}{a.payload.n}" for a in inputs.artifacts]


def gate(flock: Flock, *types: type[BaseModel], **consumes: object) -> FunctionEngine:
    engine = FunctionEngine(item=lambda ctx, inputs: GateSet(parts=describe(inputs)))
    flock.agent("gate").consumes(*types, **consumes).publishes(GateSet).with_engines(engine)  # type: ignore[arg-type]
    return engine


async def sets(flock: Flock) -> list[list[str]]:
    await flock.run_until_idle()
    return [s.parts for s in await flock.store.get_by_type(GateSet)]


async def test_a_two_type_gate_runs_once_per_complete_set_in_declared_order(flock: Flock) -> None:
    engine = gate(flock, GateA, GateB)
    await flock.publish(GateA(n=1))
    assert await sets(flock) == []  # half a set: nothing runs
    await flock.publish(GateB(n=1))
    assert await sets(flock) == [["A1", "B1"]]
    await flock.publish(GateB(n=2))  # order independence: B first, then A
    await flock.publish(GateA(n=2))
    assert await sets(flock) == [["A1", "B1"], ["A2", "B2"]]
    assert all(len(c.inputs.items) == 1 for c in engine.calls)  # one item: the whole set


async def test_a_three_type_gate_and_a_count_gate(flock: Flock) -> None:
    gate(flock, GateA, GateA, GateB)
    three = Flock(env={})
    gate(three, GateA, GateB, GateC)
    for target in (flock, three):
        await target.publish_many([GateA(n=1), GateB(n=1), GateA(n=2), GateC(n=1)])
    assert await sets(flock) == [["A1", "A2", "B1"]]
    assert await sets(three) == [["A1", "B1", "C1"]]  # A2 waits for the next set
    await three.shutdown()


async def test_gates_do_not_accumulate_across_completions_and_skip_nothing(flock: Flock) -> None:
    gate(flock, GateA, GateB)
    await flock.publish_many([GateA(n=1), GateA(n=2), GateA(n=3), GateB(n=1), GateB(n=2)])
    # arrival order, not "latest wins": A1 pairs with B1, A2 with B2; A3 waits for a B
    assert await sets(flock) == [["A1", "B1"], ["A2", "B2"]]
    await flock.publish(GateB(n=3))
    assert (await sets(flock))[-1] == ["A3", "B3"]


async def test_where_and_visibility_apply_before_an_artifact_takes_a_slot(flock: Flock) -> None:
    engine = FunctionEngine(item=lambda ctx, inputs: GateSet(parts=describe(inputs)))
    (
        flock.agent("gate")
        .tenant("t1")
        .consumes(GateA, GateB, where=lambda p: p.n > 0)
        .publishes(GateSet)
        .with_engines(engine)
    )
    await flock.publish(GateA(n=0))  # refused by `where`
    await flock.publish(GateA(n=5), visibility=TenantVisibility(tenant_id="t2"))  # another tenant's
    await flock.publish(GateB(n=1))
    assert await sets(flock) == []
    await flock.publish(GateA(n=2))
    assert await sets(flock) == [["A2", "B1"]]


async def test_a_gate_with_a_batch_counts_each_complete_set_as_one_item(flock: Flock, clock: ManualClock) -> None:
    batches: list[int] = []

    def run(ctx, inputs):  # noqa: ANN001 - FunctionEngine callback
        batches.append(len(inputs.items))
        return [GateSet(parts=describe(one_group(group))) for group in inputs.items]

    flock.agent("gate").consumes(GateA, GateB, batch=BatchSpec(size=2, timeout=timedelta(seconds=30))).publishes(
        GateSet
    ).with_engines(FunctionEngine(batch=run))
    await flock.publish_many([GateA(n=1), GateB(n=1), GateA(n=2), GateA(n=3), GateB(n=2), GateB(n=3)])
    clock.advance(30)
    assert await sets(flock) == [["A1", "B1"], ["A2", "B2"], ["A3", "B3"]]
    assert batches == [2, 1]  # a size flush of two sets, then the timeout flush of the third


def one_group(group):  # noqa: ANN001, N802 - one join group as EvalInputs
    from flock_llm.engines import EvalInputs

    return EvalInputs((group,))


async def test_a_join_over_one_type_pairs_readings_of_a_device_and_batches_the_pairs(
    flock: Flock, clock: ManualClock
) -> None:
    runs: list[list[list[str]]] = []

    def pairs(ctx, inputs):  # noqa: ANN001 - FunctionEngine callback
        found = [[f"{r.device_id}:{r.kind}" for r in (a.payload for a in group)] for group in inputs.items]
        runs.append(found)
        return DevicePairs(pairs=found)

    (
        flock.agent("pairs")
        .consumes(
            Reading,
            Reading,
            join=JoinSpec(by=lambda r: r.device_id, within=timedelta(seconds=30)),
            batch=BatchSpec(size=3, timeout=timedelta(seconds=60)),
        )
        .publishes(DevicePairs)
        .with_engines(FunctionEngine(batch=pairs))
    )
    readings = [
        Reading(device_id=d, kind=k, value=1.0) for d, k in (("d1", "t"), ("d2", "t"), ("d1", "p"), ("d3", "t"))
    ] + [Reading(device_id=d, kind="p", value=2.0) for d in ("d2", "d3")]
    await flock.publish_many(readings)
    await flock.run_until_idle()
    assert runs == [[["d1:t", "d1:p"], ["d2:t", "d2:p"], ["d3:t", "d3:p"]]]


async def test_a_join_needs_two_slots_and_repeated_types_are_allowed() -> None:
    flock = Flock(env={})
    with pytest.raises(ConfigurationError, match="two or more artifacts"):
        flock.agent("x").consumes(Reading, join=JoinSpec(by=lambda r: r.device_id, within=3))
    flock.agent("y").consumes(Reading, Reading, join=JoinSpec(by=lambda r: r.device_id, within=3))


async def test_an_incomplete_gate_set_is_reported_at_shutdown_with_its_artifacts() -> None:
    flock = Flock(env={})
    gate(flock, GateA, GateB)
    (lonely,) = await flock.publish_many([GateA(n=9)])
    await flock.shutdown()
    assert flock.metrics().counters["join_groups_expired"] == 1
    (expiry,) = flock.metrics().join_expiries
    assert expiry.artifact_ids == (lonely.id,) and expiry.missing_types == ("GateB",) and expiry.reason == "shutdown"


async def test_each_publish_gets_a_fresh_correlation_id_and_outputs_inherit_a_shared_one(flock: Flock) -> None:
    engine = FunctionEngine(item=lambda ctx, inputs: GateSet(parts=describe(inputs)))
    flock.agent("echo").consumes(GateC).publishes(GateSet).with_engines(engine)
    first, second = await flock.publish(GateC(n=1)), await flock.publish(GateC(n=2))
    given = await flock.publish(GateC(n=3), correlation_id="order-42")
    assert first.correlation_id and second.correlation_id and first.correlation_id != second.correlation_id
    assert given.correlation_id == "order-42"
    await flock.run_until_idle()
    outputs = {a.derived_from[0]: a.correlation_id for a in await flock.store.artifacts_by_type(GateSet)}
    assert outputs == {first.id: first.correlation_id, second.id: second.correlation_id, given.id: "order-42"}


async def test_a_batch_of_mixed_correlations_gets_a_fresh_id_and_a_shared_one_is_kept(
    flock: Flock, clock: ManualClock
) -> None:
    flock.agent("batcher").consumes(GateC, batch=BatchSpec(size=2, timeout=timedelta(seconds=5))).publishes(
        GateSet
    ).with_engines(FunctionEngine(batch=lambda ctx, inputs: GateSet(parts=describe(inputs))))
    mixed = await flock.publish_many([GateC(n=1), GateC(n=2)])
    same = await flock.publish_many([GateC(n=3), GateC(n=4)], correlation_id="run-7")
    await flock.run_until_idle()
    by_first = {a.derived_from[0]: a.correlation_id for a in await flock.store.artifacts_by_type(GateSet)}
    assert by_first[same[0].id] == "run-7"
    assert by_first[mixed[0].id] not in (None, mixed[0].correlation_id, mixed[1].correlation_id)


async def test_half_filled_gates_and_joins_survive_a_crash_with_the_sqlite_store(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'flock.db'}"

    def build(flock: Flock) -> None:
        gate(flock, GateA, GateB)
        (
            flock.agent("pairs")
            .consumes(Reading, Reading, join=JoinSpec(by=lambda r: r.device_id, within=timedelta(minutes=5)))
            .publishes(DevicePairs)
            .with_engines(
                FunctionEngine(item=lambda ctx, inputs: DevicePairs(pairs=[[r.kind for r in inputs.all_as(Reading)]]))
            )
        )

    first = Flock(store=db, env={})
    build(first)
    await first.publish(GateA(n=1))
    await first.publish(Reading(device_id="d1", kind="t", value=1))
    await first.run_until_idle()
    first.store.close()  # type: ignore[attr-defined]  # the process dies: nothing ran, nothing is lost

    second = Flock(store=db, env={})
    build(second)
    await second.start()  # the half-filled set and group are restored
    await second.publish(GateB(n=1))
    await second.publish(Reading(device_id="d1", kind="p", value=2))
    await second.run_until_idle()
    assert [s.parts for s in await second.store.get_by_type(GateSet)] == [["A1", "B1"]]
    assert [p.pairs for p in await second.store.get_by_type(DevicePairs)] == [[["t", "p"]]]
    assert await second.store.get_by_type(FailureRecord) == []
    await second.shutdown()
