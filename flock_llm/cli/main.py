"""The `flock-llm` command (also `python -m flock_llm`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engines import resolve_model
from ..errors import ConfigurationError, StoreError
from .checks import audit_rate, batch_size, finite, positive_seconds, positive_usd

__all__ = ["main"]

EXIT_OK = 0
EXIT_USAGE = 2
"""Bad arguments, an unreadable input file or an unusable output path: nothing was sent to a model."""
EXIT_FAILURES = 3
"""The run finished, but some reviews ended in failure records (or were not processed before --deadline), or
the outputs could not all be written."""
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flock-llm", description="Batch processing with LLM agents.")
    commands = parser.add_subparsers(dest="command", required=True)
    reviews = commands.add_parser(
        "reviews",
        help="batch a file of customer reviews through an LLM",
        description="Batch customer reviews (JSONL or CSV: id, rating, text) through an LLM agent. Uses "
        "FLOCK_LLM_MODEL or --model; without either, the built-in offline model (answers derived from the "
        "reviews by rules). "
        "Exit status: 0 all reviews processed; 2 usage error (nothing was sent); 3 some reviews failed, were "
        "not processed before --deadline, or their outputs could not be written; 130 interrupted.",
    )
    reviews.add_argument("file", type=Path, help="reviews as .jsonl or .csv")
    reviews.add_argument("--batch-size", type=batch_size, default=25, help="reviews per LLM call (default 25)")
    reviews.add_argument(
        "--timeout", type=positive_seconds, default=30.0, help="seconds before a partial batch flushes"
    )
    reviews.add_argument(
        "--model",
        help="litellm model string, e.g. openai/gpt-4.1-mini; `local` (or local:gemma3-270m) runs a small model "
        "on this machine for the run (needs the `local` extra)",
    )
    reviews.add_argument("--per-item", action="store_true", help="one sentiment label per review, not a trend report")
    reviews.add_argument("--output", "-o", default="-", help="where to write outputs as JSONL (default: stdout)")
    reviews.add_argument(
        "--request-timeout",
        type=positive_seconds,
        default=60.0,
        help="seconds one LLM request may take (default 60; at least 600 with --model local)",
    )
    reviews.add_argument(
        "--max-outage",
        type=positive_seconds,
        metavar="SECONDS",
        help="how long calls wait for a provider that is down (circuit breaker open) before their reviews fail "
        "with stage provider_unavailable (default 300)",
    )
    reviews.add_argument(
        "--deadline",
        type=positive_seconds,
        help="seconds the whole run may take; then reading stops and unfinished reviews are recorded as failed",
    )
    reviews.add_argument(
        "--store",
        help="a SQLite file to keep the run in (sqlite:///run.db): a run killed and started again with the same "
        "--store skips the reviews it finished (same id and content), runs changed and failed ones again, and "
        "pays for no finished batch twice; a store of another mode, model or command is refused",
    )
    reviews.add_argument(
        "--report", type=Path, help="also write a self-contained HTML report with charts (needs matplotlib)"
    )
    reviews.add_argument(
        "--estimate",
        action="store_true",
        help="print the expected calls, prompt tokens and cost without calling a model, and exit",
    )
    reviews.add_argument(
        "--budget",
        type=positive_usd,
        metavar="USD",
        help="cap what the run's LLM calls cost; reviews whose calls would pass it end as failures (stage "
        '"budget"; with --store they stay pending for the next run)',
    )
    reviews.add_argument(
        "--tier",
        choices=("standard", "flex", "batch"),
        default="standard",
        help="standard: answers in seconds; flex: half price, slower, falls back to standard; batch: provider "
        "batch jobs at half price (results within 24 h, usually minutes)",
    )
    reviews.add_argument(
        "--audit",
        type=audit_rate,
        metavar="RATE",
        help="with --per-item: in this share of the calls (0.02 = 2%%), ask one review again alone and compare the "
        "answers; the summary and --report show the agreement with its 95%% interval (the audit calls are counted, "
        "priced and capped by --budget; --estimate includes them)",
    )
    reviews.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    reviews.add_argument("--no-progress", action="store_true", help="no live progress bar")
    from .calibrate import add_parser as add_calibrate

    add_calibrate(commands)
    traces = commands.add_parser(
        "traces",
        help="recent batch flushes and LLM calls from a trace file",
        description="Show recent batch flushes and LLM calls recorded with "
        "FLOCK_AUTO_TRACE=true FLOCK_TRACE_FILE=true.",
    )
    traces.add_argument("--path", default=".flock/traces.duckdb", help="the DuckDB trace file")
    traces.add_argument("--limit", type=int, default=20, help="rows per table (default 20)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM (timeout, systemd, docker stop) before the run's own handler is set (loading litellm, starting the
    # local model server) is a Ctrl-C too: the server is stopped and the run says so, instead of dying silently
    previous = (
        signal.signal(signal.SIGTERM, _as_ctrl_c) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        with warnings.catch_warnings():
            _quiet_litellm_dropped_request()
            return _main(argv)
    except KeyboardInterrupt:  # before the run's own handler was set (loading litellm), or after it
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting changes nothing
        print("flock-llm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _quiet_litellm_dropped_request() -> None:
    """litellm's `acompletion` builds its request (a coroutine) in an executor thread and awaits it after: a call
    cancelled in between (its local model server died, a second Ctrl-C, --deadline) drops it unsent, and Python
    warns "coroutine 'OpenAIChatCompletion.acompletion' was never awaited" on the terminal. It is litellm's own
    coroutine, out of our reach, and nothing is lost (the request never went out), so the CLI does not show it."""
    warnings.filterwarnings(
        "ignore", message=r"coroutine 'OpenAIChatCompletion\.acompletion' was never awaited", category=RuntimeWarning
    )


def _as_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "traces":
        return _traces(Path(args.path), args.limit)
    if args.command == "calibrate":
        from .calibrate import run as calibrate

        return calibrate(args)
    from .checks import usage_problem
    from .resume import RunSettings
    from .rows import is_pipe

    try:
        model = _model_named(args.model)
    except ConfigurationError as exc:
        print(f"flock-llm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args.run_model = model  # as the store records it (`local:NAME`, not the name the local server serves)
    settings = RunSettings("per-item" if args.per_item else "report", model, args.batch_size)
    problem, resuming = usage_problem(args, settings)
    if not problem and resuming and is_pipe(args.file):
        problem = (
            f"--store {args.store!r} holds an earlier run: resuming compares the input with it and reads the input "
            "twice, which a named pipe cannot do; save the input to a file first"
        )
    if problem:
        print(f"flock-llm: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.estimate:
        try:
            from .estimate import print_estimate

            return print_estimate(args)
        except (ConfigurationError, StoreError) as exc:
            print(f"flock-llm: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return _locked(args, settings, resuming)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Signals that stop a run the way Ctrl-C does: the batches in flight finish, the summary is printed, exit 130."""


