"""Routing: named upstreams, unknown names and paths, and hosts the config does not name."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from proxy.mock_provider import MockProviderThread
from tests.contract.sdk import MODES, ask
from tests.harness import ProxyThread


@pytest.fixture
def routed(make_proxy: Any, mock: MockProviderThread) -> ProxyThread:
    return make_proxy(  # type: ignore[no-any-return]
        upstreams={
            "backup": {"base_url": mock.base_url, "format": "openai"},
            "claude": {"base_url": mock.base_url, "format": "anthropic"},
        }
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("kind", "upstream"), [("chat", "backup"), ("responses", "backup"), ("messages", "claude")]
)
def test_named_upstream_serves_its_prefix(
    routed: ProxyThread,
    mock: MockProviderThread,
    task: str,
    kind: str,
    upstream: str,
    mode: str,
) -> None:
    reply = ask(
        kind,
        f"{routed.base_url}/u/{upstream}",
        mode=mode,
        stream=mode == "async",
        headers={"X-Task-Id": task, "x-mock-reply": "routed"},
    )
    assert reply.text == "routed"
    forwarded = mock.provider.last_request
    assert forwarded is not None and forwarded.path.startswith("/v1/")
    assert reply.headers["x-tripwire-task"] == task


def test_task_prefix_and_named_upstream_combine(
    routed: ProxyThread, mock: MockProviderThread
) -> None:
    reply = ask("messages", f"{routed.base_url}/t/job-7/a/critic/u/claude")
    assert reply.headers["x-tripwire-task"] == "job-7"
    assert reply.headers["x-tripwire-agent"] == "critic"
    assert mock.provider.last_request is not None
    assert mock.provider.last_request.path == "/v1/messages"


@pytest.mark.parametrize("mode", MODES)
def test_unknown_upstream_is_a_404_in_openai_format(
    routed: ProxyThread, mock: MockProviderThread, mode: str
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        ask("chat", f"{routed.base_url}/u/nowhere", mode=mode, max_retries=2)
    body = missing.value.response.json()
    assert set(body) == {"error"}
    assert "nowhere" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    assert mock.provider.total_hits == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/chat/completions"),
        ("POST", "/chat/completions"),
        ("GET", "/admin"),
        ("POST", "/v1"),
    ],
)
def test_path_outside_v1_is_a_404(
    proxy: ProxyThread, mock: MockProviderThread, method: str, path: str
) -> None:
    with httpx2.Client(verify=False) as client:
        response = client.request(
            method, proxy.base_url + path, json={"model": "gpt-4o-mini", "messages": []}
        )
    assert response.status_code == 404
    assert response.json()["error"]["message"]
    assert mock.provider.total_hits == 0


@pytest.fixture
def outsider() -> Iterator[MockProviderThread]:
    """A provider the proxy's config does not name."""
    with MockProviderThread() as other:
        yield other


def _raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_no_request_reaches_a_host_not_in_config(
    proxy: ProxyThread, mock: MockProviderThread, outsider: MockProviderThread
) -> None:
    host = outsider.base_url.removeprefix("http://")
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    targets = [
        f"{outsider.base_url}/v1/chat/completions",  # absolute-form request target
        f"/u/{host}/v1/chat/completions",
        f"/u/{outsider.base_url.replace(':', '%3A').replace('/', '%2F')}/v1/chat/completions",
        f"//{host}/v1/chat/completions",
        f"/v1/@{host}/chat/completions",
        f"/v1/..//{host}/v1/chat/completions",
        f"/t/x/u/{host}/v1/chat/completions",
    ]
    for target in targets:
        request = (
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        answer = _raw_http(proxy.port, request)
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]

    with httpx2.Client(verify=False) as client:
        response = client.post(
            proxy.openai_url + "/chat/completions",
            content=body,
            headers={"Host": host, "X-Forwarded-Host": host, "Forwarded": f"host={host}"},
        )
    assert response.status_code == 200  # served by the configured upstream
    assert outsider.provider.total_hits == 0
