"""A settle whose reply is lost on the way back (the script ran, the connection then reset) is
retried or written back later; it must be counted once, not twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.policy.rules import Effective
from proxy.session.base import CallPlan, Denied, Outcome
from proxy.session.redis import RedisLedger


class ReplyDroppingRelay:
    """A TCP relay in front of Redis. Once armed, the next script call it sees reaches Redis
    and runs there, but its reply is thrown away and the client's connection reset."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[Any]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for writer in self.writers:
            writer.close()  # its pumps see the end and the handler closes the other side
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.add(handler)
        handler.add_done_callback(self.handlers.discard)
        self.writers.add(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        drop = asyncio.Event()

        async def client_to_redis() -> None:
            while data := await reader.read(65536):
                if self.armed and b"EVALSHA" in data:
                    self.armed = False
                    drop.set()
                up_writer.write(data)
                await up_writer.drain()

        async def redis_to_client() -> None:
            while data := await up_reader.read(65536):
                if drop.is_set():
                    self.dropped += 1
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.create_task(client_to_redis()), asyncio.create_task(redis_to_client())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Closing both sides ends the other pump too.
            writer.close()
            up_writer.close()
            await asyncio.gather(*pumps, return_exceptions=True)
            self.writers.discard(writer)


@pytest.fixture
async def relay(redis_server: Any) -> AsyncIterator[tuple[ReplyDroppingRelay, str]]:
    relay = ReplyDroppingRelay(redis_server.port)
    url = await relay.start()
    yield relay, url
    await relay.close()


def plan(task: str) -> CallPlan:
    policy = Effective(Limits(max_tokens=100_000), RepeatSettings(), "kill", ())
    return CallPlan(task, "writer", policy, 10, None, 1, None, 1000.0)


async def test_a_settle_retried_after_a_lost_reply_is_counted_once(
    relay: tuple[ReplyDroppingRelay, str], redis_server: Any
) -> None:
    dropper, url = relay
    ledger = RedisLedger(StateSettings(backend="redis", redis_url=url, redis_timeout=2.0))
    await ledger.start()
    task = "t-" + uuid.uuid4().hex[:8]
    try:
        # Load the scripts first: a NOSCRIPT reply that is lost would prove nothing.
        first = await ledger.reserve(plan(task))
        await ledger.settle(first, Outcome(100, 0.0, None, None, completed=True))

        grant = await ledger.reserve(plan(task))
        dropper.armed = True
        settled = await ledger.settle(grant, Outcome(250, 0.0, None, None, completed=True))
        await ledger._flush_pending()  # a write-back, had the retry failed too
    finally:
        await ledger.close()

    assert dropper.dropped == 1
    assert settled.view.tokens_used == 350
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        state = client.hgetall(f"tw:{{{task}}}:s")
    assert int(state["used"]) == 350
    assert int(state["reserved"]) == 0


async def test_a_call_that_never_settles_is_charged_its_reservation(redis_server: Any) -> None:
    """Its replica died mid-call: the provider may have billed all it reserved, so once the
    reservation expires that is what the task has spent, and a settle arriving late anyway is
    not counted on top."""
    settings = StateSettings(backend="redis", redis_url=redis_server.url, reservation_ttl=1)
    ledger = RedisLedger(settings)
    await ledger.start()
    task = "t-" + uuid.uuid4().hex[:8]
    policy = Effective(Limits(max_tokens=1000), RepeatSettings(), "kill", ())
    try:
        lost = await ledger.reserve(CallPlan(task, "writer", policy, 100, None, 1, None, 1000.0))
        assert lost.reserved_tokens == 1000
        await asyncio.sleep(1.2)
        with pytest.raises(Denied) as refused:
            await ledger.reserve(CallPlan(task, "writer", policy, 100, None, 1, None, 1000.0))
        late = await ledger.settle(lost, Outcome(400, 0.0, None, None, completed=True))
        view = await ledger.get(task)
    finally:
        await ledger.close()

    assert refused.value.trip.reason == "budget_tokens"
    assert late.view.tokens_used == 1000
    assert view is not None and view.tokens_used == 1000 and view.tokens_reserved == 0
    assert [event.kind for event in view.timeline][:2] == ["charged", "kill"]
    assert "1000 reserved tokens are charged as spent" in view.timeline[0].detail