def _model_named(model: str | None) -> str:
    """The model a run's arguments name: a litellm model string, or `local[:NAME]` (checked, not started)."""
    from .local import local_name

    name = local_name(model)
    if name is None:
        return resolve_model(None, model, os.environ)
    from ..testing.local_server import known_local_model, unknown_local_model

    if not known_local_model(name):
        raise unknown_local_model(name)
    return f"local:{name}"


def _locked(args: argparse.Namespace, settings: Any, resuming: bool) -> int:
    """Run holding --store (a second run on it at once is refused: it would pay for every review again)."""
    from .resume import StoreLock, store_problem
    from .rows import is_pipe

    lock = StoreLock(args.store) if args.store is not None else None
    if lock is not None:
        if not lock.acquire():
            print(
                f"flock-llm: --store {args.store!r} is in use by another run; wait for it to finish, or give a new "
                "--store file",
                file=sys.stderr,
            )
            return EXIT_USAGE
        problem, resuming = store_problem(args.store, settings)  # as it is now that no other run can change it
        if not problem and resuming and is_pipe(args.file):
            problem = "--store holds an earlier run: resuming reads the input twice, which a named pipe cannot do"
        if problem:
            lock.release(refused=True)
            print(f"flock-llm: {problem}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return _start(args, resuming)
    except (ConfigurationError, StoreError) as exc:
        print(f"flock-llm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if lock is not None:
            lock.release()


def _start(args: argparse.Namespace, resuming: bool) -> int:
    """Load what the run needs (seconds: a Ctrl-C meanwhile is a plain KeyboardInterrupt, nothing was opened for
    writing yet), then run it."""
    from ..engines import load_litellm
    from .local import LOCAL_REQUEST_TIMEOUT_S, local_name, serve_local
    from .resume import anything_left, fingerprint
    from .reviews import AGENT
    from .rows import count_rows, iter_reviews

    load_litellm()  # needed by every run; loaded now so that
    gc.freeze()  # the ~500,000 objects of the imports are never traversed by the garbage collector again
    current = {fingerprint(r) for r in iter_reviews(args.file, lambda bad: None)} if resuming else None
    total = count_rows(args.file)
    # a Ctrl-C while the local model server starts (nothing was sent yet) stops it and goes on to main(), which
    # says "interrupted" and ignores a second Ctrl-C while exiting
    # an empty input, or a store that finished every review of it (read first for a local model only), sends
    # nothing: no server is started for it
    local = local_name(args.model) is not None
    needed = total != 0 and (current is None or not local or anything_left(args.store, AGENT, current))
    with serve_local(args.model, needed=needed) as (args.model, args.llm_settings, args.server_exited):
        if args.llm_settings:  # a small model on a CPU: a request may take minutes
            args.request_timeout = max(args.request_timeout, LOCAL_REQUEST_TIMEOUT_S)
        return asyncio.run(_reviews(args, current, total))


async def _reviews(args: argparse.Namespace, current: set[bytes] | None, total: int | None) -> int:
    from rich.console import Console

    from .output import OutputFile
    from .report import Figures
    from .rows import iter_reviews
    from .terminal import Sink, interrupt_handler, print_summary, progress_bar, say

    console = Console(stderr=True)
    bad_rows = 0

    def skipped(bad: Any) -> None:
        nonlocal bad_rows
        bad_rows += 1
        say(console, f"{args.file}:{bad.line}: skipped: {bad.error}", "yellow")

    reviews = iter_reviews(args.file, skipped)
    stop, abort = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    on_interrupt = interrupt_handler(console, stop, abort)
    for signum in _STOP_SIGNALS:  # SIGTERM (timeout, systemd, docker stop, a CI cancel) is a Ctrl-C too
        loop.add_signal_handler(signum, on_interrupt)
    figures = Figures() if args.report is not None else None
    target = None if args.output == "-" else Path(args.output)
    with OutputFile(target) as output:  # started afresh only when the run is set up (a refused run leaves it)
        sink = Sink(output, console, stop, figures)
        progress, task = progress_bar(console, total, disabled=args.no_progress)
        try:
            summary = await _run(args, reviews, sink, stop, abort, progress, task, current, output.start)
        finally:
            progress.stop()
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)
    summary.bad_rows = bad_rows
    if sink.unwritten:  # the sink stopped the run, not a Ctrl-C
        summary.unwritten, summary.interrupted = sink.unwritten, False
    if figures is not None:
        from .report import write_report

        write_report(args.report, summary, figures, summary.agreement_intervals)
    if args.json:
        print(json.dumps(finite(summary.as_dict()), indent=2, allow_nan=False))
    else:
        print_summary(console, summary)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.failed_items or summary.deadline_reached or summary.unwritten:
        return EXIT_FAILURES
    return EXIT_OK


async def _run(
    args: argparse.Namespace,
    reviews: Any,
    sink: Any,
    stop: asyncio.Event,
    abort: asyncio.Event,
    progress: Any,
    task: Any,
    current: set[bytes] | None,
    on_start: Any,
) -> Any:
    from .reviews import run_reviews

    def on_jobs(submitted: int, running: int, done: int) -> None:
        description = f"reviews (batch jobs: {submitted} submitted, {running} running, {done} done)"
        progress.update(task, description=description)

    return await run_reviews(
        reviews,
        on_records=sink,
        batch_size=args.batch_size,
        timeout_s=args.timeout,
        model=args.model,
        per_item=args.per_item,
        on_progress=lambda n: progress.advance(task, n),
        stop=stop,
        request_timeout=args.request_timeout,
        deadline_s=args.deadline,
        abort=abort,
        store=args.store,
        budget_usd=args.budget,
        tier=args.tier,
        on_jobs=on_jobs,
        resume=current,
        max_outage=args.max_outage,
        on_start=on_start,
        llm_settings=args.llm_settings,
        audit_rate=args.audit,
        run_model=args.run_model,
        server_exited=args.server_exited,
    )


def _traces(path: Path, limit: int) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..tracing.reader import recent_flushes, recent_llm_calls

    console = Console()
    if not path.is_file():
        print(
            f"flock-llm: no trace file at {path}; run with FLOCK_AUTO_TRACE=true FLOCK_TRACE_FILE=true", file=sys.stderr
        )
        return 2
    flushes = Table(title=f"recent batch flushes ({path})")
    for column in ("time", "agent", "size", "configured", "reason", "efficiency", "wait ms", "duration ms"):
        flushes.add_column(column)
    for row in recent_flushes(path, limit):
        flushes.add_row(*(escape(str(cell)) for cell in row))  # agent names are user text, not markup
    calls = Table(title="recent LLM calls")
    for column in ("time", "agent", "model", "kind", "items", "prompt tok", "completion tok", "cost", "outcome"):
        calls.add_column(column)
    for row in recent_llm_calls(path, limit):
        calls.add_row(*(escape(str(cell)) for cell in row))
    console.print(flushes)
    console.print(calls)
    return 0
