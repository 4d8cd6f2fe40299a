"""Quality benchmark: calibrate, a batch size that holds a target through drift, the audit's overhead, on
human-labelled review snippets (VADER's ICWSM-2014 Amazon set, MIT; ../shared/data/vader-icwsm2014/) with the
DEGRADING fake provider (flock_llm.testing.degrade). The provider is a simulation, not a model: the figures say
how flock_llm's audit, controller and calibration react to a provider that degrades this way, nothing about any
real model.

The simulated model answers a snippet alone with its human label (3 classes from the mean rating: >= 0.25
positive, <= -0.25 negative, else neutral) except for a seeded 10% it gets wrong alone too; in batches, errors
grow with the batch size past a collapse point and peak mid-batch.

  (a) calibrate on a sample, for three collapse points: recommendation vs the true best size (the largest size
      whose expected agreement is >= 1 - tolerance);
  (b) a stream of snippets with drift injected halfway (collapse point 40 -> 12): BatchSpec(size=50) with
      Audit(rate=RATE) + QualityTarget(0.95, min_audits=5), one batch at a time, vs every fixed size without
      audit (the audit samples calls: RATE is higher than (c)'s 2% because a target needs evidence fast):
      share of 100-item windows whose agreement with the one-item answers is >= 95%, and cost per item against
      the best fixed size chosen in hindsight;
  (c) the audit's overhead at a 2% rate (one item asked alone in 2% of the calls): its calls and tokens as a
      share of the run's;
  (d) report mode with a provider that puts wrong numbers and foreign ids in 30% of its answers' fields:
      published reports' computed numbers exact, injected wrong numbers and foreign ids caught.

Every part runs on each of `--seeds` (a seed moves the start of the snippets and the simulated provider's and
the audit's draws) and prints per-seed and overall figures, then each done-when criterion with PASS/FAIL.
The controller's parameters were first chosen on seed 0 (the snippets in file order, provider seed 5), and (b)'s
audit rate of 1.0 (one item of every call, 4 while warming up) before any run, from the evidence a 100-item
window needs once audits sample calls. Seeds 1-5 were reported with that controller; its later rules (a growth on
probation, a doubtful size trimmed rather than halved) were chosen on the simulation of
`benchmarks/quality_frontier.py` and revised after runs on seeds 16-25 (held out: 26-30). The second opinion
(QualityTarget(second_opinion=True)) and (b)'s audit rate of 0.6 were chosen on that simulation (0.6: the most
simulated runs meeting both criteria), tried on seeds 31-32, and its rule "judged on its own, not added to the
evidence" was chosen on seeds 33-47 (held out: 48-62); a first-call second opinion was then added on the
simulation alone after runs on seeds 63-77 and many instrumented runs (100-161) showed streaks of agreeing audits
at the configured size; seeds 78-92 are the held-out ones for the figures in docs/quality.md; use seeds above 92
to check a further change. (b) is judged over every seed's windows and cost together (the
done-when's ">= 95% of windows ... within 20%"); how many seeds meet both alone is printed too. With
`--save FILE` a run also writes its figures; `--combine FILE...` prints the criteria over several runs (one
process per seed).

Run: nice -n 10 python benchmarks/quality.py [--seeds 1,2,3,4,5] [--n 6000] [--sample 200] [--rate 0.6]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.artifact import Artifact
from flock_llm.cli.review_types import Review, ReviewLabel
from flock_llm.engines import EngineContext, RetryPolicy
from flock_llm.engines.llm import LLMEngine
from flock_llm.quality import QualityTarget, Tolerance, compare_answers
from flock_llm.quality.audit import Audit
from flock_llm.quality.calibration import calibrate
from flock_llm.quality.facts import ReportFacts, check_report, compute_facts, valid_ids
from flock_llm.subscription import BatchSpec
from flock_llm.testing import Degradation, DegradingModel, FakeOpenAIServer

_RELATIVE = Path("shared/data/vader-icwsm2014/amazonReviewSnippets_GroundTruth.txt")
DATA = next(
    (p / _RELATIVE for p in Path(__file__).resolve().parents if (p / _RELATIVE).exists()),
    Path("..") / _RELATIVE,
)
"""`../shared/data/...` from the repository (or from any folder above it, e.g. a worktree's)."""
MODEL = "openai/gpt-4.1-mini"  # litellm's price map prices the calls; the fake server answers them
FAST = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, max_retry_after=0.05)
SIZES = (1, 5, 10, 25, 50)
TARGET = 0.95


