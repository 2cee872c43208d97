"""The reserve/settle protocol, run against every state backend: they must behave the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.detectors.base import Trip, TripReason
from proxy.policy.rules import Effective
from proxy.pricing import Price, cost_usd
from proxy.session.base import Busy, CallPlan, Denied, Ledger, Outcome, Unestimated
from proxy.session.memory import MemoryLedger
from proxy.session.redis import RedisLedger

START = 1000.0


def effective(on_trip: str = "kill", **limits: Any) -> Effective:
    return Effective(Limits(**limits), RepeatSettings(), on_trip, ())  # type: ignore[arg-type]


def plan(
    task: str,
    policy: Effective,
    *,
    agent: str = "a",
    prompt: int = 10,
    cap: int | None = None,
    choices: int = 1,
    price: Price | None = None,
    now: float = START,
) -> CallPlan:
    return CallPlan(task, agent, policy, prompt, cap, choices, price, now)


def outcome(
    tokens: int, output: str | None = None, request: str | None = None, cost: float = 0.0
) -> Outcome:
    return Outcome(tokens, cost, output, request, completed=True)


class Clock:
    """The time both ledgers read: the tests move it rather than sleep."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "redis"])
async def ledger(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        state: Ledger = MemoryLedger(StateSettings(), clock=clock)
    else:
        server = request.getfixturevalue("redis_server")
        state = RedisLedger(StateSettings(backend="redis", redis_url=server.url), clock=clock)
    await state.start()
    yield state
    await state.close()


@pytest.fixture
def task() -> str:
    return "t-" + uuid.uuid4().hex[:8]


async def test_cap_is_lowered_to_what_is_left(ledger: Ledger, task: str) -> None:
    grant = await ledger.reserve(plan(task, effective(max_tokens=1000), prompt=100))
    assert grant.output_cap == 900
    assert grant.reserved_tokens == 1000


async def test_a_smaller_client_cap_is_left_alone(ledger: Ledger, task: str) -> None:
    grant = await ledger.reserve(plan(task, effective(max_tokens=1000), prompt=100, cap=50))
    assert grant.output_cap is None
    assert grant.reserved_tokens == 150


async def test_choices_share_the_allowance(ledger: Ledger, task: str) -> None:
    grant = await ledger.reserve(plan(task, effective(max_tokens=1000), prompt=100, choices=3))
    assert grant.output_cap == 300


async def test_settle_books_usage_and_releases_the_reservation(ledger: Ledger, task: str) -> None:
    policy = effective(max_tokens=1000)
    grant = await ledger.reserve(plan(task, policy, prompt=100))
    settled = await ledger.settle(grant, outcome(300))
    assert settled.view.tokens_used == 300
    assert settled.view.tokens_reserved == 0
    assert settled.view.tokens_left == 700
    view = await ledger.get(task)
    assert view is not None and view.tokens_used == 300 and view.calls == 1


async def test_calls_wait_while_the_budget_is_only_reserved(ledger: Ledger, task: str) -> None:
    policy = effective(max_tokens=1000)
    first = await ledger.reserve(plan(task, policy, prompt=100))
    with pytest.raises(Busy):
        await ledger.reserve(plan(task, policy, prompt=100))
    await ledger.settle(first, outcome(400))
    second = await ledger.reserve(plan(task, policy, prompt=100))
    assert second.output_cap == 500


async def test_spent_budget_kills_the_task(ledger: Ledger, task: str) -> None:
    policy = effective(max_tokens=1000)
    grant = await ledger.reserve(plan(task, policy, prompt=100))
    await ledger.settle(grant, outcome(950))
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan(task, policy, prompt=100))
    assert refused.value.fresh and refused.value.trip.reason is TripReason.BUDGET_TOKENS
    assert "has 50 of 1000 tokens left" in refused.value.trip.detail
    with pytest.raises(Denied) as again:
        await ledger.reserve(plan(task, policy, prompt=1))
    assert not again.value.fresh


async def test_a_refused_first_call_leaves_no_task(ledger: Ledger, task: str) -> None:
    """#18: a first call refused by a limit kills nothing and keeps nothing, so refused calls
    of made-up ids cannot fill the task tables; a later call within the limits starts it."""
    policy = effective(max_tokens=100)
    for refused_plan in (
        plan(task, policy, prompt=500),  # the prompt alone is over the budget
        plan(task, effective(max_tokens_per_agent=50), prompt=80),
        plan(task, policy, prompt=60, choices=50),  # no output left for each choice
        plan(
            task, effective(max_cost_usd=1e-6), prompt=500, price=Price(1e-5, 1e-5, 1e-6, 1e-5, "m")
        ),
    ):
        with pytest.raises(Denied) as refused:
            await ledger.reserve(refused_plan)
        assert refused.value.first_call and not refused.value.fresh
        assert await ledger.get(task) is None
    assert task not in {view.task for view in await ledger.list()}
    grant = await ledger.reserve(plan(task, policy, prompt=20))
    assert grant.view.calls == 1
    view = await ledger.get(task)
    assert view is not None and view.killed is None and view.calls == 1


