"""OpenTelemetry traces: one span per proxied call, after the GenAI semantic conventions.

The span is a child of the caller's ``traceparent`` when it sends one, and the request to the
provider carries the span's own, so the agent's trace, Tripwire's span and the provider's
trace (where there is one) join. Trips, refusals, stream cuts and envelope verdicts are span
events; a kill marks the span as an error with its reason.

- ``request``: open the span, set the provider request's ``traceparent``;
- ``reserved``: the output cap Tripwire set;
- ``stream_ended``: a cut stream's event and error;
- ``settled``: usage, the answering model, finish reasons, the task's figures;
- ``refused``: the refusal's event (and error, for a kill);
- ``done``: the envelope's verdict, the outcome and overhead; the span ends.

Trips reach the span through the trip bus: a trip published while a call is under way (its
reservation, settlement, deadline or envelope verdict) lands on that call's span, found in a
context variable the call's task carries. A trip decided after its call ended (content
detection runs off the response's path) gets a short span of its own under the call's.

Only built when tracing is configured (``telemetry.otel``, ``OTEL_EXPORTER_OTLP_ENDPOINT``):
the OpenTelemetry SDK is the optional ``otel`` extra. Prompts and completions stay out of
spans unless ``telemetry.otel.capture_content`` is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy import __version__
from proxy.config import Config
from proxy.detectors.base import Trip
from proxy.envelopes.gate import BLOCK_REASON
from proxy.errors import Refused, TripwireError, refusal_reason
from proxy.pipeline.bus import TripBus, TripEvent
from proxy.pipeline.call import Call, Settlement
from proxy.session.base import Grant
from proxy.telemetry.metrics import Metrics

_KEY = "tracing"
_ENVELOPE = "envelope"  # where the envelopes addon leaves its decision
_PROPAGATOR = TraceContextTextMapPropagator()
# The span of the call the running task serves: trips published on its way land there.
_CURRENT: ContextVar[Span | None] = ContextVar("tripwire_call_span", default=None)

# gen_ai.operation.name by request kind; every modelled kind is a chat (a conversation turn).
_OPERATIONS = {"chat": "chat", "responses": "chat", "messages": "chat"}
_CONTENT_CHARS = 64 * 1024


def operation_of(call: Call) -> str:
    operation = _OPERATIONS.get(call.info.kind)
    if operation is not None:
        return operation
    path = call.path.rstrip("/")
    if path.endswith("/embeddings"):
        return "embeddings"
    if path.endswith("/completions"):
        return "text_completion"
    return path.rsplit("/", 1)[-1] or "other"


def _value(value: Any) -> Any:
    """An attribute value OpenTelemetry accepts: a primitive, else its text."""
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def trip_attributes(trip: Trip, prefix: str = "tripwire.trip") -> dict[str, Any]:
    attributes: dict[str, Any] = {
        f"{prefix}.reason": str(trip.reason),
        f"{prefix}.detail": trip.detail,
    }
    for name, figure in trip.figures.items():
        if figure is not None:
            attributes[f"{prefix}.figures.{name}"] = _value(figure)
    return attributes


def _time_ns(perf: float) -> int:
    """A ``perf_counter`` reading as the wall-clock nanoseconds OpenTelemetry wants."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


