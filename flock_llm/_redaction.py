"""Registered secrets are masked in the log records of the libraries flock_llm drives.

flock_llm keeps API keys, gateway header values and Redis passwords out of its own messages, but with logging
at DEBUG litellm prints whole requests (`extra_headers` included), and httpx, httpcore, openai and DSPy log
what they send. While secrets are registered (by each LLM engine for its keys and headers, and by each Redis
store for its password), every record of those loggers (and of their children) is masked as it is created:
each registered secret, and the password of any `scheme://user:password@host` URL, becomes `***` in the
message and in a logged traceback. A record factory does it rather than a filter on each logger, because a
filter on "dspy" does not see the records of "dspy.clients.lm", and libraries create their loggers on import.
`SecretFilter` does the same for a handler or logger of your own.

Registration is counted: a secret stays masked until every owner that registered it is gone.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["WATCHED_LOGGERS", "SecretFilter", "mask", "register_secrets", "registered_secrets"]

WATCHED_LOGGERS = (
    "LiteLLM",
    "LiteLLM Proxy",
    "LiteLLM Router",
    "litellm",
    "dspy",
    "httpx",
    "httpcore",
    "openai",
    "aiohttp",
    "redis",
    "flock_llm",
)
"""Loggers (with their children) whose records are masked while secrets are registered."""

_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*:)([^\s@/'\"]+)(@)")
_lock = threading.Lock()
_secrets: Counter[str] = Counter()
_ordered: tuple[str, ...] = ()
_previous_factory: Callable[..., logging.LogRecord] | None = None


def registered_secrets() -> tuple[str, ...]:
    """The secrets masked now, longest first."""
    return _ordered


def mask(text: str) -> str:
    """`text` with every registered secret and every URL password replaced by `***`."""
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1***\3", text)


def register_secrets(owner: object, secrets: Iterable[str]) -> None:
    """Mask `secrets` in the watched loggers' records for as long as `owner` lives (values shorter than 4
    characters are ignored: masking them would mangle ordinary text)."""
    values = sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4})
    if not values:
        return
    with _lock:
        _secrets.update(values)
        _reorder()
        _install()
    weakref.finalize(owner, _unregister, tuple(values))


def _unregister(values: tuple[str, ...]) -> None:
    with _lock:
        _secrets.subtract(values)
        for value in values:
            if _secrets[value] <= 0:
                del _secrets[value]
        _reorder()
        if not _secrets:
            _uninstall()


def _reorder() -> None:
    global _ordered
    _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def _watched(name: str) -> bool:
    return any(name == watched or name.startswith(watched + ".") for watched in WATCHED_LOGGERS)


def _mask_record(record: logging.LogRecord) -> None:
    """Mask the record's message (formatted now, with its arguments) and its traceback, if they hold a secret."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed log call (bad %-arguments): logging reports it itself
        return
    masked = mask(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        masked = mask(text)
        if masked != text:
            record.exc_text = masked
    if record.stack_info:
        record.stack_info = mask(record.stack_info)


def _factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _previous_factory is not None
    record = _previous_factory(*args, **kwargs)
    if _ordered and _watched(record.name):
        _mask_record(record)
    return record


def _install() -> None:
    global _previous_factory
    if _previous_factory is None:
        _previous_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_factory)


def _uninstall() -> None:
    global _previous_factory
    if _previous_factory is not None and logging.getLogRecordFactory() is _factory:
        logging.setLogRecordFactory(_previous_factory)
        _previous_factory = None
    # else another factory was set on top of ours: ours stays in the chain and masks nothing (no secrets)


class SecretFilter(logging.Filter):
    """Masks the registered secrets in every record it sees (attach it to a handler of your own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ordered:
            _mask_record(record)
        return True
