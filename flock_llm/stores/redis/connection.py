"""The Redis store's settings, key layout and connection (with reconnecting retries, and the writes in flight);
`RedisStore` adds writing and reading on top, and every helper of the package works through this class."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from ..._redaction import register_secrets
from ..._runtime.ledger import Receipt
from ...errors import ConfigurationError, StoreUnavailableError
from . import scripts
from .support import (
    _NAMESPACE,
    _OUR_PARAMETERS,
    _SECRET_PARAMETER,
    DEFAULT_MAX_ARTIFACT_BYTES,
    READ_BUDGET_BYTES,
    connection_errors,
    glob_escape,
    log_reconnect,
    redact_url,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisConnection"]

log = logging.getLogger("flock_llm.store")

T = TypeVar("T")


class RedisConnection:
    """The settings, key layout and connection of a Redis store (the arguments are `RedisStore`'s)."""

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
        register_secrets(self, self._secrets())  # masked in the logs of redis-py, litellm, ... while this lives
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
    def from_url(cls, url: str) -> Self:
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
        return f"{type(self).__name__}({redact_url(self.url)!r}, namespace={self.namespace!r})"

    def _redact(self, text: str) -> str:
        """`text` without any credential of this store's URL (a client error may quote the URL)."""
        for secret in sorted(filter(None, self._secrets()), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text.replace(self.url, redact_url(self.url))

    def _secrets(self) -> list[str]:
        """The credentials in this store's URL: its password and query parameters such as `password=`."""
        parts = urlsplit(self.url)
        return [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if _SECRET_PARAMETER.search(k)]

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
        return str(json.dumps([agent, sub]))

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
        for name in scripts.__all__:
            self._scripts[name] = client.register_script(getattr(scripts, name))

    # -- writes in flight ---------------------------------------------------------------

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

    async def retrying(self, operation: Callable[[], Awaitable[T]], *, limit: float | None) -> T:
        """Run an idempotent operation, reconnecting with backoff for `limit` seconds (None: until cancelled).

        Raises:
            StoreUnavailableError: Redis stayed unreachable for `limit` seconds.
        """
        attempts = AsyncRetrying(
            stop=stop_never if limit is None else stop_after_delay(limit),
            wait=wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.05),
            retry=retry_if_exception_type(connection_errors()),
            before_sleep=log_reconnect,
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
