"""What `flock-llm reviews` checks before any work: numbers, paths, the store. Nothing here writes an output
or sends a request, so a refused run (exit status 2) leaves every file as it was and costs nothing."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .resume import RunSettings

__all__ = ["audit_rate", "batch_size", "finite", "output_problem", "positive_seconds", "positive_usd", "usage_problem"]


def _number(text: str, unit: str) -> float:
    """A positive, finite number (NaN, infinities, 0 and negatives are refused: argparse exits with status 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of {unit}, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of {unit}, got {text!r}")
    return value


MIN_SECONDS = 0.001
MAX_SECONDS = 1e9
"""Seconds a time option takes: from a millisecond (less rounds to no time at all) to about 31 years (more
overflows the clocks and timers the run sets)."""


def positive_seconds(text: str) -> float:
    value = _number(text, "seconds")
    if not MIN_SECONDS <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be from {MIN_SECONDS:g} to {MAX_SECONDS:g} seconds, got {text!r}")
    return value


def positive_usd(text: str) -> float:
    return _number(text, "US dollars")


def audit_rate(text: str) -> float:
    """--audit RATE: a share of batch calls in (0, 1], checked like every numeric setting (`_numbers.number`)."""
    from .._numbers import number
    from ..errors import ConfigurationError

    try:
        value = number("--audit", float(text), fix="e.g. --audit 0.02 audits one review in 2% of the calls")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share of calls such as 0.02, got {text!r}") from None
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a share of calls in (0, 1], got {text!r}; e.g. --audit 0.02")
    return value


def batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of reviews, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 review per call, got {text!r}")
    return value


def finite(values: dict[str, Any]) -> dict[str, Any]:
    """`values` for strict JSON: a float that is not finite (a provider's cost, say) becomes null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def _audit_problem(args: argparse.Namespace) -> str:
    if args.audit is not None and not args.per_item:
        return "--audit compares per-item labels with one-item answers: add --per-item (a trend report has none)"
    return ""


def usage_problem(args: argparse.Namespace, settings: RunSettings) -> tuple[str, bool]:
    """(what is wrong with the `reviews` arguments or "", whether --store holds an earlier run of them)."""
    from .resume import store_problem  # (with the review types: only when the command runs)
    from .rows import input_problem

    problem = input_problem(args.file) or _audit_problem(args)
    if problem or args.estimate:
        return problem, False
    if args.json and args.output == "-":
        return "--json prints the summary on stdout; give --output FILE for the outputs", False
    if args.json and args.output != "-" and _is_stdout(Path(args.output)):
        return (
            f"--json prints the summary on stdout, and --output {args.output!r} is stdout too; give --output a file "
            "of its own"
        ), False
    problem = _collision(args)
    if problem:
        return problem, False
    if args.report is not None:
        problem = output_problem(args.report, args.file)
        if problem:
            return problem.replace("--output", "--report"), False
    if args.output != "-":
        problem = output_problem(Path(args.output), args.file)
        if problem:
            return problem, False
    if args.store is None:
        return "", False
    return store_problem(args.store, settings)


def _collision(args: argparse.Namespace) -> str:
    """Two roles given the same file (it would be overwritten by the other), or ""."""
    from .resume import store_path

    if args.store is not None and not args.store.startswith("sqlite:///"):
        return f"--store must be a SQLite URL such as sqlite:///run.db, got {args.store!r}"
    named = [("the input", args.file)]
    if args.output != "-":
        named.append(("--output", Path(args.output)))
    if args.report is not None:
        named.append(("--report", args.report))
    if args.store is not None:
        named.append(("--store", store_path(args.store)))
    for n, (role, path) in enumerate(named):
        for other, other_path in named[:n]:
            if _same_file(path, other_path):
                what = "the input file" if other == "the input" else f"the same file as {other}"
                return f"{role} {str(path)!r} is {what}; give each its own file"
    return ""


def _is_stdout(path: Path) -> bool:
    """Whether `path` is the file this process's stdout writes to (/dev/stdout, /proc/self/fd/1, the file stdout
    was redirected to)."""
    try:
        here, there = os.fstat(1), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino) and os.path.realpath(path) != os.devnull


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def output_problem(target: Path, source: Path) -> str:
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
