"""Spans: what a Flock records, built as OpenTelemetry SDK ReadableSpans (see the package docstring)."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError

__all__ = ["PublishSpans", "SpanHandle", "Tracer", "TracingConfig", "tracing_config"]

DEFAULT_TRACE_PATH = ".flock/traces.duckdb"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """How a Flock traces."""

    duckdb_path: str | None = DEFAULT_TRACE_PATH
    """Where the DuckDB span exporter writes (None: no file)."""
    record_prompts: bool = False
    """Put rendered prompts (with secrets redacted) on LLM call spans."""
    processors: Sequence[Any] = field(default=(), compare=False)
    """Extra OpenTelemetry SpanProcessors, e.g. BatchSpanProcessor(OTLPSpanExporter())."""


def tracing_config(arg: bool | TracingConfig | None, env: Mapping[str, str]) -> TracingConfig | None:
    """The tracing settings: `Flock(tracing=)` wins; else FLOCK_AUTO_TRACE / FLOCK_TRACE_FILE / FLOCK_TRACE_PATH.

    Args:
        arg: `Flock(tracing=)`: True, False, a TracingConfig, or None to follow the environment.
        env: the environment the Flock read.

    Returns:
        The settings, or None when tracing is off.
    """
    if isinstance(arg, TracingConfig):
        return arg
    if arg is True:
        return TracingConfig(duckdb_path=env.get("FLOCK_TRACE_PATH", DEFAULT_TRACE_PATH))
    if arg is False:
        return None
    if env.get("FLOCK_AUTO_TRACE", "").lower() not in _TRUE:
        return None
    to_file = env.get("FLOCK_TRACE_FILE", "").lower() in _TRUE
    return TracingConfig(duckdb_path=env.get("FLOCK_TRACE_PATH", DEFAULT_TRACE_PATH) if to_file else None)


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry takes str, bool, int, float and sequences of them; None is left out."""
    clean: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            clean[key] = value
        elif isinstance(value, (list, tuple)):
            clean[key] = tuple(str(v) for v in value[:100])
        else:
            clean[key] = str(value)
    return clean


class SpanHandle:
    """An open span: set attributes, then `end()` (once). Made by `Tracer.start()`.

    Args:
        tracer: the tracer that finishes it.
        name: the span's name (e.g. "flock.batch.flush").
        parent: the enclosing span (its trace is this span's), or None for a new trace.
        attributes: the span's attributes so far.
        start_ns: when it started (wall clock, ns); default: now.
    """

    __slots__ = ("_attributes", "_error", "_parent", "_tracer", "name", "span_id", "start_ns", "trace_id")

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        parent: SpanHandle | None,
        attributes: dict[str, Any],
        start_ns: int | None = None,
    ) -> None:
        self._tracer = tracer
        self.name = name
        self._parent = parent
        self.trace_id: int = parent.trace_id if parent is not None else random.getrandbits(128)
        self.span_id: int = random.getrandbits(64)
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self._attributes = attributes
        self._error: str | None = None

    def set(self, **attributes: Any) -> None:
        """Add or replace attributes.

        Args:
            **attributes: attribute names and values (never keys or prompt text).
        """
        self._attributes.update(attributes)

    def fail(self, exc: BaseException | str) -> None:
        """Mark the span as failed, with the error's type name (or the text given)."""
        self._error = exc if isinstance(exc, str) else type(exc).__name__

    def end(self, end_ns: int | None = None) -> None:
        """Finish the span (at `end_ns`, default now) and hand it to the span processors."""
        self._tracer._finish(self, time.time_ns() if end_ns is None else end_ns)  # noqa: SLF001 - its own tracer

    @property
    def attributes(self) -> dict[str, Any]:
        """The attributes set so far."""
        return self._attributes

    @property
    def parent(self) -> SpanHandle | None:
        """The enclosing span, or None."""
        return self._parent

    @property
    def error(self) -> str | None:
        """The failure's error type, or None while the span is not failed."""
        return self._error


