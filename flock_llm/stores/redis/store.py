"""`RedisStore`: the Redis store's face. Writing (units, publishes) and reading (by type, by id) here; the
connection, key layout and in-flight writes in `connection`; each worker process's part in `intake`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from ..._runtime.ledger import Receipt, Unit
from ..._runtime.outcomes import oversized_output
from ...artifact import Artifact
from ...errors import ConfigurationError, StoreError, StoreUnavailableError
from ...registry import resolve_type, type_name_of
from ..codec import artifact_from_json, artifact_to_json
from .connection import RedisConnection
from .intake import RedisWorker
from .journal import RedisJournal
from .rate import RedisWindows
from .retention import trim
from .sizes import RedisSizeStates
from .support import (
    READY_GROUP,
    connection_errors,
    glob_escape,
    id_json_pairs,
    redact_url,
)

if TYPE_CHECKING:
    from ..._runtime.ports import IntakeServices

__all__ = ["READY_GROUP", "Receipt", "RedisStore", "connection_errors", "glob_escape", "redact_url"]

log = logging.getLogger("flock_llm.store")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_PUBLISH_CHUNK = 500


class RedisStore(RedisConnection):
    """Artifacts, shared batches and run receipts in Redis; nothing is kept in process memory.

    Args:
        url: a redis-py URL ("redis://host:port/db", "rediss://..." for TLS, "unix:///path.sock").
        namespace: keeps several blackboards apart in one Redis (all keys are under `{namespace}:`).
        claim_timeout: seconds after which a batch or item held by a silent worker goes to another one.
            Live workers renew their claims, so it only needs to exceed a stall, not a run.
        sweep_interval: how often each worker looks for expired batches opened by other (perhaps dead)
            workers; batches opened by a live worker flush at their deadline regardless.
        reconnect_timeout: how long `publish()` keeps reconnecting before it raises StoreUnavailableError
            (workers' loops keep reconnecting until shut down).
        retention: seconds (or a timedelta) to keep artifacts; None (default) keeps them all. Older
            artifacts are forgotten once every consumer group has processed them (never before), so
            `get_by_type()` then shows the retained window only.
        cluster: the URL names a node of a Redis Cluster (all of a namespace's keys share one slot).
        max_artifact_bytes: the largest artifact (as stored JSON) `publish()` accepts (default 256 KiB); a
            larger one is refused with a ConfigurationError, and an agent output over it becomes a failure
            record. Reads are sized by it: one read pulls at most `READ_BUDGET_BYTES` (128 MiB).
    """

    # -- writing -------------------------------------------------------------------------

    def write(self, unit: Unit) -> asyncio.Future[None]:
        """Publish a unit's artifacts (and acknowledge its receipt); the future resolves once Redis applied it."""
        task = asyncio.get_running_loop().create_task(self._write(unit))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    async def _write(self, unit: Unit) -> None:
        try:
            await self._apply(unit)
        except (StoreUnavailableError, ConfigurationError):
            raise  # the publisher gets it
        except Exception as exc:  # nobody may await a run's commit: say it here, then raise for whoever does
            log.error("writing to Redis failed: %s: %s", type(exc).__name__, exc)
            raise

    async def _apply(self, unit: Unit) -> None:
        receipt: Receipt | None = unit.receipt
        if receipt is None:
            for start in range(0, len(unit.artifacts), _PUBLISH_CHUNK):
                await self.publish(unit.artifacts[start : start + _PUBLISH_CHUNK])
            return
        # outputs get ids derived from the run's receipt, so a run done twice names its outputs the same
        outputs = [
            replace(self._fitting(a), id=uuid.uuid5(uuid.NAMESPACE_URL, f"{receipt.stream}/{receipt.entry_id}/{n}").hex)
            for n, a in enumerate(unit.artifacts)
        ]
        keys = [receipt.stream, self.key("ids"), *(self.type_stream(a.type_name) for a in outputs)]
        args = [receipt.group, receipt.entry_id, "1" if receipt.delete else "0", *id_json_pairs(outputs)]
        try:
            added = await self.retrying(lambda: self.script("COMMIT")(keys=keys, args=args), limit=None)
        finally:
            if self.on_committed is not None:
                self.on_committed(receipt)
        if added == -1:
            log.info(
                "entry %s of %s was committed by another worker; this run's outputs were dropped",
                receipt.entry_id,
                receipt.stream,
            )

    def _fitting(self, output: Artifact) -> Artifact:
        """A run's output, or, when it is over `max_artifact_bytes`, a failure record in its place."""
        size = len(artifact_to_json(output).encode())
        if size <= self.max_artifact_bytes:
            return output
        log.error(
            "agent %r produced a %s of %d bytes, over max_artifact_bytes", output.produced_by, output.type_name, size
        )
        return oversized_output(output, size, self.max_artifact_bytes)

    async def publish(self, artifacts: Sequence[Artifact]) -> int:
        """Publish artifacts (each at most once, by id); returns how many were new."""
        if not artifacts:
            return 0
        keys = [self.key("ids"), *(self.type_stream(a.type_name) for a in artifacts)]
        args = id_json_pairs(artifacts)
        for artifact, doc in zip(artifacts, args[1::2], strict=True):
            if len(doc.encode()) > self.max_artifact_bytes:
                raise ConfigurationError(
                    f"a {artifact.type_name} of {len(doc.encode()):,} bytes (artifact {artifact.id}) is over the "
                    f"Redis store's `max_artifact_bytes` ({self.max_artifact_bytes:,}); nothing was published: "
                    "publish smaller objects or raise the limit"
                )
        added: int = await self.retrying(
            lambda: self.script("PUBLISH")(keys=keys, args=args), limit=self.reconnect_timeout
        )
        return added

    async def trim(self, retention: float) -> int:
        """Forget artifacts older than `retention` seconds that every consumer group is done with (see
        `redis_retention.trim`). Returns how many artifacts were forgotten."""
        return await trim(self, retention)

    def add(self, artifact: Artifact) -> None:
        """Unused: the Redis store is written in units (a publish, a run's end), never one artifact at a time."""
        raise StoreError("the Redis store is written in units (Flock.publish), not with add()")

    def intake(self, services: IntakeServices) -> RedisWorker:
        """This process's part in the shared blackboard: it reads deliveries, fills shared batches and runs them."""
        return RedisWorker(services, self)

    def job_journal(self) -> RedisJournal:
        """Provider batch jobs (`LLMEngine(tier="batch")`), recorded in Redis before they are submitted."""
        return RedisJournal(self)

    def size_states(self) -> RedisSizeStates:
        """Batch-size controller states (`BatchSpec(quality=)`), one per agent subscription, shared by every worker
        process of this store (a compare-and-set script: concurrent changes are not lost)."""
        return RedisSizeStates(self)

    def rate_windows(self) -> RedisWindows:
        """Per-minute limits (`LLMEngine(tokens_per_minute=)`) shared by every worker process of this store."""
        return RedisWindows(self)

    # -- reading -------------------------------------------------------------------------

    async def artifacts_by_type(self, cls: type[BaseModel]) -> list[Artifact]:
        """Every artifact of type `cls`, with lineage and visibility, oldest first."""
        stream = self.type_stream(type_name_of(cls))
        found: list[Artifact] = []
        start = "-"
        while True:
            entries = await self.retrying(
                partial(self.client.xrange, stream, start, "+", count=5_000), limit=self.reconnect_timeout
            )
            found.extend(artifact_from_json(fields["a"]) for _, fields in entries)
            if len(entries) < 5_000:
                return found
            start = "(" + entries[-1][0]

    async def get_by_type(self, cls: type[M]) -> list[M]:
        """Every published object of type `cls`, as model instances, oldest first."""
        return [a.payload for a in await self.artifacts_by_type(cls) if isinstance(a.payload, cls)]

    async def count(self, cls: type[BaseModel]) -> int:
        """How many artifacts of type `cls` were published (one round trip)."""
        n: int = await self.retrying(
            lambda: self.client.xlen(self.type_stream(type_name_of(cls))), limit=self.reconnect_timeout
        )
        return n

    async def get(self, artifact_id: str) -> Artifact | None:
        """The artifact with this id, read from Redis, or None (never published, or past the retention)."""
        where = await self.retrying(
            lambda: self.client.hget(self.key("ids"), artifact_id), limit=self.reconnect_timeout
        )
        if where is None:
            return None
        stream, entry = str(where).rsplit(" ", 1)
        entries = await self.client.xrange(stream, entry, entry)
        return artifact_from_json(entries[0][1]["a"]) if entries else None

    async def list(self) -> list[Artifact]:
        """Every artifact of the registered types, type by type, oldest first within a type."""
        prefix = self.type_stream("")
        names = sorted(key[len(prefix) :] for key in await self.keys_under(prefix))
        found: list[Artifact] = []
        for name in names:
            try:
                cls = resolve_type(name)
            except ConfigurationError:
                log.warning("Redis holds artifacts of type %r, which is not registered here; skipped", name)
                continue
            found.extend(await self.artifacts_by_type(cls))
        return found
