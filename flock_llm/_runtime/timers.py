"""Clocks: where the orchestrator reads time and schedules deadlines.

`LoopClock` (the default) uses the running event loop's monotonic clock and
`loop.call_at`: a deadline fires when it is due, with no polling loop.
`ManualClock` (in `flock_llm.testing`) lets tests move time by hand.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "LoopClock", "ManualClock", "TimerHandle"]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time in seconds, and deadlines that call back when due."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle: ...


class LoopClock:
    """The running event loop's monotonic clock (`loop.time()` / `loop.call_at`)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_at(when, callback)


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told: `advance(seconds)` fires every deadline it passes, in order.

    Example::

        clock = ManualClock()
        flock = Flock(clock=clock)
        clock.advance(30)   # timeout flushes happen here, synchronously (inside a running event loop)

    With `auto_advance=True`, time jumps to each deadline as soon as the event loop gets to it (after the
    step that set it), so tests that just want a timeout to pass need not move the clock themselves:
    `await flock.run_until_idle()` sees the timeout flush.

    Args:
        start: the time the clock starts at, in seconds.
        auto_advance: jump to each deadline as soon as the event loop gets to it.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = False) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._serial = itertools.count()
        self.auto_advance = auto_advance

    def now(self) -> float:
        """The clock's time, in seconds."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Call `callback` when the clock reaches `when` (as `loop.call_at` does); the handle cancels it.

        Args:
            when: the deadline, in the clock's seconds.
            callback: what to call then.
        """
        timer = _ManualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._serial), timer))
        if self.auto_advance:
            asyncio.get_running_loop().call_soon(self._jump_to, when)
        return timer

    def _jump_to(self, when: float) -> None:
        self.advance(max(0.0, when - self._now))

    def advance(self, seconds: float) -> None:
        """Move time forward, running each due callback at its own deadline."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds!r})")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()
        self._now = target

    @property
    def pending_timers(self) -> int:
        """How many deadlines are set and not yet due or cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)
