"""IoT sensor aggregation: statistics over 1,000 readings per batch.

Run: python examples/iot_sensors.py
"""

from __future__ import annotations

import asyncio
import random
import statistics
from datetime import timedelta

from _timescale import scaled
from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec


@flock_type
class SensorReading(BaseModel):
    device_id: str
    temperature: float
    humidity: float
    timestamp: str


@flock_type
class StatisticsReport(BaseModel):
    readings: int
    devices: int
    mean_temperature: float
    max_temperature: float
    mean_humidity: float
    flush_reason: str


class StatisticsEngine(Engine):
    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        batch = inputs.all_as(SensorReading)
        return EvalResult.from_object(
            StatisticsReport(
                readings=len(batch),
                devices=len({r.device_id for r in batch}),
                mean_temperature=round(statistics.fmean(r.temperature for r in batch), 2),
                max_temperature=max(r.temperature for r in batch),
                mean_humidity=round(statistics.fmean(r.humidity for r in batch), 2),
                flush_reason=ctx.flush_reason or "",
            )
        )


async def main() -> None:
    rng = random.Random(5)
    async with Flock() as flock:
        (
            flock.agent("stats")
            .consumes(
                SensorReading,
                batch=BatchSpec(
                    size=1000,  # Statistical significance
                    timeout=scaled(timedelta(minutes=10)),  # Report every 10 min
                ),
            )
            .publishes(StatisticsReport)
            .with_engines(StatisticsEngine())
        )
        await flock.publish_many(
            SensorReading(
                device_id=f"dev-{i % 40}",
                temperature=round(rng.gauss(21, 2), 2),
                humidity=round(rng.uniform(30, 60), 1),
                timestamp=f"t{i}",
            )
            for i in range(2_500)
        )
        await flock.run_until_idle()
    # shutdown (end of `async with`) flushed the last 500 readings
    for r in await flock.store.get_by_type(StatisticsReport):
        print(
            f"{r.readings} readings from {r.devices} devices ({r.flush_reason}): mean {r.mean_temperature} C, "
            f"max {r.max_temperature} C, humidity {r.mean_humidity}%"
        )


if __name__ == "__main__":
    asyncio.run(main())
