"""What a call costs Redis: one round trip before forwarding and one after, shared under load.

Counted on a redis-server of the test's own by its ``total_reads_processed``: one read event per
write a client makes (a few for a write of tens of kilobytes), however many commands it carries.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.policy.rules import Effective
from proxy.session import redis_calls
from proxy.session.base import CallPlan, Outcome
from proxy.session.redis import RedisLedger
from proxy.session.redis_calls import Script, ScriptCalls
from proxy.telemetry.metrics import Metrics
from tests.redis_server import RedisServer

POLICY = Effective(Limits(max_calls=1_000_000), RepeatSettings(), "kill", ())
WORDS = [uuid.uuid4().hex[:7] for _ in range(4000)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    own = RedisServer(tmp_path / "redis")
    yield own
    own.stop()


@pytest.fixture
async def ledger(server: RedisServer) -> AsyncIterator[RedisLedger]:
    own = RedisLedger(StateSettings(backend="redis", redis_url=server.url))
    await own.start()
    # Counted from when its kill subscription is in place, which is connected in the background.
    async with aioredis.Redis(port=server.port, decode_responses=True) as client:
        deadline = time.monotonic() + 10
        while (await client.pubsub_numsub(own.channel))[0][1] < 1:
            assert time.monotonic() < deadline, "the ledger did not subscribe to kills"
            await asyncio.sleep(0.01)
    yield own
    await own.close()


class Reads:
    """Writes clients made to the server since the last ``take``, this counter's own left out."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.last = 0

    async def take(self) -> int:
        now = int((await self.client.info("stats"))["total_reads_processed"])
        counted, self.last = now - self.last - 1, now
        return counted


@pytest.fixture
async def reads(server: RedisServer) -> AsyncIterator[Reads]:
    async with aioredis.Redis(port=server.port, decode_responses=True) as client:
        yield Reads(client)


def _text(number: int) -> str:
    return " ".join(WORDS[number * 40 : (number + 1) * 40])


async def _call(ledger: RedisLedger, task: str, number: int) -> asyncio.Future[Any]:
    """A call as the proxy makes it: reserve, settle, then the content detectors off the path."""
    grant = await ledger.reserve(CallPlan(task, "agent", POLICY, 20, 100, 1, None, time.time()))
    await ledger.settle(grant, Outcome(60, 0.0, f"out-{number}", f"req-{number}", True, "x"))
    return asyncio.ensure_future(ledger.observe_content(task, "agent", _text(number), POLICY))


async def test_a_call_costs_one_round_trip_before_forwarding_and_one_after(
    ledger: RedisLedger, reads: Reads
) -> None:
    task = f"long-{uuid.uuid4().hex[:8]}"
    await (await _call(ledger, task, 0))
    await reads.take()
    detecting = [await _call(ledger, task, number) for number in range(1, 41)]
    await asyncio.gather(*detecting)
    # Each content-detector update went out with the next call's reserve or settle; the last
    # one alone.
    assert await reads.take() <= 2 * 40 + 1
    assert ledger.detector_runs == 41


async def test_calls_made_at_once_share_their_round_trips(
    ledger: RedisLedger, reads: Reads
) -> None:
    def plans(count: int) -> list[CallPlan]:
        return [
            CallPlan(f"crowd-{uuid.uuid4().hex[:8]}", "a", POLICY, 20, 100, 1, None, time.time())
            for _ in range(count)
        ]

    await asyncio.gather(*(ledger.reserve(plan) for plan in plans(2)))  # connected, scripts known
    await reads.take()
    grants = await asyncio.gather(*(ledger.reserve(plan) for plan in plans(64)))
    assert [grant.view.calls for grant in grants] == [1] * 64
    # The first alone, the 63 made while it was on its way together (Redis reads a write of
    # tens of kilobytes in a few parts).
    assert await reads.take() <= 5


async def test_a_redis_that_forgot_the_scripts_still_serves_the_next_call(
    server: RedisServer, ledger: RedisLedger
) -> None:
    task = f"flushed-{uuid.uuid4().hex[:8]}"
    await (await _call(ledger, task, 0))
    async with aioredis.Redis(port=server.port) as client:
        await client.script_flush()
    await (await _call(ledger, task, 1))
    view = await ledger.get(task)
    assert view is not None and view.calls == 2 and view.tokens_used == 120


