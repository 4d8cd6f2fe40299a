"""The review job behind `flock-llm reviews`: stream reviews through a batching LLM agent, hand each finished
batch's outputs on as it finishes, summarise.

Reading rows is in `rows.py`, writing outputs in `output.py`; the CLI adds the terminal around them. Memory is
bounded by the batches in flight, not by the file: reviews are read one at a time with backpressure, the
in-memory store forgets what was consumed, and outputs leave as soon as they are written.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .._runtime.work import FinishedRun
from ..artifact import Artifact
from ..engines import OFFLINE_MODEL, Engine, EngineContext, EvalInputs, EvalResult, resolve_model
from ..engines.llm import BreakerPolicy, DeferredPolicy, LLMEngine
from ..errors import ConfigurationError
from ..orchestrator import Flock
from ..quality.audit import Audit
from ..stores.memory import InMemoryStore
from ..subscription import BatchSpec
from .local import watched
from .resume import (
    RunSettings,
    accepts,
    fingerprint,
    plan_from_store,
    quiet_refused_restores,
    store_path,
    write_settings,
)
from .review_types import NOT_COMPARED, Review, ReviewLabel, ReviewTrend
from .rows import BadRow, iter_reviews, read_reviews
from .summary import RunSummary

__all__ = [
    "BadRow",
    "Review",
    "ReviewLabel",
    "ReviewTrend",
    "RunSummary",
    "iter_reviews",
    "read_reviews",
    "run_reviews",
]

AGENT = "review_analyst"


INTERRUPT_GRACE_S = 30.0
"""After a first Ctrl-C, how long the batches in flight may take before they are cancelled."""


CONCURRENCY = 4
"""Batches the review agent runs at once."""
BATCH_TIER_CONCURRENCY = 100
"""With --tier batch: batches waiting for their provider batch jobs at once (a run waits, it does not work)."""


class _InFlight:
    """How many published reviews have finished their runs (for backpressure and the progress bar)."""

    def __init__(self, on_progress: Callable[[int], None]) -> None:
        self.done = 0
        self.progressed = asyncio.Event()
        self.on_progress = on_progress

    def __call__(self, n: int) -> None:
        self.done += n
        self.progressed.set()
        self.on_progress(n)


def describe(per_item: bool) -> str:
    """The review agent's task, as its prompt states it."""
    if per_item:
        return "Label each customer review's sentiment with a short reason."
    return (
        "Find sentiment trends across a batch of customer reviews: count them, average the ratings, "
        "name the overall sentiment and the most common themes, and summarise."
    )


@dataclass(frozen=True, slots=True)
class _AgentSpec:
    per_item: bool
    batch: BatchSpec
    request_timeout: float
    tier: str
    max_outage: float | None
    where: Callable[[Review], bool] | None
    llm_settings: Mapping[str, Any]
    audit_rate: float | None = None
    server_exited: Callable[[], str | None] | None = None


def _add_agent(flock: Flock, spec: _AgentSpec, in_flight: _InFlight) -> LLMEngine:
    deferred = DeferredPolicy(poll_interval=_poll_interval(os.environ.get("FLOCK_BATCH_POLL_S", "5")))
    breaker = None if spec.max_outage is None else BreakerPolicy(max_outage=spec.max_outage)
    audit: dict[str, Any] = {}
    if spec.audit_rate is not None:
        audit["audit"] = Audit(rate=spec.audit_rate, ignore=NOT_COMPARED if spec.per_item else ())
    engine = LLMEngine(
        per_item=spec.per_item,
        timeout=spec.request_timeout,
        tier=spec.tier,
        deferred=deferred,
        breaker=breaker,
        **spec.llm_settings,
        **audit,
    )
    per_item, tier = spec.per_item, spec.tier
    (
        flock.agent(AGENT)
        .description(describe(per_item))
        .consumes(Review, batch=spec.batch, where=spec.where)
        .publishes(ReviewLabel if per_item else ReviewTrend)
        .with_engines(_Counting(watched(engine, spec.server_exited), in_flight))
        .max_concurrency(BATCH_TIER_CONCURRENCY if tier == "batch" else CONCURRENCY)
    )
    return engine


