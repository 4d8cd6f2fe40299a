"""Wake-ups that outlive an event loop: waiters woken early by a signal (a rate window's settle), on whichever loop
they run. An `asyncio.Event` kept in a long-lived object binds to the first loop that waits on it, and a second
`asyncio.run` that waits on it raises RuntimeError; each waiter here has a future of its own loop instead."""

from __future__ import annotations

import asyncio

__all__ = ["Wakeups"]


class Wakeups:
    """Waiters that `signal()` wakes; `signals` counts the signals, so a waiter that looked (at a window, say)
    before a signal came does not then sleep through it."""

    def __init__(self) -> None:
        self.signals = 0
        """How many times `signal()` was called: read it before looking, pass it to `wait()`."""
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self, seconds: float, seen: int | None = None) -> None:
        """Wait up to `seconds`, less when `signal()` is called; not at all when it was called since `seen`.

        Args:
            seconds: the longest wait.
            seen: `signals` as read before the waiter looked (None: wait in any case).
        """
        if seen is not None and seen != self.signals:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait((waiter,), timeout=seconds)
        finally:
            self._waiters.discard(waiter)
            waiter.cancel()

    def signal(self) -> None:
        """Wake every waiter now (call it from the waiters' loop)."""
        self.signals += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
