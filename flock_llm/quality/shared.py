"""Where batch-size controller states are kept between batches, runs and worker processes.

A store that keeps them (`SizeStates`: the memory store in its process, the SQLite store in its file, the Redis
store shared by every worker) holds one `ControllerState.to_json()` text per (agent, subscription). A change is
written with a compare-and-set (`swap`): a worker that read an older text retries from the newer one, so two
workers that audit at once never lose a change. `MemorySizeStates` is the in-process one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Protocol, runtime_checkable

from ..errors import ConfigurationError
from .controller import ControllerState

__all__ = ["MemorySizeStates", "SizeStates", "adopt", "state_key"]

log = logging.getLogger("flock_llm.quality")


@runtime_checkable
class SizeStates(Protocol):
    """Batch-size controller states by key (`state_key(agent, subscription)`), as JSON texts."""

    async def get(self, key: str) -> str | None:
        """The stored text (None: nothing stored yet)."""
        ...

    async def swap(self, key: str, expected: str | None, new: str) -> bool:
        """Store `new` if the stored text is still `expected` (None: nothing stored); False when another writer
        changed it first (read it again and retry)."""
        ...


class MemorySizeStates:
    """`SizeStates` in this process (the memory store's): shared by every engine of the Flock."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def get(self, key: str) -> str | None:
        return self._states.get(key)

    async def swap(self, key: str, expected: str | None, new: str) -> bool:
        async with self._lock:
            if self._states.get(key) != expected:
                return False
            self._states[key] = new
            return True


def state_key(agent: str, subscription_index: int) -> str:
    """The key of an agent's subscription (the index first: agent names may hold any character)."""
    return f"{subscription_index}:{agent}"


def adopt(
    text: str | None, configured: int | None, *, agent: str, min_size: int = 1, quiet: bool = False
) -> ControllerState | None:
    """The stored state `text` for a subscription whose configured size is `configured`: None when nothing is
    stored, or when the text is not a valid state (a warning is logged; the controller starts afresh and the
    next change overwrites it). A state saved under another configured size is clamped to this one (None: the
    configured size is not known; the state is taken as it is), and a size below the target's `min_size` (a
    state left by a run with a smaller one) is raised to it (the evidence, about another size, is dropped). The
    adjustment is logged at INFO (at DEBUG when `quiet`: the caller said why already)."""
    if text is None:
        return None
    try:
        state = ControllerState.from_json(text)
    except ConfigurationError as exc:
        log.warning("agent %r: ignoring the stored batch-size state (%s); starting afresh", agent, exc)
        return None
    top = state.max_size if configured is None else configured
    size = max(min(state.size, top), min(min_size, top))
    if top == state.max_size and size == state.size:
        return state
    log.log(
        logging.DEBUG if quiet else logging.INFO,
        "agent %r: the stored batch-size state was kept for size %d at %d, now %d (min_size %d); resuming at %d",
        agent,
        state.max_size,
        state.size,
        top,
        min_size,
        size,
    )
    if size == state.size:
        return replace(state, max_size=top, before_growth=None)
    return replace(state, size=size, max_size=top, before_growth=None, agreed=0.0, n=0.0, since_change=0, recent="")
