"""Three `tripwire serve` replicas sharing one Redis: the limits hold as if there were one."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.harness import MockProviderThread
from tests.redis_server import RedisServer
from tests.replicas import ReplicaSet, redis_config

POLICY = {
    "rules": [
        {"match": {"task": "budget-*"}, "limits": {"max_tokens": 1000}},
        {"match": {"task": "kill-*"}, "limits": {"max_calls": 2}},
    ]
}


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    mock_thread: MockProviderThread,
) -> Iterator[ReplicaSet]:
    config = redis_config(mock_thread.base_url, redis_server.url, policy=POLICY)
    replica_set = ReplicaSet(tmp_path_factory.mktemp("replicas"), config)
    yield replica_set
    replica_set.stop()


def task_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def clients(replicas: ReplicaSet, **options: object) -> list[openai.OpenAI]:
    return [
        openai.OpenAI(base_url=r.openai_url, api_key="sk-test", **options)  # type: ignore[arg-type]
        for r in replicas.replicas
    ]


def ask(client: openai.OpenAI, task: str, text: str, **headers: str) -> str:
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Task-Id": task, **headers},
    )
    return reply.choices[0].message.content or ""


async def test_fifty_concurrent_calls_over_three_replicas_stay_within_budget(
    replicas: ReplicaSet, mock: MockProviderThread
) -> None:
    task = task_id("budget")
    async_clients = [
        openai.AsyncOpenAI(base_url=r.openai_url, api_key="sk-test", max_retries=5)
        for r in replicas.replicas
    ]

    async def one(number: int) -> int:
        client = async_clients[number % 3]
        try:
            reply = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"part {number}"}],
                extra_headers={"X-Task-Id": task, "x-mock-reply-tokens": "300"},
            )
        except (openai.PermissionDeniedError, openai.RateLimitError):
            return 0
        assert reply.usage is not None
        return reply.usage.total_tokens

    used = await asyncio.gather(*(one(n) for n in range(50)))
    for client in async_clients:
        await client.close()
    billed = mock.provider.total_usage.total_tokens
    assert sum(used) == billed
    assert 0 < billed <= 1000


def test_a_repeat_loop_alternating_replicas_is_caught_at_the_third(
    replicas: ReplicaSet, mock: MockProviderThread
) -> None:
    task = task_id("loop")
    per_replica = clients(replicas)
    for call in range(3):
        assert ask(per_replica[call % 3], task, f"try {call}", **{"x-mock-reply": "same"}) == "same"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask(per_replica[0], task, "try again", **{"x-mock-reply": "same"})
    assert "repeat_output" in refused.value.message
    assert mock.provider.total_hits == 3


def test_a_hop_overrun_across_replicas(replicas: ReplicaSet, mock: MockProviderThread) -> None:
    task = task_id("hops")
    per_replica = clients(replicas)
    for call in range(13):
        ask(per_replica[call % 3], task, f"turn {call}", **{"X-Agent-Id": "ab"[call % 2]})
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask(per_replica[13 % 3], task, "turn 13", **{"X-Agent-Id": "b"})
    assert "would be hop 13" in refused.value.message
    assert mock.provider.total_hits == 13


def test_a_kill_on_one_replica_ends_a_stream_on_another(
    replicas: ReplicaSet, mock: MockProviderThread
) -> None:
    task = task_id("kill")
    first, _, third = clients(replicas, max_retries=0)
    outcome: dict[str, object] = {}
    started = threading.Event()

    def stream_on_third() -> None:
        chunks = 0
        try:
            for _ in third.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "long"}],
                stream=True,
                extra_headers={
                    "X-Task-Id": task,
                    "x-mock-chunks": "200",
                    "x-mock-chunk-delay": "0.05",
                    "x-mock-reply-tokens": "400",
                },
            ):
                chunks += 1
                started.set()
        except openai.APIError as error:
            outcome["error"] = error
            outcome["ended"] = time.monotonic()
        outcome["chunks"] = chunks

    reader = threading.Thread(target=stream_on_third)
    reader.start()
    assert started.wait(10)
    ask(first, task, "second call")  # call 2 of 2
    with pytest.raises(openai.PermissionDeniedError):
        ask(first, task, "third call")  # trips max_calls on replica 1
    tripped = time.monotonic()
    reader.join(10)
    assert isinstance(outcome.get("error"), openai.APIError)
    assert "max_calls" in str(outcome["error"])
    assert float(outcome["ended"]) - tripped < 0.5  # type: ignore[arg-type]
    assert int(outcome["chunks"]) < 200  # type: ignore[call-overload]


def test_state_survives_a_replica_restart(
    tmp_path: Path, redis_server: RedisServer, mock: MockProviderThread
) -> None:
    config = redis_config(mock.base_url, redis_server.url, policy=POLICY)
    task = task_id("budget")
    one = ReplicaSet(tmp_path / "a", config, count=1)
    try:
        ask(clients(one)[0], task, "first", **{"x-mock-reply-tokens": "700"})
    finally:
        one.stop()
    again = ReplicaSet(tmp_path / "b", config, count=1)
    try:
        client = clients(again, max_retries=0)[0]
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "second"}],
            extra_headers={"X-Task-Id": task, "x-mock-reply-tokens": "700"},
        )
        used = int(raw.headers["x-tripwire-tokens-used"])
        assert used >= 700
        assert raw.parse().choices[0].finish_reason == "length"  # capped to what was left
    finally:
        again.stop()
    assert mock.provider.total_usage.total_tokens <= 1000
