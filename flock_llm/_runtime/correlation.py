"""Pure slot logic for joins and AND gates. No clock, no I/O.

A subscription's slots are positions: `consumes(A, A, B)` has three (two A slots and a B slot). Arrivals fill
the oldest open group of their key that has a free slot of their type, in arrival order; a group whose every
slot is filled completes, in declared order, and the next arrival of that key opens a new one. A join keys
groups by `JoinSpec.by` and closes them after its window; an AND gate is one key and no window (only
shutdown closes an incomplete set). Nothing is skipped: an arrival never replaces one already in a slot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import timedelta

from ..artifact import Artifact
from ..subscription import JoinSpec

__all__ = ["ExpiredGroup", "JoinBuffer", "JoinOutcome"]


@dataclass(slots=True)
class _OpenGroup:
    key: Hashable
    opened_at: float
    opened_arrival: int
    slots: list[Artifact | None]
    done: bool = False

    def free_slot(self, type_names: tuple[str, ...], type_name: str) -> int | None:
        for position, name in enumerate(type_names):
            if name == type_name and self.slots[position] is None:
                return position
        return None


@dataclass(frozen=True, slots=True)
class JoinOutcome:
    completed: tuple[Artifact, ...] | None
    """The group this artifact completed, in the subscription's type order."""
    expired: list[ExpiredGroup]
    """Groups whose window closed (count windows close on arrivals)."""
    opened_deadline: float | None
    """The time-window deadline of a group this artifact opened (schedule a timer), if any."""


@dataclass(frozen=True, slots=True)
class ExpiredGroup:
    """A join group whose window closed before every type arrived."""

    key: Hashable
    artifacts: tuple[Artifact, ...]
    missing: tuple[str, ...]
    reason: str
    """"window" (time or count window passed) or "shutdown"."""


class JoinBuffer:
    """Open join groups (or gate sets) of one subscription.

    A time window (`within=timedelta`) closes a group that long after its
    first artifact; a count window (`within=int`) closes it once that many
    artifacts have arrived at this subscription since (and including) its first.
    Without a spec (an AND gate) groups never expire.
    """

    def __init__(self, spec: JoinSpec | None, type_names: tuple[str, ...]) -> None:
        self.spec = spec
        self.type_names = type_names
        self._groups: dict[Hashable, list[_OpenGroup]] = {}
        self._by_age: deque[_OpenGroup] = deque()  # oldest first; completed groups are skipped lazily
        self._arrivals = 0
        within = None if spec is None else spec.within
        self._window_s = within.total_seconds() if isinstance(within, timedelta) else None
        self._window_count = within if isinstance(within, int) else None

    @property
    def open_groups(self) -> int:
        return sum(len(groups) for groups in self._groups.values())

    def add(self, artifact: Artifact, key: Hashable, *, now: float) -> JoinOutcome:
        """Place one artifact: it completes a group, or waits in one."""
        self._arrivals += 1
        expired = self._expire(now=now, arrival=self._arrivals)
        groups = self._groups.setdefault(key, [])
        target, position = None, None
        for group in groups:  # the oldest open group with a free slot of this type
            position = group.free_slot(self.type_names, artifact.type_name)
            if position is not None:
                target = group
                break
        opened_deadline = None
        if target is None:
            target = _OpenGroup(key, now, self._arrivals, [None] * len(self.type_names))
            position = target.free_slot(self.type_names, artifact.type_name)
            groups.append(target)
            self._by_age.append(target)
            if self._window_s is not None:
                opened_deadline = now + self._window_s
        assert position is not None
        target.slots[position] = artifact
        if any(slot is None for slot in target.slots):
            return JoinOutcome(None, expired, opened_deadline)
        self._remove(target)
        return JoinOutcome(tuple(a for a in target.slots if a is not None), expired, None)

    def take_expired(self, *, now: float) -> list[ExpiredGroup]:
        return self._expire(now=now, arrival=None)

    def take_all(self) -> list[ExpiredGroup]:
        """Close every open group (at shutdown)."""
        closed = [self._closed(g, "shutdown") for g in self._by_age if not g.done]
        self._groups.clear()
        self._by_age.clear()
        return closed

    def _is_expired(self, group: _OpenGroup, now: float, arrival: int | None) -> bool:
        if self._window_s is not None:
            return now - group.opened_at >= self._window_s
        if self._window_count is None:
            return False  # a gate: its sets wait until they are complete (or shutdown)
        return arrival is not None and arrival - group.opened_arrival + 1 > self._window_count

    def _expire(self, *, now: float, arrival: int | None) -> list[ExpiredGroup]:
        expired: list[ExpiredGroup] = []
        while self._by_age:
            oldest = self._by_age[0]
            if oldest.done:
                self._by_age.popleft()
            elif self._is_expired(oldest, now, arrival):
                self._remove(oldest)
                self._by_age.popleft()
                expired.append(self._closed(oldest, "window"))
            else:
                break  # groups are ordered by age: the rest are younger
        return expired

    def _remove(self, group: _OpenGroup) -> None:
        group.done = True
        groups = self._groups[group.key]
        groups.remove(group)
        if not groups:
            del self._groups[group.key]

    def _closed(self, group: _OpenGroup, reason: str) -> ExpiredGroup:
        missing = tuple(name for name, slot in zip(self.type_names, group.slots, strict=True) if slot is None)
        return ExpiredGroup(group.key, tuple(a for a in group.slots if a is not None), missing, reason)
