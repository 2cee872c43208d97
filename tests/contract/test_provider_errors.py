"""Provider failures reach the agent's SDK as the provider sent them, or, when the provider
sent nothing usable, as an error in the provider's own format."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx2
import pytest

from proxy.mock_provider.app import MALFORMED_BODY
from tests.contract.sdk import (
    KINDS,
    MODES,
    ask,
    errors_of,
    eventually,
    make_client,
    params_for,
    resource,
)
from tests.harness import MockProviderThread, ProxyThread


def _raise_from(kind: str, root: str, mode: str, headers: dict[str, str]) -> Any:
    """The exception the SDK raises for one call (the test fails if it raises none)."""
    with pytest.raises(errors_of(kind).APIStatusError) as raised:
        ask(kind, root, mode=mode, headers=headers)
    return raised.value


@pytest.mark.usefixtures("fixed_ids")
@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_provider_error_reaches_the_client_as_sent(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str, mode: str, status: int
) -> None:
    script = {"x-mock-status": str(status)}
    via_proxy = _raise_from(kind, proxy.base_url, mode, {**script, "X-Task-Id": task})
    direct = _raise_from(kind, mock.base_url, mode, script)

    assert type(via_proxy) is type(direct)
    expected = (
        errors_of(kind).RateLimitError if status == 429 else errors_of(kind).InternalServerError
    )
    assert isinstance(via_proxy, expected)
    assert via_proxy.status_code == status
    assert via_proxy.body == direct.body
    assert via_proxy.response.content == direct.response.content
    if status == 429:
        assert via_proxy.response.headers["retry-after"] == direct.response.headers["retry-after"]
    assert via_proxy.response.headers["x-tripwire-task"] == task
    assert mock.provider.total_hits == 2  # one each way: max_retries=0
    view = proxy.task(task)
    assert view is not None and view.tokens_used == 0  # an error answer costs nothing


@pytest.mark.parametrize("kind", ["messages"])
def test_provider_errors_stay_retryable(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str
) -> None:
    with pytest.raises(errors_of(kind).InternalServerError):
        ask(
            kind,
            proxy.base_url,
            headers={"X-Task-Id": task, "x-mock-status": "503"},
            max_retries=1,
        )
    assert mock.provider.total_hits == 2


async def _raw_async(kind: str, root: str, headers: dict[str, str]) -> tuple[int, bytes, Any]:
    async with make_client(kind, root, mode="async") as client:
        raw = await resource(client, kind).with_raw_response.create(
            **params_for(kind), extra_headers=headers
        )
        content = raw.http_response.content
        try:
            parsed = raw.parse()
            if asyncio.iscoroutine(parsed):
                parsed = await parsed
        except ValueError as exc:
            return raw.http_response.status_code, content, exc
        return raw.http_response.status_code, content, parsed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_malformed_provider_body_is_returned_as_is(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    headers = {"X-Task-Id": task, "x-mock-malformed": "1"}
    if mode == "sync":
        with make_client(kind, proxy.base_url) as client:
            raw = resource(client, kind).with_raw_response.create(
                **params_for(kind), extra_headers=headers
            )
            status, content = raw.http_response.status_code, raw.http_response.content
            with pytest.raises(ValueError):
                raw.parse()
    else:
        status, content, parsed = asyncio.run(_raw_async(kind, proxy.base_url, headers))
        assert isinstance(parsed, ValueError)
    assert status == 200
    assert content == MALFORMED_BODY
    with pytest.raises(ValueError):
        ask(kind, proxy.base_url, mode=mode, headers=headers)
    assert mock.provider.total_hits == 2


def _check_format(kind: str, error: Any, status: int, code: str, anthropic_type: str) -> None:
    assert error.status_code == status
    body = error.response.json()
    if kind == "messages":
        assert set(body) == {"type", "error"}
        assert body["type"] == "error"
        assert body["error"]["type"] == anthropic_type
        assert body["error"]["message"]
    else:
        assert set(body) == {"error"}
        assert body["error"]["code"] == code
        assert body["error"]["type"] == "server_error"
        assert body["error"]["message"]


@pytest.mark.parametrize("reset", ["before", "mid"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_connection_lost_before_the_answer_is_a_502_in_the_providers_format(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str, mode: str, reset: str
) -> None:
    error = _raise_from(kind, proxy.base_url, mode, {"X-Task-Id": task, "x-mock-reset": reset})
    assert isinstance(error, errors_of(kind).InternalServerError)
    _check_format(kind, error, 502, "upstream_unreachable", "api_error")
    assert mock.provider.total_hits == 1
    view = proxy.task(task)
    assert view is not None and view.tokens_used == 0 and view.tokens_reserved == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_provider_slower_than_the_read_timeout_is_a_504_in_the_providers_format(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    proxy = make_proxy(
        upstreams={
            "openai": {"base_url": mock.base_url, "read_timeout": 0.2},
            "anthropic": {"base_url": mock.base_url, "format": "anthropic", "read_timeout": 0.2},
        }
    )
    started = time.monotonic()
    error = _raise_from(kind, proxy.base_url, mode, {"X-Task-Id": task, "x-mock-delay": "6"})
    # Answered at the 0.2 s timeout, long before the provider's 6 s (with room for a busy
    # machine's client and server: under the whole suite on two cores, one took 2.01 s).
    assert time.monotonic() - started < 4.0
    assert isinstance(error, errors_of(kind).InternalServerError)
    if kind == "messages":
        assert isinstance(error, errors_of(kind).GatewayTimeoutError)
    _check_format(kind, error, 504, "upstream_timeout", "timeout_error")
    view = proxy.task(task)
    assert view is not None and view.tokens_used == 0 and view.tokens_reserved == 0


BROKEN_STREAMS = {
    # the provider drops the connection half-way through the deltas
    "reset": {"x-mock-reset": "mid", "x-mock-reply-tokens": "40", "x-mock-chunks": "10"},
    # the provider stops sending for longer than the upstream read timeout
    "stall": {"x-mock-reply-tokens": "40", "x-mock-chunks": "4", "x-mock-chunk-delay": "0.6"},
}


@pytest.fixture
def stalling_proxy(make_proxy: Any, mock: MockProviderThread) -> ProxyThread:
    return make_proxy(  # type: ignore[no-any-return]
        upstreams={
            "openai": {"base_url": mock.base_url, "read_timeout": 0.3},
            "anthropic": {"base_url": mock.base_url, "format": "anthropic", "read_timeout": 0.3},
        }
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_stream_reset_midway_is_accounted(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    received: list[Any] = []
    try:
        ask(
            kind,
            proxy.base_url,
            mode=mode,
            stream=True,
            headers={"X-Task-Id": task, **BROKEN_STREAMS["reset"]},
            on_item=received.append,
        )
    except (errors_of(kind).APIError, httpx2.HTTPError):
        pass  # whether the client is told is the next test's concern
    assert received
    billed = mock.provider.total_usage
    assert 0 < billed.completion_tokens < 40
    view = eventually(
        lambda: (
            (v := proxy.task(task))
            and v.tokens_reserved == 0
            and v.tokens_used >= mock.provider.total_usage.total_tokens
            and v
        )
    )
    assert view, (proxy.task(task), mock.provider.total_usage)


@pytest.mark.parametrize("how", list(BROKEN_STREAMS))
@pytest.mark.parametrize("kind", KINDS)
def test_stream_broken_midway_reaches_the_client_as_an_error(
    stalling_proxy: ProxyThread, task: str, kind: str, how: str
) -> None:
    """Sent directly, a stream the provider breaks off makes the SDK raise; through the proxy
    it must not turn into a clean, silently truncated end of stream."""
    received: list[Any] = []
    try:
        reply = ask(
            kind,
            stalling_proxy.base_url,
            stream=True,
            headers={"X-Task-Id": task, **BROKEN_STREAMS[how]},
            on_item=received.append,
        )
    except (errors_of(kind).APIError, httpx2.HTTPError):
        pass
    else:
        pytest.fail(f"the stream ended cleanly after {len(reply.items)} items: {reply.text!r}")
    assert received


def test_a_client_slower_than_the_read_timeout_is_not_a_stalled_provider(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    """The provider's read timeout (1 s here) counts the time the provider takes to send, not
    the time a slow client takes to read: a client that stops reading for 2.5 s, long enough
    for the relay's writes to wait on it, still gets the whole stream."""
    proxy = make_proxy(upstreams={"openai": {"base_url": mock.base_url, "read_timeout": 1.0}})
    body = json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    host, port = proxy.base_url.removeprefix("http://").split("/")[0].split(":")
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Task-Id: {task}\r\nx-mock-reply-tokens: 800000\r\nx-mock-chunks: 8000\r\n"
        "x-mock-chunk-delay: 0\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.socket() as client:
        # A small receive window, so that several MB of stream back up into the relay's writes.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect((host, int(port)))
        client.sendall(head + body)
        client.settimeout(30)
        first = client.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        time.sleep(2.5)  # the client stops reading
        received = bytearray(first)
        while chunk := client.recv(1 << 16):
            received += chunk
    assert len(received) > 6_000_000  # more than the sockets' buffers hold
    assert b"data: [DONE]" in received[-200:]
    assert b"upstream_timeout" not in received and b'"error"' not in received
