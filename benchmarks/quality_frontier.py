"""How far a batch-size controller can go in `benchmarks/quality.py` (b): a fast simulation of (b) that runs the
real controller (`flock_llm.quality.observe`) and the real audit sampling (`audited_positions`) against the same
degradation curves (collapse point 40, drifting to 12 halfway), with no server: each item's answer disagrees with
its one-item answer with the curve's error chance at its batch size and position times the share of corrupted
answers that the comparison tells apart (the fake provider corrupts one field: a changed label disagrees, a
reworded reason may still pass the free-text tolerance), drawn from a seeded random stream.

The cost per call (`a + b x size`) and that share are measured first on the real engine against the degrading
fake server (sizes 1 and 10 for the cost, 300 items at size 50 for the share), so an audit (a one-item call)
costs what it costs in (b) and a size agrees about as often as in (b). Runs go as in (b): flushes of 50 cut
into calls of the effective size, each audited and steered, with the quality target's second opinion (a call
whose audit disagrees asked again in halves) unless a row turns it off. Each row is one
controller setting over `--runs` simulated runs (their own random streams, not (b)'s seeds): the share of 100-item
windows at 95% agreement (pooled and worst run), the cost per item against the best fixed size of the same run
(the cheapest of 50, 25, 10, 5 that holds 95% of its windows), and how many runs meet both of (b)'s criteria.
It shows the trade-off (b) sits on: more audits find a bad size sooner and cost more.

Run: nice -n 10 python benchmarks/quality_frontier.py [--runs 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
from dataclasses import dataclass

from quality import AFTER, BEFORE, Snippets, load, stream

from flock_llm.quality import QualityTarget, observe
from flock_llm.quality.audit import Audit, audited_positions
from flock_llm.quality.controller import ControllerState
from flock_llm.quality.second_opinion import halves
from flock_llm.quality.steering import measures
from flock_llm.testing import Degradation

N, DRIFT_AT, WINDOW, START = 6000, 3000, 100, 50
FIXED = (50, 25, 10, 5)


@dataclass(frozen=True)
class Costs:
    """Cost of one call of `size` items: `per_call + per_item x size` (USD); `seen`: the share of corrupted
    answers the comparison tells apart."""

    per_call: float
    per_item: float
    seen: float

    def call(self, size: int) -> float:
        return self.per_call + self.per_item * size


async def measured() -> Costs:
    """Fit the cost model and the seen share on the real engine and the degrading fake server."""
    data = Snippets(load(), 0)
    one = await stream(data, 100, 1, audit=None, target=None, seed=0, drift=False)
    ten = await stream(data, 100, 10, audit=None, target=None, seed=0, drift=False)
    fifty = await stream(data, 300, 50, audit=None, target=None, seed=0, drift=False)
    per_item = (ten["cost_per_item"] * 10 - one["cost_per_item"]) / 9
    seen = (1 - fifty["agreement"]) / (1 - BEFORE.agreement(50))
    return Costs(one["cost_per_item"] - per_item, per_item, seen)


def curve_at(index: int) -> Degradation:
    return BEFORE if index < DRIFT_AT else AFTER


def windows_held(agreed: list[bool]) -> float:
    windows = [sum(agreed[k : k + WINDOW]) / len(agreed[k : k + WINDOW]) for k in range(0, len(agreed), WINDOW)]
    return sum(w >= 0.95 for w in windows) / len(windows)


def answers(rng: random.Random, curve: Degradation, size: int, seen: float) -> list[bool]:
    return [rng.random() >= seen * curve.error(size, position) for position in range(size)]


def chunk(start: int, size: int) -> int:
    """The size of the call starting at item `start` (each half is published and drained on its own)."""
    end = DRIFT_AT if start < DRIFT_AT else N
    return min(size, end - start)


def fixed_run(size: int, run: int, costs: Costs) -> tuple[float, float]:
    rng, agreed, spent, start = random.Random(f"fixed:{run}:{size}"), [], 0.0, 0
    while start < N:
        n = chunk(start, size)
        agreed += answers(rng, curve_at(start), n, costs.seen)
        spent += costs.call(n)
        start += n
    return windows_held(agreed), spent / N


def controlled_run(target: QualityTarget, audit: Audit, run: int, costs: Costs) -> tuple[float, float]:
    """One run as (b) makes it: flushes of START items, each cut into calls of the effective size (read once per
    flush), audited, and steered call by call; with `target.second_opinion`, a call whose audit disagrees has its
    other items asked again in halves, whose answers are kept and whose agreement with the call's is judged on its
    own (`observe(second_opinion=True)`); so has the first call at the configured size."""
    rng, agreed, spent, start = random.Random(f"controlled:{run}"), [], 0.0, 0
    state = target.start(START)
    while start < N:
        flush, size = chunk(start, START), state.size
        warming = state.n < 2 * target.audits_to_judge  # as SizeSteering.warming
        unmeasured = state.n == 0 and state.changes == 0 and state.size == state.max_size  # as QualityGuard.run
        calls = []
        for first in range(start, start + flush, size):
            n = min(size, start + flush - first)
            got = answers(rng, curve_at(first), n, costs.seen)
            audited = audited_positions(audit, [[f"{run}:{first + k}"] for k in range(n)], warming=warming)
            spent += costs.call(n) + costs.call(1) * len(audited)
            calls.append((first, got, audited))
        for number, (first, got, audited) in enumerate(calls):
            state = steered(target, state, len(got), sum(got[p] for p in audited), len(audited))
            if target.second_opinion and (not all(got[p] for p in audited) or (unmeasured and not number)):
                rest = [k for k in range(len(got)) if k not in audited]
                again = [answers(rng, curve_at(first), len(part), costs.seen) for part in halves(rest, len(got))]
                spent += sum(costs.call(len(part)) for part in again)
                # two answers differ when one is wrong; two wrong ones (of 2 other labels) differ half the time
                same = [got[k] == a and (a or rng.random() < 0.5) for k, a in zip(rest, sum(again, []), strict=True)]
                for k, a in zip(rest, sum(again, []), strict=True):
                    got[k] = a
                for p in audited:  # the disagreeing ones get their one-item answer
                    got[p] = True
                state = steered(target, state, len(got), sum(same), len(same), second_opinion=True)
        agreed += [a for _, got, _ in calls for a in got]
        start += flush
    return windows_held(agreed), spent / N


def steered(
    target: QualityTarget, state: ControllerState, size: int, agreed: int, n: int, *, second_opinion: bool = False
) -> ControllerState:
    """`observe` as SizeSteering applies it: only evidence about the current size counts."""
    if n == 0 or size < 2 or not measures(size, state):
        return state
    return observe(target, state, agreed, n, second_opinion=second_opinion)[0]


def best_fixed(run: int, costs: Costs) -> float:
    """The cost per item of the run's best fixed size: the cheapest that holds 95% of its windows."""
    fixed = [fixed_run(size, run, costs) for size in FIXED]
    return min((cost for held, cost in fixed if held >= 0.95), default=fixed[-1][1])