def load(path: Path = DATA) -> list[tuple[str, float, str]]:
    rows = []
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].strip():
            rows.append((parts[0], float(parts[1]), parts[2].strip()))
    return rows


def label_of(mean: float) -> str:
    return "positive" if mean >= 0.25 else "negative" if mean <= -0.25 else "neutral"


def _unit(*parts: object) -> float:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") / 2**64


class Snippets:
    """The data set as reviews, the gold labels, and the simulated model's one-item answers."""

    def __init__(self, rows: list[tuple[str, float, str]], seed: int = 0) -> None:
        offset = (seed * 997) % len(rows) if rows else 0
        self.rows = rows[offset:] + rows[:offset]  # each seed reads the snippets from another start
        self.gold = {text: label_of(mean) for _, mean, text in rows}

    def reviews(self, n: int) -> list[Review]:
        out = []
        for k in range(n):
            sid, mean, text = self.rows[k % len(self.rows)]
            rating = min(5, max(1, round(3 + mean / 2)))
            out.append(Review(review_id=f"{sid}#{k // len(self.rows)}", rating=rating, text=text))
        return out

    def alone(self, data: dict[str, Any]) -> dict[str, Any]:
        """What the simulated model answers for an item asked alone (its human label, 10% seeded mistakes)."""
        text = str(data.get("text", ""))
        label = self.gold.get(text, "neutral")
        if _unit("alone", text) < 0.10:
            others = [x for x in ("positive", "negative", "neutral") if x != label]
            label = others[int(_unit("which", text) * 2)]
        return {"label": label, "reason": f"the snippet reads {label}"}

    def expected(self, review: Review) -> ReviewLabel:
        return ReviewLabel(review_id=review.review_id, **self.alone({"text": review.text}))


def engine(server: FakeOpenAIServer, **kwargs: Any) -> LLMEngine:
    return LLMEngine(MODEL, per_item=True, api_base=server.api_base, api_key="sk-fake-local", retry=FAST,
                     structured_output=True, **kwargs)  # fmt: skip


# -- (a) calibrate ---------------------------------------------------------------------------------------------


def true_best(curve: Degradation, tolerance: float) -> int:
    return max(s for s in SIZES if curve.agreement(s) >= 1 - tolerance)


async def bench_calibrate(data: Snippets, sample: int, seed: int) -> list[dict[str, Any]]:
    results = []
    for collapse in (8, 20, 40):
        curve = Degradation(collapse_at=collapse, slope=0.0005, steep=0.02)
        model = DegradingModel(curve, truth=data.alone, seed=collapse + 1000 * seed)
        with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as server:
            reviews = data.reviews(len(data.rows))[::7][:sample]
            artifacts = [Artifact(type_name="Review", payload=r) for r in reviews]
            ctx = EngineContext(agent_name="calibrate", publishes=(ReviewLabel,))
            gold = {a.id: data.gold[r.text] for a, r in zip(artifacts, reviews, strict=True)}
            result = await calibrate(engine(server), ctx, artifacts, SIZES, model=MODEL, tolerance=0.05, gold=gold)
        best = true_best(curve, 0.05)
        step = SIZES.index(best) - SIZES.index(result.recommended)
        results.append({"collapse_at": collapse, "recommended": result.recommended, "true_best": best,
                        "steps_below": step, "ok": step in (0, 1),
                        "agreement": {r.size: round(r.agreement.rate or 0, 3) for r in result.rows},
                        "accuracy": {r.size: round((r.accuracy.rate or 0) if r.accuracy else 0, 3)
                                     for r in result.rows}})  # fmt: skip
    return results


# -- (b) drift, (c) overhead ------------------------------------------------------------------------------------

BEFORE, AFTER = Degradation(collapse_at=40, steep=0.02), Degradation(collapse_at=12, steep=0.02)