async def test_a_created_task_is_killed_by_its_first_call_refused(
    ledger: Ledger, task: str
) -> None:
    """A task that exists before its first call (created with its own limits) is killed as any
    other: only a call that would have started a task leaves nothing behind."""
    await ledger.create(task, tenant=None, owner="ops", overrides={"max_tokens": 100})
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan(task, effective(), prompt=500))
    assert refused.value.fresh and not refused.value.first_call
    view = await ledger.get(task)
    assert view is not None and view.killed is not None


async def test_per_agent_budget(ledger: Ledger, task: str) -> None:
    policy = effective(max_tokens_per_agent=500)
    grant = await ledger.reserve(plan(task, policy, agent="writer", prompt=100))
    await ledger.settle(grant, outcome(450))
    other = await ledger.reserve(plan(task, policy, agent="critic", prompt=100))
    assert other.output_cap == 400
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan(task, policy, agent="writer", prompt=100))
    assert refused.value.trip.reason is TripReason.BUDGET_AGENT_TOKENS


async def test_concurrent_reservations_never_exceed_the_budget(ledger: Ledger, task: str) -> None:
    policy = effective(max_tokens=1000)

    async def one() -> int:
        for _ in range(50):
            try:
                grant = await ledger.reserve(plan(task, policy, prompt=60))
            except Busy:
                await asyncio.sleep(0.001)
                continue
            except Denied:
                return 0
            await asyncio.sleep(0.001)
            await ledger.settle(grant, outcome(grant.reserved_tokens))
            return grant.reserved_tokens
        return 0

    spent = await asyncio.gather(*(one() for _ in range(20)))
    view = await ledger.get(task)
    assert view is not None
    assert 0 < sum(spent) == view.tokens_used <= 1000


async def test_the_thirteenth_hop_is_refused(ledger: Ledger, task: str) -> None:
    policy = effective(max_hops=12)
    for call in range(13):
        grant = await ledger.reserve(plan(task, policy, agent="ab"[call % 2]))
        await ledger.settle(grant, outcome(1))
    assert grant.view.hops == 12
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan(task, policy, agent="b"))
    assert refused.value.trip.reason is TripReason.MAX_HOPS
    assert "would be hop 13" in refused.value.trip.detail


async def test_max_calls(ledger: Ledger, task: str) -> None:
    policy = effective(max_calls=2)
    for _ in range(2):
        await ledger.settle(await ledger.reserve(plan(task, policy)), outcome(1))
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan(task, policy))
    assert refused.value.trip.reason is TripReason.MAX_CALLS


async def test_repeated_output_trips_on_the_third(ledger: Ledger, task: str) -> None:
    policy = effective()
    for number in range(1, 4):
        grant = await ledger.reserve(plan(task, policy))
        settled = await ledger.settle(grant, outcome(5, output="same", request=f"r{number}"))
    assert settled.killed and settled.trips[0].reason is TripReason.REPEAT_OUTPUT
    with pytest.raises(Denied):
        await ledger.reserve(plan(task, policy))


async def test_one_completion_that_trips_two_detectors_makes_one_kill(
    ledger: Ledger, task: str
) -> None:
    policy = effective()
    for _ in range(3):
        grant = await ledger.reserve(plan(task, policy))
        settled = await ledger.settle(grant, outcome(5, output="same", request="same"))
    assert settled.killed
    [trip] = settled.trips  # one kill, one webhook, one count: the others are its figures
    assert trip.reason is TripReason.REPEAT_OUTPUT
    assert trip.figures["also"] == "repeat_request"
    view = await ledger.get(task)
    assert view is not None and view.killed == trip


async def test_repeated_request_by_one_agent(ledger: Ledger, task: str) -> None:
    policy = effective()
    for number in range(3):
        grant = await ledger.reserve(plan(task, policy))
        settled = await ledger.settle(grant, outcome(5, output=f"o{number}", request="same"))
    assert [t.reason for t in settled.trips] == [TripReason.REPEAT_REQUEST]


async def test_observe_mode_records_once_and_never_refuses(ledger: Ledger, task: str) -> None:
    policy = effective(on_trip="observe", max_calls=2)
    observed = []
    for _ in range(5):
        grant = await ledger.reserve(plan(task, policy))
        observed.extend(grant.observed)
        await ledger.settle(grant, outcome(1))
    assert [t.reason for t in observed] == [TripReason.MAX_CALLS]


