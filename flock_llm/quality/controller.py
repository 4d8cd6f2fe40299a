"""The batch-size controller: an effective batch size that holds a quality target (pure: no I/O, no clock).

Evidence is the audited agreement at the current size, as decayed counts (`memory` audits weigh about as much as
all older ones), so a drifting provider is noticed. With `z` the normal quantile of `confidence`:

- shrink by `shrink` (halve) when the Wilson upper bound is below the target (clearly failing), or, once there
  are enough audits for a perfect record to clear the target, when the LOWER bound of the `shrink_confidence`
  interval (default 50%) falls below it with at least `min_disagreements` disagreements; in that second case
  only by `trim` (a fifth) while the latest `recent` audits still agree at the target's rate (a size that is
  doubtful, not broken, is not halved);
- grow (by `grow`, default +10% and at least 1, at most to the configured size) when the lower bound of the
  `confidence` interval (default 90%: growing needs more evidence than shrinking) is at or above the target and
  at least `grow_after` audits were seen since the last change; a growth that turns out worse is given
  back (to the size before it), and a growth is on probation: one disagreement in its first `probation` audits
  gives it back (a size just past the collapse point agrees in most audits, and would cost many bad answers
  before the lower-bound rule could tell);
- the "clearly below" rule also looks at the latest `recent` audits alone, so a sudden drop (a provider that
  drifts) shows within a few audits; the evidence starts afresh after every change;
- every change carries its reason; the state is a small JSON-able value that the stores keep and share
  (`flock_llm.quality.shared`: a restarted process resumes from it, Redis workers steer one size together).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

from ..errors import ConfigurationError
from .stats import wilson, z_for

__all__ = ["ControllerState", "QualityTarget", "SizeChange", "observe"]


def _share(name: str, value: object, *, low: float = 0.0, high: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ConfigurationError(f"`{name}` must be a number between {low:g} and {high:g} (exclusive), got {value!r}")


@dataclass(frozen=True, slots=True)
class QualityTarget:
    """Keep audited agreement with one-item answers at or above `target` (e.g. 0.95).

    Raises:
        ConfigurationError: a share outside (0, 1), a non-positive size or count.
    """

    target: float = 0.95
    """The agreement the effective batch size must hold (its lower confidence bound, not the point estimate)."""
    confidence: float = 0.9
    """Two-sided confidence of the Wilson interval for growing (its lower bound must hold the target) and for
    "clearly below" (its upper bound under the target)."""
    shrink_confidence: float = 0.5
    """Two-sided confidence of the interval whose lower bound falling below the target shrinks the size. Lower
    than `confidence`, so a size is given up on less evidence than it takes to grow (hysteresis): one
    disagreement in the first ~10 audits shrinks, one in 50 does not."""
    min_size: int = 1
    """The size never shrinks below this."""
    shrink: float = 0.5
    """The size is multiplied by this when agreement is clearly below the target."""
    trim: float = 0.8
    """The size is multiplied by this (and shrinks by at least 1) when agreement is doubtful: the lower bound is
    below the target but the latest `recent` audits agree at its rate. Halving a size that is only just too
    large overshoots."""
    grow: float = 0.1
    """The size grows by this share (at least 1) when agreement holds: slowly, since a size past the collapse
    point costs bad answers until it is noticed."""
    grow_after: int | None = None
    """Audits at a size before it may grow (default: twice the audits a perfect record needs to clear the
    target)."""
    probation: int | None = None
    """Audits after a growth during which a single disagreement gives the growth back (default:
    `audits_to_hold`, the audits a perfect record needs to hold the target; 0: no probation)."""
    min_audits: int = 8
    """Audits before a clearly failing size is shrunk."""
    min_disagreements: int = 2
    """The lower-bound rule needs at least this many disagreements in the evidence: one stray disagreement
    among the first audits at a size does not shrink it (a systematic failure is caught by "clearly below")."""
    recent: int = 20
    """How many of the latest audits the "clearly below" rule looks at (besides all the evidence)."""
    memory: int | None = None
    """About how many recent audits the evidence keeps (older ones decay); default: four times
    `audits_to_hold`. It must exceed `audits_to_hold`, else no evidence could ever hold the target."""
    second_opinion: bool = True
    """A call whose audit disagrees has its other items asked again in calls of half its size: their answers
    replace the call's, the disagreeing audited items get their one-item answers, and how often the two answers
    agree is evidence about the size (a collapsed size is given up after one call, not several). About one
    more call of the batch, only after a disagreement, and on the first call at the configured size (a guess
    until measured) (`flock_llm.quality.second_opinion`). False: audits only measure and steer."""

    def __post_init__(self) -> None:
        _share("target", self.target)
        _share("confidence", self.confidence)
        _share("shrink_confidence", self.shrink_confidence)
        _share("shrink", self.shrink)
        _share("trim", self.trim)
        _share("grow", self.grow, high=10.0)
        for name in ("min_size", "min_audits", "recent", "min_disagreements"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"`{name}` must be a positive integer, got {value!r}")
        if not isinstance(self.second_opinion, bool):
            raise ConfigurationError(f"`second_opinion` must be True or False, got {self.second_opinion!r}")
        for name, least in (("grow_after", 1), ("probation", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigurationError(f"`{name}` must be an integer >= {least} or None, got {value!r}")
        if self.memory is not None and (
            isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory <= self.audits_to_hold
        ):
            raise ConfigurationError(
                f"`memory` must be an integer above {self.audits_to_hold} (the audits a perfect record needs to hold "
                f"{self.target:.0%} at {self.confidence:.0%} confidence), got {self.memory!r}; or leave it None"
            )

    @property
    def audits_to_hold(self) -> int:
        """How many audits, all agreeing, a lower bound needs to reach the target."""
        z = z_for(self.confidence)
        return math.ceil(z * z * self.target / (1 - self.target))

    @property
    def audits_to_judge(self) -> int:
        """How many audits the shrink rule waits for (a perfect record's lower bound at `shrink_confidence`
        reaches the target)."""
        z = z_for(self.shrink_confidence)
        return math.ceil(z * z * self.target / (1 - self.target))

    @property
    def evidence_memory(self) -> int:
        """About how many recent audits the evidence keeps (`memory`, or its default)."""
        return self.memory if self.memory is not None else 4 * self.audits_to_hold

    @property
    def audits_on_probation(self) -> int:
        """Audits after a growth during which one disagreement gives it back (`probation`, or its default)."""
        return self.probation if self.probation is not None else self.audits_to_hold

    @property
    def audits_to_grow(self) -> int:
        """Audits at a size before it may grow (`grow_after`, or its default)."""
        return self.grow_after if self.grow_after is not None else 2 * self.audits_to_hold

    def start(self, size: int) -> ControllerState:
        """The state of an agent whose configured batch size is `size` (it starts there)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"the configured batch size must be a positive integer, got {size!r}")
        return ControllerState(size=size, max_size=size, reason=f"configured size {size}")


