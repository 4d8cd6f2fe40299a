"""Correlate, then batch: temperature + pressure by device, five correlated pairs per quality check.

Run: python examples/join_batch_sensors.py
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from _timescale import scaled
from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec, JoinSpec


@flock_type
class TemperatureSensor(BaseModel):
    device_id: str
    celsius: float


@flock_type
class PressureSensor(BaseModel):
    device_id: str
    bar: float


@flock_type
class QualityReport(BaseModel):
    devices: list[str]
    sensors: int
    out_of_spec: list[str]


class QualityEngine(Engine):
    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        devices, bad = [], []
        for temperature, pressure in inputs.groups:  # each item is one correlated pair
            t, p = temperature.as_type(TemperatureSensor), pressure.as_type(PressureSensor)
            devices.append(t.device_id)
            if t.celsius > 80 or p.bar > 2.5:
                bad.append(t.device_id)
        return EvalResult.from_object(QualityReport(devices=devices, sensors=len(inputs.artifacts), out_of_spec=bad))


async def main() -> None:
    async with Flock() as flock:
        (
            flock.agent("qc")
            .consumes(
                TemperatureSensor,
                PressureSensor,
                join=JoinSpec(by=lambda x: x.device_id, within=scaled(timedelta(seconds=30))),  # Correlate first!
                batch=BatchSpec(size=5, timeout=scaled(timedelta(seconds=45))),  # Then batch 5 correlated pairs!
            )
            .publishes(QualityReport)
            .with_engines(QualityEngine())
        )
        for d in range(10):
            await flock.publish(TemperatureSensor(device_id=f"press-{d}", celsius=60 + 3 * d))
        for d in reversed(range(10)):
            await flock.publish(PressureSensor(device_id=f"press-{d}", bar=1.5 + 0.12 * d))
        await flock.publish(TemperatureSensor(device_id="press-orphan", celsius=20))  # its partner never comes
        await flock.run_until_idle()
    for r in await flock.store.get_by_type(QualityReport):
        print(f"QC over {len(r.devices)} devices ({r.sensors} sensors): out of spec {r.out_of_spec or 'none'}")
    for expiry in flock.metrics().join_expiries:
        print(f"join group {expiry.key} closed incomplete ({expiry.reason}), missing {', '.join(expiry.missing_types)}")


if __name__ == "__main__":
    asyncio.run(main())