async def stream(data: Snippets, n: int, size: int, *, audit: Audit | None, target: QualityTarget | None,
                 seed: int, drift: bool = True) -> dict[str, Any]:  # fmt: skip
    model = DegradingModel(BEFORE, truth=data.alone, seed=5 + 1000 * seed)
    reviews = data.reviews(n)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as server:
        llm = engine(server, audit=audit, quality=target) if audit else engine(server)
        flock = Flock(env={})
        batch = BatchSpec(size=size, timeout=timedelta(seconds=60))
        agent = flock.agent("labels").consumes(Review, batch=batch).publishes(ReviewLabel).with_engines(llm)
        agent.max_concurrency(1)
        started = time.perf_counter()
        half = n // 2
        await flock.publish_many(reviews[:half])
        await flock.run_until_idle()
        if drift:
            model.drift(AFTER)
        await flock.publish_many(reviews[half:])
        await flock.run_until_idle()
        await flock.shutdown()
        outputs = {o.review_id: o for o in await flock.store.get_by_type(ReviewLabel)}
        usage = dict(flock.metrics().usage.get("labels", {}))
        wall = time.perf_counter() - started
    agreed = [
        r.review_id in outputs and compare_answers(outputs[r.review_id], data.expected(r), tolerance=Tolerance()).agreed
        for r in reviews
    ]  # fmt: skip
    windows = [sum(agreed[k : k + 100]) / len(agreed[k : k + 100]) for k in range(0, n, 100)]
    sizes = [e.change.new for e in llm.quality.events] if llm.quality else []
    return {
        "size": size, "audit": audit is not None, "windows": len(windows),
        "windows_at_target": sum(w >= TARGET for w in windows) / len(windows),
        "agreement": sum(agreed) / n, "cost_per_item": (usage.get("cost_usd") or 0.0) / n,
        "tokens_per_item": (usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)) / n,
        "calls": usage.get("llm_calls", 0), "audit_calls": usage.get("audit_llm_calls", 0),
        "agreement_audited": usage.get("audit_compared", 0),
        "tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
        "audit_tokens": usage.get("audit_prompt_tokens", 0) + usage.get("audit_completion_tokens", 0),
        "size_changes": sizes, "wall_s": round(wall, 1),
        "below": [f"{k}:{w:.2f}" for k, w in enumerate(windows) if w < TARGET][:12],
        "reasons": [e.change.reason for e in llm.quality.events][:6] if llm.quality else [],
    }  # fmt: skip


def show(title: str, rows: list[dict[str, Any]], keys: list[str]) -> None:
    print(f"\n{title}")
    print("  ".join(f"{k:>16}" for k in keys))
    for row in rows:
        print("  ".join(f"{_fmt(row.get(k)):>16}" for k in keys))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}" if value < 0.01 else f"{value:.3f}"
    return str(value)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def main(n: int, sample: int, rate: float, only: str, seeds: list[int], save: str) -> None:
    rows = load()
    print(f"{len(rows)} snippets from {DATA.name}; simulated provider (flock_llm.testing.degrade); seeds {seeds}")
    found: dict[str, list[dict[str, Any]]] = {"a": [], "bf": [], "ba": [], "c": [], "d": []}
    for seed in seeds:
        data = Snippets(rows, seed)
        print(f"\n======== seed {seed} ========")
        if only in ("", "a"):
            found["a"].append(await part_a(data, sample, seed))
        if only in ("", "b", "bf"):
            found["bf"].append(await part_b_fixed(data, n, seed))
        if only in ("", "b", "ba"):
            found["ba"].append(await part_b_adaptive(data, n, rate, seed))
        if only in ("", "c"):
            found["c"].append(await part_c(data, n, seed))
        if only in ("", "d"):
            found["d"].append(await part_d(data, min(n, 2000), seed))
    if save:  # one process per seed on a machine with cores to spare; `--combine` prints the criteria over all
        Path(save).write_text(json.dumps({"rate": rate, "found": found}, default=str), encoding="utf-8")
    criteria(found, rate)


