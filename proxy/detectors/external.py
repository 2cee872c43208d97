"""Trips decided outside the ledger's detectors: an operator's kill and a worker's envelope.
They are registered like any detector so that their sentence reads the same everywhere."""

from __future__ import annotations

from proxy.detectors.base import TripReason
from proxy.detectors.spec import Detector, Figure

OPERATOR = Detector(
    TripReason.OPERATOR,
    "outside",
    "stopped by {by}: {note}",
    (Figure("by"), Figure("note")),
    settings=("admin API: POST /tasks/{task}/kill",),
)
# The problem itself is among the figures, which every refusal lists after the sentence.
INVALID_ENVELOPE = Detector(
    TripReason.INVALID_ENVELOPE,
    "outside",
    "agent {agent} answered without a valid status envelope",
    (Figure("agent"), Figure("problem")),
    settings=("envelope.on_invalid",),
)
LOW_CONFIDENCE = Detector(
    TripReason.LOW_CONFIDENCE,
    "outside",
    "agent {agent} reported confidence {confidence:g} (status {status}), below the "
    "threshold of {min_confidence:g}",
    (Figure("agent"), Figure("status"), Figure("confidence"), Figure("min_confidence")),
    settings=("envelope.min_confidence", "envelope.on_low_confidence"),
)
