"""The review job behind `flock-llm reviews`: read reviews, batch them through an LLM agent, summarise.

Pure pieces (reading rows, building the summary) are separate from the run,
so they are easy to test; the CLI adds the terminal around them.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ..artifact import Artifact, FailureRecord
from ..engines._base import Engine, EngineContext, EvalInputs, EvalResult
from ..engines._models import OFFLINE_MODEL, resolve_model
from ..engines.llm import LLMEngine
from ..errors import ConfigurationError
from ..orchestrator import Flock
from ..registry import flock_type
from ..subscription import BatchSpec

__all__ = ["BadRow", "Review", "ReviewLabel", "ReviewTrend", "RunSummary", "read_reviews", "run_reviews"]


@flock_type(name="Review")
class Review(BaseModel):
    """One customer review."""

    review_id: str
    rating: int = Field(ge=1, le=5)
    text: str


@flock_type(name="ReviewTrend")
class ReviewTrend(BaseModel):
    """What the trend agent publishes for each batch of reviews."""

    review_count: int = Field(description="how many reviews this report covers")
    average_rating: float
    overall_sentiment: str = Field(description="positive, mixed or negative")
    top_themes: list[str] = Field(description="the most common topics, most frequent first")
    summary: str


@flock_type(name="ReviewLabel")
class ReviewLabel(BaseModel):
    """What the per-item agent publishes for each review."""

    review_id: str
    label: str = Field(description="positive, neutral or negative")
    reason: str = Field(description="a few words explaining the label")


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    error: str


INTERRUPT_GRACE_S = 30.0
"""After a first Ctrl-C, how long the batches in flight may take before they are cancelled."""
MAX_FIELD_CHARS = 128 * 1024
"""A row with a field longer than this is reported, not read (csv's own limit; JSONL follows it)."""
_UNDECODABLE = re.compile("[\udc80-\udcff]")
"""Bytes that are not UTF-8, as decoded with errors="surrogateescape"."""


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                continue
            if not line.strip():
                continue
            if len(line) > MAX_FIELD_CHARS + 1024:
                yield number, None, f"line longer than {MAX_FIELD_CHARS + 1024:,} characters"
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            except (ValueError, RecursionError) as exc:  # e.g. an integer of thousands of digits, deep nesting
                yield number, None, f"not readable JSON ({type(exc).__name__}: {str(exc)[:80]})"
                continue
            if not isinstance(value, dict):
                yield number, None, f"expected a JSON object, got {type(value).__name__}"
                continue
            yield number, value, ""


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader goes on with the next record
                yield reader.line_num + 1, None, f"not readable CSV ({exc})"
                continue
            if any(isinstance(v, str) and _UNDECODABLE.search(v) for v in row.values()):
                yield reader.line_num, None, "not valid UTF-8"
                continue
            yield reader.line_num, dict(row), ""


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, row or None, why it could not be read)."""
    return _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)


def _review_problem(row: dict[str, Any]) -> str:
    """What makes a row unusable before validation (pydantic would quietly coerce these), or ""."""
    if "review_id" not in row and "id" in row:
        row["review_id"] = row.pop("id")
    review_id = row.get("review_id")
    if isinstance(review_id, bool) or not isinstance(review_id, (str, int)) or str(review_id).strip() == "":
        shown = "null" if review_id is None else type(review_id).__name__
        return f"`id` must be a non-empty string or an integer, got {shown}"
    row["review_id"] = str(review_id)
    rating = row.get("rating")
    if isinstance(rating, bool) or (isinstance(rating, str) and len(rating.strip()) > 3):
        return "rating: must be a whole number from 1 to 5"
    text = row.get("text")
    if isinstance(text, str) and len(text) > MAX_FIELD_CHARS:
        return f"text: longer than {MAX_FIELD_CHARS:,} characters"
    return ""


def read_reviews(path: Path) -> tuple[list[Review], list[BadRow]]:
    """Reviews from JSONL or CSV (fields id or review_id, rating, text; UTF-8, with or without a BOM); rows
    that cannot be used are returned with their line numbers, never dropped silently: not UTF-8, not JSON,
    a field over MAX_FIELD_CHARS, an id that is null, an object or a boolean, a duplicate id, a rating that is
    a boolean or not a whole number from 1 to 5.

    Raises:
        ConfigurationError: the file does not exist or is not .jsonl/.json/.csv.
    """
    if not path.is_file():
        raise ConfigurationError(f"no such file: {str(path)!r}")
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
        raise ConfigurationError(f"{str(path)!r}: expected a .jsonl or .csv file")
    reviews: list[Review] = []
    bad: list[BadRow] = []
    first_seen: dict[str, int] = {}
    for line, row, problem in _rows(path):
        if row is not None:
            problem = _review_problem(row)
        if row is None or problem:
            bad.append(BadRow(line, problem))
            continue
        try:
            review = Review.model_validate(row)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            bad.append(BadRow(line, details))
            continue
        if review.review_id in first_seen:
            bad.append(
                BadRow(line, f"duplicate id {review.review_id!r} (first on line {first_seen[review.review_id]})")
            )
            continue
        first_seen[review.review_id] = line
        reviews.append(review)
    return reviews, bad


@dataclass
class RunSummary:
    """What a review run did; printed as a table or as JSON."""

    model: str
    offline: bool
    mode: str
    items: int = 0
    bad_rows: int = 0
    batches: int = 0
    flush_reasons: dict[str, int] = field(default_factory=dict)
    outputs: int = 0
    failed_items: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    per_item_prompt_tokens: int = 0
    calls_saved: int = 0
    prompt_tokens_saved: int = 0
    retries: int = 0
    fallbacks: int = 0
    wall_s: float = 0.0
    resumed: int = 0
    """Reviews a resumed run found in its store already (not published, not paid for again)."""
    interrupted: bool = False
    deadline_reached: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Counting(Engine):
    """Passes work to the real engine and reports how many items each run finished."""

    def __init__(self, inner: Engine, on_done: Callable[[int], None]) -> None:
        self.inner = inner
        self.on_done = on_done

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
    reviews: list[Review],
    *,
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
) -> tuple[list[dict[str, Any]], RunSummary]:
    """Publish `reviews` into a batching LLM agent; return its outputs and failure records (as JSONL
    records, oldest first) and a summary.

    When `stop` is set, publishing stops, partial batches flush (reason "shutdown") and the run
    finishes what it has, for at most `grace_s`: nothing already published is lost. When `abort` is set, what is
    still running is cancelled at once (its reviews become failure records with stage "cancelled").
    `request_timeout` bounds each LLM request; `deadline_s` the whole run: at the deadline, reading stops and
    what is still running is cancelled. With `store` ("sqlite:///run.db") the run resumes: reviews already in
    the file (by review id) are not published again, pending ones are restored, and finished outputs are kept.
    """
    loop = asyncio.get_running_loop()
    deadline = None if deadline_s is None else loop.time() + deadline_s
    stop = stop or asyncio.Event()
    timer = None if deadline_s is None else loop.call_later(deadline_s, stop.set)
    flock = Flock(model=model, env=env, store=store)
    concurrency = 4
    done = 0
    progressed = asyncio.Event()

    def finished(n: int) -> None:
        nonlocal done
        done += n
        progressed.set()
        on_progress(n)

    output_type = ReviewLabel if per_item else ReviewTrend
    engine = LLMEngine(per_item=per_item, timeout=request_timeout)
    (
        flock.agent("review_analyst")
        .description(
            "Label each customer review's sentiment with a short reason."
            if per_item
            else "Find sentiment trends across a batch of customer reviews: count them, average the ratings, "
            "name the overall sentiment and the most common themes, and summarise."
        )
        .consumes(Review, batch=BatchSpec(size=batch_size, timeout=timedelta(seconds=timeout_s)))
        .publishes(output_type)
        .with_engines(_Counting(engine, finished))
        .max_concurrency(concurrency)
    )
    resolved = resolve_model(None, model, os.environ if env is None else env)
    summary = RunSummary(model=resolved, offline=resolved == OFFLINE_MODEL, mode="per-item" if per_item else "report")
    started = time.perf_counter()
    await flock.start()  # with a store: restore what an earlier run left pending
    review_ids = {a.id: a.as_type(Review).review_id for a in await flock.store.artifacts_by_type(Review)}
    # Backpressure: keep at most `window` reviews in flight (whole batches for every worker and one more), so
    # an interrupt stops at the next review instead of after the whole file was handed over.
    window = batch_size * (concurrency + 1)
    for review in reviews:
        while summary.items - done >= window and not stop.is_set():
            progressed.clear()
            await _first(progressed.wait(), stop.wait())
        if stop.is_set():
            break
        artifact_id = review_artifact_id(review)
        if artifact_id in review_ids:
            summary.resumed += 1  # published by an earlier run of this store: done, or restored and pending
            on_progress(1)
            continue
        await flock.publish(Artifact(type_name="Review", payload=review, id=artifact_id))
        review_ids[artifact_id] = review.review_id
        summary.items += 1
        await asyncio.sleep(0)  # let timers and finished runs through between rows
    aborter = loop.create_task(_cancel_on(abort, flock)) if abort is not None else None
    limit = None if deadline is None else max(0.0, deadline - loop.time())
    if stop.is_set() and not (deadline is not None and loop.time() >= deadline):
        limit = grace_s if limit is None else min(limit, grace_s)  # interrupted: finish within a bounded time
    try:
        await flock.shutdown(timeout=limit)
    finally:
        if aborter is not None:
            aborter.cancel()
    if timer is not None:
        timer.cancel()
    summary.wall_s = time.perf_counter() - started
    summary.deadline_reached = deadline is not None and loop.time() >= deadline
    summary.interrupted = stop.is_set() and not summary.deadline_reached
    results = [a for a in await flock.store.list() if a.produced_by == "review_analyst"]
    _fill_summary(summary, flock, results)
    return [output_record(a, review_ids) for a in results], summary


def review_artifact_id(review: Review) -> str:
    """The artifact id of a review: derived from its review id, so a resumed run recognises it."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"flock-llm-review:{review.review_id}").hex


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