def combine(paths: list[str]) -> None:
    """The done-when criteria over the `--save` files of several runs (each run's own output has its figures)."""
    found: dict[str, list[dict[str, Any]]] = {"a": [], "bf": [], "ba": [], "c": [], "d": []}
    rates = set()
    for path in paths:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        rates.add(saved["rate"])
        for part, rows in saved["found"].items():
            found.setdefault(part, []).extend(rows)
    print(f"combined {len(paths)} runs: seeds {sorted({row['seed'] for rows in found.values() for row in rows})}")
    criteria(found, rates.pop() if len(rates) == 1 else float("nan"))


def criteria(found: dict[str, list[dict[str, Any]]], rate: float) -> None:
    print("\n======== done-when, over every seed ========")
    adaptive = {row["seed"]: row for row in found["ba"]}
    found["b"] = [judge_b(row, adaptive[row["seed"]]) for row in found["bf"] if row["seed"] in adaptive]
    if found["a"]:
        cases = [row for seed in found["a"] for row in seed["rows"]]
        ok = sum(row["ok"] for row in cases)
        print(f"(a) recommendation = true best size or one step below: {ok}/{len(cases)} calibrations "
              f"(per seed: {[s['ok'] for s in found['a']]} of 3): {verdict(ok == len(cases))}")  # fmt: skip
    if found["b"]:
        for b in found["b"]:
            print(f"(b) seed {b['seed']}: {b['windows_at_target']:.1%} of windows at target, cost/item "
                  f"${b['cost']:.6f} = {b['ratio']:.2f}x the best fixed size ({b['best']}, ${b['best_cost']:.6f}): "
                  f"{verdict(b['ok'])}")  # fmt: skip
        held = sum(b["held"] for b in found["b"]) / sum(b["windows"] for b in found["b"])
        worst_share = min(b["windows_at_target"] for b in found["b"])
        # the seeds' items together: every seed streams the same number of snippets, so this is the mean ratio
        pooled = sum(b["cost"] for b in found["b"]) / sum(b["best_cost"] for b in found["b"])
        worst_ratio = max(b["ratio"] for b in found["b"])
        alone = sum(b["ok"] for b in found["b"])
        print(f"(b) overall, Audit(rate={rate:g}): {held:.1%} of all windows at target (worst seed {worst_share:.1%}), "
              f"cost/item {pooled:.2f}x the best fixed sizes' (worst seed {worst_ratio:.2f}x) (done-when: >= 95% of "
              f"windows, within 20% of the cost): {verdict(held >= 0.95 and pooled <= 1.20)}; "
              f"{alone} of {len(found['b'])} seeds meet both on their own")  # fmt: skip
    if found["c"]:
        calls = sum(c["audit_calls"] for c in found["c"]) / sum(c["calls"] for c in found["c"])
        tokens = sum(c["audit_tokens"] for c in found["c"]) / sum(c["tokens"] for c in found["c"])
        worst = max(max(c["calls_share"], c["tokens_share"]) for c in found["c"])
        # judged over every seed together: the rate is a probability, and one run of 240 calls holds ~5 audits
        print(f"(c) audit at 2%: {calls:.1%} of the calls and {tokens:.1%} of the tokens over every seed (worst single "
              f"seed {worst:.1%}; done-when: <= 3% of both): {verdict(calls <= 0.03 and tokens <= 0.03)}")  # fmt: skip
    if found["d"]:
        injected = sum(d["injected"] for d in found["d"])
        left = sum(d["left"] for d in found["d"])
        exact = sum(d["exact"] for d in found["d"]), sum(d["reports"] for d in found["d"])
        print(f"(d) report facts: {injected - left}/{injected} injected wrong numbers and foreign ids caught, computed "
              f"numbers exact in {exact[0]}/{exact[1]} reports (done-when: 100% caught): "
              f"{verdict(left == 0 and exact[0] == exact[1])}")  # fmt: skip


@flock_type(name="QualitySnippetReport")
class SnippetReport(BaseModel):
    review_count: int
    average_rating: float
    min_rating: int
    max_rating: int
    cited_review_ids: list[str]
    summary: str


