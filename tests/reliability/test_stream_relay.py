"""The stream relay under races the soak run found: a kill that lands while Tripwire is writing
to a slow client, and a failure that escapes the relay once the stream's headers are out."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from proxy.detectors.base import Trip, TripReason
from proxy.providers import ADAPTERS, CallInfo
from proxy.server.streaming import StreamRelay
from tests.harness import ProxyThread, proxy_config
from tests.reliability.upstream import Scripted, ScriptedUpstream

EVENTS = [
    b'data: {"choices": [{"index": 0, "delta": {"content": "part %d "}}]}\n\n' % n
    for n in range(10)
]


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as scripted:
        yield scripted


class _CutWhileWriting:
    """A client connection whose first write is where the kill lands."""

    def __init__(self) -> None:
        self.relay: StreamRelay | None = None
        self.written: list[bytes] = []
        self.ended = False

    async def write(self, data: bytes) -> None:
        if not self.written and self.relay is not None:
            self.relay.cut(Trip(TripReason.MAX_CALLS, {"calls": 3, "max_calls": 2}))
            await asyncio.sleep(0.01)
        self.written.append(data)

    async def write_eof(self) -> None:
        self.ended = True


async def test_a_kill_during_a_write_ends_the_stream_with_its_error_event(
    upstream: ScriptedUpstream,
) -> None:
    upstream.push(Scripted(EVENTS, content_type="text/event-stream", pause=0.05))
    client = _CutWhileWriting()
    async with (
        aiohttp.ClientSession() as session,
        session.get(upstream.base_url + "/v1/chat/completions") as response,
    ):
        relay = StreamRelay(
            client,  # type: ignore[arg-type]
            response,
            ADAPTERS["openai"].stream_tally(CallInfo(kind="chat", stream=True)),
            lambda trip: b"data: " + str(trip.reason).encode() + b"\n\n",
            lambda: b"data: broken\n\n",
        )
        client.relay = relay
        await relay.run()
    assert relay.outcome(200) == "cut"
    assert client.written[-1] == b"data: max_calls\n\n" and client.ended
    assert not relay.broken


def _start_stream(port: int) -> socket.socket:
    body = (
        b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    )
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    return conn


def test_a_failure_after_the_headers_never_leaves_the_client_waiting(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch, log_lines: Any
) -> None:
    """Whatever breaks inside the relay, the client's connection ends at once: its SDK raises,
    and nothing hangs until the client's own timeout."""

    async def broken_pump(self: StreamRelay) -> None:
        await self.response.write(EVENTS[0])
        raise LookupError("a bug of the relay's")

    monkeypatch.setattr(StreamRelay, "_pump", broken_pump)
    upstream.push(Scripted(EVENTS, content_type="text/event-stream", pause=0.05))
    proxy = ProxyThread(proxy_config(upstream.base_url))
    try:
        conn = _start_stream(proxy.port)
        started = time.monotonic()
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        conn.close()
        assert time.monotonic() - started < 3
        assert received.startswith(b"HTTP/1.1 200") and b"part 0" in received
    finally:
        proxy.stop()
    assert [line["error"] for line in log_lines.events("internal_error")] == [
        'LookupError("a bug of the relay\'s")'
    ]
