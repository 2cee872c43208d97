"""The verdict every detector returns: a reason and the figures behind it.

The sentence a person reads is derived from those two alone (each detector's template, in the
registry), so a trip recorded by any state backend (or replayed from Redis on another replica)
reads the same everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TripReason(StrEnum):
    """Stable names: they appear in logs, error bodies and metric labels."""

    BUDGET_TOKENS = "budget_tokens"
    BUDGET_AGENT_TOKENS = "budget_agent_tokens"
    BUDGET_COST = "budget_cost"
    MAX_CALLS = "max_calls"
    MAX_HOPS = "max_hops"
    DEADLINE = "deadline"
    REPEAT_OUTPUT = "repeat_output"
    REPEAT_REQUEST = "repeat_request"
    CYCLE = "cycle"
    NEAR_DUPLICATE = "near_duplicate"
    NO_PROGRESS = "no_progress"
    TOOL_LOOP = "tool_loop"
    OPERATOR = "operator"
    INVALID_ENVELOPE = "invalid_envelope"
    LOW_CONFIDENCE = "low_confidence"


# Each detector's sentence, by reason: filled in as each ``Detector`` is declared
# (``spec.py``), so this module needs none of them.
DESCRIBE: dict[TripReason, Callable[[Mapping[str, Any]], str]] = {}


@dataclass(frozen=True, slots=True)
class Trip:
    reason: TripReason
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def detail(self) -> str:
        """One sentence a person reads in the refused call's error message."""
        try:
            return DESCRIBE[self.reason](self.figures)
        except (KeyError, ValueError, IndexError):
            return f"{self.reason} ({self.figures})"

    def to_json(self) -> str:
        return json.dumps({"reason": str(self.reason), "figures": self.figures})

    @classmethod
    def from_json(cls, data: str | bytes) -> Trip:
        record = json.loads(data)
        try:
            reason = TripReason(record.get("reason"))
        except ValueError:
            reason = TripReason.OPERATOR
        return cls(reason, dict(record.get("figures") or {}))


def one_kill(trips: list[Trip]) -> Trip:
    """The trip a completion that tripped several detectors at once is killed for: the first,
    in the registry's order, with the others' reasons among its figures, so one completion
    makes one kill, one webhook and one count."""
    first = trips[0]
    if len(trips) == 1:
        return first
    also = ", ".join(str(trip.reason) for trip in trips[1:])
    return Trip(first.reason, {**first.figures, "also": also})