def _fill_summary(summary: RunSummary, flock: Flock, results: list[Artifact]) -> None:
    metrics = flock.metrics()
    usage = metrics.usage.get("review_analyst", {})
    summary.batches = sum(metrics.flush_counts.values())
    summary.flush_reasons = dict(metrics.flush_counts)
    summary.outputs = sum(1 for a in results if a.type_name != "FailureRecord")
    failures = [a.as_type(FailureRecord) for a in results if a.type_name == "FailureRecord"]
    summary.failed_items = sum(len(f.input_ids) for f in failures)
    summary.llm_calls = int(usage.get("llm_calls", 0))
    summary.prompt_tokens = int(usage.get("prompt_tokens", 0))
    summary.completion_tokens = int(usage.get("completion_tokens", 0))
    summary.cost_usd = usage.get("cost_usd")
    summary.per_item_prompt_tokens = int(usage.get("per_item_prompt_tokens", 0))
    summary.calls_saved = summary.items - summary.llm_calls
    summary.prompt_tokens_saved = summary.per_item_prompt_tokens - summary.prompt_tokens
    summary.retries = int(usage.get("retries", 0))
    summary.fallbacks = int(usage.get("fallbacks", 0))


def output_record(artifact: Artifact, review_ids: dict[str, str]) -> dict[str, Any]:
    """One JSONL line of the run's output: the object, and which reviews it came from."""
    return {
        "type": artifact.type_name,
        "id": artifact.id,
        "review_ids": [review_ids.get(i, i) for i in artifact.derived_from],
        "data": artifact.payload.model_dump(mode="json"),
    }
