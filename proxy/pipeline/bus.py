"""The trip bus: every trip, kill or observe, and every escalation travels on it once.

Whoever decides a trip (the core on reserve and settle, the deadline, the envelope gate, the
content detectors) publishes it here; metrics and the log line, the audit trail and the
owner's escalation subscribe in ``proxy/app.py``. A subscriber's failure is logged and never
reaches the call or the other subscribers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.detectors.base import Trip
from proxy.telemetry.logs import event


@dataclass(frozen=True, slots=True)
class TripEvent:
    task: str
    agent: str
    tenant: str | None
    trip: Trip
    action: str  # kill, observe, or escalate (a worker's low-confidence envelope)
    envelope: dict[str, Any] | None = None  # the envelope behind an escalation


TripListener = Callable[[TripEvent], None]


class TripBus:
    def __init__(self) -> None:
        self.subscribers: list[TripListener] = []

    def subscribe(self, listener: TripListener) -> None:
        self.subscribers.append(listener)

    def unsubscribe(self, listener: TripListener) -> None:
        if listener in self.subscribers:
            self.subscribers.remove(listener)

    def publish(self, happened: TripEvent) -> None:
        for listener in self.subscribers:
            try:
                listener(happened)
            except Exception as exc:  # a faulty listener must never break traffic
                event("trip_listener_failed", logging.ERROR, error=repr(exc))

    def trip(
        self,
        task: str,
        agent: str,
        trip: Trip,
        action: str,
        tenant: str | None = None,
        envelope: dict[str, Any] | None = None,
    ) -> None:
        self.publish(TripEvent(task, agent, tenant, trip, action, envelope))
