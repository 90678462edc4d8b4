"""OpenTelemetry SDK set-ups for the tracing tests: in this process (an in-memory exporter),
and in child processes (spans written to a file as JSON Lines, read back by the test)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

__all__ = ["JsonLinesExporter", "global_provider", "install", "read_spans", "span_dict"]


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain data (ids as hex), for files and for assertions."""
    assert span.context is not None
    return {
        "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "parent_remote": span.parent.is_remote if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "links": [
            f"{link.context.trace_id:032x}-{link.context.span_id:016x}" for link in span.links
        ],
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    """Appends each span as a JSON line to a file, synced before `export` returns (with a
    `SimpleSpanProcessor`, before the span's `end()` returns): a process killed later has
    written every span it ended."""

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "a")  # noqa: SIM115  (open for the exporter's life)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self._file.write(json.dumps(span_dict(span)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _reset_global_provider() -> None:
    """Let the API's global tracer provider be set again (it may be set once per process;
    the OpenTelemetry test utilities reset it the same way)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


def install(exporter: SpanExporter) -> TracerProvider:
    """Make an SDK provider exporting to `exporter` (span by span) the global one."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    return provider


@contextmanager
def global_provider() -> Iterator[InMemorySpanExporter]:
    """An SDK provider with an in-memory exporter as the global one, for the duration; then
    none again (the API's proxy: nothing is traced)."""
    exporter = InMemorySpanExporter()
    provider = install(exporter)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_global_provider()