def _poll_interval(text: str) -> float:
    """FLOCK_BATCH_POLL_S: the first poll interval of provider batch jobs, in seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"FLOCK_BATCH_POLL_S must be a positive number of seconds, got {text!r}")
    return value


async def _feed(
    flock: Flock,
    reviews: Iterable[Review],
    summary: RunSummary,
    done: set[bytes] | None,
    window: int,
    stop: asyncio.Event,
    in_flight: _InFlight,
) -> None:
    """Publish reviews one at a time, keeping at most `window` unfinished; until `stop` or the end of the file."""
    for review in reviews:
        while summary.items - in_flight.done >= window and not stop.is_set():
            in_flight.progressed.clear()
            await _first(in_flight.progressed.wait(), stop.wait())
        if stop.is_set():
            break
        if done is not None and fingerprint(review) in done:
            summary.resumed += 1  # an earlier run of this store finished it, or it is restored and pending
            in_flight.on_progress(1)
            continue
        await flock.publish(Artifact(type_name="Review", payload=review, id=review_artifact_id(review)))
        summary.items += 1
        await asyncio.sleep(0)  # let timers and finished runs through between rows


class _Counting(Engine):
    """Passes work to the real engine and reports how many items each run finished."""

    def __init__(self, inner: Engine, on_done: Callable[[int], None]) -> None:
        self.inner = inner
        self.on_done = on_done

    def item_tokens(self, ctx: EngineContext, artifact: Artifact) -> int:
        return self.inner.item_tokens(ctx, artifact)

    def batch_token_budget(self, ctx: EngineContext, size: int | None) -> int | None:
        return self.inner.batch_token_budget(ctx, size)

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        try:
            return await self.inner.evaluate(ctx, inputs)
        finally:
            self.on_done(len(inputs))

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        try:
            return await self.inner.evaluate_batch(ctx, inputs)
        finally:
            self.on_done(len(inputs))


async def run_reviews(
    reviews: Iterable[Review],
    *,
    on_records: Callable[[list[dict[str, Any]]], None],
    batch_size: int = 25,
    timeout_s: float = 30.0,
    model: str | None = None,
    per_item: bool = False,
    env: dict[str, str] | None = None,
    on_progress: Callable[[int], None] = lambda n: None,
    stop: asyncio.Event | None = None,
    request_timeout: float = 60.0,
    deadline_s: float | None = None,
    abort: asyncio.Event | None = None,
    grace_s: float = INTERRUPT_GRACE_S,
    store: str | None = None,
    budget_usd: float | None = None,
    tier: str = "standard",
    on_jobs: Callable[[int, int, int], None] = lambda submitted, running, done: None,
    resume: set[bytes] | None = None,
    max_outage: float | None = None,
    on_start: Callable[[], None] = lambda: None,
    llm_settings: Mapping[str, Any] | None = None,
    audit_rate: float | None = None,
    run_model: str | None = None,
    server_exited: Callable[[], str | None] | None = None,
) -> RunSummary:
    """Publish `reviews` (read lazily, with backpressure) into a batching LLM agent and hand each finished batch's
    outputs and failure records to `on_records` (as JSONL records) as soon as the batch is committed; return a
    summary.

    When `stop` is set, publishing stops, partial batches flush (reason "shutdown") and the run
    finishes what it has, for at most `grace_s`: nothing already published is lost. When `abort` is set, what is
    still running is cancelled at once (its reviews become failure records with stage "cancelled").
    `request_timeout` bounds each LLM request; `deadline_s` the whole run: at the deadline, reading stops and
    what is still running is cancelled. `budget_usd` caps what the calls cost (the reviews of calls not made
    end in failure records with stage "budget"; with a store they stay pending). `max_outage` bounds how long
    calls wait for a provider that is down (BreakerPolicy). With `store` ("sqlite:///run.db") the run is kept
    in a reviews store (see `resume.py`); `resume` is then the fingerprints of every review of the input when the
    store holds an earlier run: its outputs for reviews still in the input, unchanged, are handed to
    `on_records` first, those reviews (finished, or restored pending) are not published again, and the rest
    (changed, new, failed) are. Without a store, the in-memory store forgets each review once its batch ran and
    each output once `on_records` took it, so memory does not grow with the file. `on_start` is called once the
    run is set up (its settings checked), before anything is restored or published. With `audit_rate` (per-item
    only), that share of the calls has one review asked again alone; the summary gets the agreement.
    `server_exited` (the CLI's local model server: None while it runs, else how it exited) is checked while
    calls are in flight: once it says the server is gone, they and every later call fail at once with that.
    `run_model` is the model as the summary names it and the store's run settings record it (default: `model`
    resolved): the CLI's `local:NAME`, whose server serves it under another name, so that a resume with the same
    `--model` finds the same settings.
    """
    loop = asyncio.get_running_loop()
    deadline = None if deadline_s is None else loop.time() + deadline_s
    stop = stop or asyncio.Event()
    timer = None if deadline_s is None else loop.call_later(deadline_s, stop.set)
    memory = InMemoryStore(keep_consumed=False) if store is None else None
    flock = Flock(model=model, env=env, store=memory if memory is not None else store, budget_usd=budget_usd)
    in_flight = _InFlight(on_progress)
    batch = BatchSpec(size=batch_size, timeout=timedelta(seconds=timeout_s))
    where = None if resume is None else accepts(resume)
    settings = llm_settings or {}
    spec = _AgentSpec(per_item, batch, request_timeout, tier, max_outage, where, settings, audit_rate, server_exited)
    engine = _add_agent(flock, spec, in_flight)
    resolved = resolve_model(None, model, os.environ if env is None else env)
    mode = "per-item" if per_item else "report"
    summary = RunSummary(model=run_model or resolved, offline=resolved == OFFLINE_MODEL, mode=mode)
    if store is not None:
        write_settings(store_path(store), RunSettings(summary.mode, summary.model, batch_size))

    def hand_on(published: Sequence[Artifact], review_ids: dict[str, str]) -> None:
        summary.count(published)
        on_records([output_record(a, review_ids) for a in published])
        if memory is not None:
            memory.discard(a.id for a in published)  # written: nothing keeps it any more

    def finished_run(run: FinishedRun) -> None:
        if run.agent == AGENT:
            hand_on(run.published, {a.id: a.payload.review_id for a in run.inputs if isinstance(a.payload, Review)})

    on_start()
    started = time.perf_counter()
    with quiet_refused_restores():
        await flock.start()  # with a store: restore what an earlier run left pending (and still in the input)
    done: set[bytes] | None = None
    if resume is not None:
        plan = await plan_from_store(flock.store, AGENT, resume)
        summary.stale, summary.retried, done = plan.stale, plan.retried, plan.done
        hand_on(plan.outputs, plan.review_ids)
    flock.on_finished_run(finished_run)
    # Backpressure: keep at most `window` reviews in flight (whole batches for every worker and one more), so
    # memory stays bounded and an interrupt stops at the next review instead of after the whole file.
    ticker = loop.create_task(_report_jobs(engine, on_jobs)) if tier == "batch" else None
    concurrency = BATCH_TIER_CONCURRENCY if tier == "batch" else CONCURRENCY
    await _feed(flock, reviews, summary, done, batch_size * (concurrency + 1), stop, in_flight)
    await _shut_down(flock, stop, abort, deadline, grace_s)
    if timer is not None:
        timer.cancel()
    summary.wall_s = time.perf_counter() - started
    summary.deadline_reached = deadline is not None and loop.time() >= deadline
    summary.interrupted = stop.is_set() and not summary.deadline_reached
    if ticker is not None:
        ticker.cancel()
        summary.jobs_submitted = engine.deferred_queue().jobs_submitted
    summary.tier = tier
    summary.audit_rate = audit_rate
    _fill_summary(summary, flock)
    return summary


async def _shut_down(
    flock: Flock, stop: asyncio.Event, abort: asyncio.Event | None, deadline: float | None, grace_s: float
) -> None:
    """Finish what was published: by the deadline; within `grace_s` once interrupted; at once on `abort`."""
    loop = asyncio.get_running_loop()
    aborter = loop.create_task(_cancel_on(abort, flock)) if abort is not None else None
    graced = loop.create_task(_cancel_after_grace(stop, grace_s, flock))  # also a Ctrl-C during the shutdown
    limit = None if deadline is None else max(0.0, deadline - loop.time())
    if stop.is_set() and not (deadline is not None and loop.time() >= deadline):
        limit = grace_s if limit is None else min(limit, grace_s)  # interrupted: finish within a bounded time
    try:
        await flock.shutdown(timeout=limit)
    finally:
        graced.cancel()
        if aborter is not None:
            aborter.cancel()


async def _report_jobs(engine: LLMEngine, on_jobs: Callable[[int, int, int], None]) -> None:
    """Tell the progress display how the provider batch jobs stand, twice a second."""
    queue = engine.deferred_queue()
    while True:
        on_jobs(queue.jobs_submitted, queue.jobs_running, queue.jobs_done)
        await asyncio.sleep(0.5)


def review_artifact_id(review: Review) -> str:
    """A new artifact id for a review (a resumed run recognises reviews by their fingerprints, not by ids: a
    review that runs again gets a fresh artifact, and the store keeps the old one's history)."""
    return uuid.uuid4().hex


async def _cancel_after_grace(stop: asyncio.Event, grace_s: float, flock: Flock) -> None:
    """Once interrupted (before or after the input was read), the batches in flight get `grace_s`, then they are
    cancelled: a hung request is not waited for into its timeout."""
    await stop.wait()
    await asyncio.sleep(grace_s)
    flock.cancel_running()


async def _cancel_on(abort: asyncio.Event, flock: Flock) -> None:
    await abort.wait()
    flock.cancel_running()


async def _first(*waits: Any) -> None:
    """Wait until the first of several awaitables finishes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _fill_summary(summary: RunSummary, flock: Flock) -> None:
    metrics = flock.metrics()
    usage = metrics.usage.get(AGENT, {})
    summary.batches = sum(metrics.flush_counts.values())
    summary.flush_reasons = dict(metrics.flush_counts)
    summary.llm_calls = int(usage.get("llm_calls", 0))
    summary.prompt_tokens = int(usage.get("prompt_tokens", 0))
    summary.completion_tokens = int(usage.get("completion_tokens", 0))
    summary.cached_prompt_tokens = int(usage.get("cached_prompt_tokens", 0))
    summary.budget_usd = None if flock.budget is None else flock.budget.budget_usd
    summary.cost_usd = usage.get("cost_usd")
    summary.per_item_prompt_tokens = int(usage.get("per_item_prompt_tokens", 0))
    summary.calls_saved = summary.items - summary.llm_calls
    summary.prompt_tokens_saved = summary.per_item_prompt_tokens - summary.prompt_tokens
    summary.retries = int(usage.get("retries", 0))
    summary.fallbacks = int(usage.get("fallbacks", 0))
    fixes = ("mapped_ids", "missing_ids", "unknown_ids", "duplicate_ids", "format_fallbacks")
    summary.answer_fixes = {name: int(usage.get(name, 0)) for name in fixes}
    summary.audit_calls = int(usage.get("audit_llm_calls", 0))
    summary.audit_tokens = int(usage.get("audit_prompt_tokens", 0)) + int(usage.get("audit_completion_tokens", 0))
    summary.set_agreement(metrics.agreement(AGENT))


def output_record(artifact: Artifact, review_ids: dict[str, str]) -> dict[str, Any]:
    """One JSONL line of the run's output: the object, and which reviews it came from (a label's `review_id` is
    the review's own: the answer is matched to its review by key, and a small model writes junk like "][" there)."""
    ids = [review_ids.get(i, i) for i in artifact.derived_from]
    data = artifact.payload.model_dump(mode="json")
    if isinstance(artifact.payload, ReviewLabel) and len(ids) == 1:
        data["review_id"] = ids[0]
    return {"type": artifact.type_name, "id": artifact.id, "review_ids": ids, "data": data}
