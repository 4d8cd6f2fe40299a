"""Concurrency slots: how many more runs an agent may start in this process."""

from __future__ import annotations

import asyncio

__all__ = ["Slots"]


class Slots:
    """How many more runs an agent may start in this process (its max_concurrency), for a shared intake."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._freed = asyncio.Event()

    async def take(self, timeout: float) -> bool:
        while self.free <= 0:
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), timeout)
            except TimeoutError:
                return False
        self.free -= 1
        return True

    def take_up_to(self, n: int) -> int:
        taken = max(0, min(n, self.free))
        self.free -= taken
        return taken

    def give(self, n: int = 1) -> None:
        self.free += n
        self._freed.set()
