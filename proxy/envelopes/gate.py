"""What a verdict does to a call: count it, and kill the task, block the answer or escalate
to the task's owner as the worker's rule says.

The envelopes addon asks once per completed answer of a worker. Nothing here raises into the
request path: a state backend that does not answer costs the per-task count, not the call.
Kills and escalations go out on the trip bus; how a blocked answer looks is the adapter's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from proxy.detectors.base import Trip, TripReason
from proxy.envelopes.core import INVALID, Verdict, check
from proxy.pipeline.bus import TripBus
from proxy.policy.rules import Effective
from proxy.providers.base import Output
from proxy.session.base import Ledger
from proxy.telemetry.logs import event
from proxy.telemetry.record import Telemetry

BLOCK_STATUS = 422
BLOCK_REASON = "low_confidence"
# What an owner's webhook carries of an envelope's result.
MAX_RESULT_CHARS = 2000

Action = Literal["deliver", "block", "kill"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    verdict: Verdict
    trip: Trip | None = None  # the kill's trip, or the low-confidence figures
    message: str = ""  # the blocked caller's error message


def block_message(task: str, agent: str, verdict: Verdict) -> str:
    return (
        f"Tripwire held back the answer of agent '{agent}' in task '{task}': its status "
        f"envelope reports confidence {verdict.confidence:g} (status {verdict.status}), below "
        f"the threshold of {verdict.min_confidence:g}. The answer was not delivered; "
        "escalate it, or retry the step with more context."
    )


class EnvelopeGate:
    def __init__(self, ledger: Ledger, telemetry: Telemetry, bus: TripBus) -> None:
        self.ledger = ledger
        self.telemetry = telemetry
        self.bus = bus

    async def judge(
        self, task: str, agent: str, tenant: str | None, policy: Effective, output: Output
    ) -> Decision | None:
        settings = policy.envelope
        if settings is None:
            return None
        verdict = check(output, settings)
        if verdict is None:
            return None
        self.telemetry.envelope(agent, verdict.status, verdict.confidence)
        try:
            await self.ledger.count_envelope(task, verdict.status)
        except Exception as exc:  # the count is for operators; the call goes on without it
            event("envelope_count_failed", logging.WARNING, task=task, error=repr(exc))
        # Shadow mode leaves traffic untouched: verdicts are counted and logged only.
        shadow = policy.on_trip == "observe"
        if verdict.status == INVALID:
            return await self._invalid(task, agent, tenant, verdict, settings.on_invalid, shadow)
        if not verdict.low_confidence:
            return Decision("deliver", verdict)
        trip = Trip(
            TripReason.LOW_CONFIDENCE,
            {
                "agent": agent,
                "status": verdict.status,
                "confidence": verdict.confidence,
                "min_confidence": verdict.min_confidence,
            },
        )
        action = settings.on_low_confidence
        if action == "block" and not shadow:
            self.telemetry.envelope_blocked(agent)
            event(
                "envelope_blocked",
                logging.WARNING,
                task=task,
                agent=agent,
                status=verdict.status,
                confidence=verdict.confidence,
                min_confidence=verdict.min_confidence,
            )
            return Decision("block", verdict, trip, block_message(task, agent, verdict))
        if action == "escalate":
            self.bus.trip(task, agent, trip, "escalate", tenant, _shown(verdict.envelope))
        else:
            event(
                "envelope_low_confidence",
                logging.INFO,
                task=task,
                agent=agent,
                status=verdict.status,
                confidence=verdict.confidence,
                min_confidence=verdict.min_confidence,
            )
        return Decision("deliver", verdict, trip)

    async def _invalid(
        self,
        task: str,
        agent: str,
        tenant: str | None,
        verdict: Verdict,
        on_invalid: str,
        shadow: bool,
    ) -> Decision:
        trip = Trip(TripReason.INVALID_ENVELOPE, {"agent": agent, "problem": verdict.problem})
        if on_invalid != "kill":
            event("envelope_invalid", logging.INFO, task=task, agent=agent, problem=verdict.problem)
            return Decision("deliver", verdict, trip)
        if shadow:
            self.bus.trip(task, agent, trip, "observe", tenant)
            return Decision("deliver", verdict, trip)
        try:
            killed = await self.ledger.kill(task, trip)
        except Exception as exc:
            # Without the state the kill cannot be shared; this answer is refused all the same.
            event("envelope_kill_failed", logging.ERROR, task=task, error=repr(exc))
            killed = False
        if killed:
            self.bus.trip(task, agent, trip, "kill", tenant)
        return Decision("kill", verdict, trip)


def _shown(envelope: dict[str, Any] | None) -> dict[str, Any] | None:
    if envelope is None:
        return None
    result = envelope.get("result")
    if isinstance(result, str) and len(result) > MAX_RESULT_CHARS:
        return {**envelope, "result": result[: MAX_RESULT_CHARS - 3] + "..."}
    return envelope
