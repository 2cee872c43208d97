"""``on_state_error: open`` while Redis is away: a task killed in Redis stays refused, a task
spends only what Redis last said was left, and kills decided meanwhile reach Redis after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.detectors.base import Trip, TripReason
from proxy.policy.rules import Effective
from proxy.session.base import CallPlan, Denied, Outcome
from proxy.session.redis import RedisLedger
from tests.redis_server import RedisServer

BUDGET = Effective(Limits(max_tokens=500), RepeatSettings(), "kill", ())
TRIP = Trip(TripReason.OPERATOR, {"by": "ops", "note": "stop"})


def plan(task: str, prompt: int = 10) -> CallPlan:
    return CallPlan(task, "a", BUDGET, prompt, None, 1, None, time.time())


@pytest.fixture
async def outage(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, RedisLedger]]:
    server = RedisServer(tmp_path / "redis", None, "--appendonly", "yes", "--appendfsync", "always")
    ledger = RedisLedger(
        StateSettings(
            backend="redis", redis_url=server.url, redis_timeout=0.3, on_state_error="open"
        )
    )
    await ledger.start()
    yield server, ledger
    await ledger.close()
    server.stop()


async def test_a_task_killed_in_redis_stays_refused_during_an_outage(
    outage: tuple[RedisServer, RedisLedger],
) -> None:
    server, ledger = outage
    grant = await ledger.reserve(plan("killed"))
    await ledger.settle(grant, Outcome(100, 0.0, None, None, True))
    assert await ledger.kill("killed", TRIP)
    server.stop()
    for _ in range(3):
        with pytest.raises(Denied):
            await ledger.reserve(plan("killed"))


async def test_open_mode_spends_only_what_was_left(
    outage: tuple[RedisServer, RedisLedger],
) -> None:
    server, ledger = outage
    grant = await ledger.reserve(plan("spent"))
    await ledger.settle(grant, Outcome(450, 0.0, None, None, True))
    server.stop()
    with pytest.raises(Denied) as refused:  # 50 tokens left, not a fresh 500
        await ledger.reserve(plan("spent", prompt=100))
    assert refused.value.trip.reason == TripReason.BUDGET_TOKENS


async def test_kills_decided_during_an_outage_are_written_back(
    outage: tuple[RedisServer, RedisLedger],
) -> None:
    server, ledger = outage
    grant = await ledger.reserve(plan("later"))
    await ledger.settle(grant, Outcome(20, 0.0, None, None, True))
    server.stop()
    assert await ledger.kill("later", TRIP)
    server.start()
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        killed = None
        for _ in range(100):
            try:
                killed = client.hget(ledger._keys("later").state, "killed")
            except redis.ConnectionError:
                killed = None
            if killed:
                break
            await asyncio.sleep(0.1)
        assert killed and "operator" in killed
    finally:
        client.close()


async def test_a_first_call_refused_during_an_outage_leaves_no_task(
    outage: tuple[RedisServer, RedisLedger],
) -> None:
    server, ledger = outage
    server.stop()
    with pytest.raises(Denied) as refused:  # a made-up id whose first call is over budget
        await ledger.reserve(plan("made-up", prompt=600))
    assert refused.value.first_call
    grant = await ledger.reserve(plan("working"))
    await ledger.settle(grant, Outcome(20, 0.0, None, None, True))
    server.start()
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        written = None
        for _ in range(100):  # the write-back: kills first, then the settles
            try:
                written = client.hget(ledger._keys("working").state, "used")
            except redis.ConnectionError:
                written = None
            if written:
                break
            await asyncio.sleep(0.1)
        assert written == "20"
        assert not client.exists(ledger._keys("made-up").state)
    finally:
        client.close()


async def test_open_mode_counts_calls_and_the_deadline_on(
    outage: tuple[RedisServer, RedisLedger],
) -> None:
    """What Redis last said of a task's calls and clock holds during an outage too: its
    max_calls is not handed out afresh, and its deadline does not start again."""
    server, ledger = outage
    calls = Effective(Limits(max_calls=2), RepeatSettings(), "kill", ())
    timed = Effective(Limits(max_duration=1.0), RepeatSettings(), "kill", ())
    for _ in range(2):
        grant = await ledger.reserve(CallPlan("counted", "a", calls, 10, None, 1, None, 0))
        await ledger.settle(grant, Outcome(20, 0.0, None, None, True))
    grant = await ledger.reserve(CallPlan("timed", "a", timed, 10, None, 1, None, 0))
    await ledger.settle(grant, Outcome(20, 0.0, None, None, True))
    await asyncio.sleep(1.2)
    server.stop()
    with pytest.raises(Denied) as refused:
        await ledger.reserve(CallPlan("counted", "a", calls, 10, None, 1, None, time.time()))
    assert refused.value.trip.reason == TripReason.MAX_CALLS
    with pytest.raises(Denied) as late:
        await ledger.reserve(CallPlan("timed", "a", timed, 10, None, 1, None, time.time()))
    assert late.value.trip.reason == TripReason.DEADLINE
