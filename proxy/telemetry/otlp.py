"""The OTLP export of trace spans: a tracer provider of Tripwire's own, its exporter (HTTP/
protobuf or gRPC) and a bounded batch processor.

Imported only when tracing is configured: the OpenTelemetry SDK is the optional ``otel`` extra.
Export runs on the SDK's worker thread, never on a request's path; a span the collector did
not take (unreachable, refusing) or that found the queue full is counted in
``tripwire_otel_spans_dropped_total`` and reported by a log line at most once a minute.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from proxy import __version__
from proxy.config import OtelSettings
from proxy.errors import ConfigError
from proxy.telemetry.logs import event

Dropped = Callable[[str, int], None]
PROTOCOLS = ("http/protobuf", "grpc")
LOG_EVERY_S = 60.0


class Complaints:
    """At most one log line a minute about export, with what happened since the last one."""

    def __init__(self, endpoint: str, every_s: float = LOG_EVERY_S) -> None:
        self.endpoint = endpoint
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last = -every_s
        self._dropped: dict[str, int] = {}
        self._detail = ""

    def dropped(self, reason: str, spans: int) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + spans
        self._maybe_log()

    def sdk_said(self, detail: str) -> None:
        with self._lock:
            self._detail = detail[:300]
        self._maybe_log()

    def _maybe_log(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.every_s or not (self._dropped or self._detail):
                return
            self._last = now
            dropped, self._dropped = self._dropped, {}
            detail, self._detail = self._detail, ""
        event(
            "otel_export_failed",
            logging.WARNING,
            endpoint=self.endpoint,
            spans_dropped=dropped,
            detail=detail,
            note="traces are incomplete; calls are not affected",
        )


class _SdkRecords(logging.Handler):
    """The SDK's own warnings (a retry, a full queue) feed the rate-limited line rather than
    one stderr line per batch or span."""

    def __init__(self, complaints: Complaints) -> None:
        super().__init__(logging.WARNING)
        self.complaints = complaints

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.complaints.sdk_said(f"{record.name}: {record.getMessage()}")
        except Exception:  # a log line must never break export
            self.handleError(record)


class CountingExporter(SpanExporter):
    """Counts the spans of every batch the collector did not take."""

    def __init__(self, inner: SpanExporter, dropped: Dropped) -> None:
        self.inner = inner
        self.dropped = dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            self.dropped("export_failed", len(spans))
            raise
        if result is not SpanExportResult.SUCCESS:
            self.dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingBatchProcessor(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans a full queue pushes out."""

    def __init__(self, exporter: SpanExporter, dropped: Dropped, **bounds: float | None) -> None:
        super().__init__(exporter, **bounds)  # type: ignore[arg-type]
        self._dropped = dropped
        queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        self._full_at = queue if queue is not None and queue.maxlen else None

    def on_end(self, span: ReadableSpan) -> None:
        if self._full_at is not None and len(self._full_at) >= (self._full_at.maxlen or 0):
            self._dropped("queue_full", 1)
        super().on_end(span)


def protocol_of(settings: OtelSettings, environ: Mapping[str, str]) -> str:
    protocol = (
        settings.protocol
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"OTLP protocol {protocol!r} is not supported: use {' or '.join(PROTOCOLS)}"
        )
    return protocol


def _http_endpoint(settings: OtelSettings, environ: Mapping[str, str]) -> str | None:
    """``telemetry.otel.endpoint`` is a base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is."""
    if settings.endpoint is None:
        return None  # the exporter reads the OTEL_* variables itself
    base = settings.endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def build_exporter(settings: OtelSettings, environ: Mapping[str, str]) -> SpanExporter:
    if protocol_of(settings, environ) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=settings.endpoint, timeout=settings.export_timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=_http_endpoint(settings, environ), timeout=settings.export_timeout)


def where(settings: OtelSettings, environ: Mapping[str, str]) -> str:
    """The collector, as a log line names it."""
    return (
        settings.endpoint
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "the exporter's default"
    )


def build_provider(
    settings: OtelSettings,
    count_dropped: Callable[[str, int], None],
    environ: Mapping[str, str] | None = None,
) -> TracerProvider:
    """A tracer provider of Tripwire's own (the process-wide one is left alone)."""
    env = os.environ if environ is None else environ
    if (
        settings.max_queue_size is not None
        and settings.max_export_batch_size is not None
        and settings.max_export_batch_size > settings.max_queue_size
    ):
        raise ConfigError(
            "telemetry.otel.max_export_batch_size must not exceed telemetry.otel.max_queue_size"
        )
    complaints = Complaints(where(settings, env))

    def dropped(reason: str, spans: int) -> None:
        count_dropped(reason, spans)
        complaints.dropped(reason, spans)

    sdk_log = logging.getLogger("opentelemetry")
    sdk_log.handlers[:] = [_SdkRecords(complaints)]
    sdk_log.propagate = False
    attributes: dict[str, str] = {"service.version": __version__}
    name = settings.service_name or (None if env.get("OTEL_SERVICE_NAME") else "tripwire")
    if name is not None:
        attributes["service.name"] = name
    provider = TracerProvider(resource=Resource.create(attributes))
    delay = settings.schedule_delay
    provider.add_span_processor(
        CountingBatchProcessor(
            CountingExporter(build_exporter(settings, env), dropped),
            dropped,
            max_queue_size=settings.max_queue_size,
            max_export_batch_size=settings.max_export_batch_size,
            schedule_delay_millis=delay * 1000 if delay is not None else None,
        )
    )
    return provider
