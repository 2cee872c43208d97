"""Redis dies under load and comes back: per `on_state_error`, no crash, no hung request, and
the counts are right afterwards."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from tests.harness import MockProviderThread
from tests.redis_server import RedisServer
from tests.replicas import ReplicaSet, redis_config


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that keeps its data across a restart, as a production one would."""
    server = RedisServer(tmp_path / "redis", None, "--appendonly", "yes", "--appendfsync", "always")
    yield server
    server.stop()


def start(tmp_path: Path, mock: MockProviderThread, server: RedisServer, mode: str) -> ReplicaSet:
    config = redis_config(
        mock.base_url, server.url, state={"on_state_error": mode, "redis_timeout": 0.5}
    )
    return ReplicaSet(tmp_path / "replicas", config, count=2)


def ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def load(replicas: ReplicaSet, task: str, calls: int, outcomes: list[Any]) -> None:
    clients = [
        openai.AsyncOpenAI(base_url=r.openai_url, api_key="sk", max_retries=0, timeout=10)
        for r in replicas.replicas
    ]

    async def one(number: int) -> None:
        started = time.monotonic()
        try:
            reply = await clients[number % len(clients)].chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"n{number}"}],
                extra_headers={"X-Task-Id": task},
            )
            assert reply.usage is not None
            outcomes.append(("ok", reply.usage.total_tokens, time.monotonic() - started))
        except openai.APIStatusError as error:
            outcomes.append((error.status_code, 0, time.monotonic() - started))

    for batch in range(0, calls, 10):
        await asyncio.gather(*(one(n) for n in range(batch, batch + 10)))
        await asyncio.sleep(0.05)
    for client in clients:
        await client.close()


def used_in_redis(server: RedisServer, task: str) -> int:
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        return int(client.hget(f"tw:{{{task}}}:s", "used") or 0)
    finally:
        client.close()


async def test_fail_closed_refuses_with_503_then_resumes(
    tmp_path: Path, mock: MockProviderThread, durable_redis: RedisServer
) -> None:
    replicas = start(tmp_path, mock, durable_redis, "closed")
    task = "outage-" + uuid.uuid4().hex[:6]
    outcomes: list[Any] = []
    try:
        await load(replicas, task, 20, outcomes)
        durable_redis.stop()
        assert ready(replicas[0].base_url) == 503
        during: list[Any] = []
        await load(replicas, task, 20, during)
        assert {status for status, _, _ in during} == {503}
        assert max(elapsed for _, _, elapsed in during) < 3  # refused fast, never hung
        durable_redis.start()
        await asyncio.sleep(0.3)
        assert ready(replicas[0].base_url) == 200
        await load(replicas, task, 20, outcomes)
        assert all(status == "ok" for status, _, _ in outcomes)
        assert all(r.process.poll() is None for r in replicas.replicas)
    finally:
        replicas.stop()
    assert used_in_redis(durable_redis, task) == mock.provider.total_usage.total_tokens


async def test_fail_open_forwards_and_writes_the_counts_back(
    tmp_path: Path, mock: MockProviderThread, durable_redis: RedisServer
) -> None:
    replicas = start(tmp_path, mock, durable_redis, "open")
    task = "outage-" + uuid.uuid4().hex[:6]
    outcomes: list[Any] = []
    try:
        await load(replicas, task, 20, outcomes)
        durable_redis.stop()
        await load(replicas, task, 20, outcomes)
        durable_redis.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if used_in_redis(durable_redis, task) == mock.provider.total_usage.total_tokens:
                break
            await asyncio.sleep(0.2)
        await load(replicas, task, 10, outcomes)
        assert [status for status, _, _ in outcomes] == ["ok"] * 50
        assert max(elapsed for _, _, elapsed in outcomes) < 5
    finally:
        replicas.stop()
    assert used_in_redis(durable_redis, task) == mock.provider.total_usage.total_tokens
