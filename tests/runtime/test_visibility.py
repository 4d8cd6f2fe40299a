"""Visibility is applied before batching; outputs never widen their inputs' visibility."""

from __future__ import annotations

from datetime import timedelta

import pytest
from domain import Echo, Event, TenantReport

from flock_llm import ConfigurationError, Flock
from flock_llm.engines import EngineContext, EvalInputs
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FunctionEngine
from flock_llm.visibility import (
    AgentIdentity,
    LabelledVisibility,
    PrivateVisibility,
    PublicVisibility,
    TenantVisibility,
)


def tenant_report(ctx: EngineContext, inputs: EvalInputs) -> TenantReport:
    events = inputs.all_as(Event)
    return TenantReport(tenant_id=events[0].tenant_id, event_ids=[e.event_id for e in events])


def collector(flock: Flock, name: str, *labels: str, tenant: str | None = None) -> FunctionEngine:
    engine = FunctionEngine(batch=lambda ctx, inputs: [Echo(source=str(len(inputs)))])
    agent = flock.agent(name).labels(*labels)
    if tenant:
        agent.tenant(tenant)
    agent.consumes(Event, batch=BatchSpec(size=100, timeout=timedelta(seconds=5))).publishes(Echo).with_engines(engine)
    return engine


def delivered(engine: FunctionEngine) -> list[str]:
    return [e.event_id for c in engine.calls for e in c.inputs.all_as(Event)]


async def test_private_labelled_and_tenant_artifacts_reach_only_allowed_agents(flock: Flock) -> None:
    plain = collector(flock, "plain")
    auditor = collector(flock, "auditor", "pii", "finance")
    acme = collector(flock, "acme_bot", tenant="acme")

    await flock.publish(Event(event_id="public", tenant_id="-"))
    await flock.publish(Event(event_id="for-auditor", tenant_id="-"), visibility=PrivateVisibility(agents={"auditor"}))
    await flock.publish(Event(event_id="pii", tenant_id="-"), visibility=LabelledVisibility(required_labels={"pii"}))
    await flock.publish(Event(event_id="acme-only", tenant_id="acme"), visibility=TenantVisibility(tenant_id="acme"))
    await flock.publish(
        Event(event_id="globex-only", tenant_id="globex"),
        visibility=TenantVisibility(tenant_id_extractor=lambda e: e.tenant_id),
    )
    await flock.shutdown()
    assert delivered(plain) == ["public"]
    assert delivered(auditor) == ["public", "for-auditor", "pii"]
    assert delivered(acme) == ["public", "acme-only"]


async def test_a_tenant_batch_never_holds_another_tenants_artifact(flock: Flock) -> None:
    engines = {}
    for tenant in ("acme", "globex"):
        engines[tenant] = FunctionEngine(batch=tenant_report)
        (
            flock.agent(f"{tenant}_batch")
            .tenant(tenant)
            .consumes(Event, batch=BatchSpec(size=3, timeout=timedelta(seconds=5)))
            .publishes(TenantReport)
            .with_engines(engines[tenant])
        )
    tenant_of_event = TenantVisibility(tenant_id_extractor=lambda e: e.tenant_id)
    for i in range(12):
        tenant = "acme" if i % 3 else "globex"
        await flock.publish(Event(event_id=f"e{i}", tenant_id=tenant), visibility=tenant_of_event)
    await flock.shutdown()
    for tenant, engine in engines.items():
        assert engine.batch_calls
        for call in engine.batch_calls:
            assert {a.visibility for a in call.inputs.artifacts} == {TenantVisibility(tenant_id=tenant)}
            assert {e.tenant_id for e in call.inputs.all_as(Event)} == {tenant}


async def test_outputs_inherit_the_visibility_of_tenant_inputs(flock: Flock) -> None:
    """The framework we replace publishes batch outputs of tenant-private inputs publicly."""
    (
        flock.agent("tenant_batch")
        .tenant("acme")
        .consumes(Event, batch=BatchSpec(size=2, timeout=timedelta(seconds=5)))
        .publishes(TenantReport)
        .with_engines(FunctionEngine(batch=tenant_report))
    )
    snoop = FunctionEngine(item=lambda ctx, inputs: None)
    flock.agent("snoop").consumes(TenantReport).with_engines(snoop)
    for i in range(2):
        await flock.publish(Event(event_id=f"e{i}", tenant_id="acme"), visibility=TenantVisibility(tenant_id="acme"))
    await flock.run_until_idle()
    (report,) = await flock.store.artifacts_by_type(TenantReport)
    assert report.visibility == TenantVisibility(tenant_id="acme")
    assert snoop.calls == []


async def test_mixed_inputs_give_the_most_restrictive_output_visibility(flock: Flock) -> None:
    (
        flock.agent("mixer")
        .labels("pii")
        .consumes(Event, batch=BatchSpec(size=2, timeout=timedelta(seconds=5)))
        .publishes(Echo)
        .with_engines(FunctionEngine(batch=lambda ctx, inputs: [Echo(source="both")]))
    )
    await flock.publish(Event(event_id="a", tenant_id="-"))
    await flock.publish(Event(event_id="b", tenant_id="-"), visibility=LabelledVisibility(required_labels="pii"))
    await flock.run_until_idle()
    (out,) = await flock.store.artifacts_by_type(Echo)
    assert not out.visibility.allows(AgentIdentity("anyone"))
    assert out.visibility.allows(AgentIdentity("cleared", labels=frozenset({"pii"})))


async def test_declared_output_visibility_with_extractor_as_in_the_guide(flock: Flock) -> None:
    (
        flock.agent("tenant_batch")
        .consumes(Event, batch=BatchSpec(size=50, timeout=timedelta(minutes=5), by=lambda e: e.tenant_id))
        .publishes(TenantReport, visibility=TenantVisibility(tenant_id_extractor=lambda r: r.tenant_id))
        .with_engines(FunctionEngine(batch=tenant_report))
    )
    await flock.publish_many(
        [
            Event(event_id="1", tenant_id="acme"),
            Event(event_id="2", tenant_id="globex"),
            Event(event_id="3", tenant_id="acme"),
        ]
    )
    await flock.shutdown()
    reports = await flock.store.artifacts_by_type(TenantReport)
    assert sorted((r.as_type(TenantReport).tenant_id, r.visibility.tenant_id) for r in reports) == [  # type: ignore[attr-defined]
        ("acme", "acme"),
        ("globex", "globex"),
    ]
    assert sorted(len(r.as_type(TenantReport).event_ids) for r in reports) == [1, 2]


def test_unknown_or_missing_visibility_arguments_are_errors() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'tenant'"):
        TenantVisibility(tenant="acme")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="exactly one of `tenant_id=` or `tenant_id_extractor=`"):
        TenantVisibility()
    with pytest.raises(ConfigurationError, match="`agents` must name at least one agent"):
        PrivateVisibility(agents=[])
    with pytest.raises(TypeError):
        PublicVisibility(everyone=True)  # type: ignore[call-arg]


async def test_publish_rejects_a_non_visibility(flock: Flock) -> None:
    with pytest.raises(ConfigurationError, match="`visibility` must be a Visibility"):
        await flock.publish(Event(event_id="x", tenant_id="t"), visibility="public")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="`visibility` must be a Visibility"):
        flock.agent("a").publishes(Echo, visibility="tenant")  # type: ignore[arg-type]
