"""ManualClock: time moved by hand, or jumping to each deadline by itself (auto_advance)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines.examples import BatchItem
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FunctionEngine, ManualClock


@flock_type
class ClockReport(BaseModel):
    n: int
    reason: str


async def test_auto_advance_lets_a_timeout_pass_without_moving_the_clock() -> None:
    clock = ManualClock(auto_advance=True)
    flock = Flock(clock=clock, env={})
    (
        flock.agent("waiter")
        .consumes(BatchItem, batch=BatchSpec(size=10, timeout=timedelta(hours=1)))
        .publishes(ClockReport)
        .with_engines(FunctionEngine(batch=lambda ctx, inputs: ClockReport(n=len(inputs), reason=ctx.flush_reason)))
    )
    await flock.publish_many([BatchItem(value=v) for v in range(3)])
    await flock.run_until_idle()
    assert [(r.n, r.reason) for r in await flock.store.get_by_type(ClockReport)] == [(3, "timeout")]
    assert clock.now() == 3600.0  # virtual time: no real hour passed
    await flock.shutdown()


async def test_without_auto_advance_nothing_fires_until_the_clock_is_moved() -> None:
    clock = ManualClock()
    flock = Flock(clock=clock, env={})
    (
        flock.agent("waiter")
        .consumes(BatchItem, batch=BatchSpec(size=10, timeout=timedelta(seconds=30)))
        .publishes(ClockReport)
        .with_engines(FunctionEngine(batch=lambda ctx, inputs: ClockReport(n=len(inputs), reason=ctx.flush_reason)))
    )
    await flock.publish_many([BatchItem(value=v) for v in range(3)])
    await flock.run_until_idle()
    assert await flock.store.get_by_type(ClockReport) == []
    clock.advance(30)
    await flock.run_until_idle()
    assert [(r.n, r.reason) for r in await flock.store.get_by_type(ClockReport)] == [(3, "timeout")]
    await flock.shutdown()
