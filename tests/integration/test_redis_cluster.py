"""The same budget and loop guarantees on a 3-master Redis Cluster made by the test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import openai
import pytest

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.policy.rules import Effective
from proxy.session.base import CallPlan, Outcome
from proxy.session.redis import RedisLedger
from tests.harness import MockProviderThread
from tests.redis_server import RedisClusterServers
from tests.replicas import ReplicaSet, redis_config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def cluster_replicas(
    tmp_path_factory: pytest.TempPathFactory,
    mock_thread: MockProviderThread,
    cluster: RedisClusterServers,
) -> Iterator[ReplicaSet]:
    config = redis_config(
        mock_thread.base_url,
        cluster.url,
        state={"redis_cluster": True},
        policy={"rules": [{"match": {"task": "budget-*"}, "limits": {"max_tokens": 1000}}]},
    )
    replicas = ReplicaSet(tmp_path_factory.mktemp("cluster-replicas"), config)
    yield replicas
    replicas.stop()


async def test_a_burst_beyond_the_connection_pool_waits_on_a_cluster(
    cluster: RedisClusterServers,
) -> None:
    """More calls at once than connections per node: they wait for one, as with one server,
    rather than fail as if Redis were down."""
    settings = StateSettings(
        backend="redis", redis_url=cluster.url, redis_cluster=True, redis_max_connections=16
    )
    ledger = RedisLedger(settings)
    await ledger.start()
    policy = Effective(Limits(max_tokens=10_000), RepeatSettings(), "kill", ())
    prefix = "burst-" + uuid.uuid4().hex[:6]

    async def one(number: int) -> int:
        plan = CallPlan(f"{prefix}-{number}", "a", policy, 10, None, 1, None, 1000.0)
        grant = await ledger.reserve(plan)
        settled = await ledger.settle(grant, Outcome(7, 0.0, None, None, completed=True))
        return settled.view.tokens_used

    try:
        used = await asyncio.gather(*(one(n) for n in range(400)))
    finally:
        await ledger.close()
    assert used == [7] * 400


async def test_budget_holds_on_a_cluster(
    cluster_replicas: ReplicaSet, mock: MockProviderThread
) -> None:
    clients = [
        openai.AsyncOpenAI(base_url=r.openai_url, api_key="sk", max_retries=5)
        for r in cluster_replicas.replicas
    ]
    # Several tasks, so their keys land on different masters.
    tasks = [f"budget-{uuid.uuid4().hex[:8]}" for _ in range(4)]

    async def one(number: int) -> tuple[str, int]:
        task = tasks[number % len(tasks)]
        try:
            reply = await clients[number % 3].chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"part {number}"}],
                extra_headers={"X-Task-Id": task, "x-mock-reply-tokens": "300"},
            )
        except (openai.PermissionDeniedError, openai.RateLimitError):
            return task, 0
        assert reply.usage is not None
        return task, reply.usage.total_tokens

    results = await asyncio.gather(*(one(n) for n in range(60)))
    for client in clients:
        await client.close()
    for task in tasks:
        spent = sum(tokens for name, tokens in results if name == task)
        assert 0 < spent <= 1000
    assert sum(tokens for _, tokens in results) == mock.provider.total_usage.total_tokens


def test_a_repeat_loop_is_caught_on_a_cluster(
    cluster_replicas: ReplicaSet, mock: MockProviderThread
) -> None:
    task = f"loop-{uuid.uuid4().hex[:8]}"
    clients = [
        openai.OpenAI(base_url=r.openai_url, api_key="sk") for r in cluster_replicas.replicas
    ]
    for call in range(3):
        clients[call % 3].chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"try {call}"}],
            extra_headers={"X-Task-Id": task, "x-mock-reply": "same"},
        )
    with pytest.raises(openai.PermissionDeniedError):
        clients[0].chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "again"}],
            extra_headers={"X-Task-Id": task, "x-mock-reply": "same"},
        )
    assert mock.provider.total_hits == 3
