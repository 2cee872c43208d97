"""What the proxy tells the world about each call and each trip: metrics and one log line.

The telemetry addon calls these where a call ends, and ``on_trip`` subscribes to the trip bus,
so metrics and logs can never disagree about what happened. A call's metrics and log line are
recorded once its answer is out (``backlog.py``): they never hold up the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from proxy.pipeline.bus import TripEvent, TripListener
from proxy.telemetry.backlog import Backlog
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


CallListener = Callable[[CallRecord], None]


class Telemetry:
    def __init__(self, metrics: Metrics, log_calls: bool = True) -> None:
        self.metrics = metrics
        self.log_calls = log_calls
        # Called on every call, forwarded or refused, after metrics and the log line: the
        # console's recent activity. Cheap and synchronous, like the metrics.
        self.call_listeners: list[CallListener] = []
        self.backlog = Backlog(metrics.telemetry_dropped.inc)

    def call(self, record: CallRecord) -> None:
        """The call's metrics and log line, once the running handler has answered."""
        self.backlog.later(self._call, record)

    def flush(self) -> None:
        """Record what waits now (the server is stopping)."""
        self.backlog.drain()

    def _call(self, record: CallRecord) -> None:
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
        """The task's figures after a call, once the running handler has answered."""
        self.backlog.later(self.metrics.task_seen, task, tokens, calls, hops, cost)

    def envelope(self, agent: str, status: str, confidence: float | None) -> None:
        self.metrics.envelope(agent, status, confidence)

    def envelope_blocked(self, agent: str) -> None:
        self.metrics.envelope_blocked(agent)

    def on_trip(self, happened: TripEvent) -> None:
        """The trip bus's first subscriber: the metric and the log line of every trip, after
        those of the call that tripped it (queued behind them)."""
        self.backlog.later(self._trip, happened)

    def _trip(self, happened: TripEvent) -> None:
        trip = happened.trip
        if happened.action == "escalate":
            # A worker's answer the task's owner should look at; it was delivered all the same.
            event(
                "envelope_escalated",
                logging.WARNING,
                task=happened.task,
                agent=happened.agent,
                reason=str(trip.reason),
                detail=trip.detail,
                figures=trip.figures,
            )
            return
        self.metrics.trip(str(trip.reason), happened.action, happened.agent, happened.task)
        if happened.action == "kill":
            self.metrics.task_ended(happened.task)
        event(
            "trip",
            logging.WARNING,
            task=happened.task,
            agent=happened.agent,
            reason=str(trip.reason),
            action=happened.action,
            detail=trip.detail,
            figures=trip.figures,
        )

    def refused(self, reason: str) -> None:
        self.metrics.refused.labels(reason).inc()

    def stream_cut(self, reason: str) -> None:
        self.metrics.streams_cut.labels(reason).inc()

    def addon_failed(self, addon: str, hook: str) -> None:
        self.metrics.addon_failures.labels(addon, hook).inc()


__all__ = ["CallRecord", "Telemetry", "TripEvent", "TripListener"]