async def test_a_call_given_up_does_not_take_the_writes_it_carried_with_it(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detector-state write deferred onto another call's write still lands when that call's
    caller gives up (a client that disconnected) before the reply."""
    monkeypatch.setattr(redis_calls, "DEFER_S", 10.0)  # it waits for company, not the timer
    async with aioredis.Redis(port=server.port, decode_responses=True) as client:
        calls = ScriptCalls(client)
        slow = Script("local n = 0 for i = 1, 30000000 do n = n + i end return n")
        write = Script("return redis.call('SET', KEYS[1], ARGV[1])")
        for script in (slow, write):  # known to the server: the calls below go as they are
            await client.script_load(script.source)
        # Made while another call waits on Redis, the write is deferred...
        first = asyncio.ensure_future(calls.call(write, ["first"], ["1"]))
        await asyncio.sleep(0)
        deferred = asyncio.ensure_future(
            calls.call(write, ["carried"], ["landed"], deferrable=True)
        )
        await asyncio.sleep(0)
        await first
        assert not deferred.done()
        # ...and goes out with the next call, made alone, whose caller then gives up.
        given_up = asyncio.ensure_future(calls.call(slow, [], []))
        await asyncio.sleep(0.02)  # both written, the slow script running
        given_up.cancel()
        assert await asyncio.wait_for(deferred, 10) == "OK"
        assert await client.get("carried") == "landed"
        await calls.close(1.0)


async def test_a_deferrable_write_made_while_redis_is_idle_goes_at_once(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing else waits on Redis: the detector-state write goes on its own rather than ride
    (and hold up) the next call, however long that call is in coming."""
    monkeypatch.setattr(redis_calls, "DEFER_S", 10.0)
    async with aioredis.Redis(port=server.port, decode_responses=True) as client:
        calls = ScriptCalls(client)
        write = Script("return redis.call('SET', KEYS[1], ARGV[1])")
        await client.script_load(write.source)
        deferred = asyncio.ensure_future(calls.call(write, ["alone"], ["1"], deferrable=True))
        assert await asyncio.wait_for(deferred, 2) == "OK"
        await calls.close(1.0)


def _steps(metrics: Metrics, operation: str) -> dict[str, float]:
    """``tripwire_state_backend_seconds`` of one Redis operation as a scrape shows it: its
    cumulative buckets by bound, its count and its sum."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        if family.name != "tripwire_state_backend_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("operation") != operation:
                continue
            assert sample.labels["backend"] == "redis"
            key = sample.labels.get("le", sample.name.rsplit("_", 1)[-1])
            out[key] = sample.value
    return out


async def test_the_time_calls_wait_on_redis_is_on_metrics_stalls_included(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", None, "--enable-debug-command", "yes")
    metrics = Metrics(backend="redis")
    ledger = RedisLedger(StateSettings(backend="redis", redis_url=server.url), metrics)
    await ledger.start()
    try:
        for number in range(5):
            await (await _call(ledger, "task-steps", number))
        async with aioredis.Redis(port=server.port) as client:
            # Redis stalls for 0.4 s; a reserve sent meanwhile waits for the rest of it.
            stall = asyncio.ensure_future(client.execute_command("DEBUG", "SLEEP", "0.4"))
            await asyncio.sleep(0.05)
            plan = CallPlan("task-steps", "agent", POLICY, 20, 100, 1, None, time.time())
            await ledger.reserve(plan)
            await stall
    finally:
        await ledger.close()
        server.stop()
    reserve, settle = _steps(metrics, "reserve"), _steps(metrics, "settle")
    assert reserve["count"] == 6 and settle["count"] == 5
    assert _steps(metrics, "content")["count"] == 5
    # The five calls before the stall waited well under 0.1 s each; the sixth, the stall's rest.
    assert reserve["0.1"] == 5 and reserve["0.5"] == 6
    assert 0.2 < reserve["sum"] < 0.6
    assert settle["0.1"] == 5
