"""The embedded ledger's reserve/settle protocol, without a server."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import Limits, Policy, RepeatSettings, StateSettings
from proxy.detectors.base import Trip, TripReason
from proxy.policy.rules import Effective, PolicyBook
from proxy.session.base import Busy, CallPlan, Denied, Outcome
from proxy.session.memory import MemoryLedger


def effective(on_trip: str = "kill", **limits: object) -> Effective:
    return Effective(Limits(**limits), RepeatSettings(), on_trip, ())  # type: ignore[arg-type]


def plan(
    task: str,
    policy: Effective,
    *,
    agent: str = "a",
    prompt: int = 10,
    cap: int | None = None,
    choices: int = 1,
    now: float = 1000.0,
) -> CallPlan:
    return CallPlan(task, agent, policy, prompt, cap, choices, None, now)


def outcome(tokens: int, output: str | None = None, request: str | None = None) -> Outcome:
    return Outcome(tokens, 0.0, output, request, completed=True)


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger(StateSettings())


async def test_cap_is_lowered_to_what_is_left(ledger: MemoryLedger) -> None:
    policy = effective(max_tokens=1000)
    grant = await ledger.reserve(plan("t", policy, prompt=100))
    assert grant.output_cap == 900
    assert grant.reserved_tokens == 1000


async def test_a_smaller_client_cap_is_left_alone(ledger: MemoryLedger) -> None:
    grant = await ledger.reserve(plan("t", effective(max_tokens=1000), prompt=100, cap=50))
    assert grant.output_cap is None
    assert grant.reserved_tokens == 150


async def test_no_budget_no_rewrite(ledger: MemoryLedger) -> None:
    grant = await ledger.reserve(plan("t", effective(), prompt=100))
    assert grant.output_cap is None


async def test_settle_books_usage_and_releases_reservation(ledger: MemoryLedger) -> None:
    policy = effective(max_tokens=1000)
    grant = await ledger.reserve(plan("t", policy, prompt=100))
    settled = await ledger.settle(grant, outcome(300))
    assert settled.view.tokens_used == 300
    assert settled.view.tokens_reserved == 0
    assert settled.view.tokens_left == 700


async def test_concurrent_calls_wait_while_the_budget_is_only_reserved(
    ledger: MemoryLedger,
) -> None:
    policy = effective(max_tokens=1000)
    first = await ledger.reserve(plan("t", policy, prompt=100))
    with pytest.raises(Busy):
        await ledger.reserve(plan("t", policy, prompt=100))
    await ledger.settle(first, outcome(400))
    second = await ledger.reserve(plan("t", policy, prompt=100))
    assert second.output_cap == 500


async def test_spent_budget_kills_the_task(ledger: MemoryLedger) -> None:
    policy = effective(max_tokens=1000)
    grant = await ledger.reserve(plan("t", policy, prompt=100))
    await ledger.settle(grant, outcome(950))
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan("t", policy, prompt=100))
    assert refused.value.fresh and refused.value.trip.reason is TripReason.BUDGET_TOKENS
    with pytest.raises(Denied) as again:
        await ledger.reserve(plan("t", policy, prompt=1))
    assert not again.value.fresh


async def test_twenty_concurrent_reservations_never_exceed_the_budget(
    ledger: MemoryLedger,
) -> None:
    policy = effective(max_tokens=1000)

    async def one() -> int:
        try:
            grant = await ledger.reserve(plan("t", policy, prompt=60))
        except (Busy, Denied):
            return 0
        await asyncio.sleep(0)
        await ledger.settle(grant, outcome(grant.reserved_tokens))
        return grant.reserved_tokens

    spent = await asyncio.gather(*(one() for _ in range(20)))
    assert 0 < sum(spent) <= 1000


async def test_hops_are_counted_and_the_thirteenth_refused(ledger: MemoryLedger) -> None:
    policy = effective(max_hops=12)
    for call in range(13):
        grant = await ledger.reserve(plan("t", policy, agent="ab"[call % 2]))
        await ledger.settle(grant, outcome(1))
    assert grant.view.hops == 12
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan("t", policy, agent="ab"[13 % 2]))
    assert refused.value.trip.reason is TripReason.MAX_HOPS


async def test_repeated_output_trips_on_the_third(ledger: MemoryLedger) -> None:
    policy = effective()
    for number in range(1, 4):
        grant = await ledger.reserve(plan("t", policy))
        settled = await ledger.settle(grant, outcome(5, output="same", request=f"r{number}"))
    assert settled.killed and settled.trips[0].reason is TripReason.REPEAT_OUTPUT
    with pytest.raises(Denied):
        await ledger.reserve(plan("t", policy))


async def test_observe_mode_records_once_and_never_refuses(ledger: MemoryLedger) -> None:
    policy = effective(on_trip="observe", max_calls=2)
    observed = []
    for _ in range(5):
        grant = await ledger.reserve(plan("t", policy))
        observed.extend(grant.observed)
        await ledger.settle(grant, outcome(1))
    assert [t.reason for t in observed] == [TripReason.MAX_CALLS]


async def test_deadline(ledger: MemoryLedger) -> None:
    policy = effective(max_duration=60)
    await ledger.reserve(plan("t", policy, now=1000.0))
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan("t", policy, now=1061.0))
    assert refused.value.trip.reason is TripReason.DEADLINE


async def test_kill_cuts_streams_in_flight(ledger: MemoryLedger) -> None:
    cut: list[Trip] = []
    ledger.board.watch("t", cut.append)
    trip = Trip(TripReason.OPERATOR, {"by": "ops", "note": "stopped by hand"})
    assert await ledger.kill("t", trip)
    assert cut == [trip]
    assert not await ledger.kill("t", trip)


async def test_idle_tasks_expire_and_task_count_is_bounded() -> None:
    ledger = MemoryLedger(StateSettings(task_ttl=60, max_tasks=3))
    policy = effective()
    for name, now in [("a", 0.0), ("b", 10.0), ("c", 100.0), ("d", 101.0)]:
        await ledger.reserve(plan(name, policy, now=now))
    assert await ledger.get("a") is None  # evicted: at most 3 tasks
    assert ledger.sweep(now=105.0) == 1  # "b" idle for more than 60 s
    assert [view.task for view in await ledger.list()] == ["c", "d"]


def test_rules_apply_in_order_and_override_only_what_they_set() -> None:
    book = PolicyBook(
        Policy.model_validate(
            {
                "defaults": {"max_calls": 200, "max_hops": 12},
                "rules": [
                    {"match": {"task": "research-*"}, "limits": {"max_tokens": 5000}},
                    {
                        "match": {"agent": "planner"},
                        "limits": {"max_hops": 3},
                        "on_trip": "observe",
                    },
                ],
            }
        )
    )
    planner = book.resolve("research-1", "planner")
    assert planner.limits.max_tokens == 5000
    assert planner.limits.max_hops == 3
    assert planner.limits.max_calls == 200
    assert planner.on_trip == "observe"
    other = book.resolve("chat-1", "writer")
    assert other.limits.max_tokens is None and other.on_trip == "kill"
