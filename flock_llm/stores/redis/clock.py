"""Whose time decides the shared batches' deadlines and join windows.

With the default clock (`LoopClock`) it is the Redis server's (`TIME`, read inside each script), so worker
processes on machines with skewed or drifting clocks agree. A clock given to the Flock (`Flock(clock=...)`,
e.g. `flock_llm.testing.ManualClock`) decides instead: its time is passed to every script, and this
process's deadline timers are set on it, so a test moves shared batches' time by hand instead of sleeping.
Every worker of one namespace must then read the same clock (tests share one ManualClock between Flocks).
"""

from __future__ import annotations

from collections.abc import Callable

from ..._runtime.timers import Clock, LoopClock, TimerHandle

__all__ = ["SharedTime"]


class SharedTime:
    """The time the batch scripts use, and timers on the Flock's clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.by_server = isinstance(clock, LoopClock)
        """True: the Redis server's clock decides (scripts read `TIME`)."""

    def now_arg(self) -> str:
        """The scripts' first argument: "" (use the server's time) or the injected clock's time in ms."""
        return "" if self.by_server else str(round(self.clock.now() * 1000))

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Call back after `delay` seconds of the Flock's clock."""
        return self.clock.call_at(self.clock.now() + max(0.0, delay), callback)
