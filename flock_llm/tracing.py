"""Tracing: OpenTelemetry spans for publishes, batch flushes, engine runs and LLM calls.

Off by default, and then costs one `is None` check per site. On with
`Flock(tracing=True)` / `Flock(tracing=TracingConfig(...))`, or with the
environment variables of the guide:

    FLOCK_AUTO_TRACE=true     trace
    FLOCK_TRACE_FILE=true     ... and write spans to .flock/traces.duckdb (FLOCK_TRACE_PATH to change it)

Spans go through the OpenTelemetry SDK on a TracerProvider of our own (the
global one is left alone); add your own processors (e.g. an OTLP exporter)
with `TracingConfig(processors=[...])`. No API key, header or (unless
`record_prompts=True`) prompt text is ever put on a span.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError

__all__ = ["SpanHandle", "Tracer", "TracingConfig", "tracing_config"]

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
    """`Flock(tracing=)` wins; else FLOCK_AUTO_TRACE / FLOCK_TRACE_FILE / FLOCK_TRACE_PATH."""
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
            clean[key] = [str(v) for v in value[:100]]
        else:
            clean[key] = str(value)
    return clean


class SpanHandle:
    """An open span: set attributes, then `end()` (once)."""

    __slots__ = ("otel_span",)

    def __init__(self, span: Any) -> None:
        self.otel_span = span
        """The OpenTelemetry span underneath."""

    def set(self, **attributes: Any) -> None:
        self.otel_span.set_attributes(_clean(attributes))

    def fail(self, exc: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.otel_span.set_status(Status(StatusCode.ERROR, type(exc).__name__))

    def end(self) -> None:
        self.otel_span.end()


class Tracer:
    """Creates spans on a private TracerProvider and exports them (DuckDB and/or your processors)."""

    def __init__(self, config: TracingConfig) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ConfigurationError(
                "tracing needs the OpenTelemetry SDK and DuckDB: pip install 'flock_llm[tracing]'"
            ) from None

        self.config = config
        self._provider = TracerProvider(resource=Resource.create({"service.name": "flock_llm"}))
        if config.duckdb_path:
            from ._duckdb_export import DuckDBSpanExporter

            self._provider.add_span_processor(
                BatchSpanProcessor(
                    DuckDBSpanExporter(config.duckdb_path),
                    max_queue_size=65_536,
                    max_export_batch_size=4_096,
                    schedule_delay_millis=1_000,
                )
            )
        for processor in config.processors:
            self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("flock_llm")

    def start(self, name: str, parent: SpanHandle | None = None, **attributes: Any) -> SpanHandle:
        from opentelemetry import trace

        context = trace.set_span_in_context(parent.otel_span) if parent is not None else None
        return SpanHandle(self._tracer.start_span(name, context=context, attributes=_clean(attributes)))

    @contextlib.contextmanager
    def active(self, span: SpanHandle) -> Iterator[None]:
        """Make `span` the parent of spans started in this context (e.g. LLM calls inside an engine)."""
        from opentelemetry import trace

        with trace.use_span(span.otel_span, end_on_exit=False):
            yield

    def record(self, name: str, *, start_ns: int, end_ns: int, error: str | None = None, **attributes: Any) -> None:
        """A finished span (child of the active one), e.g. one LLM call timed by its caller."""
        from opentelemetry.trace import Status, StatusCode

        span = self._tracer.start_span(name, start_time=start_ns, attributes=_clean(attributes))
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns)

    def flush(self) -> None:
        self._provider.force_flush()

    def shutdown(self) -> None:
        self._provider.shutdown()


def now_ns() -> int:
    return time.time_ns()