@dataclass(frozen=True, slots=True)
class ControllerState:
    """Where one agent's controller stands; `to_json()`/`from_json()` for stores."""

    size: int
    """The effective batch size."""
    max_size: int
    """The largest size the controller has used (the configured size at the start)."""
    agreed: float = 0.0
    """Decayed count of agreeing audited items at the current size."""
    n: float = 0.0
    """Decayed count of audited items at the current size."""
    since_change: int = 0
    """Audits since the last change."""
    changes: int = 0
    """How many times the size changed."""
    recent: str = ""
    """The last `recent` audit outcomes at this size, oldest first ("1" agreed, "0" not): a sudden drop shows
    here before it moves the long evidence."""
    before_growth: int | None = None
    """The size before the last growth: a growth that does not hold goes back there, not below it."""
    reason: str = ""
    """Why the size is what it is (the last change's reason)."""

    def to_json(self) -> str:
        """The state as a JSON text (`from_json()` reads it back)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ControllerState:
        """Raises ConfigurationError for text that is not a saved state."""
        try:
            data = json.loads(text)
            state = cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a saved batch-size controller state: {type(exc).__name__}") from None
        problem = state._problem()
        if problem:
            raise ConfigurationError(f"not a saved batch-size controller state: {problem}")
        return state

    def _problem(self) -> str:
        """What makes this state impossible ("" for none): a stored text may be foreign or corrupt."""

        def count(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def amount(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not (count(self.size) and count(self.max_size) and 1 <= self.size <= self.max_size):
            return f"size {self.size!r} is not an integer between 1 and max_size {self.max_size!r}"
        if not (amount(self.n) and amount(self.agreed) and 0 <= self.agreed <= self.n + 1e-9):
            return f"need 0 <= agreed <= n, got agreed={self.agreed!r}, n={self.n!r}"
        if not (count(self.since_change) and self.since_change >= 0 and count(self.changes) and self.changes >= 0):
            return "since_change and changes must be integers >= 0"
        if not isinstance(self.recent, str) or self.recent.strip("01"):
            return "recent must be a string of 0 and 1"
        if self.before_growth is not None and not (count(self.before_growth) and self.before_growth >= 1):
            return f"before_growth {self.before_growth!r} is not a positive integer"
        if not isinstance(self.reason, str):
            return "reason must be a string"
        return ""


@dataclass(frozen=True, slots=True)
class SizeChange:
    """One change of the effective batch size."""

    old: int
    """The size before."""
    new: int
    """The size after."""
    reason: str
    """Why it changed, in words."""
    low: float
    """The lower bound of the agreement interval that decided it."""
    high: float
    """The upper bound of that interval."""
    audits: float
    """The (decayed) audits the decision rested on."""

    @property
    def direction(self) -> str:
        """The direction: "shrink" or "grow"."""
        return "shrink" if self.new < self.old else "grow"


def observe(
    target: QualityTarget, state: ControllerState, agreed: int, n: int, *, second_opinion: bool = False
) -> tuple[ControllerState, SizeChange | None]:
    """Add `agreed` of `n` audited items (answered at `state.size`) and decide whether the size changes.

    Args:
        target: the quality target.
        state: the agent's state before.
        agreed: how many of the audited items agreed.
        n: how many items were audited.
        second_opinion: the `n` comparisons are one call's second opinion (`flock_llm.quality.second_opinion`):
            batched answers against the answers of calls of half the size, not one-item answers. They are judged
            on their own and not added to the evidence: at least `min_disagreements` of them disagreeing with the
            lower bound of their `shrink_confidence` interval below the target shrinks the size (halved; trimmed
            when their own rate holds the target), however well the older audits at the same size agree (after a
            drift they still do); fewer change nothing (two answers that may both be a little wrong would
            otherwise trim a size that holds).

    Returns the new state and the change made (None: the size holds).
    """
    if not all(isinstance(count, int) and not isinstance(count, bool) for count in (agreed, n)):
        raise ConfigurationError(f"audit counts must be integers, got agreed={agreed!r}, n={n!r}")
    if n < 0 or not 0 <= agreed <= n:
        raise ConfigurationError(f"need 0 <= agreed <= n, got agreed={agreed!r}, n={n!r}")
    if n == 0:
        return state, None
    if second_opinion:
        return _second_look(target, state, agreed, n)
    # each audit keeps 1 - 1/memory of the older evidence: in logs, since past ~1e16 audits of memory that rounds
    # to 1.0 (and the sum of the n new audits' weights, (1 - keep**n) / (1 - keep), divided by zero)
    decay = n * math.log1p(-1 / target.evidence_memory)
    weight, added = math.exp(decay), -math.expm1(decay) * target.evidence_memory
    # only the latest `recent` outcomes are kept: never build the rest. A block of more (a second opinion, many
    # audits a call) has no order: it keeps its share of disagreements (at least one), not all of them last,
    # which read 196 of 200 agreeing as "80% in the latest 20 audits" and halved a size that held the target
    kept = min(n, target.recent)
    disagreed = n - agreed if n <= target.recent else math.ceil((n - agreed) * kept / n)
    outcomes = "1" * (kept - disagreed) + "0" * disagreed
    state = replace(
        state,
        n=state.n * weight + added,
        agreed=min(state.n * weight + added, state.agreed * weight + added * agreed / n),  # no rounding above n
        since_change=state.since_change + n,
        recent=(state.recent + outcomes)[-target.recent :],
    )
    interval = wilson(state.agreed, state.n, confidence=target.confidence)
    shown = f"{interval.rate:.1%} [{interval.low:.1%}, {interval.high:.1%}] over {state.n:.0f} audits"
    new, reason = _shrunk(target, state, shown)
    if not reason and interval.low >= target.target and state.since_change >= target.audits_to_grow:
        new = min(state.max_size, state.size + max(1, math.floor(state.size * target.grow)))
        reason = f"agreement {shown} holds {target.target:.0%}"
    if new == state.size:
        return state, None
    return _changed(state, SizeChange(state.size, new, reason, interval.low, interval.high, state.n))


def _second_look(
    target: QualityTarget, state: ControllerState, agreed: int, n: int
) -> tuple[ControllerState, SizeChange | None]:
    """One call's second opinion, judged on its own (see `observe`)."""
    block = wilson(agreed, n, confidence=target.shrink_confidence)
    if n - agreed < target.min_disagreements or block.low >= target.target:
        return state, None
    # doubtful (its own rate holds the target, its lower bound does not): trimmed, as the pooled rule does
    new = _smaller(target, state, factor=target.trim if (block.rate or 0.0) >= target.target else None)
    if new == state.size:
        return state, None
    reason = (
        f"a second opinion disagreed with {n - agreed} of {n} answers of one call (agreement {block.rate:.1%}, "
        f"lower bound {block.low:.1%}, under {target.target:.0%})"
    )
    return _changed(state, SizeChange(state.size, new, reason, block.low, block.high, float(n)))


