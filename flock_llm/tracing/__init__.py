"""Tracing: OpenTelemetry spans for publishes, batch flushes, engine runs and LLM calls.

Off by default, and then costs one `is None` check per site. On with
`Flock(tracing=True)` / `Flock(tracing=TracingConfig(...))`, or with the
environment variables of the guide:

    FLOCK_AUTO_TRACE=true     trace
    FLOCK_TRACE_FILE=true     ... and write spans to .flock/traces.duckdb (FLOCK_TRACE_PATH to change it)

Spans are OpenTelemetry SDK `ReadableSpan`s handed to SDK span processors
(a BatchSpanProcessor with the DuckDB exporter, plus any you add with
`TracingConfig(processors=[...])`, e.g. an OTLP exporter). They are built
directly when a span ends, without the SDK's per-span locks and context
bookkeeping, which would cost a batch pipeline a third of its throughput;
processors therefore see `on_end` only. The global tracer provider is left
alone. No API key, header or (unless `record_prompts=True`) prompt text is
ever put on a span.
"""

from .spans import PublishSpans, SpanHandle, Tracer, TracingConfig, tracing_config

__all__ = ["PublishSpans", "SpanHandle", "Tracer", "TracingConfig", "tracing_config"]
