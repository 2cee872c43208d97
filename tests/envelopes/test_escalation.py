"""A low-confidence envelope as its owner reads it: the JSON event and the Slack message."""

from __future__ import annotations

from proxy.config import Escalation
from proxy.detectors.base import Trip, TripReason
from proxy.escalation import LOW_CONFIDENCE_EVENT, Escalator, slack_text
from proxy.session.base import TaskView
from proxy.telemetry.record import TripEvent

TRIP = Trip(
    TripReason.LOW_CONFIDENCE,
    {"agent": "worker-sql", "status": "partial", "confidence": 0.35, "min_confidence": 0.7},
)
ENVELOPE = {"status": "partial", "result": "3 of 5", "confidence": 0.35, "reason": "locked"}


def test_the_event_carries_the_envelope_and_the_task_figures() -> None:
    escalator = Escalator(Escalation(), None, None)  # type: ignore[arg-type]
    view = TaskView("job-42", 1.0, 2.0, 310, 0, 0.01, 4, 1, ["planner", "worker-sql"], None)
    happened = TripEvent("job-42", "worker-sql", None, TRIP, "escalate", ENVELOPE)
    payload = escalator.payload(happened, view, "id-1", 0.0)
    assert payload["event"] == LOW_CONFIDENCE_EVENT
    assert payload["envelope"] == ENVELOPE
    assert payload["detail"] == (
        "agent worker-sql reported confidence 0.35 (status partial), below the threshold of 0.7"
    )
    assert payload["task_figures"]["calls"] == 4
    text = slack_text(payload)
    assert text.startswith("Tripwire asks the owner of task `job-42` to review an answer")
    assert "The answer was delivered." in text
    kill = TripEvent("job-42", "worker-sql", None, TRIP, "kill")
    assert "envelope" not in escalator.payload(kill, view, "id-2", 0.0)
