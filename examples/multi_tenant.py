"""Multi-tenant batching: one batch per tenant, reports visible only to their tenant.

Run: python examples/multi_tenant.py
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from _timescale import scaled
from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec
from flock_llm.visibility import TenantVisibility


@flock_type
class Event(BaseModel):
    tenant_id: str
    kind: str


@flock_type
class BatchReport(BaseModel):
    tenant_id: str
    events: int
    kinds: dict[str, int]


class TenantReportEngine(Engine):
    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        events = inputs.all_as(Event)
        kinds: dict[str, int] = {}
        for e in events:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        return EvalResult.from_object(BatchReport(tenant_id=events[0].tenant_id, events=len(events), kinds=kinds))


class CollectEngine(Engine):
    """A tenant's dashboard: records which reports it was allowed to see."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        self.seen += [r.tenant_id for r in inputs.all_as(BatchReport)]
        return EvalResult.empty()


async def main() -> None:
    dashboards = {tenant: CollectEngine() for tenant in ("acme", "globex")}
    async with Flock() as flock:
        (
            flock.agent("tenant_batch")
            .consumes(
                Event,
                # one batch per tenant: tenants never share a batch
                batch=BatchSpec(size=50, timeout=scaled(timedelta(minutes=5)), by=lambda e: e.tenant_id),
            )
            .publishes(BatchReport, visibility=TenantVisibility(tenant_id_extractor=lambda r: r.tenant_id))
            .with_engines(TenantReportEngine())
        )
        for tenant, engine in dashboards.items():
            flock.agent(f"{tenant}_dashboard").tenant(tenant).consumes(BatchReport).with_engines(engine)
        kinds = ["login", "purchase", "logout"]
        await flock.publish_many(Event(tenant_id="acme" if i % 3 else "globex", kind=kinds[i % 3]) for i in range(120))
        await flock.run_until_idle()
    for artifact in await flock.store.artifacts_by_type(BatchReport):
        report = artifact.as_type(BatchReport)
        print(
            f"{report.tenant_id}: {report.events} events {report.kinds}, visible to tenant "
            f"{artifact.visibility.tenant_id!r}"
        )  # type: ignore[attr-defined]
    for tenant, engine in dashboards.items():
        print(f"{tenant}_dashboard saw reports of: {sorted(set(engine.seen))}")


if __name__ == "__main__":
    asyncio.run(main())
