"""Tenant and namespace isolation on the side paths: restore, shared batches, undecodable entries, glob namespaces.

Each test reproduces a reported break (it failed before the fix).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from pydantic import BaseModel
from test_redis_store import taken

from flock_llm import ConfigurationError, FailureRecord, Flock, flock_type
from flock_llm.engines import EvalResult
from flock_llm.stores import RedisStore
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FunctionEngine
from flock_llm.visibility import LabelledVisibility, PublicVisibility, TenantVisibility


@flock_type
class TenantDoc(BaseModel):
    n: int
    secret: str = "s"


@flock_type
class TenantDone(BaseModel):
    ns: list[int]
    tenant: str


def doc_agent(flock: Flock, tenant: str, engine: FunctionEngine, *, size: int = 5) -> None:
    (
        flock.agent("docs")
        .tenant(tenant)
        .consumes(TenantDoc, batch=BatchSpec(size=size, timeout=timedelta(milliseconds=300)))
        .publishes(TenantDone)
        .with_engines(engine)
    )


def recording(tenant: str) -> FunctionEngine:
    return FunctionEngine(
        batch=lambda ctx, inputs: TenantDone(ns=[d.n for d in inputs.all_as(TenantDoc)], tenant=tenant)
    )


async def until(condition, timeout: float = 20.0) -> None:  # noqa: ANN001 - async predicate
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


# -- 5: an empty label set -------------------------------------------------------------------


def test_an_empty_label_set_is_refused_like_an_empty_private_visibility() -> None:
    with pytest.raises(ConfigurationError, match="at least one label"):
        LabelledVisibility(required_labels=[])
    with pytest.raises(ConfigurationError, match="at least one label"):
        LabelledVisibility(required_labels=())


# -- 4: SQLite restore applies visibility --------------------------------------------------------


async def test_a_restored_delivery_is_not_given_to_an_agent_that_may_no_longer_see_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'flock.db'}"
    first = Flock(store=db, env={})
    doc_agent(first, "tenant-a", recording("a"))
    await first.publish(TenantDoc(n=1, secret="A's secret"), visibility=TenantVisibility(tenant_id="tenant-a"))
    # the process dies before the batch flushes: nothing ran, the delivery is stored
    first.store.close()  # type: ignore[attr-defined]

    engine_b = recording("b")
    second = Flock(store=db, env={})
    doc_agent(second, "tenant-b", engine_b)  # the same agent, now declared for another tenant
    await second.start()
    assert second.batch_stats() == []
    assert second.metrics().counters["refused_restored_deliveries"] == 1
    await second.shutdown()
    assert engine_b.calls == []

    filtered = Flock(store=db, env={})
    engine_f = recording("a")
    (
        filtered.agent("docs")
        .tenant("tenant-a")
        .consumes(TenantDoc, where=lambda d: d.n > 1, batch=BatchSpec(size=5, timeout=timedelta(milliseconds=300)))
        .publishes(TenantDone)
        .with_engines(engine_f)
    )
    await filtered.start()  # the same tenant, but a `where` that now refuses it: not delivered either
    assert filtered.metrics().counters["refused_restored_deliveries"] == 1
    await filtered.shutdown()
    assert engine_f.calls == []

    engine_a = recording("a")
    third = Flock(store=db, env={})
    doc_agent(third, "tenant-a", engine_a)  # whoever may see it still gets it
    await third.start()
    assert third.metrics().counters["restored_deliveries"] == 1
    await third.shutdown()
    assert [d.n for c in engine_a.calls for d in c.inputs.all_as(TenantDoc)] == [1]


# -- 2: namespaces with glob characters ----------------------------------------------------------


@pytest.mark.parametrize("namespace", ["pay*", "pay?ents", "a[bc]", "with space", "{x}", ""])
def test_namespaces_outside_the_safe_alphabet_are_refused(namespace: str) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        RedisStore("redis://127.0.0.1:6390/0", namespace=namespace)


async def test_retention_in_one_namespace_never_touches_a_namespace_its_name_would_match(redis_url: str) -> None:
    base, _, query = redis_url.partition("?")
    namespace = dict(p.split("=") for p in query.split("&"))["namespace"]
    # a namespace that shares the prefix, as "pay*" would have matched "payments"
    other = Flock(store=f"{base}?namespace={namespace}-payments&" + query.split("&", 1)[1], env={})
    await other.publish(TenantDoc(n=7))
    store = other.store
    assert isinstance(store, RedisStore)
    assert await store.keys_under(store.type_stream(""))
    mine = RedisStore.from_url(redis_url)
    await mine.connect()
    await asyncio.sleep(0.01)
    assert await mine.trim(0.001) == 0  # nothing of its own; and the other namespace is untouched
    assert await store.count(TenantDoc) == 1
    await mine.aclose()
    await other.shutdown()
    client = redis.Redis.from_url(base) if "cluster" not in query else None
    if client is not None:
        for key in client.scan_iter(match="{" + namespace + "-payments}:*"):
            client.delete(key)
        client.close()


# -- 1: an undecodable shared entry ----------------------------------------------------------------


@flock_type
class Evolving(BaseModel):
    amount: int


async def test_an_undecodable_entry_becomes_a_failure_record_as_private_as_the_entry(redis_url: str) -> None:
    """A rolling deploy changed a field's type (an old producer wrote a string): the record keeps the entry's
    tenant and never quotes the payload."""
    from flock_llm.visibility import visibility_to_dict

    producer = RedisStore.from_url(redis_url)
    await producer.connect()
    visibility = json.dumps(visibility_to_dict(TenantVisibility(tenant_id="tenant-a")))
    row = [
        "old-1",
        "Evolving",
        json.dumps({"amount": "tenant A's secret 4111-1111"}),
        None,
        "[]",
        None,
        "[]",
        visibility,
        time.time(),
    ]
    await producer.script("PUBLISH")(
        keys=[producer.key("ids"), producer.type_stream("Evolving")], args=["old-1", json.dumps(row)]
    )
    await producer.aclose()

    worker = Flock(store=redis_url, env={})
    worker.agent("reader").tenant("tenant-a").consumes(Evolving).with_engines(FunctionEngine())
    monitor = Flock(store=redis_url, env={})
    seen: list[FailureRecord] = []
    monitor.agent("monitor").consumes(FailureRecord).with_engines(
        FunctionEngine(item=lambda ctx, inputs: seen.extend(inputs.all_as(FailureRecord)))
    )
    await monitor.start()
    await worker.start()
    store = worker.store
    assert isinstance(store, RedisStore)
    await until(lambda: _count(store, FailureRecord, 1))
    (record_artifact,) = await store.artifacts_by_type(FailureRecord)
    record = record_artifact.as_type(FailureRecord)
    assert record.stage == "decode" and record.input_ids == ["old-1"]
    assert record_artifact.visibility == TenantVisibility(tenant_id="tenant-a")
    assert "secret" not in record.error and "4111" not in record.error
    assert "input_value" not in record.error and "amount" in record.error
    await until(lambda: taken(store, FailureRecord, "monitor"))  # the monitor (no tenant) read it and refused it
    assert seen == []
    await worker.shutdown()
    await monitor.shutdown()


async def _count(store: RedisStore, cls: type[BaseModel], n: int) -> bool:
    return await store.count(cls) >= n


def test_failure_records_never_quote_validation_input() -> None:
    class Strict(BaseModel):
        amount: int

    try:
        Strict.model_validate({"amount": "card 4111-1111-1111-1111"})
    except Exception as exc:  # noqa: BLE001 - the ValidationError under test
        record = FailureRecord.from_exception(exc, agent="a", input_ids=["x"], stage="engine")
    assert "4111" not in record.error and "input_value" not in record.error
    assert "amount" in record.error and "valid integer" in record.error


# -- 3: two processes define one agent with different tenants ----------------------------------------


async def test_a_worker_never_runs_documents_of_a_tenant_its_agent_may_not_see(redis_url: str) -> None:
    """Mid-deploy: two workers define agent `docs` for tenants A and B. Every document runs exactly once, in
    the worker of its tenant; nothing is acknowledged and dropped."""
    engine_a, engine_b = recording("a"), recording("b")
    worker_a, worker_b = Flock(store=redis_url, env={}), Flock(store=redis_url, env={})
    doc_agent(worker_a, "tenant-a", engine_a)
    doc_agent(worker_b, "tenant-b", engine_b)
    await worker_a.start()
    await worker_b.start()
    producer = Flock(store=redis_url, env={})
    for n in range(40):
        tenant = "tenant-a" if n % 2 == 0 else "tenant-b"
        await producer.publish(TenantDoc(n=n, secret=tenant), visibility=TenantVisibility(tenant_id=tenant))
    store = producer.store
    assert isinstance(store, RedisStore)

    async def all_done() -> bool:
        done = await store.get_by_type(TenantDone)
        return sum(len(d.ns) for d in done) >= 40

    await until(all_done, timeout=30)
    ran_a = sorted(n for c in engine_a.calls for n in (d.n for d in c.inputs.all_as(TenantDoc)))
    ran_b = sorted(n for c in engine_b.calls for n in (d.n for d in c.inputs.all_as(TenantDoc)))
    assert ran_a == list(range(0, 40, 2))
    assert ran_b == list(range(1, 40, 2))
    assert await store.get_by_type(FailureRecord) == []
    for flock in (worker_a, worker_b, producer):
        await flock.shutdown()


async def test_a_taken_batch_is_checked_again_and_what_may_not_be_seen_is_recorded_privately(redis_url: str) -> None:
    """A flushed batch whose items another definition admitted (here written straight into the ready stream):
    items the runner may not see, or that its `where` refuses, become failure records that keep their
    visibility; the rest runs; the batch is acknowledged once."""
    from flock_llm.artifact import Artifact
    from flock_llm.stores.codec import artifact_to_json

    def doc(n: int, visibility: object = PublicVisibility()) -> Artifact:
        return Artifact(type_name="TenantDoc", payload=TenantDoc(n=n, secret="A"), visibility=visibility)  # type: ignore[arg-type]

    items = [doc(0), doc(1), doc(2, TenantVisibility(tenant_id="tenant-a")), doc(99)]
    engine = FunctionEngine(batch=lambda ctx, inputs: TenantDone(ns=[d.n for d in inputs.all_as(TenantDoc)], tenant=""))
    runner = Flock(store=redis_url, env={})
    (
        runner.agent("docs")
        .consumes(TenantDoc, where=lambda d: d.n < 50, batch=BatchSpec(size=4, timeout=timedelta(seconds=30)))
        .publishes(TenantDone)
        .with_engines(engine)
    )
    store = runner.store
    assert isinstance(store, RedisStore)
    await store.connect()
    await store.client.xadd(
        store.ready_stream("docs", 0),
        {
            "items": "\n".join(artifact_to_json(a) for a in items),
            "batch": "1",
            "reason": "size",
            "opened": "0",
            "flushed": "0",
            "key": json.dumps(["docs", 0, ""]),
        },
    )
    await runner.start()
    await until(lambda: _count(store, TenantDone, 1))
    (done,) = await store.get_by_type(TenantDone)
    assert done.ns == [0, 1]
    records = {r.as_type(FailureRecord).input_ids[0]: r for r in await store.artifacts_by_type(FailureRecord)}
    assert set(records) == {items[2].id, items[3].id}
    assert records[items[2].id].visibility == TenantVisibility(tenant_id="tenant-a")
    assert "may not see it" in records[items[2].id].as_type(FailureRecord).error
    assert "where" in records[items[3].id].as_type(FailureRecord).error
    await until(lambda: _stream_len(store.client, store.ready_stream("docs", 0), 0, exact=True))
    await runner.shutdown()


async def _stream_len(client, stream: str, n: int, *, exact: bool = False) -> bool:  # noqa: ANN001 - redis client
    length = int(await client.xlen(stream))
    return length == n if exact else length >= n


def test_public_visibility_is_still_the_default_for_undecodable_visibility() -> None:
    from flock_llm.stores.redis.support import visibility_of as _visibility_of

    row = json.loads(json.dumps(["id", "T", "{}", None, "[]", None, "[]", json.dumps({"kind": "public"}), 0]))
    assert _visibility_of(json.dumps(row), "agent") == PublicVisibility()
    assert _visibility_of("not json", "agent").allows  # private to the agent: never public by accident
    assert not _visibility_of("not json", "agent").allows(__import__("flock_llm").visibility.AgentIdentity("x"))


def unused(_: EvalResult) -> None:
    """(keeps the EvalResult import meaningful for readers of the fixtures above)"""


async def test_a_takeover_after_a_dead_worker_applies_visibility_and_where(redis_url: str) -> None:
    """Entries a dead worker had read but not processed are taken over after `claim_timeout` and pass the
    same router checks as new ones: hidden and filtered ones are not run."""
    producer = Flock(store=redis_url, env={})
    await producer.publish_many([TenantDoc(n=n) for n in (1, 2, 60)])  # 60: refused by `where`
    await producer.publish(TenantDoc(n=3), visibility=TenantVisibility(tenant_id="tenant-b"))  # hidden
    store = producer.store
    assert isinstance(store, RedisStore)
    stream, group = store.type_stream("TenantDoc"), RedisStore.intake_group("docs", 0)
    await store.client.xgroup_create(stream, group, id="0", mkstream=True)
    taken = await store.client.xreadgroup(group, "dead-worker", {stream: ">"}, count=10)
    assert len(taken[0][1]) == 4  # a worker that read them, then died
    engine = FunctionEngine(item=lambda ctx, inputs: TenantDone(ns=[d.n for d in inputs.all_as(TenantDoc)], tenant="a"))
    rescuer = Flock(store=redis_url, env={})
    (
        rescuer.agent("docs")
        .tenant("tenant-a")
        .consumes(TenantDoc, where=lambda d: d.n < 50)
        .publishes(TenantDone)
        .with_engines(engine)
    )
    await rescuer.start()

    async def none_pending() -> bool:  # taken over one free slot at a time, every claim_timeout / 2
        return not await store.client.xpending_range(stream, group, "-", "+", 10)

    await until(none_pending)  # the refused ones were acknowledged too, not left behind
    await rescuer.run_until_idle()
    ran = sorted(n for c in engine.calls for n in (d.n for d in c.inputs.all_as(TenantDoc)))
    assert ran == [1, 2]
    await rescuer.shutdown()
    await producer.shutdown()
