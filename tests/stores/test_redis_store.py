"""The Redis store in one process: several Flocks on one event loop stand in for worker processes.

The multi-process tests (SIGKILL, Redis restart, 10,000 items) are in test_redis_processes.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from conftest import PrivateRedis
from pydantic import BaseModel

from flock_llm import ConfigurationError, FailureRecord, Flock, StoreUnavailableError, flock_type
from flock_llm.engines import EvalResult
from flock_llm.engines._tiers.journal import JobRecord
from flock_llm.registry import type_name_of
from flock_llm.stores import RedisStore
from flock_llm.subscription import BatchSpec, JoinSpec
from flock_llm.testing import FunctionEngine, ManualClock


@flock_type
class RPay(BaseModel):
    n: int
    customer: str = "c"


@flock_type
class RPayGate(BaseModel):
    n: int


@flock_type
class RPayBatch(BaseModel):
    ns: list[int]
    reason: str
    batch_id: str


def summarize(ctx, inputs):  # noqa: ANN001 - FunctionEngine callback
    return RPayBatch(ns=[p.n for p in inputs.all_as(RPay)], reason=ctx.flush_reason or "", batch_id=ctx.batch_id or "")


def worker(
    url: str,
    *,
    size: int | None = 5,
    timeout: timedelta | None = timedelta(seconds=30),
    clock: ManualClock | None = None,
    **consumes: object,
) -> Flock:
    flock = Flock(store=url, env={}, clock=clock)
    (
        flock.agent("payments")
        .consumes(RPay, batch=BatchSpec(size=size, timeout=timeout), **consumes)  # type: ignore[arg-type]
        .publishes(RPayBatch)
        .with_engines(FunctionEngine(batch=summarize))
    )
    return flock


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def outputs(flock: Flock, cls: type[BaseModel], n: int) -> list:
    store = flock.store
    assert isinstance(store, RedisStore)
    await until(lambda: _at_least(store, cls, n))
    return await store.get_by_type(cls)


async def _at_least(store: RedisStore, cls: type[BaseModel], n: int) -> bool:
    return await store.count(cls) >= n


async def taken(store: RedisStore, cls: type[BaseModel], agent: str, sub: int = 0) -> bool:
    """Every `cls` published so far was read by the agent subscription's consumer group and acknowledged there
    (added to a shared batch or set, refused, or, unbatched, its run committed): nothing of it is still coming."""
    stream = store.type_stream(type_name_of(cls))
    groups = {g["name"]: g for g in await store.client.xinfo_groups(stream)}
    group = groups.get(RedisStore.intake_group(agent, sub))
    last = await store.client.xrevrange(stream, count=1)
    return group is not None and group["pending"] == 0 and (not last or group["last-delivered-id"] == last[0][0])


async def settled(store: RedisStore, cls: type[BaseModel], agent: str, sub: int = 0, identity: str = "") -> bool:
    """`taken`, and no flushed batch of the subscription is waiting or running: no more runs can come."""
    if not await taken(store, cls, agent, sub):
        return False
    ready = store.ready_stream(agent, sub, identity)
    if not await store.client.exists(ready):
        return True
    groups = await store.client.xinfo_groups(ready)
    return all(g["pending"] == 0 and g.get("lag", 0) == 0 for g in groups)


# -- configuration and connection ------------------------------------------------------------


def test_store_url_sets_our_options_and_keeps_redis_ones() -> None:
    store = RedisStore.from_url(
        "redis://:s3cret@127.0.0.1:6390/2?namespace=payments&claim_timeout=5&socket_keepalive=1"
    )
    assert (store.namespace, store.claim_timeout, store.retention) == ("payments", 5.0, None)
    assert RedisStore.from_url("redis://h/0?retention=3600").retention == 3600.0
    assert RedisStore("redis://h/0", retention=timedelta(hours=1)).retention == 3600.0
    assert store.url == "redis://:s3cret@127.0.0.1:6390/2?socket_keepalive=1"
    assert "s3cret" not in repr(store) and "***" in repr(store)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/0?claim_timeout=soon", "`claim_timeout` in the store URL must be a number"),
        ("redis://h/0?claim_timeout=0", "`claim_timeout` must be a positive number"),
        ("redis://h/0?retention=-1", "`retention` must be a positive number"),
        ("redis://h/0?namespace={x}", "`namespace` must be 1 to 64 characters"),
        ("http://h/0", "store URL must look like 'redis://"),
    ],
)
def test_bad_store_settings_are_refused_with_the_fix(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RedisStore.from_url(url)


def test_unknown_store_scheme_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must start with 'sqlite:///' or 'redis://'"):
        Flock(store="postgres://user:pw@db/x")


async def test_unreachable_redis_fails_at_start_with_a_clear_error_and_no_password() -> None:
    flock = Flock(store="redis://:hunter2@127.0.0.1:1/0", env={})
    with pytest.raises(StoreUnavailableError, match=r"cannot reach Redis at redis://:\*\*\*@127.0.0.1:1/0") as caught:
        await flock.publish(RPay(n=1))
    assert "hunter2" not in str(caught.value)


async def test_a_gate_across_two_workers_fires_each_set_once(redis_url: str) -> None:
    """An AND gate on the shared store: halves of a set read by different workers meet in Redis; every complete
    set runs once, in declared order, and the extra arrival waits for the next set."""
    runs: list[list[str]] = []

    def run(ctx, inputs):  # noqa: ANN001 - FunctionEngine callback
        runs.append([f"{type(a.payload).__name__}{a.payload.n}" for a in inputs.artifacts])
        return RPayBatch(ns=[a.payload.n for a in inputs.artifacts], reason="set", batch_id="")

    workers = []
    for _ in range(2):
        flock = Flock(store=redis_url, env={})
        flock.agent("gate").consumes(RPay, RPayGate).publishes(RPayBatch).with_engines(FunctionEngine(item=run))
        await flock.start()
        workers.append(flock)
    await workers[0].publish_many([RPay(n=1), RPay(n=2)])
    await workers[1].publish_many([RPayGate(n=1), RPayGate(n=2), RPayGate(n=3)])
    store = workers[0].store
    assert isinstance(store, RedisStore)
    await outputs(workers[0], RPayBatch, 2)
    await until(lambda: _settled_gate(store))  # every arrival placed, every completed set run: nothing more comes
    assert sorted(runs) == [["RPay1", "RPayGate1"], ["RPay2", "RPayGate2"]]  # RPayGate3 waits
    await workers[0].publish(RPay(n=3))
    await outputs(workers[0], RPayBatch, 3)
    assert sorted(runs)[-1] == ["RPay3", "RPayGate3"]
    for flock in workers:
        await flock.shutdown()


async def _settled_gate(store: RedisStore) -> bool:
    return await settled(store, RPay, "gate") and await settled(store, RPayGate, "gate")


async def test_a_join_over_one_type_with_a_batch_on_the_shared_store(redis_url: str) -> None:
    seen: list[list[tuple[int, str]]] = []

    def pairs(ctx, inputs):  # noqa: ANN001 - FunctionEngine callback
        seen.append(sorted((a.payload.n, a.payload.customer) for group in inputs.items for a in group))
        return RPayBatch(ns=[len(group) for group in inputs.items], reason=ctx.flush_reason or "", batch_id="")

    workers = []
    for _ in range(2):
        flock = Flock(store=redis_url, env={})
        (
            flock.agent("pairs")
            .consumes(
                RPay,
                RPay,
                join=JoinSpec(by=lambda p: p.customer, within=timedelta(seconds=30)),
                batch=BatchSpec(size=2, timeout=timedelta(seconds=30)),
            )
            .publishes(RPayBatch)
            .with_engines(FunctionEngine(batch=pairs))
        )
        await flock.start()
        workers.append(flock)
    await workers[0].publish_many([RPay(n=1, customer="a"), RPay(n=2, customer="b")])
    await workers[1].publish_many([RPay(n=3, customer="b"), RPay(n=4, customer="a")])
    (done,) = await outputs(workers[0], RPayBatch, 1)
    assert done.ns == [2, 2] and done.reason == "size"  # two pairs, one batch
    assert seen == [[(1, "a"), (2, "b"), (3, "b"), (4, "a")]]
    for flock in workers:
        await flock.shutdown()


async def test_an_expired_join_group_is_reported_by_the_servers_clock(redis_url: str) -> None:
    flock = Flock(store=redis_url, env={})
    flock.agent("pairs").consumes(
        RPay, RPayGate, join=JoinSpec(by=lambda p: p.n, within=timedelta(milliseconds=200))
    ).publishes(RPayBatch).with_engines(FunctionEngine())
    await flock.start()
    (lonely,) = await flock.publish_many([RPay(n=7)])

    async def reported() -> bool:
        return bool(flock.metrics().join_expiries)

    await until(reported)  # swept every sweep_interval (0.2 s here)
    (expiry,) = flock.metrics().join_expiries
    assert expiry.artifact_ids == (lonely.id,) and expiry.missing_types == ("RPayGate",)
    assert expiry.reason == "window" and flock.metrics().counters["join_groups_expired"] == 1
    await flock.shutdown()


# -- shared batches ---------------------------------------------------------------------------


async def test_size_flushes_are_decided_once_across_workers_and_every_item_lands_once(redis_url: str) -> None:
    workers = [worker(redis_url, size=10), worker(redis_url, size=10), worker(redis_url, size=10)]
    for w in workers:
        await w.start()
    producer = Flock(store=redis_url, env={})
    await producer.publish_many([RPay(n=n) for n in range(200)])
    done = await outputs(producer, RPayBatch, 20)
    await until(lambda: settled(producer.store, RPay, "payments"))  # type: ignore[arg-type]  # nothing more comes
    for w in workers:
        await w.shutdown()
    done = await producer.store.get_by_type(RPayBatch)
    assert len(done) == 20 and {len(d.ns) for d in done} == {10} and {d.reason for d in done} == {"size"}
    assert sorted(n for d in done for n in d.ns) == list(range(200))
    assert len({d.batch_id for d in done}) == 20
    flushes = [f for w in workers for f in w.metrics().flushes]
    assert len(flushes) == 20 and sum(f.batch_size for f in flushes) == 200
    await producer.shutdown()


async def test_a_timeout_flush_takes_a_partial_batch_fed_by_two_processes(redis_url: str) -> None:
    """On the Flock's clock (shared by the workers here): the batch flushes when that clock passes its timeout,
    not a moment before, and says how long it waited by that clock."""
    clock = ManualClock(start=1_000.0)
    a = worker(redis_url, size=25, timeout=timedelta(milliseconds=400), clock=clock)
    b = worker(redis_url, size=25, timeout=timedelta(milliseconds=400), clock=clock)
    await a.start()
    await b.start()
    producer_1, producer_2 = (Flock(store=redis_url, env={}, clock=clock) for _ in range(2))
    await producer_1.publish_many([RPay(n=n) for n in range(3)])
    await producer_2.publish_many([RPay(n=n) for n in range(3, 6)])
    store = a.store
    assert isinstance(store, RedisStore)
    await until(lambda: _batch_len(store, 6))
    clock.advance(0.399)
    assert await a._check_batch_timeouts() == 0  # not due yet by the Flock's clock (the sweep asks the same)
    assert await _batch_len(store, 6)
    clock.advance(0.001)  # the deadline timer of the worker that opened the batch fires
    (done,) = await outputs(producer_1, RPayBatch, 1)
    assert sorted(done.ns) == [0, 1, 2, 3, 4, 5] and done.reason == "timeout"
    (flush,) = [f for w in (a, b) for f in w.metrics().flushes]
    assert flush.reason == "timeout" and flush.batch_size == 6 and flush.waited_s == pytest.approx(0.4)
    for f in (a, b, producer_1, producer_2):
        await f.shutdown()


async def test_an_expired_batch_opened_by_a_worker_that_left_is_flushed_by_the_sweep(redis_url: str) -> None:
    clock = ManualClock()
    leaver = worker(redis_url, size=25, timeout=timedelta(milliseconds=200), clock=clock)
    await leaver.start()
    await leaver.publish_many([RPay(n=n) for n in range(4)])
    store = leaver.store
    assert isinstance(store, RedisStore)
    await until(lambda: _batch_len(store, 4))
    await leaver.shutdown()  # leaves the shared batch (and its deadline) behind
    clock.advance(0.3)  # its deadline passes while no worker is there
    stayer = worker(redis_url, size=25, timeout=timedelta(milliseconds=200), clock=clock)  # never saw it open
    await stayer.start()
    (done,) = await outputs(stayer, RPayBatch, 1)
    assert sorted(done.ns) == [0, 1, 2, 3] and done.reason == "timeout"
    await stayer.shutdown()


async def _batch_len(store: RedisStore, n: int) -> bool:
    member = json.dumps(["payments", 0, ""], separators=(",", ":"))
    return int(await store.client.llen(store.batch_list(member))) == n


async def test_partitioned_batches_and_a_manual_flush(redis_url: str) -> None:
    w = Flock(store=redis_url, env={})
    (
        w.agent("payments")
        .consumes(RPay, batch=BatchSpec(size=3, timeout=timedelta(seconds=30), by=lambda p: p.customer))
        .publishes(RPayBatch)
        .with_engines(FunctionEngine(batch=summarize))
    )
    await w.start()
    await w.publish_many([RPay(n=n, customer="ab"[n % 2]) for n in range(8)])
    first = await outputs(w, RPayBatch, 2)
    assert sorted(sorted(d.ns) for d in first) == [[0, 2, 4], [1, 3, 5]]
    store = w.store
    assert isinstance(store, RedisStore)
    member_a = json.dumps(["payments", 0, "", "a"], separators=(",", ":"))
    await until(lambda: _llen(store, store.batch_list(member_a), 1))
    assert await w.flush_batches() == 2
    done = await outputs(w, RPayBatch, 4)
    assert sorted(sorted(d.ns) for d in done) == [[0, 2, 4], [1, 3, 5], [6], [7]]
    assert sorted(f.partition for f in w.metrics().flushes) == ["a", "a", "b", "b"]
    await w.shutdown()


async def _llen(store: RedisStore, key: str, n: int) -> bool:
    return int(await store.client.llen(key)) == n


# -- failures, filters, unbatched runs ---------------------------------------------------------


async def test_a_raising_predicate_records_a_failure_and_filtered_items_are_not_consumed(redis_url: str) -> None:
    def picky(p: RPay) -> bool:
        if p.n == 3:
            raise ValueError("cannot judge 3")
        return p.n % 2 == 0

    w = worker(redis_url, size=2, where=picky)
    await w.start()
    store = w.store
    assert isinstance(store, RedisStore)
    published = await w.publish_many([RPay(n=n) for n in range(6)])
    done = await outputs(w, RPayBatch, 1)
    (failure,) = await outputs(w, FailureRecord, 1)
    assert failure.stage == "where" and failure.input_ids == [published[3].id] and "cannot judge 3" in failure.error
    await until(lambda: taken(store, RPay, "payments"))  # 4 waits in the open batch
    assert await w.flush_batches() == 1
    done = await outputs(w, RPayBatch, 2)
    assert sorted(n for d in done for n in d.ns) == [0, 2, 4]
    await w.shutdown()


async def test_engine_errors_become_failure_records_naming_every_input(redis_url: str) -> None:
    w = Flock(store=redis_url, env={})

    def broken(ctx, inputs):  # noqa: ANN001
        raise RuntimeError("provider down")

    w.agent("payments").consumes(RPay, batch=BatchSpec(size=3, timeout=timedelta(seconds=30))).publishes(
        RPayBatch
    ).with_engines(FunctionEngine(batch=broken))
    await w.start()
    published = await w.publish_many([RPay(n=n) for n in range(3)])
    (failure,) = await outputs(w, FailureRecord, 1)
    assert sorted(failure.input_ids) == sorted(a.id for a in published) and failure.batch_id
    await w.shutdown()


async def test_unbatched_subscriptions_run_each_item_once_across_workers(redis_url: str) -> None:
    def one(ctx, inputs):  # noqa: ANN001
        return EvalResult.from_object(RPayBatch(ns=[p.n for p in inputs.all_as(RPay)], reason="", batch_id=""))

    workers = []
    for _ in range(2):
        w = Flock(store=redis_url, env={})
        w.agent("each").consumes(RPay).publishes(RPayBatch).with_engines(FunctionEngine(item=one))
        await w.start()
        workers.append(w)
    await workers[0].publish_many([RPay(n=n) for n in range(30)])
    done = await outputs(workers[0], RPayBatch, 30)
    await until(lambda: taken(workers[0].store, RPay, "each"))  # type: ignore[arg-type]  # every run committed
    assert sorted(n for d in await workers[0].store.get_by_type(RPayBatch) for n in d.ns) == list(range(30))
    for w in workers:
        await w.shutdown()
    assert len(done) == 30


async def test_lookup_by_id_and_listing(redis_url: str) -> None:
    flock = Flock(store=redis_url, env={})
    async with flock:
        artifact = await flock.publish(RPay(n=7), tags={"vip"})
        found = await flock.store.get(artifact.id)
        assert found is not None and found.payload == RPay(n=7) and found.tags == {"vip"}
        assert await flock.store.get("no-such-id") is None
        assert [a.id for a in await flock.store.list()] == [artifact.id]


# -- redelivery and idempotence -----------------------------------------------------------------


async def test_a_batch_held_by_a_silent_worker_is_run_by_another_and_published_once(redis_url: str) -> None:
    release = asyncio.Event()

    async def hang(ctx, inputs):  # noqa: ANN001 - a worker that stalls in the middle of its run
        await release.wait()
        return RPayBatch(ns=[p.n for p in inputs.all_as(RPay)], reason="stale", batch_id=ctx.batch_id or "")

    stalled_engine = FunctionEngine(batch=hang)
    stalled = Flock(store=redis_url, env={})
    stalled.agent("payments").consumes(RPay, batch=BatchSpec(size=3, timeout=timedelta(seconds=30))).publishes(
        RPayBatch
    ).with_engines(stalled_engine)
    await stalled.start()
    await stalled.publish_many([RPay(n=n) for n in range(3)])
    await until(lambda: _truthy(stalled_engine.calls))
    stalled._runtime.intake._housekeeping.cancel()  # type: ignore[attr-defined]  # silent: no claim renewal
    started = time.monotonic()
    rescuer = worker(redis_url, size=3)
    await rescuer.start()
    (done,) = await outputs(rescuer, RPayBatch, 1)
    assert sorted(done.ns) == [0, 1, 2] and done.reason == "size"
    assert time.monotonic() - started >= 0.9  # claim_timeout=1 in the fixture's URL
    release.set()  # the stalled worker finishes too: its commit finds the batch done and publishes nothing
    await stalled.run_until_idle()
    assert [d.reason for d in await rescuer.store.get_by_type(RPayBatch)] == ["size"]
    assert done.batch_id == stalled_engine.calls[0].ctx.batch_id  # the same batch, run twice, published once
    for f in (rescuer, stalled):
        await f.shutdown()


async def _truthy(value: object) -> bool:
    return bool(value)


async def test_a_retried_publish_adds_nothing(redis_url: str) -> None:
    flock = Flock(store=redis_url, env={})
    async with flock:
        one = await flock.publish(RPay(n=1))
        store = flock.store
        assert isinstance(store, RedisStore)
        assert await store.publish([one]) == 0  # the same artifact again, as after a lost reply
        assert [a.id for a in await store.artifacts_by_type(RPay)] == [one.id]


async def test_publish_fails_clearly_when_redis_stays_away(private_redis: PrivateRedis) -> None:
    flock = Flock(store=private_redis.url + "?reconnect_timeout=0.3", env={})
    await flock.publish(RPay(n=1))
    private_redis.kill()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="was unreachable for 0.3 s") as caught:
        await flock.publish(RPay(n=2))
    assert time.monotonic() - started < 3 and "not done" in str(caught.value)
    private_redis.start()  # back (from its append-only file): the acknowledged publish is there, the failed one not
    assert [p.n for p in await flock.store.get_by_type(RPay)] == [1]
    await flock.shutdown()


async def test_a_partition_key_that_is_not_json_is_recorded_not_lost(redis_url: str) -> None:
    class Region:  # hashable, but no other process could rebuild it
        pass

    w = Flock(store=redis_url, env={})
    (
        w.agent("payments")
        .consumes(RPay, batch=BatchSpec(size=2, timeout=timedelta(seconds=30), by=lambda p: Region()))
        .publishes(RPayBatch)
        .with_engines(FunctionEngine(batch=summarize))
    )
    await w.start()
    published = await w.publish(RPay(n=1))
    (failure,) = await outputs(w, FailureRecord, 1)
    assert failure.stage == "batch_by" and failure.error_type == "TypeError" and failure.input_ids == [published.id]
    assert w.metrics().count("batch_key_errors") == 1
    await w.shutdown()


def test_passwords_are_redacted_from_store_urls() -> None:
    from flock_llm.stores.redis import redact_url

    assert redact_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("rediss://:pw@host/1?x=1") == "rediss://:***@host/1?x=1"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


async def test_retention_forgets_processed_artifacts_and_never_unprocessed_ones(redis_url: str) -> None:
    url = redis_url + "&retention=0.3"
    first = worker(url, size=2)
    await first.start()  # creates the consumer group, then leaves: nobody processes for a while
    await first.shutdown()
    producer = Flock(store=url, env={})
    published = await producer.publish_many([RPay(n=n) for n in range(4)])
    store = producer.store
    assert isinstance(store, RedisStore)
    assert await store.trim(0.001) == 0  # all past any retention, but never delivered: kept
    assert await store.count(RPay) == 4
    second = worker(url, size=2)
    await second.start()
    done = await outputs(second, RPayBatch, 2)
    assert sorted(n for d in done for n in d.ns) == [0, 1, 2, 3]
    await until(lambda: _count_is(store, RPay, 0), timeout=5)  # processed and older than 0.3 s: forgotten
    assert await store.get(published[0].id) is None
    assert await store.publish([published[0]]) == 1  # its id was forgotten with it
    for f in (second, producer):
        await f.shutdown()


async def _count_is(store: RedisStore, cls: type[BaseModel], n: int) -> bool:
    return await store.count(cls) == n


async def test_consumers_of_processes_that_left_are_forgotten(redis_url: str) -> None:
    leaver = worker(redis_url)
    await leaver.start()
    await leaver.publish_many([RPay(n=n) for n in range(5)])
    await outputs(leaver, RPayBatch, 1)
    store = leaver.store
    assert isinstance(store, RedisStore)
    gone = store.consumer
    await leaver.shutdown()
    stayer = worker(redis_url)
    await stayer.start()
    client = stayer.store.client  # type: ignore[attr-defined]
    stream, group = store.type_stream("RPay"), RedisStore.intake_group("payments", 0)
    assert [c["name"] for c in await client.xinfo_consumers(stream, group)] == [gone]

    async def forgotten() -> bool:
        return not await client.xinfo_consumers(stream, group)

    await until(forgotten, timeout=8)  # idle 3 x claim_timeout (1 s) with nothing pending
    await stayer.shutdown()


async def test_a_worker_shuts_down_in_bounded_time_while_redis_is_gone(private_redis: PrivateRedis) -> None:
    w = worker(private_redis.url + "?reconnect_timeout=0.5&claim_timeout=1&sweep_interval=0.2", size=2)
    await w.start()
    await w.publish(RPay(n=1))  # a batch is open in Redis
    private_redis.kill()
    await asyncio.sleep(0.3)  # loops and housekeeping are now failing and reconnecting
    started = time.monotonic()
    await asyncio.wait_for(w.shutdown(), timeout=10)
    assert time.monotonic() - started < 5
    private_redis.start()  # the open batch is still there for the next worker
    again = worker(private_redis.url + "?claim_timeout=1&sweep_interval=0.2", size=2)
    await again.start()
    await again.publish(RPay(n=2))
    (done,) = await outputs(again, RPayBatch, 1)
    assert sorted(done.ns) == [1, 2]
    await again.shutdown()


async def test_batch_stats_shows_the_shared_batches_read_from_redis(redis_url: str) -> None:
    filler = worker(redis_url, size=25, timeout=timedelta(seconds=30))
    await filler.start()
    await filler.publish_many([RPay(n=n) for n in range(4)])
    observer = worker(redis_url, size=25, timeout=timedelta(seconds=30))  # fed none of them itself
    await observer.start()

    async def seen() -> bool:
        return any(s.pending == 4 for s in observer.batch_stats())

    await until(seen)  # refreshed every sweep_interval (0.2 s here)
    (stats,) = observer.batch_stats()
    assert (stats.agent, stats.subscription_index, stats.partition, stats.pending) == ("payments", 0, None, 4)
    assert stats.flush_in_s is not None and 25 < stats.flush_in_s <= 30 and stats.oldest_age_s < 5
    for flock in (observer, filler):
        await flock.shutdown()


class _Weighed(FunctionEngine):
    """Counts an RPay's `n` as its tokens."""

    def item_tokens(self, ctx, artifact):  # noqa: ANN001, ANN201 - the Engine hook
        return int(artifact.payload.n)


