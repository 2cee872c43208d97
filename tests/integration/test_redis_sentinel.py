"""The shared ledger on a Sentinel-managed primary: a failover moves the ledger, its kills and its
counts to the promoted replica. Real processes: a primary, its replica and one sentinel."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from proxy.config import Limits, RepeatSettings, SentinelSettings, StateSettings
from proxy.detectors.base import Trip, TripReason
from proxy.errors import StateUnavailable
from proxy.policy.rules import Effective
from proxy.session import redis as redis_ledger
from proxy.session.base import CallPlan, Outcome
from proxy.session.redis import RedisLedger
from tests.harness import MockProviderThread, running
from tests.redis_server import RedisSentinel, RedisServer

SERVICE = "mymaster"
POLICY = Effective(Limits(max_tokens=100_000), RepeatSettings(), "kill", ())


def _sync(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=5)


def _until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


@dataclass
class Topology:
    primary: RedisServer
    replica: RedisServer
    sentinel: RedisSentinel

    def settings(self, service: str = SERVICE) -> StateSettings:
        # The URL's host is never used: the sentinel names the primary.
        return StateSettings(
            backend="redis",
            redis_url="redis://not-a-host.invalid/0",
            redis_sentinel=SentinelSettings(service=service, sentinels=[self.sentinel.address]),
        )


def _replica_linked(replica: RedisServer) -> bool:
    with _sync(replica.port) as client:
        return bool(client.info("replication").get("master_link_status") == "up")


def _sentinel_can_promote(sentinel: RedisSentinel) -> bool:
    with _sync(sentinel.port) as client:
        replicas = client.sentinel_slaves(SERVICE)
    return any(r.get("master-link-status") == "ok" and not r["is_sdown"] for r in replicas)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    # No delay before a full sync: the default waits 5 s for more replicas to join.
    fast_sync = ("--repl-diskless-sync-delay", "0")
    started: list[RedisServer | RedisSentinel] = []
    try:
        primary = RedisServer(tmp_path / "primary", None, *fast_sync)
        started.append(primary)
        replica = RedisServer(
            tmp_path / "replica", None, *fast_sync, "--replicaof", "127.0.0.1", str(primary.port)
        )
        started.append(replica)
        # Linked before the sentinel starts, so its first look at the primary lists the replica.
        _until(lambda: _replica_linked(replica), "the replica did not sync")
        sentinel = RedisSentinel(tmp_path / "sentinel", primary.port, SERVICE)
        started.append(sentinel)
        _until(lambda: _sentinel_can_promote(sentinel), "the sentinel did not find the replica")
        yield Topology(primary, replica, sentinel)
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture
async def ledgers(topology: Topology) -> AsyncIterator[tuple[RedisLedger, RedisLedger]]:
    """Two replicas' ledgers on the same Sentinel-managed primary."""
    first, second = RedisLedger(topology.settings()), RedisLedger(topology.settings())
    await first.start()
    await second.start()
    yield first, second
    await first.close()
    await second.close()


async def _call(ledger: RedisLedger, task: str, tokens: int) -> int:
    grant = await ledger.reserve(CallPlan(task, "a", POLICY, 10, None, 1, None, 1000.0))
    settled = await ledger.settle(grant, Outcome(tokens, 0.0, None, None, completed=True))
    return settled.view.tokens_used


async def _used(port: int, task: str) -> int:
    async with aioredis.Redis(port=port, decode_responses=True, socket_timeout=5) as client:
        return int(await client.hget(f"tw:{{{task}}}:s", "used") or 0)


async def _replicated(topology: Topology) -> None:
    """Everything written so far has reached the replica: WAIT counts this connection's writes,
    and replication keeps their order, so a write of its own covers the ledgers' before it."""
    async with aioredis.Redis(port=topology.primary.port, socket_timeout=5) as client:
        await client.set("tw:test:marker", "1")
        assert await client.execute_command("WAIT", 1, 5000) == 1


async def _primary_port(sentinel: aioredis.Redis) -> int:
    _, port = await sentinel.sentinel_get_master_addr_by_name(SERVICE)
    return int(port)