async def test_kill_cuts_streams_in_flight_and_refuses_later_calls(
    ledger: Ledger, task: str
) -> None:
    cut: list[Trip] = []
    ledger.board.watch(task, cut.append)
    trip = Trip(TripReason.OPERATOR, {"by": "ops", "note": "stopped by hand"})
    assert await ledger.kill(task, trip)
    assert cut == [trip]
    assert not await ledger.kill(task, trip)
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan(task, effective()))
    assert (
        refused.value.trip == trip
        and refused.value.trip.detail == "stopped by ops: stopped by hand"
    )


async def test_a_task_created_ahead_gets_its_own_limits_and_owner(
    ledger: Ledger, task: str
) -> None:
    view = await ledger.create(task, tenant="acme", owner="ops-team", overrides={"max_tokens": 500})
    assert (view.tenant, view.owner, view.overrides) == ("acme", "ops-team", {"max_tokens": 500})
    grant = await ledger.reserve(plan(task, effective(max_tokens=100_000), prompt=100))
    assert grant.output_cap == 400  # the task's own budget wins over the policy's


async def test_a_call_without_its_estimate_is_turned_away_by_a_budget_of_the_task(
    ledger: Ledger, task: str
) -> None:
    await ledger.create(task, tenant=None, owner=None, overrides={"max_tokens": 500})
    unestimated = plan(task, effective(), prompt=0)
    unestimated.estimated = False
    with pytest.raises(Unestimated):
        await ledger.reserve(unestimated)
    view = await ledger.get(task)
    assert view is not None and view.calls == 0 and view.tokens_reserved == 0
    grant = await ledger.reserve(plan(task, effective(), prompt=100))
    assert grant.output_cap == 400
    other = "o-" + task
    free = plan(other, effective(), prompt=0)
    free.estimated = False  # no budget of its own: reserved as it is
    assert (await ledger.reserve(free)).view.calls == 1


async def test_a_call_reserved_without_its_estimate_counts_as_reserved_until_it_settles(
    ledger: Ledger, task: str
) -> None:
    """No estimate and no cap would reserve nothing: Redis holds one token for the call, so a
    settle held back by an outage shows from outside; the grant counts none, as the embedded
    ledger's does."""
    unestimated = plan(task, effective(), prompt=0)
    unestimated.estimated = False
    grant = await ledger.reserve(unestimated)
    assert grant.reserved_tokens == 0
    view = await ledger.get(task)
    assert view is not None
    assert view.tokens_reserved == (1 if isinstance(ledger, RedisLedger) else 0)
    await ledger.settle(grant, outcome(30))
    view = await ledger.get(task)
    assert view is not None and view.tokens_reserved == 0 and view.tokens_used == 30


async def test_resume_clears_the_kill_and_raises_the_budget(ledger: Ledger, task: str) -> None:
    policy = effective(max_tokens=1000)
    grant = await ledger.reserve(plan(task, policy, prompt=100))
    await ledger.settle(grant, outcome(990))
    with pytest.raises(Denied):
        await ledger.reserve(plan(task, policy, prompt=100))
    view = await ledger.resume(task, {"max_tokens": 3000}, "approved by ops")
    assert view is not None and view.killed is None
    grant = await ledger.reserve(plan(task, policy, prompt=100))
    assert grant.output_cap == 3000 - 990 - 100
    kinds = [event.kind for event in (await ledger.get(task) or view).timeline]
    assert kinds == ["kill", "resume"]
    assert await ledger.resume("no-such-task-" + task, {}, "") is None


async def test_extend_moves_the_deadline(ledger: Ledger, task: str, clock: Clock) -> None:
    policy = effective(max_duration=0.2)
    await ledger.settle(await ledger.reserve(plan(task, policy)), outcome(1))
    await ledger.extend(task, 60, "by ops")
    clock.now += 1
    grant = await ledger.reserve(plan(task, policy, now=clock.now))
    assert grant.view.calls == 2
    clock.now += 60
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan(task, policy, now=clock.now))
    assert refused.value.trip.reason is TripReason.DEADLINE
    assert refused.value.trip.figures == {"elapsed_s": 61.0, "max_duration_s": 60.2}
    assert "ran 61s, past its deadline of 60s" in refused.value.trip.detail


# Round prices and budgets, whose quotients float rounding puts a token over the budget.
GPT_4O = Price(2.5e-6, 1e-5, 1.25e-6, 2.5e-6, "gpt-4o")


async def test_the_cost_cap_never_reserves_over_the_budget(ledger: Ledger, task: str) -> None:
    grant = await ledger.reserve(
        plan(task, effective(max_cost_usd=0.0001), prompt=16, price=GPT_4O)
    )
    # (0.0001 - 16 * 2.5e-6) / 1e-5 is 6.000000000000001 in floats, yet 6 tokens cost more.
    assert grant.output_cap == 5
    assert grant.reserved_cost <= 0.0001