async def test_token_budgets_are_kept_atomically_in_redis_across_workers(redis_url: str) -> None:
    """BatchSpec(max_tokens=) on the shared store: the ADD script keeps each batch's running token sum, flushes
    before an item that would pass it, and sends an item alone over it by itself; for a gate, a set's tokens."""
    workers = []
    for _ in range(2):
        flock = Flock(store=redis_url, env={})
        (
            flock.agent("payments")
            .consumes(RPay, batch=BatchSpec(timeout=timedelta(seconds=30), max_tokens=100))
            .publishes(RPayBatch)
            .with_engines(_Weighed(batch=summarize))
        )
        await flock.start()
        workers.append(flock)
    producer = Flock(store=redis_url, env={})
    sizes = [40, 50, 20, 250, 30, 70, 1]
    store = producer.store
    assert isinstance(store, RedisStore)
    for n in sizes:  # one at a time, each added before the next, so the order (and so the sums) is fixed
        await producer.publish(RPay(n=n))
        await until(lambda: taken(store, RPay, "payments"))
    done = await outputs(producer, RPayBatch, 4)
    batches = sorted((d.ns for d in done), key=lambda ns: sizes.index(ns[0]))
    assert batches == [[40, 50], [20], [250], [30, 70]] and {d.reason for d in done} == {"tokens"}
    flushes = sorted(f.tokens for w in workers for f in w.metrics().flushes)
    assert flushes == [20, 90, 100, 250]
    assert await workers[1].flush_batches() == 1  # the 1 left waits in Redis for its timeout; flushed by hand
    last = await outputs(producer, RPayBatch, 5)
    assert [d.ns for d in last if d.reason == "manual"] == [[1]]
    for flock in workers:
        await flock.shutdown()
    await producer.shutdown()


