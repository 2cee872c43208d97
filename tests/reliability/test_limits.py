"""Limits on what one client can make a replica hold: body size, head size, the time a request
takes to arrive, and streams open per task and per client. Each is configurable, each refusal
is an error in the provider's format (or aiohttp's own, before any routing)."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx2
import pytest

from proxy.addons.slots import StreamSlots
from proxy.app import HOOKS
from proxy.auth import mint
from proxy.config import load_config
from tests.contract.sdk import KINDS, ask, errors_of
from tests.harness import MockProviderThread, ProxyThread

SECRET = "tripwire-tests-hs256-secret-0123456789"
SLOW = {"x-mock-reply-tokens": "40", "x-mock-chunks": "20", "x-mock-chunk-delay": "0.03"}


def raw_exchange(port: int, data: bytes, *, pause_after: int | None = None) -> tuple[bytes, float]:
    """Send ``data`` (stopping after ``pause_after`` bytes and waiting); the answer, read until
    it is whole or the server closes, and how long that took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data if pause_after is None else data[:pause_after])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length and len(body) >= int(length.group(1)):
                break
    return answer, time.monotonic() - started


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def check_format(kind: str, body: dict[str, Any], code: str) -> None:
    if kind == "messages":
        assert set(body) == {"type", "error"} and body["error"]["message"]
    else:
        assert body["error"]["code"] == code and body["error"]["message"]


# -- body size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_an_oversized_body_is_a_413_in_the_providers_format(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str
) -> None:
    proxy = make_proxy(server={"max_body_bytes": 4096})
    assert ask(kind, proxy.base_url, headers={"X-Task-Id": task}, prompt="x" * 1000).status == 200
    with pytest.raises(errors_of(kind).APIStatusError) as raised:
        ask(kind, proxy.base_url, headers={"X-Task-Id": task}, prompt="x" * 5000)
    assert raised.value.status_code == 413
    check_format(kind, raised.value.response.json(), "request_too_large")
    assert "4096 bytes" in str(raised.value)
    assert mock.provider.total_hits == 1
    view = proxy.task(task)
    assert view is not None and view.calls == 1 and view.tokens_reserved == 0


# -- head size ---------------------------------------------------------------------------------


def test_header_size_and_count_are_bounded(make_proxy: Any, mock: MockProviderThread) -> None:
    proxy = make_proxy(server={"max_header_bytes": 2048, "max_headers": 20})
    url = proxy.openai_url + "/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with httpx2.Client() as client:
        assert client.post(url, json=body, headers={"X-Pad": "p" * 1500}).status_code == 200
        assert client.post(url, json=body, headers={"X-Pad": "p" * 3000}).status_code in (400, 431)
        many = {f"X-Pad-{n}": "p" for n in range(30)}
        assert client.post(url, json=body, headers=many).status_code in (400, 431)
        assert client.post(url + "?" + "q" * 3000, json=body).status_code in (400, 414)
    assert mock.provider.total_hits == 1


# -- time to receive a request -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_body_that_does_not_arrive_in_time_is_a_408(
    make_proxy: Any, mock: MockProviderThread, kind: str
) -> None:
    proxy = make_proxy(server={"body_timeout": 0.3})
    path = "/v1/messages" if kind == "messages" else "/v1/chat/completions"
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    answer, took = raw_exchange(proxy.port, head + body, pause_after=len(head) + 10)
    assert status_of(answer) == 408
    assert 0.25 <= took < 5
    assert b"did not arrive within 0.3 seconds" in answer
    assert (b'"request_timeout"' in answer) == (kind != "messages")
    assert mock.provider.total_hits == 0


