"""The batch-size controller at work: each subscription's state, read before a batch and updated after its audits,
kept in the store's `SizeStates` when the run has one (see `flock_llm.quality.shared`), with every change
logged, counted and traced with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .audit import add_usage
from .controller import ControllerState, QualityTarget, SizeChange, observe
from .shared import adopt, state_key

if TYPE_CHECKING:
    from ..engines import EngineContext

__all__ = ["SizeEvent", "SizeSteering", "measures"]

log = logging.getLogger("flock_llm.quality")

SWAP_ATTEMPTS = 64
"""How often a change is retried against newer stored states (other workers') before it is kept locally."""


def measures(size: int, state: ControllerState) -> bool:
    """Whether a call of `size` items is evidence about the state's size: neither larger nor a remainder under
    three quarters of it (a flushed batch of 50 at size 38 goes out as 38 + 12: the 12 says nothing about 38)."""
    return 0.75 * state.size <= size <= state.size


@dataclass(frozen=True, slots=True)
class SizeEvent:
    """A change of an agent's effective batch size, kept for the CLI and tests."""

    agent: str
    subscription_index: int
    change: SizeChange


class SizeSteering:
    """The controller states of one engine's subscriptions (this process's copies of the stored ones)."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, int], ControllerState] = {}
        """The controller's state per (agent, subscription), as last read or written."""
        self.events: deque[SizeEvent] = deque(maxlen=1000)
        self._steering: dict[tuple[str, int], asyncio.Lock] = {}
        """One change at a time per subscription in this process: the compare-and-set then races only other
        processes (many chunks of one flush audited at once all retried against each other, and past
        SWAP_ATTEMPTS their audits were kept only locally, then overwritten by the next read: lost)."""
        self._adjustments: dict[tuple[str, int], int] = {}
        """How often this process adjusted a subscription's stored state to its settings and wrote it back: a
        second time means another worker configured otherwise wrote it since."""

    def size_for(self, agent: str, subscription_index: int = 0) -> int | None:
        state = self.states.get((agent, subscription_index))
        return None if state is None else state.size

    async def current(self, target: QualityTarget, ctx: EngineContext, batch: int) -> ControllerState:
        """The subscription's state now: the stored one when the run has a store (another worker's change, or
        the state a previous run left), else this process's; a fresh one at the configured size."""
        state, _ = await self._read(target, ctx, batch)
        return state

    async def _read(self, target: QualityTarget, ctx: EngineContext, batch: int) -> tuple[ControllerState, str | None]:
        key = (ctx.agent_name, ctx.subscription_index)
        configured = ctx.configured_size
        text = None
        if ctx.size_states is not None:
            try:
                text = await ctx.size_states.get(state_key(*key))
            except Exception as exc:  # noqa: BLE001 - a store that is down: steer with this process's state
                log.warning("agent %r: could not read the batch-size state (%s)", ctx.agent_name, type(exc).__name__)
                return self.states.get(key) or target.start(max(1, configured or batch)), None
            quiet = self._adjustments.get(key, 0) > 0
            stored = adopt(text, configured, agent=ctx.agent_name, min_size=target.min_size, quiet=quiet)
            if stored is not None:
                self.states[key] = stored
                return stored, await self._adjusted(ctx, key, text, stored)
        state = self.states.get(key)
        if state is None or (configured is not None and state.max_size != configured):
            state = self.states[key] = target.start(max(1, configured or batch))
        return state, text

    async def _adjusted(
        self, ctx: EngineContext, key: tuple[str, int], text: str | None, stored: ControllerState
    ) -> str | None:
        """A stored state that `adopt` adjusted (another configured size or min_size) is written back, so it is
        adjusted, and logged, once rather than at every batch; the stored text the caller compares against."""
        adjusted = stored.to_json()
        if text is None or (found := ControllerState.from_json(text)) == stored:
            return text
        assert ctx.size_states is not None
        try:
            if await ctx.size_states.swap(state_key(*key), text, adjusted):
                self._adjustments[key] = self._adjustments.get(key, 0) + 1
                if self._adjustments[key] == 2:
                    _warn_other_settings(ctx, found, stored)
                return adjusted
        except Exception as exc:  # noqa: BLE001 - a store that is down: adjusted again at the next read
            log.warning("agent %r: could not store the batch-size state (%s)", ctx.agent_name, type(exc).__name__)
        return text

    def warming(self, target: QualityTarget, ctx: EngineContext) -> bool:
        """Whether the controller still lacks the audits it needs at the current size."""
        state = self.states.get((ctx.agent_name, ctx.subscription_index))
        return state is not None and state.n < 2 * target.audits_to_judge

    async def steer(
        self,
        target: QualityTarget,
        ctx: EngineContext,
        size: int,
        agreed: int,
        n: int,
        usage: dict[str, Any],
        *,
        second_opinion: bool = False,
    ) -> None:
        """Add `agreed` of `n` audits made at `size` and apply the change they call for (stored with a
        compare-and-set: a newer stored state is read again and the audits added to it). Evidence about another
        size than the current one (a remainder, a size changed meanwhile) is only counted (`audit_other_size`, or
        `second_opinion_other_size`); `second_opinion`: the evidence is one call's second opinion (see `observe`)."""
        other = "second_opinion_other_size" if second_opinion else "audit_other_size"
        key = (ctx.agent_name, ctx.subscription_index)
        if size < 2:  # a one-item call compared with a one-item call: it always agrees, and says nothing
            add_usage(usage, {other: n})
            return
        async with self._steering.setdefault(key, asyncio.Lock()):
            await self._steer(target, ctx, key, size, (agreed, n, second_opinion), usage, other)

    async def _steer(
        self,
        target: QualityTarget,
        ctx: EngineContext,
        key: tuple[str, int],
        size: int,
        evidence: tuple[int, int, bool],
        usage: dict[str, Any],
        other: str,
    ) -> None:
        agreed, n, second_opinion = evidence
        for _ in range(SWAP_ATTEMPTS):
            state, text = await self._read(target, ctx, size)
            if not measures(size, state):  # another size's evidence (a remainder, a change)
                add_usage(usage, {other: n})
                return
            new, change = observe(target, state, agreed, n, second_opinion=second_opinion)
            if ctx.size_states is None or await self._swap(ctx, state_key(*key), text, new):
                break
        else:
            log.warning("agent %r: the batch-size state kept changing under this worker; kept locally", key[0])
        self.states[key] = new
        if change is not None:
            self._changed(ctx, change, usage)

    async def _swap(self, ctx: EngineContext, key: str, text: str | None, new: ControllerState) -> bool:
        assert ctx.size_states is not None
        try:
            return await ctx.size_states.swap(key, text, new.to_json())
        except Exception as exc:  # noqa: BLE001 - a store that is down: keep the change in this process
            log.warning("agent %r: could not store the batch-size state (%s)", ctx.agent_name, type(exc).__name__)
            return True

    def _changed(self, ctx: EngineContext, change: SizeChange, usage: dict[str, Any]) -> None:
        """Log, count (usage -> metrics) and trace one change with its reason."""
        self.events.append(SizeEvent(ctx.agent_name, ctx.subscription_index, change))
        add_usage(usage, {f"batch_size_{change.direction}s": 1, "batch_size_change": f"{change.old} -> {change.new}"})
        log.info("agent %r: batch size %d -> %d: %s", ctx.agent_name, change.old, change.new, change.reason)
        if ctx.tracer is None:
            return
        now = time.time_ns()
        ctx.tracer.record(
            "flock.quality.batch_size",
            start_ns=now,
            end_ns=now,
            parent=ctx.trace_parent,
            agent=ctx.agent_name,
            subscription=ctx.subscription_index,
            old_size=change.old,
            new_size=change.new,
            direction=change.direction,
            reason=change.reason,
            agreement_low=change.low,
            agreement_high=change.high,
            audits=change.audits,
            shared=ctx.size_states is not None,
        )


def _warn_other_settings(ctx: EngineContext, found: ControllerState, stored: ControllerState) -> None:
    """A stored state was adjusted to this worker's settings and written back a second time: another worker wrote
    it for other settings since (a rolling deploy, a worker not updated), and the two undo each other at every
    batch (said once, here, as a warning; the adjustments are then logged at DEBUG)."""
    other, this = (
        (f"BatchSpec(size={found.max_size})", f"BatchSpec(size={stored.max_size})")
        if found.max_size != stored.max_size
        else (f"a smaller min_size (it shrank to {found.size})", f"QualityTarget(min_size={stored.size})")
    )
    log.warning(
        "agent %r: another worker of this store steers its batch size with other settings (%s; this one "
        "has %s): each rewrites the shared state to its own at every batch and the evidence is lost; give "
        "every worker the same BatchSpec(size=) and QualityTarget(min_size=)",
        ctx.agent_name,
        other,
        this,
    )
