"""A blackboard shared by many processes, in Redis Streams.

    Flock(store="redis://127.0.0.1:6379/0")                  # every worker process, same agents
    Flock(store="redis://host:6379/0?namespace=reviews&claim_timeout=30")

Published artifacts go to one stream per type; each (agent, subscription) reads them through its own
consumer group, so every item reaches exactly one worker process at a time. Batches accumulate in
Redis, shared by all processes, and the Lua scripts in `_redis_scripts` decide flushes atomically on
the server. Flushed batches wait in a ready stream per (agent, subscription) until a worker with a
free slot takes them; a worker that dies mid-run loses its claim after `claim_timeout` and another
worker runs the batch again. A run's outputs are published in the same script that acknowledges its
batch, so a batch run twice publishes once.

Requires redis-py (`pip install 'flock_llm[redis]'`) and Redis >= 6.2. With `appendonly yes` and
`appendfsync always`, whatever `publish()` acknowledged survives a crash of Redis itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from .._runtime.ledger import Receipt, Unit
from ..artifact import Artifact, FailureRecord
from ..errors import ConfigurationError, StoreError, StoreUnavailableError
from ..registry import type_name_of
from . import redis_scripts as scripts
from .codec import artifact_from_json, artifact_to_json

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .._runtime.core import Runtime
    from .redis_intake import RedisWorker

__all__ = ["Receipt", "RedisStore"]

log = logging.getLogger("flock_llm.store")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

READY_GROUP = "workers"
_SECRET_PARAMETER = re.compile(r"pass|secret|token|auth|key", re.IGNORECASE)
_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_PUBLISH_CHUNK = 500
DEFAULT_MAX_ARTIFACT_BYTES = 256 * 1024
READ_BUDGET_BYTES = 128 * 1024 * 1024


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


_OUR_PARAMETERS: dict[str, Callable[[str], Any]] = {
    "namespace": str,
    "claim_timeout": float,
    "sweep_interval": float,
    "reconnect_timeout": float,
    "retention": float,
    "cluster": _flag,
    "max_artifact_bytes": int,
}


def glob_escape(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def redact_url(url: str) -> str:
    """The URL without its credentials (userinfo password, and query parameters such as `password=`), for
    messages, logs and `repr`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{port}" if port else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_PARAMETER.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def connection_errors() -> tuple[type[Exception], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError)


