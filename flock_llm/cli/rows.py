"""Reading review files as a stream: rows are parsed, checked and validated one at a time, so memory does not grow
with the file (duplicate ids are remembered as 8-byte hashes in `SeenIds`)."""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
import stat
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigurationError
from .review_types import Review

__all__ = [
    "MAX_FIELD_CHARS",
    "BadRow",
    "SeenIds",
    "count_rows",
    "input_problem",
    "is_pipe",
    "iter_reviews",
    "read_reviews",
]


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    error: str


MAX_FIELD_CHARS = 128 * 1024
"""A row with a field longer than this is reported, not read (csv's own limit; JSONL follows it)."""
_UNDECODABLE = re.compile("[\udc80-\udcff]")
"""Bytes that are not UTF-8, as decoded with errors="surrogateescape"."""
_SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate: valid JSON (`"\\ud800"`), but not a character; it cannot be written as UTF-8 or sent."""


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
    for name in ("review_id", "text"):
        value = row.get(name)
        found = _SURROGATE.search(value) if isinstance(value, str) else None
        if found:
            return (
                f"{'id' if name == 'review_id' else name}: a lone surrogate \\u{ord(found.group()):04x} at character "
                f"{found.start() + 1} is not text (not valid Unicode); fix the escape in the file"
            )
    return ""


class SeenIds:
    """Ids seen so far and the line each was first on, kept as 64-bit hashes in flat tables (open addressing):
    about 17 bytes per id (12 per slot, at most 70% full) instead of the ~150 a dict of strings takes. Two
    different ids share a hash with probability ~n^2/2^65 (1e-8 for a million ids); such a pair is reported as a
    duplicate, never lost silently."""

    def __init__(self) -> None:
        self._keys = array("Q", bytes(8 * 1024))
        self._lines = array("I", bytes(4 * 1024))
        self._count = 0

    @staticmethod
    def _key(value: str) -> int:
        key = int.from_bytes(hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        return key or 1  # 0 marks an empty slot

    def add(self, value: str, line: int) -> int:
        """Remember `value`, first seen on `line`; 0 when it is new, else the line it was first seen on."""
        key = self._key(value)
        keys, mask = self._keys, len(self._keys) - 1
        slot = key & mask
        while keys[slot]:
            if keys[slot] == key:
                return int(self._lines[slot]) or -1
            slot = (slot + 1) & mask
        keys[slot], self._lines[slot] = key, line
        self._count += 1
        if self._count * 10 > len(keys) * 7:
            self._grow()
        return 0

    def _grow(self) -> None:
        old_keys, old_lines = self._keys, self._lines
        self._keys = keys = array("Q", bytes(16 * len(old_keys)))
        self._lines = lines = array("I", bytes(8 * len(old_lines)))
        mask = len(keys) - 1
        for key, line in zip(old_keys, old_lines, strict=True):
            if key:
                slot = key & mask
                while keys[slot]:
                    slot = (slot + 1) & mask
                keys[slot], lines[slot] = key, line

    def __len__(self) -> int:
        return self._count


def input_problem(path: Path) -> str:
    """Why `path` cannot be read as reviews (a regular file or a named pipe, .jsonl/.json/.ndjson/.csv), or ""."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"no such file: {str(path)!r}"
    except OSError as exc:
        return f"{str(path)!r} cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return f"{str(path)!r} is a directory; give a .jsonl or .csv file"
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        return f"{str(path)!r} is not a regular file or a named pipe; give a .jsonl or .csv file"
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
        return f"{str(path)!r}: expected a .jsonl or .csv file"
    return ""


def is_pipe(path: Path) -> bool:
    """`path` is a named pipe (FIFO): it can be read once, and its length is not known in advance."""
    return stat.S_ISFIFO(path.stat().st_mode)


def _check_file(path: Path) -> None:
    problem = input_problem(path)
    if problem:
        raise ConfigurationError(problem)


def count_rows(path: Path) -> int | None:
    """About how many rows `path` holds (its lines; minus the header for CSV), counted without parsing; None for
    a named pipe (reading it would consume it)."""
    _check_file(path)
    if is_pipe(path):
        return None
    lines = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    if path.stat().st_size and not _ends_with_newline(path):
        lines += 1
    return max(0, lines - 1) if path.suffix.lower() == ".csv" else lines


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


def iter_reviews(path: Path, on_bad: Callable[[BadRow], None]) -> Iterator[Review]:
    """Reviews from JSONL or CSV (fields id or review_id, rating, text; UTF-8, with or without a BOM), one at a
    time. Rows that cannot be used go to `on_bad` with their line numbers, never dropped silently: not UTF-8, not
    JSON, a field over MAX_FIELD_CHARS, an id that is null, an object or a boolean, a duplicate id, a rating that is
    a boolean or not a whole number from 1 to 5.

    Raises:
        ConfigurationError: the file does not exist, is neither a regular file nor a named pipe, or is not
            .jsonl/.json/.csv (raised at once, not on the first `next()`).
    """
    _check_file(path)
    return _reviews(path, on_bad)


def _reviews(path: Path, on_bad: Callable[[BadRow], None]) -> Iterator[Review]:
    seen = SeenIds()
    for line, row, problem in _rows(path):
        if row is not None:
            problem = _review_problem(row)
        if row is None or problem:
            on_bad(BadRow(line, problem))
            continue
        try:
            review = Review.model_validate(row)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            on_bad(BadRow(line, details))
            continue
        first = seen.add(review.review_id, line)
        if first:
            on_bad(BadRow(line, f"duplicate id {review.review_id!r} (first on line {first})"))
            continue
        yield review


def read_reviews(path: Path) -> tuple[list[Review], list[BadRow]]:
    """All of `iter_reviews` at once (for small files and tests): the reviews and the rows that were skipped."""
    bad: list[BadRow] = []
    reviews = list(iter_reviews(path, bad.append))
    return reviews, bad