def _changed(state: ControllerState, change: SizeChange) -> tuple[ControllerState, SizeChange]:
    """The state after `change`: the old evidence is about another size, so it starts afresh (audits warm up
    meanwhile, see Audit.warmup)."""
    return (
        replace(
            state,
            size=change.new,
            agreed=0.0,
            n=0.0,
            since_change=0,
            recent="",
            changes=state.changes + 1,
            before_growth=change.old if change.new > change.old else None,
            reason=change.reason,
        ),
        change,
    )


def _shrunk(target: QualityTarget, state: ControllerState, shown: str) -> tuple[int, str]:
    """The size the evidence shrinks to and why (the same size and "" when it holds)."""
    interval = wilson(state.agreed, state.n, confidence=target.confidence)
    latest = wilson(state.recent.count("1"), len(state.recent), confidence=target.confidence)
    if state.since_change >= target.min_audits and interval.high < target.target:
        return _smaller(target, state), f"agreement {shown} is clearly below {target.target:.0%}"
    if len(state.recent) >= target.min_audits and latest.high < target.target:
        return _smaller(target, state), (
            f"agreement in the latest {latest.n:.0f} audits, {latest.rate:.1%} [{latest.low:.1%}, "
            f"{latest.high:.1%}], is clearly below {target.target:.0%}"
        )
    if (
        state.before_growth is not None
        and state.since_change <= target.audits_on_probation
        and state.n - state.agreed >= 0.5  # (decayed counts) a disagreement since the growth
    ):
        return _smaller(target, state), (
            f"a disagreement in the first {state.since_change} audits after growing from {state.before_growth} "
            f"(a growth is on probation for {target.audits_on_probation} audits)"
        )
    if (
        state.n >= target.audits_to_judge
        and state.n - state.agreed >= target.min_disagreements - 0.5  # decayed counts: about that many
        and (judged := _low(target, state)) < target.target
    ):
        return _smaller(target, state, factor=target.trim if _latest_hold(target, state) else None), (
            f"the lower bound ({target.shrink_confidence:.0%} interval) of agreement {interval.rate:.1%} over "
            f"{state.n:.0f} audits, {judged:.1%}, fell below {target.target:.0%}"
        )
    return state.size, ""


def _latest_hold(target: QualityTarget, state: ControllerState) -> bool:
    """Whether the latest audits agree at the target's rate (their point estimate): the size is doubtful, not
    broken. The latest, not all the evidence: after a drift, the older audits at the same size still agree."""
    return state.recent.count("1") >= target.target * len(state.recent)


def _low(target: QualityTarget, state: ControllerState) -> float:
    return wilson(state.agreed, state.n, confidence=target.shrink_confidence).low


def _smaller(target: QualityTarget, state: ControllerState, *, factor: float | None = None) -> int:
    """The size to shrink to: the size before a growth that did not hold, else the size times `factor` (default
    `shrink`), by at least 1 and not below `min_size`."""
    size = state.size
    if size <= target.min_size:
        return size
    if state.before_growth is not None and state.before_growth < size:
        return state.before_growth
    factor = target.shrink if factor is None else factor
    return max(target.min_size, min(size - 1, math.floor(size * factor)))