async def _kills_reach_the_second_ledger(first: RedisLedger, second: RedisLedger) -> None:
    task = f"kill-{uuid.uuid4().hex[:8]}"
    await _call(first, task, 10)
    cut: list[Trip] = []
    second.board.watch(task, cut.append)
    trip = Trip(TripReason.OPERATOR, {"by": "ops", "note": "after the failover"})
    assert await first.kill(task, trip)

    async def arrived() -> bool:
        return cut == [trip]

    await _eventually(arrived, "the kill did not reach the other ledger", within=10)


async def test_a_planned_failover_keeps_the_counts_and_moves_the_ledgers(
    topology: Topology, ledgers: tuple[RedisLedger, RedisLedger]
) -> None:
    first, second = ledgers
    task = f"planned-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        await _call(first, task, 100)
    assert await _call(second, task, 100) == 400
    await _replicated(topology)

    async with aioredis.Redis(port=topology.sentinel.port, decode_responses=True) as sentinel:
        await _eventually(
            lambda: _failover(sentinel), "SENTINEL FAILOVER found no replica to promote"
        )

        async def switched() -> bool:
            return await _primary_port(sentinel) == topology.replica.port

        await _eventually(switched, "the sentinel did not promote the replica")

    # The former primary takes writes for some ten seconds more, until Sentinel demotes it; the
    # ledgers must leave it within about a second, not then.
    async def landing_on_the_new_primary() -> bool:
        used = await _call(first, task, 100)
        return used == await _used(topology.replica.port, task)

    await _eventually(landing_on_the_new_primary, "the ledger stayed on the old primary", 5)
    used = await _call(second, task, 100)
    assert used == await _used(topology.replica.port, task)
    # What was counted before the failover is still counted: the replica had it.
    assert used >= 400 + 2 * 100
    await _kills_reach_the_second_ledger(first, second)
    assert await first.ready() and await second.ready()


async def _failover(sentinel: aioredis.Redis) -> bool:
    try:
        await sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
    except redis.ResponseError as error:  # NOGOODSLAVE until the sentinel has seen the replica
        if "NOGOODSLAVE" not in str(error):
            raise
        return False
    return True


async def test_a_dead_primary_is_replaced_and_the_ledgers_follow(
    topology: Topology,
    ledgers: tuple[RedisLedger, RedisLedger],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = ledgers
    # Kills must arrive by pub/sub, not by the once-a-second re-check of streams in flight.
    monkeypatch.setattr(redis_ledger, "RECHECK_INTERVAL_S", 60.0)
    task = f"crash-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        await _call(first, task, 100)
    await _replicated(topology)

    assert topology.primary.process is not None
    os.kill(topology.primary.process.pid, signal.SIGKILL)
    # No primary until the sentinel promotes the replica: not ready, and calls are refused.
    assert not await first.ready()
    with pytest.raises(StateUnavailable):
        await _call(first, task, 100)

    async def serving() -> bool:
        try:
            await _call(first, task, 100)
        except StateUnavailable:
            return False
        return True

    await _eventually(serving, "the ledger found no new primary", within=20)
    async with aioredis.Redis(port=topology.sentinel.port, decode_responses=True) as sentinel:
        assert await _primary_port(sentinel) == topology.replica.port
    used = await _call(second, task, 100)
    assert used == await _used(topology.replica.port, task) == 300 + 2 * 100

    # Both ledgers' subscriptions moved to the new primary.
    async def subscribed() -> bool:
        async with aioredis.Redis(port=topology.replica.port, decode_responses=True) as client:
            counts: Any = await client.pubsub_numsub(first.channel)
        return int(counts[0][1]) == 2

    await _eventually(subscribed, "the subscriptions did not follow the primary")
    await _kills_reach_the_second_ledger(first, second)


def test_readyz_fails_while_the_sentinel_names_no_primary(
    topology: Topology, mock: MockProviderThread
) -> None:
    for service, ready in ((SERVICE, 200), ("no-such-service", 503)):
        state = topology.settings(service).model_dump()
        with running(mock, state=state) as proxy:
            try:
                with urllib.request.urlopen(proxy.base_url + "/readyz", timeout=15) as reply:
                    status = reply.status
            except urllib.error.HTTPError as error:
                status = error.code
                error.close()
        assert status == ready, service
