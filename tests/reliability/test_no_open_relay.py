"""No open relay, beyond what tests/contract/test_routing.py covers (absolute-form targets,
hosts in /u/ names, Host and X-Forwarded-Host): dot segments and encoded separators cannot
leave an upstream's base path or disguise a call's kind, and no header, query or redirect
sends a call to a host outside the configured upstreams."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import MockProviderThread, ProxyThread
from tests.reliability.upstream import Scripted, ScriptedUpstream

BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
CLAUDE = (
    b'{"model": "claude-sonnet-4-6", "max_tokens": 64,'
    b' "messages": [{"role": "user", "content": "hi"}]}'
)


def raw_request(port: int, target: str, *, body: bytes = BODY, headers: str = "") -> bytes:
    """One request sent byte for byte as written: no client library normalizes the target."""
    request = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def outsider() -> Iterator[MockProviderThread]:
    """A provider the proxy's config does not name."""
    with MockProviderThread() as other:
        yield other


@pytest.fixture
def scoped(make_proxy: Any, mock: MockProviderThread) -> ProxyThread:
    """A proxy whose ``scoped`` upstream lives under a base path of the mock."""
    return make_proxy(  # type: ignore[no-any-return]
        upstreams={"scoped": {"base_url": mock.base_url + "/tenant-a/v1", "format": "openai"}},
        policy={"defaults": {"max_tokens": 200}},
    )


DOT_SEGMENTS = [
    "/u/scoped/../../tenant-b/v1/chat/completions",
    "/u/scoped/%2e%2e/%2e%2e/tenant-b/v1/chat/completions",
    "/u/scoped/%2E%2E/%2E%2E/tenant-b/v1/chat/completions",
    "/u/scoped/.%2e/.%2e/tenant-b/v1/chat/completions",
    "/u/scoped/..%2f..%2ftenant-b/v1/chat/completions",
    "/u/scoped/..%5c..%5ctenant-b/v1/chat/completions",
    "/u/scoped/./chat/completions",
    "/v1/../../admin",
    "/v1/chat/completions/%2e%2e/completions",
    "/v1/embeddings/%2e%2e/chat/completions",
    "/v1/messages/%2e%2e/messages",
    "/t/job/a/planner/v1/%2e%2e/v1/chat/completions",
]


@pytest.mark.parametrize("target", DOT_SEGMENTS)
def test_dot_segments_are_refused_before_reaching_the_provider(
    scoped: ProxyThread, mock: MockProviderThread, target: str
) -> None:
    answer = raw_request(scoped.port, target, body=CLAUDE if "messages" in target else BODY)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
    assert b"'.' or '..' segments" in answer
    assert mock.provider.total_hits == 0


def test_a_chat_completion_behind_an_encoded_slash_is_still_capped(
    scoped: ProxyThread, mock: MockProviderThread
) -> None:
    """A provider that decodes %2F would serve this as a chat completion: Tripwire reads it as
    one too, and enforces the task's budget on it."""
    answer = raw_request(
        scoped.port,
        "/v1/chat%2Fcompletions",
        headers="X-Task-Id: encoded-slash\r\nx-mock-reply-tokens: 5000\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    forwarded = mock.provider.last_request
    assert forwarded is not None and forwarded.body is not None
    assert 0 < forwarded.body["max_completion_tokens"] <= 200
    view = scoped.task("encoded-slash")
    assert view is not None and view.tokens_used <= 200


@pytest.mark.parametrize(
    "headers",
    [
        "X-Forwarded-Host: {host}\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: {port}\r\n",
        "Forwarded: for=1.2.3.4;host={host};proto=http\r\n",
        "X-Original-URL: http://{host}/v1/chat/completions\r\n",
        "X-Rewrite-URL: http://{host}/v1/chat/completions\r\n",
        "X-Forwarded-Prefix: //{host}\r\n",
        "X-Host: {host}\r\nX-Forwarded-Server: {host}\r\n",
    ],
)
def test_no_header_names_the_host(
    proxy: ProxyThread, mock: MockProviderThread, outsider: MockProviderThread, headers: str
) -> None:
    host = outsider.base_url.removeprefix("http://")
    port = host.rsplit(":", 1)[1]
    outsider.provider.reset()
    answer = raw_request(
        proxy.port, "/v1/chat/completions", headers=headers.format(host=host, port=port)
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert mock.provider.total_hits == 1
    assert outsider.provider.total_hits == 0


@pytest.mark.parametrize(
    "target",
    [
        "/v1/chat/completions?x=1#@{host}/v1/chat/completions",
        "/v1/chat/completions?url=http://{host}/v1/chat/completions",
        "/v1/chat/completions?@{host}",
        "https://{host}/v1/chat/completions",
        "/v1/chat/completions\\@{host}",
        "/u/openai@{host}/v1/chat/completions",
        "/u/openai%40{host}/v1/chat/completions",
        "/u/openai:{port}/v1/chat/completions",
    ],
)
def test_no_target_names_the_host(
    proxy: ProxyThread, outsider: MockProviderThread, target: str
) -> None:
    host = outsider.base_url.removeprefix("http://")
    outsider.provider.reset()
    answer = raw_request(proxy.port, target.format(host=host, port=host.rsplit(":", 1)[1]))
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    assert outsider.provider.total_hits == 0


def test_a_redirect_from_the_provider_is_not_followed(
    make_proxy: Any, outsider: MockProviderThread
) -> None:
    outsider.provider.reset()
    with ScriptedUpstream() as upstream:
        proxy = make_proxy(upstreams={"openai": {"base_url": upstream.base_url}})
        for status in (301, 302, 307, 308):
            location = outsider.base_url + "/v1/chat/completions"
            upstream.push(Scripted([b"{}"], status=status, headers={"Location": location}))
            answer = raw_request(proxy.port, "/v1/chat/completions")
            assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]
        assert len(upstream.requests) == 4
    assert outsider.provider.total_hits == 0