class Tracing:
    name = "tracing"

    def __init__(self, provider: TracerProvider, capture_content: bool = False) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("tripwire", __version__)
        self.capture_content = capture_content

    @classmethod
    def from_config(
        cls,
        config: Config,
        metrics: Metrics,
        bus: TripBus,
        environ: Mapping[str, str] | None = None,
    ) -> Tracing:
        from proxy.telemetry.otlp import build_provider

        settings = config.telemetry.otel
        provider = build_provider(
            settings,
            lambda reason, spans: metrics.otel_spans_dropped.labels(reason).inc(spans),
            os.environ if environ is None else environ,
        )
        tracing = cls(provider, settings.capture_content)
        bus.subscribe(tracing.on_trip)
        return tracing

    async def close(self) -> None:
        """Export what is queued, within the SDK's bounds, off the event loop."""
        await asyncio.to_thread(self.provider.shutdown)

    # -- hooks ------------------------------------------------------------------------------

    async def request(self, call: Call) -> None:
        parent = _PROPAGATOR.extract(call.request.headers)
        operation = operation_of(call)
        model = call.info.model
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": call.adapter.name,
            "gen_ai.conversation.id": call.task,
            "tripwire.task": call.task,
            "tripwire.agent": call.agent,
            "tripwire.task_source": call.task_source,
            "tripwire.upstream": call.upstream_name,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        if call.info.modelled:
            attributes["gen_ai.request.stream"] = call.info.stream
        if call.info.choices != 1:
            attributes["gen_ai.request.choice.count"] = call.info.choices
        if call.tenant is not None:
            attributes["tripwire.tenant"] = call.tenant
        address = urlsplit(call.upstream.base_url)
        if address.hostname:
            attributes["server.address"] = address.hostname
            attributes["server.port"] = address.port or (443 if address.scheme == "https" else 80)
        if self.capture_content and call.body is not None:
            attributes["gen_ai.input.messages"] = _content(call.body)
        span = self.tracer.start_span(
            f"{operation} {model}" if model else operation,
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=_time_ns(call.started),
        )
        call.notes[_KEY] = span
        _CURRENT.set(span)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
        # The caller's tracestate travels on: this proxy adds no vendor entry of its own.
        call.upstream_headers = {**(call.upstream_headers or {}), **carrier}

    def reserved(self, call: Call, grant: Grant) -> bool:
        span = call.notes.get(_KEY)
        if span is not None and grant.output_cap is not None:
            span.set_attribute("gen_ai.request.max_tokens", grant.output_cap)
        return False

    def stream_ended(self, call: Call, cut: Trip | None) -> None:
        span = call.notes.get(_KEY)
        if span is None or cut is None:
            return
        span.add_event("tripwire.stream_cut", trip_attributes(cut, "tripwire.cut"))
        span.set_attribute("error.type", str(cut.reason))
        span.set_status(Status(StatusCode.ERROR, f"stream cut: {cut.detail}"))

    def settled(self, call: Call, settlement: Settlement) -> None:
        span: Span | None = call.notes.get(_KEY)
        if span is None:
            return
        usage = settlement.usage
        view = settlement.ledger.view
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "http.response.status_code": settlement.status,
            "tripwire.outcome": settlement.outcome,
            "tripwire.cost_usd": settlement.cost_usd,
            "tripwire.hop": view.hops,
            "tripwire.calls": view.calls,
            "tripwire.tokens_used": view.tokens_used,
        }
        if usage.cached_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
        if usage.cache_write_tokens:
            attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_tokens
        if view.tokens_left is not None:
            attributes["tripwire.tokens_left"] = view.tokens_left
        output = settlement.output
        if output is not None:
            if output.model:
                attributes["gen_ai.response.model"] = output.model
            if output.finish_reasons:
                attributes["gen_ai.response.finish_reasons"] = output.finish_reasons
            if self.capture_content:
                attributes["gen_ai.output.messages"] = json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": output.text}]}]
                )[:_CONTENT_CHARS]
        if call.headers_at and call.info.stream:
            attributes["gen_ai.response.time_to_first_chunk"] = call.headers_at - call.sent
        received = settlement.received or time.perf_counter()
        attributes["tripwire.overhead_ms"] = round(
            ((call.sent - call.started) + (time.perf_counter() - received)) * 1000, 3
        )
        span.set_attributes(attributes)
        if settlement.outcome not in ("ok", "cut"):  # a cut is told by stream_ended
            failed = settlement.outcome
            span.set_attribute(
                "error.type", str(settlement.status) if failed == "provider_error" else failed
            )
            span.set_status(Status(StatusCode.ERROR, failed))

    def refused(self, call: Call, error: TripwireError) -> None:
        span: Span | None = call.notes.get(_KEY)
        if span is None:
            return
        reason = refusal_reason(error)
        outcome = "refused" if isinstance(error, Refused) else reason
        attributes: dict[str, Any] = {
            "tripwire.refusal.reason": reason,
            "tripwire.refusal.status": error.status,
            "tripwire.refusal.message": error.message,
        }
        if isinstance(error, Refused):
            for name, figure in error.figures.items():
                if figure is not None:
                    attributes[f"tripwire.refusal.figures.{name}"] = _value(figure)
        span.add_event("tripwire.refused", attributes)
        span.set_attributes(
            {
                "tripwire.outcome": outcome,
                "http.response.status_code": error.status,
                "error.type": reason,
                "tripwire.overhead_ms": round((time.perf_counter() - call.started) * 1000, 3),
            }
        )
        span.set_status(Status(StatusCode.ERROR, error.message))

    def done(self, call: Call) -> None:
        span: Span | None = call.notes.pop(_KEY, None)
        if span is None:
            return
        decision = call.notes.get(_ENVELOPE)
        if decision is not None:
            verdict = decision.verdict
            attributes = {
                "tripwire.envelope.action": decision.action,
                "tripwire.envelope.status": verdict.status,
            }
            for name in ("confidence", "min_confidence", "problem"):
                value = getattr(verdict, name)
                if value is not None:
                    attributes[f"tripwire.envelope.{name}"] = value
            span.add_event("tripwire.envelope", attributes)
            if decision.action == "block":
                span.set_attributes({"tripwire.outcome": "blocked", "error.type": BLOCK_REASON})
                span.set_status(Status(StatusCode.ERROR, decision.message))
        span.end()
        if _CURRENT.get() is span:
            _CURRENT.set(None)

    # -- the trip bus -------------------------------------------------------------------------

    def on_trip(self, happened: TripEvent) -> None:
        attributes = trip_attributes(happened.trip)
        attributes["tripwire.trip.action"] = happened.action
        attributes["tripwire.task"] = happened.task
        attributes["tripwire.agent"] = happened.agent
        span = _CURRENT.get()
        if span is not None and span.is_recording():
            self._trip_on(span, happened, attributes)
        elif span is not None:
            # The call's span has ended (content detection runs after the answer): a short span
            # of the trip's own, under the call's.
            late = self.tracer.start_span(
                f"tripwire trip {happened.trip.reason}",
                context=trace.set_span_in_context(span),
                kind=SpanKind.INTERNAL,
                attributes={"tripwire.task": happened.task, "tripwire.agent": happened.agent},
            )
            self._trip_on(late, happened, attributes)
            late.end()

    @staticmethod
    def _trip_on(span: Span, happened: TripEvent, attributes: dict[str, Any]) -> None:
        span.add_event("tripwire.trip", attributes)
        if happened.action == "kill":
            span.set_attribute("error.type", str(happened.trip.reason))
            span.set_status(Status(StatusCode.ERROR, f"killed: {happened.trip.detail}"))


def _content(body: dict[str, Any]) -> str:
    """The request's messages as sent, bounded (content capture is opt-in)."""
    messages: Any = body.get("messages", body.get("input"))
    return json.dumps(messages, default=str)[:_CONTENT_CHARS]
