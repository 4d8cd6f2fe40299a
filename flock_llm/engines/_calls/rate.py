"""Limits per minute in tokens (and requests) that a call waits for: a sliding 60-second log of what calls took.

A request takes what the provider will count for it (the counted prompt + its `max_tokens`: OpenAI's quota counts
the answer's limit, not the answer) before it is sent; once answered or timed out the entry is replaced by the real
prompt + `max_tokens` at that time, and a refused request's by nothing (the call shell does this, `_shell`). A
request that alone exceeds the limit waits for an empty window and then goes alone.

`LocalWindow` serves one process; the Redis store gives every worker process the same window (one Lua script
decides atomically, by the server's clock: `flock_llm.stores.redis.rate`). Why not `limits` or `pyrate-limiter`:
both take a fixed cost per hit and cannot replace it afterwards with what was really counted.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..._wakeups import Wakeups

__all__ = ["LocalWindow", "LocalWindows", "RateWindow", "RateWindows", "WINDOW_S", "account_of", "window_name"]

WINDOW_S = 60.0
_ids = itertools.count(1)


class RateWindow(Protocol):
    """A limit per sliding minute."""

    limit: int

    async def acquire(self, amount: int) -> str:
        """Wait until `amount` fits the window, take it; returns the entry's id."""
        ...

    async def settle(self, entry: str, actual: int) -> None:
        """Replace the entry's amount with `actual`, at the current time.

        Args:
            entry: the id `acquire()` returned.
            actual: the amount used (the real tokens, or 1 request; 0 when nothing was sent).
        """
        ...


class RateWindows(Protocol):
    """Where windows live: in this process, or shared by every worker through the store."""

    def window(self, name: str, limit: int) -> RateWindow:
        """The window called `name` (see `window_name`: account, model and kind) with `limit` per minute.

        Args:
            name: the window's name.
            limit: requests or tokens per sliding minute.
        """
        ...


class LocalWindow:
    """A sliding-minute log in this process."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._entries: dict[str, tuple[float, int]] = {}
        self._settled = Wakeups()  # (not an asyncio.Event: the window outlives one event loop)

    def _used(self, now: float) -> int:
        for key in [k for k, (at, _) in self._entries.items() if at <= now - WINDOW_S]:
            del self._entries[key]
        return sum(amount for _, amount in self._entries.values())

    def wait_for(self, amount: int) -> float:
        """Seconds until `amount` fits (0.0: now)."""
        now = self._clock()
        used = self._used(now)
        if used + amount <= self.limit or used <= 0:
            return 0.0
        excess = used + amount - self.limit
        for at, taken in sorted(self._entries.values()):
            excess -= taken
            if excess <= 0:
                return max(0.001, at + WINDOW_S - now)
        return WINDOW_S

    async def acquire(self, amount: int) -> str:
        while (wait := self.wait_for(amount)) > 0:
            await self._settled.wait(wait)
        entry = str(next(_ids))
        self._entries[entry] = (self._clock(), amount)
        return entry

    async def settle(self, entry: str, actual: int) -> None:
        _, held = self._entries.get(entry, (0.0, 0))  # (an entry that expired meanwhile freed its room then)
        self._entries[entry] = (self._clock(), max(0, actual))
        self._settled.signal(held - max(0, actual))


class LocalWindows:
    """Windows shared by the engines of this process, by name (a provider's limit is per model and account)."""

    def __init__(self) -> None:
        self._windows: dict[str, LocalWindow] = {}

    def window(self, name: str, limit: int) -> RateWindow:
        found = self._windows.get(f"{name}/{limit}")
        if found is None:
            found = self._windows[f"{name}/{limit}"] = LocalWindow(limit)
        return found


PROCESS_WINDOWS = LocalWindows()
"""The default: windows shared within this process."""


def account_of(settings: Mapping[str, Any]) -> str:
    """Whose quota an engine's calls count against: a short hash of its endpoint (`api_base`/`base_url`) and
    API key, never the key itself ("default": the provider's default endpoint and the environment's key)."""
    base = settings.get("api_base") or settings.get("base_url") or ""
    key = settings.get("api_key") or ""
    if not base and not key:
        return "default"
    return hashlib.sha256(f"{base}\n{key}".encode()).hexdigest()[:16]


def window_name(account: str, model: str, kind: str) -> str:
    """The window of one provider quota: an account's `kind` ("tokens" or "requests") per minute on `model`."""
    return f"{account}/{model}:{kind}"
