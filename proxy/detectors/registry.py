"""Every detector, in the order the ledgers run them: the one list the memory ledger, the
Redis ledger's Lua and ``tripwire replay`` iterate.

Adding a detector: its module declares a ``Detector`` (reason, sentence, figures, settings,
phase, state; for the reserve phase, its Python check and Lua snippet), its reason joins
``TripReason``, and one line below registers it.
"""

from __future__ import annotations

from proxy.detectors import (
    budget,
    cycle,
    external,
    limits,
    progress,
    repeat,
    similarity,
    toolcalls,
)
from proxy.detectors.base import TripReason
from proxy.detectors.spec import Detector, Phase

DETECTORS: tuple[Detector, ...] = (
    # reserve: in this order; the first trip is the one that kills
    limits.DEADLINE,
    limits.MAX_CALLS,
    limits.MAX_HOPS,
    budget.BUDGET_TOKENS,
    budget.BUDGET_AGENT_TOKENS,
    budget.BUDGET_COST,
    # settle
    repeat.REPEAT_OUTPUT,
    repeat.REPEAT_REQUEST,
    # content
    cycle.CYCLE,
    similarity.NEAR_DUPLICATE,
    progress.NO_PROGRESS,
    toolcalls.TOOL_LOOP,
    # outside
    external.OPERATOR,
    external.INVALID_ENVELOPE,
    external.LOW_CONFIDENCE,
)

BY_REASON: dict[TripReason, Detector] = {d.reason: d for d in DETECTORS}


def phase(name: Phase) -> tuple[Detector, ...]:
    return tuple(d for d in DETECTORS if d.phase == name)


RESERVE = phase("reserve")
SETTLE = phase("settle")
CONTENT = phase("content")
