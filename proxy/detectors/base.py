"""The verdict every detector returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


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
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Trip:
    reason: TripReason
    detail: str  # one sentence a person reads in the refused call's error message
    figures: dict[str, int | float | str] = field(default_factory=dict)
