"""Embedded mode with ``state.persist_file``: kills and budgets survive a restart; without
it, a restart forgets them (as the README says)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.detectors.base import Trip, TripReason
from proxy.policy.rules import Effective
from proxy.session.base import CallPlan, Denied, Outcome
from proxy.session.memory import MemoryLedger

BUDGET = Effective(Limits(max_tokens=500), RepeatSettings(), "kill", ())
TRIP = Trip(TripReason.OPERATOR, {"by": "ops", "note": "stop"})


def plan(task: str, prompt: int = 10) -> CallPlan:
    return CallPlan(task, "a", BUDGET, prompt, None, 1, None, time.time())


async def run_before_restart(settings: StateSettings) -> None:
    ledger = MemoryLedger(settings)
    await ledger.start()
    grant = await ledger.reserve(plan("spent"))
    await ledger.settle(grant, Outcome(450, 0.0, None, None, True))
    await ledger.reserve(plan("killed"))
    assert await ledger.kill("killed", TRIP)
    await ledger.close()


async def test_kills_and_budgets_survive_a_restart_with_the_file(tmp_path: Path) -> None:
    settings = StateSettings(persist_file=tmp_path / "state" / "tasks.json")
    await run_before_restart(settings)
    assert not list((tmp_path / "state").glob("*.tmp"))  # written whole, then renamed
    ledger = MemoryLedger(settings)
    await ledger.start()
    try:
        with pytest.raises(Denied) as refused:
            await ledger.reserve(plan("killed"))
        assert refused.value.trip.reason == TripReason.OPERATOR
        with pytest.raises(Denied) as spent:  # 50 tokens left, not a fresh 500
            await ledger.reserve(plan("spent", prompt=100))
        assert spent.value.trip.reason == TripReason.BUDGET_TOKENS
        view = await ledger.get("spent")
        assert view is not None and view.tokens_used == 450
    finally:
        await ledger.close()


async def test_without_the_file_a_restart_forgets(tmp_path: Path) -> None:
    await run_before_restart(StateSettings())
    ledger = MemoryLedger(StateSettings())
    await ledger.start()
    try:
        await ledger.reserve(plan("killed"))
    finally:
        await ledger.close()


async def test_a_damaged_file_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text('{"version": 1, "tasks": [{"task": 5}, "x"')
    ledger = MemoryLedger(StateSettings(persist_file=path))
    await ledger.start()
    try:
        assert await ledger.list() == []
    finally:
        await ledger.close()