def test_a_connection_that_sends_no_whole_head_is_closed(make_proxy: Any) -> None:
    proxy = make_proxy(server={"idle_timeout": 0.4})
    answer, took = raw_exchange(proxy.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    assert answer == b""
    assert 0.35 <= took < 5
    # An idle keep-alive connection is closed after the same time.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        assert 0.35 <= time.monotonic() - started < 5


# -- streams open at once ------------------------------------------------------------------------


class Streams:
    """Slow streams held open in background threads."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.started = threading.Semaphore(0)
        self.errors: list[BaseException] = []

    def open(self, proxy: ProxyThread, task: str, api_key: str = "sk-test") -> None:
        def run() -> None:
            try:
                ask(
                    "chat",
                    proxy.base_url,
                    stream=True,
                    api_key=api_key,
                    headers={"X-Task-Id": task, **SLOW},
                    on_item=lambda _item: self.started.release(),
                    stop_after=None,
                )
            except BaseException as exc:  # surfaced by the test through .errors
                self.errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)
        assert self.started.acquire(timeout=10)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def streams() -> Iterator[Streams]:
    held = Streams()
    yield held
    held.join()


@pytest.mark.parametrize("kind", KINDS)
def test_streams_per_task_are_bounded(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, streams: Streams
) -> None:
    proxy = make_proxy(server={"max_streams_per_task": 2})
    streams.open(proxy, task)
    streams.open(proxy, task)
    with pytest.raises(errors_of(kind).RateLimitError) as raised:
        ask(kind, proxy.base_url, stream=True, headers={"X-Task-Id": task})
    assert raised.value.response.headers["retry-after"] == "1"
    check_format(kind, raised.value.response.json(), "tripwire_too_many_streams")
    assert f"task '{task}' already has 2 streams open" in str(raised.value)
    # Not a stream, or another task: not limited.
    assert ask(kind, proxy.base_url, headers={"X-Task-Id": task}).status == 200
    assert ask(kind, proxy.base_url, stream=True, headers={"X-Task-Id": task + "-b"}).items
    streams.join()
    assert not streams.errors
    assert ask(kind, proxy.base_url, stream=True, headers={"X-Task-Id": task}).items


def test_streams_per_client_are_bounded(
    make_proxy: Any, mock: MockProviderThread, task: str, streams: Streams
) -> None:
    proxy = make_proxy(server={"max_streams_per_client": 2})
    streams.open(proxy, task + "-1", api_key="sk-alice")
    streams.open(proxy, task + "-2", api_key="sk-alice")
    with pytest.raises(errors_of("chat").RateLimitError) as raised:
        ask("chat", proxy.base_url, stream=True, api_key="sk-alice", headers={"X-Task-Id": task})
    assert "this client already has 2 streams open" in str(raised.value)
    assert "sk-alice" not in str(raised.value)
    # Without auth a client is its address: another key from the same one is the same client,
    # another address is another client.
    with pytest.raises(errors_of("chat").RateLimitError):
        ask("chat", proxy.base_url, stream=True, api_key="sk-bob", headers={"X-Task-Id": task})
    statuses = asyncio.run(open_streams(proxy, [{"X-Task-Id": task}], local="127.0.0.2"))
    assert statuses == [200]


async def open_streams(
    proxy: ProxyThread, each: list[dict[str, str]], local: str | None = None
) -> list[int]:
    """Open one slow stream per headers in ``each``, all at once; their statuses, once every
    one has answered (the streams stay open until then)."""
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "count slowly"}],
        "stream": True,
    }
    connector = aiohttp.TCPConnector(limit=0, local_addr=(local, 0) if local else None)
    async with aiohttp.ClientSession(connector=connector) as session:
        responses = await asyncio.gather(
            *(
                session.post(
                    proxy.base_url + "/v1/chat/completions",
                    json=body,
                    headers={**SLOW, "x-mock-chunks": "60", **headers},
                )
                for headers in each
            )
        )
        statuses = [response.status for response in responses]
        for response in responses:
            response.close()
    return statuses


def test_a_rotating_key_is_one_client_without_auth(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    """The reported attack: a new ``Authorization`` per request opened 20 streams of 8."""
    proxy = make_proxy(server={"max_streams_per_client": 8})
    each = [{"Authorization": f"Bearer sk-{i}", "X-Task-Id": f"{task}-{i}"} for i in range(20)]
    statuses = asyncio.run(open_streams(proxy, each))
    assert sorted(statuses) == [200] * 8 + [429] * 12


def test_a_rotating_key_is_one_client_with_auth(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    """The reported attack: the token in X-Tripwire-Token, a different Authorization per
    request, opened 12 streams against a limit of 3. The verified subject is the client."""
    proxy = make_proxy(
        server={"max_streams_per_client": 3}, auth={"mode": "jwt", "hs256_secret": SECRET}
    )
    bearer = mint(SECRET, {"sub": "mallory"}, 600)
    each = [
        {"X-Tripwire-Token": bearer, "Authorization": f"Bearer sk-{i}", "X-Task-Id": f"{task}-{i}"}
        for i in range(12)
    ]
    statuses = asyncio.run(open_streams(proxy, each))
    assert sorted(statuses) == [200] * 3 + [429] * 9
    # Another subject, from the same address, is another client.
    other = mint(SECRET, {"sub": "alice"}, 600)
    statuses = asyncio.run(open_streams(proxy, [{"X-Tripwire-Token": other}] * 3))
    assert statuses == [200] * 3


def test_the_stream_limit_retries_through_the_sdk(
    make_proxy: Any, mock: MockProviderThread, task: str, streams: Streams
) -> None:
    """The SDK obeys the 429's Retry-After and gets its stream once a slot frees up."""
    proxy = make_proxy(server={"max_streams_per_task": 1})
    streams.open(proxy, task)
    reply = ask("chat", proxy.base_url, stream=True, headers={"X-Task-Id": task}, max_retries=5)
    assert reply.items


def test_every_way_a_stream_ends_frees_its_slot(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = make_proxy(
        server={"max_streams_per_task": 1},
        upstreams={"openai": {"base_url": mock.base_url, "read_timeout": 0.3}},
        policy={
            "rules": [{"match": {"task": task + "-deadline"}, "limits": {"max_duration": 0.2}}]
        },
    )
    endings: list[tuple[str, dict[str, str], int | None]] = [
        ("complete", {}, None),
        ("client leaves", SLOW, 2),
        ("provider error", {"x-mock-status": "500"}, None),
        ("reset before", {"x-mock-reset": "before"}, None),
        ("reset mid", {"x-mock-reset": "mid", **SLOW}, None),
        ("stall", {"x-mock-chunk-delay": "1", "x-mock-chunks": "3"}, None),
    ]
    for _, headers, stop_after in endings:
        try:
            ask(
                "chat",
                proxy.base_url,
                stream=True,
                headers={"X-Task-Id": task, **headers},
                stop_after=stop_after,
            )
        except (errors_of("chat").APIError, httpx2.HTTPError):
            pass
    with pytest.raises(errors_of("chat").APIError):
        ask("chat", proxy.base_url, stream=True, headers={"X-Task-Id": task + "-deadline", **SLOW})
    assert proxy._app is not None
    addon = proxy._app[HOOKS].find(StreamSlots)
    assert addon is not None
    slots = addon.slots

    async def settled() -> bool:
        for _ in range(100):
            if not slots.tasks and not slots.clients:
                return True
            await asyncio.sleep(0.02)
        return False

    assert proxy.call(settled()), (slots.tasks, slots.clients)


def test_the_limits_have_defaults_and_can_be_lifted() -> None:
    server = load_config(None).server
    assert server.max_body_bytes == 32 * 1024 * 1024
    assert server.max_header_bytes == 16 * 1024
    assert server.body_timeout == 60
    assert server.idle_timeout == 620
    assert (server.max_streams_per_task, server.max_streams_per_client) == (64, 1024)
    lifted = load_config(
        None, server={"max_streams_per_task": None, "max_streams_per_client": None}
    ).server
    assert lifted.max_streams_per_task is None and lifted.max_streams_per_client is None
