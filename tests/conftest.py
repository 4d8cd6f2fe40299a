from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from flock_llm import Flock
from flock_llm.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def flock(clock: ManualClock) -> AsyncIterator[Flock]:
    """A fresh Flock on a hand-moved clock; the test env sets no FLOCK_LLM_MODEL."""
    f = Flock(clock=clock, env={})
    yield f
    await f.shutdown()


async def references(flock: Flock, agent: str) -> dict[str, int]:
    """How many outputs/failure records of `agent` reference each input id."""
    counts: dict[str, int] = {}
    for artifact in await flock.store.list():
        if artifact.produced_by == agent:
            for source in artifact.derived_from:
                counts[source] = counts.get(source, 0) + 1
    return counts
