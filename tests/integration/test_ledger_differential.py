"""Both ledgers, driven with the same random sequences of calls, must give the same answers.

A hypothesis state machine reserves, settles, kills, resumes and extends one task on the
embedded ledger and on the Redis ledger at once, with per-token prices (so the dollar budget
and its rounding run) and a clock the test moves, and compares every grant (output cap,
reservation, allowed, refused or busy), every trip (reason and figures) and every figure of the
task (tokens, cost, calls, hops, the kill, the timeline's kinds). Any difference fails.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.detectors.base import Trip, TripReason
from proxy.policy.rules import Effective
from proxy.pricing import Price, cost_usd
from proxy.session.base import Busy, CallPlan, Denied, Grant, Ledger, Outcome, TaskView
from proxy.session.memory import MemoryLedger
from proxy.session.redis import RedisLedger

# Round decimal prices, as price lists quote them: their quotients are where float rounding
# puts an output cap one token over the budget.
PRICES = [
    Price(2.5e-6, 1e-5, 1.25e-6, 2.5e-6, "gpt-4o"),
    Price(1.5e-7, 6e-7, 7.5e-8, 1.5e-7, "gpt-4o-mini"),
    Price(3e-6, 1.5e-5, 3e-7, 3.75e-6, "claude-sonnet"),
    Price(
        1e-6, 3e-6, 1e-7, 1e-6, "tiered", tiers=((200, Price(2e-6, 7e-6, 2e-7, 2e-6, "tiered")),)
    ),
    Price(1e-7, 0.0, 0.0, 0.0, "free-output"),
]
COSTS = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.07, 0.1, 0.3, 1.0]
AGENTS = ["planner", "writer", "critic"]
FINGERPRINTS = ["f1", "f2", "f3", None]
START = 1_700_000_000.0


def _grant(grant: Grant) -> tuple[Any, ...]:
    return (
        "ok",
        grant.output_cap,
        grant.reserved_tokens,
        grant.reserved_cost,
        [(t.reason, t.figures) for t in grant.observed],
        _figures(grant.view),
        # The task's own limits and extension as the reservation read them (a stream's
        # deadline is timed from them).
        grant.view.started,
        grant.view.max_tokens,
        grant.view.overrides,
        grant.view.extra_duration,
    )


def _figures(view: TaskView | None) -> tuple[Any, ...] | None:
    if view is None:
        return None
    killed = (view.killed.reason, view.killed.figures) if view.killed else None
    return (
        view.tokens_used,
        view.tokens_reserved,
        view.cost_usd,
        view.calls,
        view.hops,
        killed,
    )


def _full(view: TaskView | None) -> tuple[Any, ...] | None:
    if view is None:
        return None
    return (
        *(_figures(view) or ()),
        view.max_tokens,
        view.overrides,
        view.extra_duration,
        sorted(view.agents),
        view.started,
        [event.kind for event in view.timeline],
    )


def _same(memory: Any, redis: Any) -> None:
    assert memory == redis, f"the ledgers differ:\n  memory: {memory!r}\n  redis:  {redis!r}"


@dataclass
class _Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


class LedgerPair(RuleBasedStateMachine):
    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = _Clock()
        state = {"reservation_ttl": 10_000.0, "task_ttl": 86_400.0, "max_agents_per_task": 2}
        self.memory = MemoryLedger(StateSettings(**state), clock=self.clock)  # type: ignore[arg-type]
        self.redis = RedisLedger(
            StateSettings(backend="redis", redis_url=redis_url, **state),  # type: ignore[arg-type]
            clock=self.clock,
        )
        self.task = "diff-" + uuid.uuid4().hex[:12]
        self.policy = Effective(Limits(), RepeatSettings(), "kill", ())
        self.grants: list[tuple[CallPlan, Grant, Grant]] = []

    def run(self, ledger: Ledger, step: Any) -> Any:
        return self.loop.run_until_complete(step(ledger))

    def both(self, step: Any) -> tuple[Any, Any]:
        return self.run(self.memory, step), self.run(self.redis, step)

    def teardown(self) -> None:
        self.loop.run_until_complete(self.redis.close())
        self.loop.run_until_complete(self.memory.close())
        self.loop.close()

    @initialize(
        max_tokens=st.none() | st.integers(1, 20_000),
        max_agent=st.none() | st.integers(1, 10_000),
        max_cost=st.none() | st.sampled_from(COSTS),
        max_calls=st.none() | st.integers(1, 12),
        max_hops=st.none() | st.integers(0, 6),
        max_duration=st.none() | st.sampled_from([0.5, 10.0, 90.0, 600.0]),
        on_trip=st.sampled_from(["kill", "kill", "observe"]),
        threshold=st.integers(2, 4),
        window=st.integers(2, 6),
    )
    def policy_of_the_task(
        self,
        max_tokens: int | None,
        max_agent: int | None,
        max_cost: float | None,
        max_calls: int | None,
        max_hops: int | None,
        max_duration: float | None,
        on_trip: str,
        threshold: int,
        window: int,
    ) -> None:
        limits = Limits(
            max_tokens=max_tokens,
            max_tokens_per_agent=max_agent,
            max_cost_usd=max_cost,
            max_calls=max_calls,
            max_hops=max_hops,
            max_duration=max_duration,
        )
        self.policy = Effective(
            limits,
            RepeatSettings(threshold=threshold, window=window),
            on_trip,  # type: ignore[arg-type]
            (),
        )

    @rule(
        agent=st.sampled_from(AGENTS),
        prompt=st.integers(0, 40) | st.integers(0, 3000),
        requested=st.none() | st.integers(1, 4000),
        choices=st.sampled_from([1, 1, 1, 2, 3]),
        price=st.none() | st.sampled_from(PRICES),
    )
    def reserve(
        self, agent: str, prompt: int, requested: int | None, choices: int, price: Price | None
    ) -> None:
        plan = CallPlan(
            self.task, agent, self.policy, prompt, requested, choices, price, self.clock.now
        )

        async def step(ledger: Ledger) -> Any:
            try:
                return await ledger.reserve(plan)
            except Denied as refused:
                return ("denied", refused.trip.reason, refused.trip.figures, refused.fresh)
            except Busy as busy:
                return ("busy", busy.in_flight_tokens)

        memory, redis = self.both(step)
        seen = [_grant(g) if isinstance(g, Grant) else g for g in (memory, redis)]
        _same(*seen)
        if isinstance(memory, Grant):
            self.grants.append((plan, memory, redis))

    @precondition(lambda self: bool(self.grants))
    @rule(
        data=st.data(),
        completion=st.integers(0, 3000),
        output=st.sampled_from(FINGERPRINTS),
        request=st.sampled_from(FINGERPRINTS),
        completed=st.booleans(),
    )
    def settle(
        self,
        data: st.DataObject,
        completion: int,
        output: str | None,
        request: str | None,
        completed: bool,
    ) -> None:
        index = data.draw(st.integers(0, len(self.grants) - 1))
        plan, memory_grant, redis_grant = self.grants.pop(index)
        cost = cost_usd(plan.price, plan.prompt_tokens, completion) if plan.price else 0.0
        done = Outcome(plan.prompt_tokens + completion, cost, output, request, completed)
        memory = self.run(self.memory, lambda ledger: ledger.settle(memory_grant, done))
        redis = self.run(self.redis, lambda ledger: ledger.settle(redis_grant, done))
        _same(
            ([(t.reason, t.figures) for t in memory.trips], memory.killed, _figures(memory.view)),
            ([(t.reason, t.figures) for t in redis.trips], redis.killed, _figures(redis.view)),
        )

    @rule(note=st.sampled_from(["runaway", "by hand"]))
    def kill(self, note: str) -> None:
        trip = Trip(TripReason.OPERATOR, {"by": "ops", "note": note})
        memory, redis = self.both(lambda ledger: ledger.kill(self.task, trip))
        _same(memory, redis)

    @rule(
        max_tokens=st.none() | st.integers(1, 40_000),
        max_cost=st.none() | st.sampled_from(COSTS),
        max_calls=st.none() | st.integers(1, 20),
        max_duration=st.none() | st.sampled_from([0.0, 5.0, 120.0]),
    )
    def resume(
        self,
        max_tokens: int | None,
        max_cost: float | None,
        max_calls: int | None,
        max_duration: float | None,
    ) -> None:
        overrides = {
            name: float(value)
            for name, value in (
                ("max_tokens", max_tokens),
                ("max_cost_usd", max_cost),
                ("max_calls", max_calls),
                ("max_duration", max_duration),
            )
            if value is not None
        }
        memory, redis = self.both(lambda ledger: ledger.resume(self.task, overrides, "approved"))
        _same(_full(memory), _full(redis))

    @rule(seconds=st.sampled_from([1.0, 30.0, 600.0]))
    def extend(self, seconds: float) -> None:
        memory, redis = self.both(lambda ledger: ledger.extend(self.task, seconds, "by ops"))
        _same(_full(memory), _full(redis))

    @rule(seconds=st.sampled_from([0.25, 1.0, 7.5, 60.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def same_task(self) -> None:
        memory, redis = self.both(lambda ledger: ledger.get(self.task))
        _same(_full(memory), _full(redis))

    @invariant()
    def same_deadline(self) -> None:
        """The deadline a stream's timer reads: the task's own limit, extensions and all."""
        limit = self.policy.limits.max_duration
        memory, redis = self.both(lambda ledger: ledger.deadline(self.task, limit))
        _same(memory, redis)


def test_memory_and_redis_ledgers_agree(redis_server: Any) -> None:
    url = redis_server.url

    class Machine(LedgerPair):
        def __init__(self) -> None:
            super().__init__(url)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=int(os.environ.get("TRIPWIRE_LEDGER_EXAMPLES", "150")),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