async def test_cost_figures_are_rounded_to_the_micro_dollar(ledger: Ledger, task: str) -> None:
    policy = effective(max_cost_usd=0.001)
    grant = await ledger.reserve(plan(task, policy, prompt=7, price=GPT_4O))
    await ledger.settle(grant, outcome(40, cost=cost_usd(GPT_4O, 7, 33)))
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan(task, policy, prompt=3000, price=GPT_4O))
    assert refused.value.trip.figures == {
        "max_cost_usd": 0.001,
        "cost_usd": 0.000348,
        "cost_reserved_usd": 0.0,
        "cost_left_usd": 0.000652,
        "prompt_tokens_estimate": 3000,
        "model": "gpt-4o",
    }
    view = await ledger.get(task)
    assert view is not None and view.cost_usd == cost_usd(GPT_4O, 7, 33)


async def test_previews_of_the_last_completions(ledger: Ledger, task: str) -> None:
    policy = effective()
    for number in range(7):
        grant = await ledger.reserve(plan(task, policy))
        done = Outcome(3, 0.0, f"fp{number}", f"r{number}", True, f"answer number {number}")
        await ledger.settle(grant, done)
    view = await ledger.get(task)
    assert view is not None
    assert [p.text for p in view.previews] == [f"answer number {n}" for n in range(2, 7)]
    assert view.previews[-1].fingerprint == "fp6"


async def test_listing_returns_every_task_with_its_figures(ledger: Ledger, task: str) -> None:
    # More tasks than one batch of the Redis listing, some of them used.
    names = [f"{task}-{number}" for number in range(1234)]
    for name in names:
        await ledger.create(name, tenant="acme", owner=None, overrides={})
    for name in names[:3]:
        grant = await ledger.reserve(plan(name, effective(), agent="lister"))
        await ledger.settle(grant, outcome(42))
    listed = {view.task: view for view in await ledger.list() if view.task.startswith(task)}
    assert sorted(listed) == sorted(names)
    assert {listed[n].tenant for n in names} == {"acme"}
    assert [(listed[n].tokens_used, listed[n].agents) for n in names[:3]] == [(42, ["lister"])] * 3
    assert listed[names[3]].tokens_used == 0


async def test_ids_with_key_syntax_stay_in_their_own_keys(ledger: Ledger, task: str) -> None:
    """Braces, colons and glob characters in ids cannot close the hash tag, reach another
    task's keys or break the listing (an agent "a}:s" once made every listing fail)."""
    odd = [f"{task}}}:s", f"{task}{{x}}", f"{task}*?[]:%41 \u00e9"]
    policy = effective(max_tokens=1000)
    for name in [task, *odd]:
        grant = await ledger.reserve(plan(name, policy, agent="a}:s"))
        await ledger.settle(grant, outcome(10, output=name, request=name))
    grant = await ledger.reserve(plan(task, policy, agent="b"))
    await ledger.settle(grant, outcome(5))
    listed = {view.task: view for view in await ledger.list() if view.task.startswith(task)}
    assert sorted(listed) == sorted([task, *odd])
    assert listed[task].tokens_used == 15 and listed[task].agents == ["a}:s", "b"]
    assert all(listed[name].tokens_used == 10 for name in odd)


async def test_a_tenants_listing_reads_only_its_own_tasks(ledger: Ledger, task: str) -> None:
    tenant, other = f"acme-{task[-6:]}", f"noisy-{task[-6:]}"
    for number in range(300):
        await ledger.create(f"{other}/{task}-{number}", tenant=other, owner=None, overrides={})
    await ledger.create(f"{tenant}/{task}-ahead", tenant=tenant, owner=None, overrides={})
    called = CallPlan(
        f"{tenant}/{task}-called", "a", effective(), 10, None, 1, None, START, tenant=tenant
    )
    grant = await ledger.reserve(called)
    await ledger.settle(grant, outcome(12))
    mine = await ledger.list(tenant=tenant)
    assert sorted(view.task for view in mine) == [
        f"{tenant}/{task}-ahead",
        f"{tenant}/{task}-called",
    ]
    assert {view.tenant for view in mine} == {tenant}
    assert len(await ledger.list(tenant=other)) == 300
    assert await ledger.list(tenant=f"nobody-{task[-6:]}") == []


async def test_a_burst_of_calls_beyond_the_connection_pool_is_served(ledger: Ledger) -> None:
    """More calls at once than one replica keeps connections to Redis: they wait their turn
    for a connection (within the Redis timeout) rather than fail as if Redis were down."""
    prefix = "burst-" + uuid.uuid4().hex[:6]

    async def one(number: int) -> int:
        grant = await ledger.reserve(plan(f"{prefix}-{number}", effective(max_tokens=10_000)))
        settled = await ledger.settle(grant, outcome(7))
        return settled.view.tokens_used

    assert await asyncio.gather(*(one(n) for n in range(600))) == [7] * 600
