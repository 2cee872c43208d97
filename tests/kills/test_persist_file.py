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
from proxy.session.sessions import session_id

BUDGET = Effective(Limits(max_tokens=500), RepeatSettings(), "kill", ())
TRIP = Trip(TripReason.OPERATOR, {"by": "ops", "note": "stop"})


def plan(task: str, prompt: int = 10) -> CallPlan:
    return CallPlan(task, "a", BUDGET, prompt, None, 1, None, time.time())


AGENT_BUDGET = Effective(Limits(max_tokens_per_agent=300), RepeatSettings(), "kill", ())


async def run_before_restart(settings: StateSettings) -> None:
    ledger = MemoryLedger(settings)
    await ledger.start()
    grant = await ledger.reserve(plan("spent"))
    await ledger.settle(grant, Outcome(450, 0.0, None, None, True))
    grant = await ledger.reserve(CallPlan("agents", "writer", AGENT_BUDGET, 10, None, 1, None, 0))
    await ledger.settle(grant, Outcome(280, 0.0, None, None, True))
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
        # Each agent's spend too: the writer has 20 of its 300 tokens left, not a fresh 300.
        with pytest.raises(Denied) as writer:
            await ledger.reserve(CallPlan("agents", "writer", AGENT_BUDGET, 50, None, 1, None, 0))
        assert writer.value.trip.reason == TripReason.BUDGET_AGENT_TOKENS
        view = await ledger.get("agents")
        assert view is not None and view.agents == ["writer"]
    finally:
        await ledger.close()


async def test_an_untagged_client_stays_in_its_killed_session_across_a_restart(
    tmp_path: Path,
) -> None:
    """Untagged traffic is one task per session: the file keeps the sessions too, or a restart
    would hand a killed (or spent) client a fresh session at once."""
    settings = StateSettings(persist_file=tmp_path / "tasks.json")
    ledger = MemoryLedger(settings)
    await ledger.start()
    span = await ledger.open_session("key:abc", idle_gap=300)
    task = session_id("key:abc", span.start)
    await ledger.reserve(plan(task))
    assert await ledger.kill(task, TRIP)
    ends = await ledger.end_session("key:abc", span.start, cooldown=600)
    await ledger.close()

    ledger = MemoryLedger(settings)
    await ledger.start()
    try:
        again = await ledger.open_session("key:abc", idle_gap=300)
        assert (again.start, again.ends) == (span.start, ends)
        with pytest.raises(Denied):
            await ledger.reserve(plan(session_id("key:abc", again.start)))
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
