"""A Redis restart under concurrent load, at the ledger: every call is either served or told
the state store is unavailable (503, retried by the SDKs), never failed with a bug's 500."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.errors import StateUnavailable
from proxy.policy.rules import Effective
from proxy.session.base import CallPlan, Outcome
from proxy.session.redis import RedisLedger
from tests.redis_server import RedisServer


async def test_a_redis_restart_under_load_fails_calls_only_as_unavailable(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", None, "--appendonly", "yes")
    ledger = RedisLedger(StateSettings(backend="redis", redis_url=server.url, redis_timeout=1))
    await ledger.start()
    policy = Effective(Limits(), RepeatSettings(), "kill", ())
    seen: Counter[str] = Counter()
    stop = time.monotonic() + 3

    async def agent(number: int) -> None:
        call = 0
        while time.monotonic() < stop:
            call += 1
            plan = CallPlan(f"restart-{number}-{call}", "a", policy, 10, 10, 1, None, time.time())
            try:
                grant = await ledger.reserve(plan)
                await ledger.settle(grant, Outcome(15, 0.0, None, None, True))
                seen["served"] += 1
            except StateUnavailable:
                seen["unavailable"] += 1
                await asyncio.sleep(0.01)
            except Exception as exc:
                seen[type(exc).__name__] += 1

    async def restarts() -> None:
        for _ in range(3):
            await asyncio.sleep(0.7)
            server.stop()
            await asyncio.sleep(0.1)
            await asyncio.to_thread(server.start)

    try:
        work = asyncio.gather(*(agent(n) for n in range(48)), restarts())
        done, _ = await asyncio.wait({work}, timeout=30)
        if not done:
            for task in asyncio.all_tasks():
                task.print_stack(limit=15)
            pytest.fail("the agents did not finish")
        work.result()
    finally:
        await ledger.close()
        server.stop()
    assert seen["served"] and seen["unavailable"]
    assert set(seen) == {"served", "unavailable"}, seen
