"""Small pure pieces of the Redis store: URL options and redaction, pattern escaping, entry ids."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Hashable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...artifact import Artifact
from ...visibility import PrivateVisibility, Visibility, visibility_from_dict
from ..codec import artifact_to_json

log = logging.getLogger("flock_llm.store")

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


def entry_id(text: str) -> tuple[int, int]:
    """A stream entry id ("1700000000000-3") as a comparable pair."""
    ms, _, seq = str(text).partition("-")
    return int(ms), int(seq or 0)


def id_json_pairs(artifacts: Iterable[Artifact]) -> list[str]:
    pairs: list[str] = []
    for a in artifacts:
        pairs.append(a.id)
        pairs.append(artifact_to_json(a))
    return pairs


def log_reconnect(state: Any) -> None:
    if state.attempt_number in (1, 10) or state.attempt_number % 50 == 0:
        log.warning(
            "Redis unreachable (%s); reconnecting (attempt %d)",
            type(state.outcome.exception()).__name__,
            state.attempt_number,
        )


def member_of(agent: str, sub: int, identity: str, partition: Hashable | None, partitioned: bool) -> str:
    """The shared batch's name: JSON of [agent, subscription, identity, partition?] (so any process can
    rebuild it). Processes that define one agent with different tenants or labels (mid-deploy) fill
    different batches, so no batch holds an artifact its runner may not see.

    Raises:
        TypeError: the partition key is not a JSON value.
    """
    key = [agent, sub, identity, partition] if partitioned else [agent, sub, identity]
    return json.dumps(key, separators=(",", ":"))


async def finish_tasks(tasks: list[asyncio.Task[Any]], timeout: float) -> None:
    """Wait for tasks that end on a flag; cancel those still running after `timeout` (stuck in a call)."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=timeout)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=1.0)


def hashable(value: Any) -> Any:
    """A partition key read back from JSON (lists become tuples, as `by=` keys are hashable)."""
    return tuple(hashable(v) for v in value) if isinstance(value, list) else value


def stream_entries(replies: Any) -> list[tuple[str, list[Any]]]:
    """XREADGROUP's reply as (stream, entries), under RESP2 (a list) or RESP3 (a dict)."""
    if not replies:
        return []
    if isinstance(replies, dict):
        return [
            (stream, found[0] if found and isinstance(found[0], list) else found) for stream, found in replies.items()
        ]
    return [(stream, entries) for stream, entries in replies]


def visibility_of(doc: str, agent: str) -> Visibility:
    """The visibility stored in an artifact's JSON row; private to `agent` when even that cannot be read."""
    try:
        return visibility_from_dict(json.loads(json.loads(doc)[7]))
    except Exception:  # noqa: BLE001 - corrupt data of any shape: fall back to the most restrictive choice
        return PrivateVisibility(agents=[agent])


def id_of(doc: str) -> str:
    try:
        return str(json.loads(doc)[0])
    except (ValueError, IndexError, KeyError, TypeError):
        return "?"