async def part_d(data: Snippets, n: int, seed: int) -> dict[str, Any]:
    reviews = data.reviews(n)
    model = DegradingModel(Degradation(wrong_numbers=0.3, foreign_ids=0.3), seed=9 + 1000 * seed)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as server:
        llm = LLMEngine(MODEL, api_base=server.api_base, api_key="sk-fake-local", retry=FAST, structured_output=True,
                        report_facts=ReportFacts())  # fmt: skip
        flock = Flock(env={})
        batch = BatchSpec(size=25, timeout=timedelta(seconds=60))
        flock.agent("report").consumes(Review, batch=batch).publishes(SnippetReport).with_engines(llm)
        await flock.publish_many(reviews)
        await flock.run_until_idle()
        await flock.shutdown()
        published = [a for a in await flock.store.list() if a.type_name == "QualitySnippetReport"]
        payloads = {a.id: a.payload for a in await flock.store.list() if a.type_name == "Review"}
        usage = flock.metrics().usage.get("report", {})
    exact = wrong_left = foreign_left = 0
    for artifact in published:
        items = [payloads[i] for i in artifact.derived_from if i in payloads]
        report = artifact.as_type(SnippetReport)
        computed = compute_facts(SnippetReport, items, ReportFacts())
        ids = valid_ids(items, len(items))
        problems = check_report(report, computed, ids, ReportFacts())
        exact += all(getattr(report, k) == v for k, v in computed.items())
        wrong_left += sum("the items give" in p for p in problems)
        foreign_left += sum("not in the batch" in p for p in problems)
    injected = model.wrong_numbers_sent + model.foreign_ids_sent
    caught = 1 - (wrong_left + foreign_left) / injected if injected else 1.0
    print(f"\n(d) report mode, {n} snippets in batches of 25, provider tampering with 30% of numbers and id lists: "
          f"{len(published)} reports, computed numbers exact in {exact}/{len(published)}; injected "
          f"{model.wrong_numbers_sent} wrong numbers and {model.foreign_ids_sent} foreign ids; "
          f"{usage.get('report_rejected', 0)} answers rejected and asked again, "
          f"{usage.get('report_facts_filled', 0)} values filled in, {usage.get('report_foreign_ids_dropped', 0)} id "
          f"lists cleaned; left in published reports: {wrong_left} wrong numbers, {foreign_left} foreign ids "
          f"(caught {caught:.0%}); calls {usage.get('llm_calls', 0)} for {len(published)} batches")  # fmt: skip
    return {"seed": seed, "injected": injected, "left": wrong_left + foreign_left, "exact": exact,
            "reports": len(published)}  # fmt: skip


async def part_a(data: Snippets, sample: int, seed: int) -> dict[str, Any]:
    cal = await bench_calibrate(data, sample, seed)
    show(f"(a) calibrate, sample {sample}, tolerance 5%", cal,
         ["collapse_at", "recommended", "true_best", "steps_below", "ok"])  # fmt: skip
    for row in cal:
        print(f"    collapse {row['collapse_at']}: agreement {row['agreement']} gold accuracy {row['accuracy']}")
    return {"seed": seed, "rows": cal, "ok": sum(row["ok"] for row in cal)}


async def part_b_fixed(data: Snippets, n: int, seed: int) -> dict[str, Any]:
    """(b) without audit at fixed sizes, largest first: the first size that holds is the cheapest that does."""
    fixed: list[dict[str, Any]] = []
    for size in (50, 25, 10, 5):
        fixed.append(await stream(data, n, size, audit=None, target=None, seed=seed))
        if size <= 25 and fixed[-1]["windows_at_target"] >= 0.95:
            break
    show(f"(b) {n} snippets, drift halfway (collapse 40 -> 12), windows of 100; fixed sizes, no audit", fixed,
         ["size", "windows_at_target", "agreement", "cost_per_item", "calls", "wall_s"])  # fmt: skip
    return {"seed": seed, "fixed": fixed}


GROW_AFTER: int | None = None
"""`--grow-after`: the controller's `grow_after` in (b) (None: its default)."""
PER_CALL = 1
"""`--per-call`: items asked alone per audited call in (b)'s adaptive run."""


