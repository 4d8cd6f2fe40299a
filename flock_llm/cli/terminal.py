"""What `flock-llm reviews` shows on the terminal (stderr): skipped rows, the progress bar, interrupts, the
summary table. Text that comes from the user (file names, review ids, model names, error texts) is escaped:
Rich would read `[/x]` or `[link=...]` in it as markup."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["Sink", "interrupt_handler", "print_summary", "progress_bar", "say"]


def say(console: Console, text: str, style: str = "") -> None:
    """Print `text` as it is (no markup read from it), in `style`."""
    console.print(escape(text), style=style or None, highlight=False, soft_wrap=True)


class Sink:
    """Writes each finished batch's records (and adds them to the report's figures); when the output cannot be
    written (disk full, say), says so once, stops reading (the batches in flight finish) and counts what could
    not be written (exit status 3)."""

    def __init__(self, output: Any, console: Console, stop: asyncio.Event, figures: Any = None) -> None:
        self.output = output
        self.console = console
        self.stop = stop
        self.figures = figures
        self.unwritten = 0

    def __call__(self, records: list[dict[str, Any]]) -> None:
        if self.figures is not None:
            self.figures.add(records)
        if not self.unwritten:
            try:
                self.output.write(records)
                return
            except (OSError, ValueError) as exc:  # ValueError: a record JSON cannot carry
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                say(self.console, f"flock-llm: cannot write the outputs: {reason}; stopping", "red")
                self.stop.set()
        self.unwritten += len(records)


def interrupt_handler(console: Console, stop: asyncio.Event, abort: asyncio.Event) -> Any:
    """First Ctrl-C: stop reading and finish what is in flight (bounded); second: cancel it. Either way the
    finished outputs are written and the exit status is 130, without a traceback."""

    def handler() -> None:
        if not stop.is_set():
            say(console, "interrupted: finishing the batches in flight (Ctrl-C again to cancel them)", "red")
            stop.set()
        elif not abort.is_set():
            say(console, "cancelling the batches in flight; writing what is finished", "red")
            abort.set()

    return handler


def progress_bar(console: Console, total: int | None, *, disabled: bool) -> tuple[Any, Any]:
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


def print_summary(console: Console, summary: Any) -> None:
    from rich.table import Table

    if summary.offline:
        say(
            console,
            "Offline model: outputs are derived from the reviews by rules (averages, lexicon sentiment, keywords, "
            "extracted sentences), not real LLM answers. Set FLOCK_LLM_MODEL and an API key for real ones.",
            "bold yellow",
        )
    table = Table(title=escape(f"flock-llm reviews ({summary.mode}, model {summary.model})"), show_header=False)
    for name, value in _rows(summary):
        table.add_row(name, escape(value))
    console.print(table)


def _rows(summary: Any) -> list[tuple[str, str]]:
    cost = "unknown" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(summary.flush_reasons.items())) or "-"
    resumed = f"{summary.resumed}"
    if summary.retried or summary.stale:
        resumed += (
            f" (failed or changed, run again: {summary.retried}; in the store, not in the input: {summary.stale})"
        )
    return [
        ("resumed (already in the store)", resumed),
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
        ("LLM calls", f"{summary.llm_calls} (per-item processing: {summary.items}; saved {summary.calls_saved})"),
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
        *_audit_rows(summary),
        ("wall time", f"{summary.wall_s:.2f} s"),
    ]


def _audit_rows(summary: Any) -> list[tuple[str, str]]:
    """--audit: agreement with one-item answers (95% interval) and what the audit cost."""
    if summary.audit_rate is None:
        return []
    from ..quality.summary import agreement_line

    return [
        ("agreement (audit)", agreement_line(summary.agreement_intervals)),
        (
            "audit calls",
            f"{summary.audit_calls} of {summary.llm_calls} calls, {summary.audit_tokens:,} tokens "
            f"(--audit {summary.audit_rate:g}: one review asked alone in that share of the calls)",
        ),
    ]