def row(name: str, target: QualityTarget, rate: float, bests: list[float], costs: Costs) -> str:
    shares, ratios, runs = [], [], len(bests)
    for run, best in enumerate(bests):
        held, cost = controlled_run(target, Audit(rate=rate, seed=run), run, costs)
        shares.append(held)
        ratios.append(cost / best)
    both = sum(s >= 0.95 and r <= 1.20 for s, r in zip(shares, ratios, strict=True))
    ratios.sort()
    return (
        f"{name:<34} {rate:>5.2f} {sum(shares) / runs:>8.1%} {min(shares):>8.1%} {sum(ratios) / runs:>7.2f}x "
        f"{ratios[int(0.9 * runs)]:>7.2f}x {ratios[-1]:>7.2f}x {both:>4}/{runs}"
    )


def main(runs: int) -> None:
    costs = asyncio.run(measured())
    print(f"measured on the fake server: ${costs.per_call:.3g} per call + ${costs.per_item:.3g} per item; "
          f"{costs.seen:.0%} of corrupted answers disagree")  # fmt: skip
    print(f"{runs} simulated runs of {N} items, drift at {DRIFT_AT} (collapse 40 -> 12), start at size {START}")
    print(f"{'controller':<34} {'rate':>5} {'windows':>8} {'worst':>8} {'cost':>8} {'p90':>8} {'max':>8} {'both':>9}")
    settings = {
        "QualityTarget(0.95) (this release)": QualityTarget(0.95, min_audits=5),
        "second_opinion=False": QualityTarget(0.95, min_audits=5, second_opinion=False),
        "neither, nor trim and probation": QualityTarget(
            0.95, min_audits=5, trim=0.5, probation=0, second_opinion=False
        ),
    }
    bests = [best_fixed(run, costs) for run in range(runs)]  # the same for every row
    for rate in (0.5, 0.6, 0.75, 1.0):
        for name, target in settings.items():
            print(row(name, target, rate, bests, costs))
    print("windows: share of 100-item windows at >= 95% agreement, pooled and in the worst run; cost: per item against")
    print("the run's best fixed size (mean, 90th percentile, max); both: runs with >= 95% of windows and <= 1.20x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=60)
    main(parser.parse_args().runs)
