"""Pass-through fidelity: what the agent's SDK receives is what the provider sent."""

from __future__ import annotations

import json

import pytest

from tests.contract.sdk import KINDS, MODES, ask, eventually, raw_stream, sse_events
from tests.harness import MockProviderThread, ProxyThread

pytestmark = pytest.mark.usefixtures("fixed_ids")

REQUEST_ID_HEADER = {"chat": "x-request-id", "responses": "x-request-id", "messages": "request-id"}
TAG_HEADERS = (
    "x-tripwire-task",
    "x-tripwire-agent",
    "x-tripwire-tokens-used",
    "x-tripwire-overhead-ms",
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_json_answer_is_byte_identical_to_the_providers(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    script = {"x-mock-reply": "The capital of France is Paris."}
    via_proxy = ask(
        kind,
        proxy.base_url,
        mode=mode,
        headers={**script, "X-Task-Id": task, "X-Agent-Id": "writer"},
    )
    direct = ask(kind, mock.base_url, mode=mode, headers=script)

    assert via_proxy.status == direct.status == 200
    assert via_proxy.body == direct.body
    assert via_proxy.text == "The capital of France is Paris."
    for name in (REQUEST_ID_HEADER[kind], "content-type"):
        assert via_proxy.headers[name] == direct.headers[name]
    assert via_proxy.headers["x-tripwire-task"] == task
    assert via_proxy.headers["x-tripwire-agent"] == "writer"
    assert via_proxy.headers["x-tripwire-tokens-used"] == str(via_proxy.usage)
    assert float(via_proxy.headers["x-tripwire-overhead-ms"]) >= 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_stream_events_are_unchanged(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    script = {"x-mock-reply-tokens": "24", "x-mock-chunks": "6"}
    extra = {"stream_options": {"include_usage": True}} if kind == "chat" else {}
    via_proxy = raw_stream(
        kind, proxy.base_url, mode=mode, headers={**script, "X-Task-Id": task}, **extra
    )
    direct = raw_stream(kind, mock.base_url, mode=mode, headers=script, **extra)

    assert via_proxy.status == direct.status == 200
    assert via_proxy.headers["content-type"] == direct.headers["content-type"]
    assert via_proxy.headers[REQUEST_ID_HEADER[kind]] == direct.headers[REQUEST_ID_HEADER[kind]]
    for name in TAG_HEADERS:
        assert name in via_proxy.headers
    assert via_proxy.headers["x-tripwire-task"] == task
    assert sse_events(via_proxy.data) == sse_events(direct.data)
    assert len(sse_events(direct.data)) >= 6


def _usage_event(events: list[bytes]) -> bytes:
    (usage,) = [e for e in events if b'"choices":[]' in e and b'"usage":{' in e]
    return usage


@pytest.mark.parametrize("mode", MODES)
def test_chat_stream_without_include_usage_hides_the_usage_chunk_but_is_accounted(
    proxy: ProxyThread, mock: MockProviderThread, task: str, mode: str
) -> None:
    script = {"x-mock-reply-tokens": "30", "x-mock-chunks": "5"}
    via_proxy = raw_stream("chat", proxy.base_url, mode=mode, headers={**script, "X-Task-Id": task})
    billed = mock.provider.total_usage.total_tokens
    (forwarded,) = mock.provider.requests_to("/v1/chat/completions")
    # Tripwire asked the provider for the usage the client did not ask for...
    assert forwarded.body["stream_options"] == {"include_usage": True}
    direct = raw_stream(
        "chat",
        mock.base_url,
        mode=mode,
        headers=script,
        stream_options={"include_usage": True},
    )
    provider_events = sse_events(direct.data)
    usage_event = _usage_event(provider_events)

    # ...and the client sees every event the provider sent but that usage chunk.
    assert sse_events(via_proxy.data) == [e for e in provider_events if e != usage_event]
    reported = json.loads(usage_event.removeprefix(b"data: "))["usage"]["total_tokens"]
    assert reported == billed
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_used == billed and v)
    assert view, proxy.task(task)


@pytest.mark.parametrize("mode", MODES)
def test_sdk_stream_without_include_usage_yields_no_usage_chunk(
    proxy: ProxyThread, task: str, mode: str
) -> None:
    reply = ask(
        "chat",
        proxy.base_url,
        mode=mode,
        stream=True,
        headers={"X-Task-Id": task, "x-mock-reply-tokens": "12", "x-mock-chunks": "3"},
    )
    assert reply.text == " lorem" * 12
    assert all(chunk.choices for chunk in reply.items)
    assert all(chunk.usage is None for chunk in reply.items)


@pytest.mark.parametrize("kind", KINDS)
def test_tags_are_consumed_and_credentials_reach_the_provider(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str
) -> None:
    ask(kind, mock.base_url, api_key="sk-agent-secret")
    sent_directly = mock.provider.last_request
    ask(
        kind,
        proxy.base_url,
        api_key="sk-agent-secret",
        headers={
            "X-Task-Id": task,
            "X-Agent-Id": "planner",
            "X-Tripwire-Debug": "1",
            "X-Request-Label": "kept",
        },
    )
    forwarded = mock.provider.last_request
    assert sent_directly is not None and forwarded is not None
    for name in ("x-task-id", "x-agent-id", "x-tripwire-debug"):
        assert name not in forwarded.headers
    assert forwarded.headers["x-request-label"] == "kept"
    credentials = [
        (name, sent_directly.headers[name])
        for name in ("authorization", "x-api-key")
        if name in sent_directly.headers
    ]
    assert credentials, "the SDK sent no credential"
    for name, value in credentials:
        assert "sk-agent-secret" in value
        assert forwarded.headers.get(name) == value