async def test_a_gate_sets_tokens_count_against_the_shared_batch_budget(redis_url: str) -> None:
    gate = Flock(store=redis_url, env={})
    (
        gate.agent("gate")
        .consumes(RPay, RPayGate, batch=BatchSpec(timeout=timedelta(seconds=30), max_tokens=30))
        .publishes(RPayBatch)
        .with_engines(_Weighed(batch=lambda ctx, inputs: RPayBatch(ns=[len(inputs)], reason="", batch_id="")))
    )
    await gate.start()
    store = gate.store
    assert isinstance(store, RedisStore)
    for n in (10, 15, 8):  # sets of 10+10, 15+15, 8+8 tokens (an RPayGate counts its n too)
        await gate.publish(RPay(n=n))
        await gate.publish(RPayGate(n=n))
        await until(lambda: _gate_taken(store))  # each set placed before the next one comes
    await until(lambda: _gate_flushes(gate, 2))
    # 20, then 30 would pass 30: the first set goes; 30 reaches the budget: it goes; the 8+8 set waits
    assert [(f.batch_size, f.tokens, f.reason) for f in gate.metrics().flushes] == [
        (1, 20, "tokens"),
        (1, 30, "tokens"),
    ]
    await gate.shutdown()


async def _gate_taken(store: RedisStore) -> bool:
    return await taken(store, RPay, "gate") and await taken(store, RPayGate, "gate")


