"""What the proxy tells the world about each call and each trip: metrics and one log line.

The forwarder calls these at the points where a call ends or a detector trips, so metrics and
logs can never disagree about what happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.detectors.base import Trip
from proxy.telemetry.logs import event
from proxy.telemetry.metrics import Metrics


@dataclass(slots=True)
class CallRecord:
    task: str
    agent: str
    upstream: str
    model: str
    outcome: str  # ok, provider_error, cut, client_disconnected, unreachable, timeout, ...
    status: int
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0  # provider time: sent to last byte
    ttfb_s: float = 0.0  # sent to response headers
    overhead_s: float = 0.0  # time in Tripwire itself
    forwarded: bool = True


@dataclass(frozen=True, slots=True)
class TripEvent:
    task: str
    agent: str
    tenant: str | None
    trip: Trip
    action: str  # kill, observe, or escalate (a worker's low-confidence envelope)
    envelope: dict[str, Any] | None = None  # the envelope behind an escalation


TripListener = Callable[[TripEvent], None]
CallListener = Callable[[CallRecord], None]


class Telemetry:
    def __init__(self, metrics: Metrics, log_calls: bool = True) -> None:
        self.metrics = metrics
        self.log_calls = log_calls
        # Called on every trip, after metrics and the log line: the audit trail, escalation.
        self.trip_listeners: list[TripListener] = []
        # Called on every call, forwarded or refused, after metrics and the log line: the
        # console's recent activity. Cheap and synchronous, like the metrics.
        self.call_listeners: list[CallListener] = []

    def call(self, record: CallRecord) -> None:
        m = self.metrics
        m.call(record.upstream, record.model, record.agent, record.outcome)
        if record.forwarded:
            m.usage(
                record.upstream,
                record.model,
                record.agent,
                record.task,
                record.input_tokens,
                record.output_tokens,
                record.cached_tokens,
                record.cost_usd,
            )
            m.timings(
                record.upstream, record.model, record.latency_s, record.ttfb_s, record.overhead_s
            )
        if self.log_calls:
            event(
                "call",
                logging.INFO,
                task=record.task,
                agent=record.agent,
                upstream=record.upstream,
                model=record.model,
                outcome=record.outcome,
                status=record.status,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
                cached_tokens=record.cached_tokens,
                cost_usd=round(record.cost_usd, 6),
                latency_ms=round(record.latency_s * 1000, 1),
                overhead_ms=round(record.overhead_s * 1000, 3),
            )
        for listener in self.call_listeners:
            try:
                listener(record)
            except Exception as exc:  # a faulty listener must never break traffic
                event("call_listener_failed", logging.ERROR, error=repr(exc))

    def task(self, task: str, tokens: int, calls: int, hops: int, cost: float) -> None:
        self.metrics.task_seen(task, tokens, calls, hops, cost)

    def trip(
        self, task: str, agent: str, trip: Trip, action: str, tenant: str | None = None
    ) -> None:
        self.metrics.trip(str(trip.reason), action, agent, task)
        if action == "kill":
            self.metrics.task_ended(task)
        event(
            "trip",
            logging.WARNING,
            task=task,
            agent=agent,
            reason=str(trip.reason),
            action=action,
            detail=trip.detail,
            figures=trip.figures,
        )
        happened = TripEvent(task, agent, tenant, trip, action)
        for listener in self.trip_listeners:
            try:
                listener(happened)
            except Exception as exc:  # a faulty listener must never break traffic
                event("trip_listener_failed", logging.ERROR, error=repr(exc))

    def envelope(self, agent: str, status: str, confidence: float | None) -> None:
        self.metrics.envelope(agent, status, confidence)

    def envelope_blocked(self, agent: str) -> None:
        self.metrics.envelope_blocked(agent)

    def escalate(
        self,
        task: str,
        agent: str,
        trip: Trip,
        tenant: str | None,
        envelope: dict[str, Any] | None,
    ) -> None:
        """A worker's answer the task's owner should look at; it was delivered all the same."""
        event(
            "envelope_escalated",
            logging.WARNING,
            task=task,
            agent=agent,
            reason=str(trip.reason),
            detail=trip.detail,
            figures=trip.figures,
        )
        happened = TripEvent(task, agent, tenant, trip, "escalate", envelope)
        for listener in self.trip_listeners:
            try:
                listener(happened)
            except Exception as exc:  # a faulty listener must never break traffic
                event("trip_listener_failed", logging.ERROR, error=repr(exc))

    def refused(self, reason: str) -> None:
        self.metrics.refused.labels(reason).inc()

    def stream_cut(self, reason: str) -> None:
        self.metrics.streams_cut.labels(reason).inc()