class Tracer:
    """Builds spans and hands them to OpenTelemetry span processors (DuckDB and/or yours).

    Args:
        config: where spans go (the DuckDB file, your processors) and whether prompts are recorded.

    Raises:
        ConfigurationError: the `tracing` extra (opentelemetry-sdk, duckdb) is not installed.
    """

    def __init__(self, config: TracingConfig) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import ReadableSpan, SynchronousMultiSpanProcessor
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
            from opentelemetry.trace import SpanContext, TraceFlags
            from opentelemetry.trace.status import Status, StatusCode
        except ImportError:
            raise ConfigurationError(
                "tracing needs the OpenTelemetry SDK and DuckDB: pip install 'flock_llm[tracing]'"
            ) from None
        self.config = config
        self._resource = Resource.create({"service.name": "flock_llm"})
        self._scope = InstrumentationScope("flock_llm")
        self._processor = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
        self._readable_span = ReadableSpan
        self._span_context = SpanContext
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._ok = Status(StatusCode.OK)
        self._status = Status
        self._error_code = StatusCode.ERROR
        if config.duckdb_path:
            from .duckdb_export import DuckDBSpanExporter

            self._processor.add_span_processor(
                BatchSpanProcessor(
                    DuckDBSpanExporter(config.duckdb_path),
                    max_queue_size=65_536,
                    max_export_batch_size=4_096,
                    schedule_delay_millis=1_000,
                )
            )
        for processor in config.processors:
            self._processor.add_span_processor(processor)

    def start(self, name: str, parent: SpanHandle | None = None, **attributes: Any) -> SpanHandle:
        """Open a span now; `end()` it when the work is done.

        Args:
            name: the span's name.
            parent: the enclosing span, or None for a new trace.
            **attributes: its first attributes.
        """
        return SpanHandle(self, name, parent, attributes)

    def record(
        self,
        name: str,
        *,
        start_ns: int,
        end_ns: int,
        parent: SpanHandle | None = None,
        error: str | None = None,
        **attributes: Any,
    ) -> None:
        """Record a finished span, e.g. one LLM call timed by its caller (a child of `parent`, when given).

        Args:
            name: the span's name.
            start_ns: when it started (wall clock, ns).
            end_ns: when it ended.
            parent: the enclosing span, or None.
            error: the failure's error type, if it failed.
            **attributes: its attributes.
        """
        span = SpanHandle(self, name, parent, attributes, start_ns=start_ns)
        if error:
            span.fail(error)
        span.end(end_ns)

    def _finish(self, span: SpanHandle, end_ns: int) -> None:
        context, sampled = self._span_context, self._sampled
        parent = span.parent
        self._processor.on_end(
            self._readable_span(
                name=span.name,
                context=context(span.trace_id, span.span_id, is_remote=False, trace_flags=sampled),
                parent=None
                if parent is None
                else context(parent.trace_id, parent.span_id, is_remote=False, trace_flags=sampled),
                resource=self._resource,
                attributes=_clean(span.attributes),
                status=self._status(self._error_code, span.error) if span.error else self._ok,
                start_time=span.start_ns,
                end_time=end_ns,
                instrumentation_scope=self._scope,
            )
        )

    def flush(self) -> None:
        """Export every span ended so far (e.g. write them to the DuckDB file) now."""
        self._processor.force_flush()

    def shutdown(self) -> None:
        """Flush and close the span processors (the Flock's shutdown does this)."""
        self._processor.shutdown()


class PublishSpans:
    """One `flock.publish` span per turn of the event loop in which artifacts were published.

    A span per artifact would cost more than the publish itself; a burst span keeps the count, the
    types and the first and last artifact ids.

    Args:
        tracer: where the spans go.
    """

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._started_ns = 0
        self._count = 0
        self._first_id = self._last_id = ""
        self._types: set[str] = set()

    def add(self, artifact: Any) -> None:
        """Count a published artifact into this turn's span (opened by the first one, closed at the turn's end)."""
        if self._count == 0:
            import asyncio

            self._started_ns = time.time_ns()
            self._first_id = artifact.id
            asyncio.get_running_loop().call_soon(self.close)
        self._count += 1
        self._last_id = artifact.id
        self._types.add(artifact.type_name)

    def close(self) -> None:
        """End the current burst's span (if any)."""
        if self._count == 0:
            return
        self._tracer.record(
            "flock.publish",
            start_ns=self._started_ns,
            end_ns=time.time_ns(),
            count=self._count,
            type=",".join(sorted(self._types)),
            first_artifact_id=self._first_id,
            last_artifact_id=self._last_id,
        )
        self._count = 0
        self._types = set()
