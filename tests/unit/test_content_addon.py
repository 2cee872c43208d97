"""The content-detection addon with the embedded ledger: detections queued after the answers,
and run at once by a call of their task that needs the verdict."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.addons.content import ContentDetection
from proxy.config import Policy, StateSettings
from proxy.detectors.base import TripReason
from proxy.pipeline.bus import TripBus, TripEvent
from proxy.policy.rules import PolicyBook
from proxy.providers.base import Output
from proxy.session.base import CallPlan, Denied, Outcome
from proxy.session.memory import MemoryLedger

PLANS = [
    "The plan is to collect the quarterly figures, compare them with last year and write a "
    "short summary for the board with the three main risks and what we do next about them.",
    "The plan is to collect the quarterly figures, compare them with last year and write a "
    "short summary for the board with the three main risks and what we will do next about them.",
]


def book(action: str) -> PolicyBook:
    return PolicyBook(
        Policy.model_validate(
            {"near_duplicate": {"action": action, "repeats": 2}, "cycle": {"enabled": False}}
        )
    )


async def answered(ledger: MemoryLedger, addon: ContentDetection, policy: Any, text: str) -> None:
    """One call of task ``t`` reserved, settled and handed to the addon, as the core does."""
    grant = await ledger.reserve(CallPlan("t", "planner", policy, 10, None, 1, None, 1000.0))
    settled = await ledger.settle(grant, Outcome(20, 0.0, None, None, completed=True))
    call = SimpleNamespace(task="t", agent="planner", policy=policy, body=None, tenant=None)
    output = Output(text=text)
    addon.settled(call, SimpleNamespace(outcome="ok", output=output, ledger=settled))  # type: ignore[arg-type]


def detection() -> tuple[MemoryLedger, ContentDetection, list[TripEvent]]:
    """An embedded ledger, the addon on it, and the trips it publishes."""
    ledger = MemoryLedger(StateSettings())
    bus = TripBus()
    trips: list[TripEvent] = []
    bus.subscribe(trips.append)
    return ledger, ContentDetection(ledger, bus), trips


async def test_a_call_of_the_task_runs_its_queued_kill_mode_detections_first() -> None:
    ledger, addon, trips = detection()
    policy = book("kill").resolve("t", "planner", "header")
    for text in PLANS:
        await answered(ledger, addon, policy, text)
    # No turn of the event loop yet: the detections wait in the queue.
    assert ledger.detector_runs == 0
    call = SimpleNamespace(task="t")
    await addon.request(call)  # type: ignore[arg-type]
    assert ledger.detector_runs == 2
    with pytest.raises(Denied) as refused:
        await ledger.reserve(CallPlan("t", "planner", policy, 10, None, 1, None, 1001.0))
    assert refused.value.trip.reason is TripReason.NEAR_DUPLICATE
    assert [(t.trip.reason, t.action) for t in trips] == [(TripReason.NEAR_DUPLICATE, "kill")]


async def test_observe_mode_detections_run_in_the_next_turn_in_order() -> None:
    ledger, addon, trips = detection()
    policy = book("observe").resolve("t", "planner", "header")
    for text in [*PLANS, PLANS[0]]:
        await answered(ledger, addon, policy, text)
    await addon.request(SimpleNamespace(task="t"))  # type: ignore[arg-type]
    assert ledger.detector_runs == 0  # nothing to decide: they wait for the next turn
    await asyncio.sleep(0)
    assert ledger.detector_runs == 3
    assert [(t.trip.reason, t.action) for t in trips] == [(TripReason.NEAR_DUPLICATE, "observe")]
    # The task goes on.
    await ledger.reserve(CallPlan("t", "planner", policy, 10, None, 1, None, 1001.0))
