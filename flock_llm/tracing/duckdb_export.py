"""A span exporter that appends OpenTelemetry spans to a DuckDB file (table `spans`).

Rows are buffered and inserted in batches. The file is opened only while
writing, so another process can read it (read_only) while a run is active;
when a reader holds it, rows stay buffered and the next export retries.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["DuckDBSpanExporter", "SCHEMA"]

log = logging.getLogger("flock_llm.tracing")

SCHEMA = {
    "trace_id": "VARCHAR",
    "span_id": "VARCHAR",
    "parent_id": "VARCHAR",
    "name": "VARCHAR",
    "start_time": "TIMESTAMP",
    "end_time": "TIMESTAMP",
    "duration_ms": "DOUBLE",
    "status": "VARCHAR",
    "attributes": "JSON",
}


def _timestamp(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def span_row(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    parent = span.parent
    start, end = span.start_time, span.end_time
    return {
        "trace_id": format(context.trace_id, "032x") if context else None,
        "span_id": format(context.span_id, "016x") if context else None,
        "parent_id": format(parent.span_id, "016x") if parent else None,
        "name": span.name,
        "start_time": _timestamp(start),
        "end_time": _timestamp(end),
        "duration_ms": (end - start) / 1e6 if start is not None and end is not None else None,
        "status": span.status.status_code.name,
        "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in (span.attributes or {}).items()},
    }


class DuckDBSpanExporter(SpanExporter):
    """Appends spans to `path` (created with its folder on first write)."""

    def __init__(self, path: str | os.PathLike[str], *, lock_wait_s: float = 5.0) -> None:
        self.path = Path(path)
        self.lock_wait_s = lock_wait_s
        self._pending: list[dict[str, Any]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._pending.extend(span_row(span) for span in spans)
        self._write(wait_s=0.2)
        return SpanExportResult.SUCCESS  # rows not written yet stay buffered for the next export

    def shutdown(self) -> None:
        self._write(wait_s=self.lock_wait_s)
        if self._pending:
            log.warning("could not write %d spans to %s: the file stayed locked", len(self._pending), self.path)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self._write(wait_s=min(self.lock_wait_s, timeout_millis / 1000))
        return not self._pending

    def _write(self, *, wait_s: float) -> None:
        import duckdb

        if not self._pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                connection = duckdb.connect(str(self.path))
                break
            except duckdb.IOException:  # another process holds the file; try again shortly
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.05)
        rows, self._pending = self._pending, []
        try:
            _insert(connection, rows)
        except duckdb.Error:
            self._pending = rows + self._pending
            log.exception("writing spans to %s failed; they stay buffered", self.path)
        finally:
            connection.close()


def _insert(connection: Any, rows: list[dict[str, Any]]) -> None:
    columns = ", ".join(f"{name} {kind}" for name, kind in SCHEMA.items())
    connection.execute(f"CREATE TABLE IF NOT EXISTS spans ({columns})")
    types = ", ".join(f"{name}: '{kind}'" for name, kind in SCHEMA.items())
    handle, name = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row, default=str) + "\n" for row in rows)
        # read_json bulk-loads thousands of rows in milliseconds; executemany takes seconds
        connection.execute(f"INSERT INTO spans SELECT * FROM read_json(?, columns={{{types}}})", [name])
    finally:
        os.unlink(name)