async def _gate_flushes(flock: Flock, n: int) -> bool:
    return len(flock.metrics().flushes) >= n


async def test_a_token_window_in_redis_is_shared_by_worker_processes(redis_url: str) -> None:
    """Two workers' engines share one tokens-per-minute window: what one took, the other waits for; a settled
    entry holds the real usage."""
    workers = [Flock(store=redis_url, env={}), Flock(store=redis_url, env={})]
    for flock in workers:
        await flock.start()
    windows = []
    for flock in workers:
        store = flock.store
        assert isinstance(store, RedisStore)
        windows.append(store.rate_windows().window("openai/x:tokens", 1_000))
    first = await windows[0].acquire(600)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(windows[1].acquire(600), timeout=0.3)  # 1,200 would pass 1,000
    await windows[0].settle(first, 300)  # it really took 300
    await asyncio.wait_for(windows[1].acquire(600), timeout=2.0)  # 900 fits
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(windows[0].acquire(200), timeout=0.3)
    for flock in workers:
        await flock.shutdown()


async def test_the_batch_job_journal_in_redis_is_seen_by_every_worker(redis_url: str) -> None:
    """A job recorded by one worker before submission is found by another (a restarted process) by request id."""
    workers = [Flock(store=redis_url, env={}), Flock(store=redis_url, env={})]
    for flock in workers:
        await flock.start()
    first, second = (flock.store.job_journal() for flock in workers)  # type: ignore[attr-defined]
    await first.begin("job-1", ["req-a", "req-b"])
    assert await second.job_of("req-a") == JobRecord("job-1")
    await first.submitted("job-1", file_id="file-9")
    await first.submitted("job-1", batch_id="batch_7")
    assert await second.job_of("req-b") == JobRecord("job-1", "file-9", "batch_7")
    await second.forget(["req-a"])
    assert await first.job_of("req-a") is None and await first.job_of("nope") is None
    for flock in workers:
        await flock.shutdown()