class RedisStore:
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

    durable = True
    distributed = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "flock",
        claim_timeout: float = 30.0,
        sweep_interval: float = 1.0,
        reconnect_timeout: float = 30.0,
        retention: float | timedelta | None = None,
        cluster: bool = False,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(f"store URL must look like 'redis://host:6379/0', got {redact_url(str(url))!r}")
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ConfigurationError(
                "`namespace` must be 1 to 64 characters of letters, digits, '_', '-' and '.', got "
                f"{namespace!r}; glob characters such as * ? [ ] would let one namespace's clean-up match another's"
            )
        if isinstance(retention, timedelta):
            retention = retention.total_seconds()
        for name, value in (
            *((("retention", retention),) if retention is not None else ()),
            ("claim_timeout", claim_timeout),
            ("sweep_interval", sweep_interval),
            ("reconnect_timeout", reconnect_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"`{name}` must be a positive number of seconds, got {value!r}")
        self.url = url
        self.namespace = namespace
        self.claim_timeout = float(claim_timeout)
        self.sweep_interval = float(sweep_interval)
        self.reconnect_timeout = float(reconnect_timeout)
        self.retention: float | None = None if retention is None else float(retention)
        self.cluster = bool(cluster)
        if isinstance(max_artifact_bytes, bool) or not isinstance(max_artifact_bytes, int) or max_artifact_bytes < 1024:
            raise ConfigurationError(f"`max_artifact_bytes` must be an integer >= 1024, got {max_artifact_bytes!r}")
        self.max_artifact_bytes = max_artifact_bytes
        self.read_count = max(1, min(500, READ_BUDGET_BYTES // max_artifact_bytes))
        """Entries per stream read: at most READ_BUDGET_BYTES of artifacts come back from one read."""
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        """This process's consumer name in every group."""
        self._prefix = "{" + namespace + "}:"
        self._client: Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self.on_committed: Callable[[Receipt], None] | None = None
        """Called (by the worker) once a unit with a receipt was committed, or given up at shutdown."""

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store from a URL whose query may also set namespace, claim_timeout, sweep_interval, reconnect_timeout
        and retention (seconds)."""
        parts = urlsplit(url)
        ours: dict[str, Any] = {}
        rest = []
        for name, value in parse_qsl(parts.query):
            if name in _OUR_PARAMETERS:
                try:
                    ours[name] = _OUR_PARAMETERS[name](value)
                except ValueError:
                    raise ConfigurationError(f"`{name}` in the store URL must be a number, got {value!r}") from None
            else:
                rest.append((name, value))
        return cls(urlunsplit(parts._replace(query=urlencode(rest))), **ours)

    def __repr__(self) -> str:
        return f"RedisStore({redact_url(self.url)!r}, namespace={self.namespace!r})"

    def _redact(self, text: str) -> str:
        """`text` without any credential of this store's URL (a client error may quote the URL)."""
        parts = urlsplit(self.url)
        secrets = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if _SECRET_PARAMETER.search(k)]
        for secret in sorted(filter(None, secrets), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text.replace(self.url, redact_url(self.url))

    # -- keys ----------------------------------------------------------------------------

    def type_stream(self, type_name: str) -> str:
        return f"{self._prefix}t:{type_name}"

    def batch_list(self, member: str) -> str:
        return f"{self._prefix}b:{member}"

    def ready_stream(self, agent: str, sub: int, identity: str = "") -> str:
        """Flushed batches of an (agent, subscription) as defined with one identity (tenant and labels)."""
        return f"{self._prefix}r:{json.dumps([agent, sub, identity] if identity else [agent, sub])}"

    @staticmethod
    def intake_group(agent: str, sub: int) -> str:
        return json.dumps([agent, sub])

    def key(self, name: str) -> str:
        """ids, deadlines, opened or seq."""
        return self._prefix + name

    async def keys_under(self, prefix: str) -> list[str]:
        """Every key starting with `prefix` (matched literally: glob characters in it are escaped)."""
        return [key async for key in self.client.scan_iter(match=glob_escape(prefix) + "*", count=1_000)]

    # -- connection ----------------------------------------------------------------------

    @property
    def client(self) -> Any:  # redis.asyncio.Redis (decode_responses=True: replies are str)
        if self._client is None:
            raise StoreUnavailableError("the Redis store is not connected yet; `await flock.start()` first")
        return self._client

    def script(self, name: str) -> Any:
        return self._scripts[name]

    async def connect(self) -> None:
        """Open the client and check that Redis answers.

        Raises:
            StoreUnavailableError: Redis cannot be reached (the message names the URL without its password).
            ConfigurationError: redis-py is not installed, or the server is older than Redis 6.2.
        """
        if self._client is not None:
            return
        try:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisClusterException
        except ImportError:
            raise ConfigurationError("the Redis store needs redis-py: pip install 'flock_llm[redis]'") from None
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 2.0,
            "socket_timeout": 10.0,
            "retry": Retry(NoBackoff(), 0),  # we retry ourselves, only where a retry is idempotent
        }
        client: Any = None
        try:
            if self.cluster:
                from redis.asyncio.cluster import RedisCluster

                client = RedisCluster.from_url(self.url, **options)
                await client.initialize()
                info = await client.info("server", target_nodes=RedisCluster.RANDOM)
            else:
                client = Redis.from_url(self.url, **options)
                info = await client.info("server")
        except (*connection_errors(), RedisClusterException) as exc:  # type: ignore[misc]
            if client is not None:
                await client.aclose()
            raise StoreUnavailableError(
                f"cannot reach Redis at {redact_url(self.url)}: {self._redact(str(exc))}"
            ) from None
        version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2] if p.isdigit())
        if version < (6, 2):
            await client.aclose()
            raise ConfigurationError(f"the Redis store needs Redis >= 6.2 (XAUTOCLAIM); the server is {version!r}")
        self._client = client
        for name in ("PUBLISH", "ADD", "FLUSH", "DUE", "COMMIT", "TRIM", "FORGET_CONSUMERS"):
            self._scripts[name] = client.register_script(getattr(scripts, name))

    async def retrying(self, operation: Callable[[], Awaitable[T]], *, limit: float | None) -> T:
        """Run an idempotent operation, reconnecting with backoff for `limit` seconds (None: until cancelled).

        Raises:
            StoreUnavailableError: Redis stayed unreachable for `limit` seconds.
        """
        attempts = AsyncRetrying(
            stop=stop_never if limit is None else stop_after_delay(limit),
            wait=wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.05),
            retry=retry_if_exception_type(connection_errors()),
            before_sleep=_log_reconnect,
            reraise=True,
        )
        try:
            async for attempt in attempts:
                with attempt:
                    return await operation()
        except connection_errors() as exc:
            raise StoreUnavailableError(
                f"Redis at {redact_url(self.url)} was unreachable for {limit:g} s: {self._redact(str(exc))}; "
                "the operation was not done"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying either returns or raises

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
        args = [receipt.group, receipt.entry_id, "1" if receipt.delete else "0", *_id_json_pairs(outputs)]
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
        """A run's output, or, when it is over `max_artifact_bytes`, a failure record in its place (derived
        from and as visible as the output, so its inputs stay accounted for and private)."""
        size = len(artifact_to_json(output).encode())
        if size <= self.max_artifact_bytes:
            return output
        log.error(
            "agent %r produced a %s of %d bytes, over max_artifact_bytes", output.produced_by, output.type_name, size
        )
        record = FailureRecord(
            agent=output.produced_by or "",
            input_ids=list(output.derived_from),
            stage="output",
            error_type="ArtifactTooLarge",
            error=f"a {output.type_name} of {size:,} bytes is over the store's max_artifact_bytes "
            f"({self.max_artifact_bytes:,})",
        )
        return replace(output, type_name=type_name_of(FailureRecord), payload=record)

    async def publish(self, artifacts: Sequence[Artifact]) -> int:
        """Publish artifacts (each at most once, by id); returns how many were new."""
        if not artifacts:
            return 0
        keys = [self.key("ids"), *(self.type_stream(a.type_name) for a in artifacts)]
        args = _id_json_pairs(artifacts)
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
        """Forget artifacts older than `retention` seconds that every consumer group is done with.

        The bound for each type stream is the oldest of: the cut-off time, the entry after each group's
        last delivered one, and each group's oldest unacknowledged one; groups only move forward, so a
        bound computed now stays safe. Returns how many artifacts were forgotten.
        """
        seconds, micros = await self.client.time()
        cutoff = (int(seconds) * 1000 + int(micros) // 1000 - int(retention * 1000), 0)
        streams = await self.keys_under(self.type_stream(""))
        forgotten = 0
        for stream in streams:
            bound = cutoff
            for group in await self.client.xinfo_groups(stream):
                delivered = _entry_id(group["last-delivered-id"])
                bound = min(bound, (delivered[0], delivered[1] + 1))  # undelivered entries stay
                if group["pending"]:
                    oldest = (await self.client.xpending(stream, group["name"]))["min"]
                    bound = min(bound, _entry_id(oldest))  # unacknowledged ones too
            while True:
                removed = int(
                    await self.script("TRIM")(keys=[stream, self.key("ids")], args=[f"{bound[0]}-{bound[1]}", 500])
                )
                forgotten += removed
                if removed < 500:
                    break
        return forgotten

    def add(self, artifact: Artifact) -> None:
        """Unused: the Redis store is written in units (a publish, a run's end), never one artifact at a time."""
        raise StoreError("the Redis store is written in units (Flock.publish), not with add()")

    def intake(self, runtime: Runtime) -> RedisWorker:
        """This process's part in the shared blackboard: it reads deliveries, fills shared batches and runs them."""
        from .redis_intake import RedisWorker

        return RedisWorker(runtime, self)

    async def settle(self) -> bool:
        """Wait (up to `reconnect_timeout`) until the writes in flight are applied or failed; False if some
        are still retrying (Redis unreachable): they go on in the background."""
        deadline = asyncio.get_running_loop().time() + self.reconnect_timeout
        while self._writes:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            await asyncio.wait(list(self._writes), timeout=remaining)
        return True

    async def aclose(self) -> None:
        """Wait (up to `reconnect_timeout`) for the writes in flight, then close the connection.

        A run whose commit could not be applied stays unacknowledged in Redis: another worker runs it again.
        """
        if self._writes:
            _, unfinished = await asyncio.wait(list(self._writes), timeout=self.reconnect_timeout)
            for task in unfinished:
                task.cancel()
            if unfinished:
                log.warning(
                    "%d commits could not reach Redis; their batches will be run again elsewhere", len(unfinished)
                )
                await asyncio.gather(*unfinished, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

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
        from ..registry import resolve_type

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


def _entry_id(text: str) -> tuple[int, int]:
    """A stream entry id ("1700000000000-3") as a comparable pair."""
    ms, _, seq = str(text).partition("-")
    return int(ms), int(seq or 0)


def _id_json_pairs(artifacts: Iterable[Artifact]) -> list[str]:
    pairs: list[str] = []
    for a in artifacts:
        pairs.append(a.id)
        pairs.append(artifact_to_json(a))
    return pairs


def _log_reconnect(state: Any) -> None:
    if state.attempt_number in (1, 10) or state.attempt_number % 50 == 0:
        log.warning(
            "Redis unreachable (%s); reconnecting (attempt %d)",
            type(state.outcome.exception()).__name__,
            state.attempt_number,
        )
