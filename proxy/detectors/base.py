"""The verdict every detector returns: a reason and the figures behind it.

The sentence a person reads is derived from those two alone, so a trip recorded by any state
backend (or replayed from Redis on another replica) reads the same everywhere.
"""

from __future__ import annotations

import json
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


_DETAILS: dict[TripReason, str] = {
    TripReason.BUDGET_TOKENS: (
        "{scope} has {tokens_left} of {max_tokens} tokens left (in use: {tokens_used}, "
        "reserved by calls in flight: {tokens_reserved}), not enough for this call's prompt "
        "of about {prompt_tokens_estimate} tokens"
    ),
    TripReason.BUDGET_AGENT_TOKENS: (
        "{scope} has {tokens_left} of {max_tokens} tokens left (in use: {tokens_used}, "
        "reserved by calls in flight: {tokens_reserved}), not enough for this call's prompt "
        "of about {prompt_tokens_estimate} tokens"
    ),
    TripReason.BUDGET_COST: (
        "the task has ${cost_left_usd:.4f} of ${max_cost_usd:.2f} left, not enough for this "
        "call's prompt of about {prompt_tokens_estimate} tokens on {model}"
    ),
    TripReason.MAX_CALLS: "the task reached its limit of {max_calls} calls",
    TripReason.MAX_HOPS: (
        "handing off from {from_agent} to {to_agent} would be hop {hops}, "
        "over the limit of {max_hops}"
    ),
    TripReason.DEADLINE: (
        "the task ran {elapsed_s:.0f}s, past its deadline of {max_duration_s:.0f}s"
    ),
    TripReason.REPEAT_OUTPUT: (
        "agent {agent} repeated the same output {repeats} times within the task's last "
        "{window} outputs"
    ),
    TripReason.REPEAT_REQUEST: (
        "agent {agent} repeated the same request {repeats} times within its last {window} requests"
    ),
    TripReason.CYCLE: (
        "the task went round the same cycle of {period} outputs ({cycle}) {rounds} times in a "
        "row; each output at least {similarity:.0%} like the one a cycle earlier"
    ),
    TripReason.NEAR_DUPLICATE: (
        "agent {agent} gave {repeats} nearly identical outputs (similarity up to "
        "{max_similarity:.0%}, threshold {similarity:.0%}) within the task's last {window} outputs"
    ),
    TripReason.NO_PROGRESS: (
        "the task's last {completions} outputs added {new_share:.1%} new content, below the "
        "minimum of {min_new_share:.0%}"
    ),
    TripReason.TOOL_LOOP: "agent {agent} {pattern} with no new tool result in between",
    TripReason.OPERATOR: "stopped by {by}: {note}",
    # The problem itself is among the figures, which every refusal lists after the sentence.
    TripReason.INVALID_ENVELOPE: "agent {agent} answered without a valid status envelope",
    TripReason.LOW_CONFIDENCE: (
        "agent {agent} reported confidence {confidence:g} (status {status}), below the "
        "threshold of {min_confidence:g}"
    ),
}


@dataclass(frozen=True, slots=True)
class Trip:
    reason: TripReason
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def detail(self) -> str:
        """One sentence a person reads in the refused call's error message."""
        try:
            return _DETAILS[self.reason].format(**self.figures)
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
