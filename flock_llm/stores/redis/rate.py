"""Engine state shared by every worker process of a Redis store: rate windows (see `flock_llm.engines._calls.rate`:
one sliding minute per (account, model, kind), changed only by the RATE_TAKE and RATE_SETTLE scripts, by the
server's clock; workers that disagree about a window's limit are refused). The journal of provider batch jobs is
in `journal`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..._wakeups import Wakeups
from ...errors import ConfigurationError

if TYPE_CHECKING:
    from .connection import RedisConnection

__all__ = ["RECHECK_S", "RedisWindow", "RedisWindows"]

RECHECK_S = 1.0
"""A waiter on a full shared window looks again at least this often: a call of another worker that settles for
less than it held frees room that this process hears nothing of (a settle in this process wakes it at once)."""


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class RedisWindow:
    """One limit per sliding minute, shared through Redis."""

    def __init__(self, store: RedisConnection, name: str, limit: int, windows: RedisWindows | None = None) -> None:
        self.store = store
        self.windows = windows if windows is not None else RedisWindows(store)
        self.limit = limit
        self.name = name
        base = store.key(f"rate:{name}")
        self._keys = [base, base + ":amounts", base + ":seq", base + ":limit"]

    async def acquire(self, amount: int) -> str:
        """Wait until `amount` fits the shared window, take it; returns the entry's id.

        Raises:
            ConfigurationError: another worker uses this window (the same account and model) with another limit.
        """
        store = self.store
        wakeups = self.windows.wakeups(self.name)
        while True:
            seen = wakeups.freed  # room freed here while this look is in flight counts toward what it lacks
            reply = await store.retrying(
                lambda: store.script("RATE_TAKE")(keys=self._keys, args=[self.limit, amount]),
                limit=store.reconnect_timeout,
            )
            taken, value = reply[0], reply[1]
            if int(taken) == -1:
                kind = "tokens_per_minute" if self.name.endswith(":tokens") else "requests_per_minute"
                raise ConfigurationError(
                    f"rate window {self.name!r} (one account on one model) is shared through Redis with a limit of "
                    f"{int(value):,} per minute, but this worker has `{kind}={self.limit:,}`: give every worker "
                    "the same limit (the window expires 2 minutes after its last use)"
                )
            if int(taken) == 1:
                return value.decode() if isinstance(value, bytes) else str(value)
            if _cancelling():  # its cancellation was swallowed by the command (Python 3.11's wait_for): stop now,
                raise asyncio.CancelledError  # not after the minute's wait
            await wakeups.wait(min(max(int(value), 5) / 1000, RECHECK_S), need=int(reply[2]), amount=amount, seen=seen)

    async def settle(self, entry: str, actual: int) -> None:
        store = self.store
        freed = await store.retrying(
            lambda: store.script("RATE_SETTLE")(keys=self._keys, args=[entry, max(0, actual)]),
            limit=store.reconnect_timeout,
        )
        self.windows.wakeups(self.name).signal(int(freed))  # held more than it took: waiters it fits look now


class RedisWindows:
    """The windows of one Redis store (a provider's limit, shared by every worker using the store)."""

    def __init__(self, store: RedisConnection) -> None:
        self.store = store
        self._wakeups: dict[str, Wakeups] = {}

    def window(self, name: str, limit: int) -> RedisWindow:
        return RedisWindow(self.store, name, limit, self)

    def wakeups(self, name: str) -> Wakeups:
        """The waiters of this process on window `name`, woken when a call of this process settles in it for less
        than it held, once the room freed covers what they lack (on any event loop: the windows may outlive one
        `asyncio.run`)."""
        return self._wakeups.setdefault(name, Wakeups())
