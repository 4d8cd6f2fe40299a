"""Wake-ups for waiters on a rate window: woken early when a settle frees room they need, on whichever event loop
they run. An `asyncio.Event` kept in a long-lived object binds to the first loop that waits on it (a second
`asyncio.run` that waits on it raises RuntimeError); each waiter here has a future of its own loop instead."""

from __future__ import annotations

import asyncio

__all__ = ["Wakeups"]


class Wakeups:
    """Waiters that `signal(room)` wakes once the room freed covers what they lack, in the order they came, only
    as many as the room can serve; `freed` adds up the room signalled, so a waiter that looked before a settle
    came does not then sleep through it."""

    def __init__(self) -> None:
        self.freed = 0.0
        """All the room signalled so far: read it before looking, pass it to `wait()` as `seen`."""
        self._waiters: dict[asyncio.Future[None], tuple[float, float]] = {}  # -> (the room it lacks, its amount)

    async def wait(self, seconds: float, *, need: float = 0.0, amount: float = 0.0, seen: float | None = None) -> None:
        """Wait up to `seconds`, less once `need` more room is signalled (0: any room); not at all when the room
        signalled since `seen` already covers it.

        Args:
            seconds: the longest wait.
            need: the room the waiter lacked when it looked.
            amount: what it will take once woken (room a signal then has no more for the waiters after it).
            seen: `freed` as read before the waiter looked (None: count only what is signalled from now on).
        """
        if seen is not None:
            since = self.freed - seen
            if since > 0 and since >= need:
                return
            need -= since
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = (need, max(need, amount))
        try:
            await asyncio.wait((waiter,), timeout=seconds)
        finally:
            self._waiters.pop(waiter, None)
            waiter.cancel()

    def signal(self, room: float) -> None:
        """`room` was freed (call it from the waiters' loop): wake the waiters it is enough for, first come first,
        each taking its amount out of it. Nothing freed (a call that settled for what it held) wakes nobody: they
        would only look and wait again, every one of them at every settle."""
        if room <= 0:
            return
        self.freed += room
        left = room
        for waiter, (lacking, amount) in list(self._waiters.items()):
            if lacking <= left:
                if not waiter.done():
                    waiter.set_result(None)
                left -= amount
            else:
                self._waiters[waiter] = (lacking - max(0.0, left), amount)
