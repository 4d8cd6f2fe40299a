"""Error text that is safe to keep in failure records: it says what went wrong, never the payload. Pure.

pydantic's `str(ValidationError)` quotes each offending value (`input_value='...'`): for a private
artifact that is the secret itself. Failure records are built from `describe_error`, which renders
validation errors by location and message only, and caps the length.

Provider errors without an HTTP response are named for what happened: litellm reports a refused connection as
`InternalServerError` with status 500 and a client-side timeout as `Timeout` with status 408, though no server
said either. `describe_transport` reads the exception chain (httpx/aiohttp/OS errors underneath) instead:
"connection refused by 127.0.0.1:8000", "no answer within 60 s".
"""

from __future__ import annotations

import errno
import re
import socket

from pydantic import ValidationError

__all__ = ["causes", "connect_failure", "describe_error", "describe_transport", "missing_key", "provider_answered"]

_MAX = 1000


def describe_error(exc: BaseException) -> str:
    """A one-paragraph description of `exc` without the values it was raised about."""
    validation = _validation_error(exc)
    if validation is not None:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
            for error in validation.errors(include_url=False, include_input=False)[:10]
        ]
        more = validation.error_count() - len(problems)
        text = f"{validation.error_count()} validation error(s) for {validation.title}: " + "; ".join(problems)
        if more > 0:
            text += f"; and {more} more"
        return text[:_MAX]
    return str(exc)[:_MAX]


def _validation_error(exc: BaseException) -> ValidationError | None:
    """`exc` itself, or the ValidationError it was raised from (wrappers keep pydantic's text as theirs)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ValidationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from, outermost first (at most 12)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 12 and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


_CONNECT_CLASSES = frozenset({"ConnectError", "ClientConnectorError", "ConnectTimeout", "ClientConnectorDNSError"})
_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})
_TIMEOUT_CLASSES = frozenset({"Timeout", "APITimeoutError", "ReadTimeout", "WriteTimeout", "PoolTimeout"})
_ADDRESS = re.compile(r"\('([^']+)', (\d+)\)|host ([^\s:]+):(\d+)")
_ENDPOINT = re.compile(r"\bat (\w+://[^\s\]]+)")
_TIMEOUT_VALUE = re.compile(r"timeout value=([0-9.]+)")
_MISSING_KEY = ("Missing credentials", "api_key client option must be set")


def connect_failure(exc: BaseException) -> bool:
    """Whether no connection could be made at all (refused, unresolvable host, unreachable network): nothing
    was sent."""
    for cause in causes(exc):
        if isinstance(cause, (ConnectionRefusedError, socket.gaierror)) or type(cause).__name__ in _CONNECT_CLASSES:
            return True
        if isinstance(cause, OSError) and cause.errno in _UNREACHABLE:
            return True
    return False


def missing_key(exc: BaseException) -> bool:
    """litellm refused the call before sending it: no API key (it reports this as a 500)."""
    return any(marker in str(exc) for marker in _MISSING_KEY)


def provider_answered(exc: BaseException) -> bool:
    """Whether `exc` carries the provider's answer (an HTTP status it sent), not a failure to reach it."""
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and not missing_key(exc) and describe_transport(exc) is None


def _where(chain: list[BaseException]) -> str | None:
    """host:port of the failed connection, from the OS error's or the HTTP library's message, or from the note
    flock_llm adds to a call's error ("model M at URL")."""
    for cause in reversed(chain):
        found = _ADDRESS.search(str(cause))
        if found:
            host, port = (found.group(1), found.group(2)) if found.group(1) else (found.group(3), found.group(4))
            return f"{host}:{port}"
    for note in getattr(chain[0], "__notes__", ()) or ():
        found = _ENDPOINT.search(str(note))
        if found:
            return found.group(1)
    return None


def describe_transport(exc: BaseException, timeout_s: float | None = None) -> str | None:
    """What happened when a call got no HTTP answer ("connection refused by 127.0.0.1:8000", "could not connect
    to api.example.com:443 (name or service not known)", "no answer within 60 s"), or None when it got one.
    `timeout_s` is the request timeout, when the exception does not say it."""
    chain = causes(exc)
    where = _where(chain)
    at = f" {where}" if where else ""
    if any(isinstance(c, ConnectionRefusedError) for c in chain):
        return f"connection refused by{at}" if where else "connection refused (nothing listens at the endpoint)"
    if connect_failure(exc):
        reason = next((str(c) for c in chain if isinstance(c, socket.gaierror)), "") or str(chain[-1])
        return f"could not connect to{at or ' the endpoint'} ({reason.strip() or type(chain[-1]).__name__})"
    if any(type(c).__name__ in _TIMEOUT_CLASSES or isinstance(c, TimeoutError) for c in chain):
        found = next((m for c in chain if (m := _TIMEOUT_VALUE.search(str(c)))), None)
        seconds = float(found.group(1)) if found else timeout_s
        return f"no answer within {seconds:g} s" if seconds is not None else "no answer within the request timeout"
    return None