async def part_b_adaptive(data: Snippets, n: int, rate: float, seed: int) -> dict[str, Any]:
    """(b) BatchSpec(size=50) + Audit(rate) + QualityTarget(0.95, min_audits=5[, grow_after])."""
    target = QualityTarget(TARGET, min_audits=5, grow_after=GROW_AFTER)
    print(f"    controller: {target}")
    adaptive = await stream(data, n, 50, audit=Audit(rate=rate, per_call=PER_CALL, seed=seed),
                          target=target, seed=seed)  # fmt: skip
    show(f"(b) {n} snippets, drift halfway (collapse 40 -> 12), windows of 100; adaptive: Audit(rate={rate:g}, "
         f"per_call={PER_CALL})",
         [adaptive], ["size", "windows_at_target", "agreement", "cost_per_item", "calls", "audit_calls",
                      "wall_s"])  # fmt: skip
    print(f"    adaptive size changes: {adaptive['size_changes']}; windows below target: {adaptive['below']}")
    for reason in adaptive["reasons"]:
        print(f"      - {reason}")
    return {"seed": seed, "adaptive": adaptive}


def judge_b(fixed: dict[str, Any], adaptive: dict[str, Any]) -> dict[str, Any]:
    """The adaptive run against the best fixed size in hindsight (the cheapest that holds 95% of windows)."""
    sizes, run = fixed["fixed"], adaptive["adaptive"]
    holding = [f for f in sizes if f["windows_at_target"] >= 0.95]
    best = min(holding, key=lambda f: f["cost_per_item"]) if holding else min(sizes, key=lambda f: f["size"])
    ratio = run["cost_per_item"] / best["cost_per_item"]
    share = run["windows_at_target"]
    return {"seed": fixed["seed"], "windows_at_target": share, "windows": run["windows"],
            "held": round(share * run["windows"]), "ratio": ratio, "best": best["size"],
            "best_cost": best["cost_per_item"], "cost": run["cost_per_item"],
            "ok": share >= 0.95 and ratio <= 1.20}  # fmt: skip


async def part_c(data: Snippets, n: int, seed: int) -> dict[str, Any]:
    """(c) Audit(rate=0.02) at size 25 without drift, against the same run without audit."""
    plain = await stream(data, n, 25, audit=None, target=None, seed=seed, drift=False)
    audited = await stream(data, n, 25, audit=Audit(rate=0.02, seed=seed), target=None, seed=seed, drift=False)
    calls_share = audited["audit_calls"] / audited["calls"]
    tokens_share = audited["audit_tokens"] / audited["tokens"]
    print(f"\n(c) audit at 2% of the calls, size 25, {n} snippets: {audited['audit_calls']} audit calls of "
          f"{audited['calls']} ({calls_share:.1%} of the run's calls); {audited['audit_tokens']:,} of "
          f"{audited['tokens']:,} tokens ({tokens_share:.1%}); {audited['agreement_audited']} items audited; "
          f"cost/item {audited['cost_per_item'] / plain['cost_per_item']:.3f}x the unaudited run")  # fmt: skip
    return {**audited, "seed": seed, "calls_share": calls_share, "tokens_share": tokens_share}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument(
        "--rate", type=float, default=0.6, help="audit rate (share of calls) of the adaptive run in (b)"
    )
    parser.add_argument("--only", choices=("a", "b", "bf", "ba", "c", "d"), default="",
                        help="run one part (bf: (b)'s fixed sizes, ba: (b)'s adaptive run)")  # fmt: skip
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds (0 is the tuning seed)")
    parser.add_argument("--save", default="", help="also write the figures as JSON to this file")
    parser.add_argument("--combine", nargs="+", help="print the criteria over the --save files of earlier runs")
    parser.add_argument("--grow-after", type=int, default=None, help="(b)'s QualityTarget(grow_after=)")
    parser.add_argument("--per-call", type=int, default=1, help="(b)'s Audit(per_call=): items audited per call")
    args = parser.parse_args()
    GROW_AFTER = args.grow_after
    PER_CALL = args.per_call
    if args.combine:
        combine(args.combine)
    else:
        seeds = [int(x) for x in args.seeds.split(",")]
        asyncio.run(main(args.n, args.sample, args.rate, args.only, seeds, args.save))
