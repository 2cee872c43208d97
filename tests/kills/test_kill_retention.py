"""Killed tasks stay killed: not evicted by other tasks' traffic, not expired by the idle TTL
(only by their own retention), and a task with a stream in flight is not swept."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.detectors.base import Trip, TripReason
from proxy.policy.rules import Effective
from proxy.session.base import CallPlan, Denied, Outcome
from proxy.session.memory import MemoryLedger
from proxy.session.redis import RedisLedger

POLICY = Effective(Limits(), RepeatSettings(), "kill", ())
TRIP = Trip(TripReason.OPERATOR, {"by": "ops", "note": "stop"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plan(task: str, now: float) -> CallPlan:
    return CallPlan(task, "a", POLICY, 10, None, 1, None, now)


async def test_other_tasks_traffic_never_evicts_a_kill() -> None:
    clock = Clock()
    ledger = MemoryLedger(StateSettings(max_tasks=5), clock)
    await ledger.reserve(plan("victim", clock.now))
    assert await ledger.kill("victim", TRIP)
    for number in range(50):
        await ledger.reserve(plan(f"flood-{number}", clock.now))
    view = await ledger.get("victim")
    assert view is not None and view.killed is not None
    with pytest.raises(Denied):
        await ledger.reserve(plan("victim", clock.now))
    assert len(await ledger.list()) <= 6


async def test_a_kill_outlives_the_idle_ttl_until_its_retention() -> None:
    clock = Clock()
    ledger = MemoryLedger(StateSettings(task_ttl=60, kill_retention=3600), clock)
    await ledger.reserve(plan("idle", clock.now))
    await ledger.reserve(plan("killed", clock.now))
    assert await ledger.kill("killed", TRIP)
    clock.now += 600
    ledger.sweep(clock.now)
    assert await ledger.get("idle") is None
    view = await ledger.get("killed")
    assert view is not None and view.killed is not None
    clock.now += 3600
    ledger.sweep(clock.now)
    assert await ledger.get("killed") is None


async def test_killed_tasks_are_bounded_by_their_own_cap() -> None:
    clock = Clock()
    ledger = MemoryLedger(StateSettings(max_killed_tasks=3), clock)
    for number in range(5):
        assert await ledger.kill(f"k{number}", TRIP)
        clock.now += 1
    assert await ledger.get("k0") is None and await ledger.get("k1") is None
    assert all([await ledger.get(f"k{n}") for n in (2, 3, 4)])


async def test_a_task_with_a_stream_in_flight_is_not_swept() -> None:
    clock = Clock()
    ledger = MemoryLedger(StateSettings(task_ttl=60), clock)
    await ledger.reserve(plan("streaming", clock.now))
    ledger.board.watch("streaming", lambda trip: None)
    clock.now += 600
    ledger.sweep(clock.now)
    assert await ledger.get("streaming") is not None


def _settings(server: Any, **more: Any) -> StateSettings:
    prefix = "tw" + uuid.uuid4().hex[:8]
    return StateSettings(backend="redis", redis_url=server.url, key_prefix=prefix, **more)


async def test_redis_keeps_a_killed_task_for_its_retention(redis_server: Any) -> None:
    ledger = RedisLedger(_settings(redis_server, task_ttl=60, kill_retention=7200))
    await ledger.start()
    client = redis.Redis(port=redis_server.port)
    try:
        await ledger.reserve(plan("killed", 1000.0))
        assert await ledger.kill("killed", TRIP)
        state = ledger._keys("killed").state
        for _ in range(50):  # set on hearing the kill
            if client.ttl(state) > 60:
                break
            await asyncio.sleep(0.05)
        assert client.ttl(state) > 3600
        with pytest.raises(Denied):  # a refused call does not shorten it back to task_ttl
            await ledger.reserve(plan("killed", 1001.0))
        await asyncio.sleep(0.2)
        assert client.ttl(state) > 3600
    finally:
        client.close()
        await ledger.close()


async def test_redis_keeps_a_task_with_a_stream_in_flight(redis_server: Any) -> None:
    ledger = RedisLedger(_settings(redis_server, task_ttl=2))
    await ledger.start()
    client = redis.Redis(port=redis_server.port)
    try:
        await ledger.reserve(plan("streaming", 1000.0))
        ledger.board.watch("streaming", lambda trip: None)
        await asyncio.sleep(3.5)
        assert client.exists(ledger._keys("streaming").state)
    finally:
        client.close()
        await ledger.close()


async def test_redis_a_kill_outlives_the_calls_it_cut(redis_server: Any) -> None:
    """A call in flight when its task is killed (the stream the kill cuts) settles after the
    kill: that must not bring the killed task's keys back to the idle TTL."""
    ledger = RedisLedger(_settings(redis_server, task_ttl=60, kill_retention=7200))
    await ledger.start()
    client = redis.Redis(port=redis_server.port)
    try:
        grant = await ledger.reserve(plan("cut", 1000.0))
        assert await ledger.kill("cut", TRIP)
        keys = ledger._keys("cut")
        assert client.ttl(keys.state) > 3600 and client.ttl(keys.agents) > 3600  # at once
        await ledger.settle(grant, Outcome(20, 0.0, "f", "r", True))
        await ledger.count_envelope("cut", "success")
        await ledger.extend("cut", 30, "later")
        for key in (keys.state, keys.agents, keys.timeline):
            assert client.ttl(key) > 3600, key
    finally:
        client.close()
        await ledger.close()
