"""A provider's stream is bounded: its counted output by what the call reserved (a provider
that ignores the cap is cut), each event by a size, and counting never holds the loop."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import openai
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import EventStreamError

from proxy.server.eventstream import EventStreamDecoder, event_message
from proxy.server.jsonstream import JSONArrayDecoder
from proxy.server.sse import EventTooLarge, SSEDecoder
from proxy.tokens import count_bounded
from tests.contract.gemini_sdk import GEMINI_MODEL
from tests.contract.sdk import eventually
from tests.harness import MockProviderThread
from tests.reliability.upstream import Scripted, ScriptedUpstream


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as scripted:
        yield scripted


def chunk(content: str) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def client(proxy: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.openai_url, api_key="sk", max_retries=0, timeout=20)


def test_a_provider_ignoring_the_cap_is_cut_at_the_reservation(
    make_proxy: Any, upstream: ScriptedUpstream, task: str, state: dict[str, Any]
) -> None:
    proxy = make_proxy(
        state=state,
        upstreams={"openai": {"base_url": upstream.base_url, "format": "openai"}},
        policy={"rules": [{"match": {"task": task}, "limits": {"max_tokens": 300}}]},
    )
    words = "word " * 10  # ten tokens a delta; 2,000 in all, the cap ignored
    upstream.push(
        Scripted([chunk(words) for _ in range(200)], content_type="text/event-stream", pause=0.002)
    )
    received = 0
    with pytest.raises(openai.APIError) as cut:
        stream = client(proxy).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"X-Task-Id": task},
        )
        for _item in stream:
            received += 1
    assert "budget_tokens" in str(cut.value) or "reserved" in str(cut.value)
    forwarded = json.loads(upstream.requests[0][1])
    cap = forwarded.get("max_completion_tokens") or forwarded.get("max_tokens")
    assert cap is not None and cap < 300
    # Cut within the tolerance of the reservation, and charged what was counted.
    assert received * 10 <= cap * 1.1 + 32 + 10
    view = proxy.task(task)
    assert view is not None and view.tokens_reserved == 0
    assert cap < view.tokens_used <= cap * 1.1 + 32 + 10 + 40  # with a prompt of ~25


def test_an_event_past_the_size_bound_ends_the_stream_and_is_billed_by_bytes(
    make_proxy: Any, upstream: ScriptedUpstream, task: str
) -> None:
    proxy = make_proxy(
        server={"max_event_bytes": 64 * 1024},
        upstreams={"openai": {"base_url": upstream.base_url, "format": "openai"}},
    )
    huge = chunk("x" * (1024 * 1024))
    upstream.push(
        Scripted(
            [chunk("hello"), huge, b"data: [DONE]\n\n"],
            content_type="text/event-stream",
            pause=0.01,
        )
    )
    texts: list[str] = []
    with pytest.raises(openai.APIError):
        stream = client(proxy).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"X-Task-Id": task},
        )
        for item in stream:
            texts.extend(c.delta.content or "" for c in item.choices)
    assert "".join(texts) == "hello"  # the oversized event never reached the client
    view = proxy.task(task)
    assert view is not None and view.tokens_used >= 64 * 1024


def test_the_decoder_refuses_an_event_past_its_bound_before_it_is_whole() -> None:
    decoder = SSEDecoder(max_event=4096)
    assert decoder.feed(b"data: ok\n\n")[0].data == "ok"
    with pytest.raises(EventTooLarge):
        for _ in range(10):
            decoder.feed(b"data: " + b"y" * 1000)


# -- the same bound on Gemini's JSON-array streams and Bedrock's AWS event streams -----------

HUGE_EVENT = {"x-mock-reply-tokens": "40000", "x-mock-chunks": "1"}  # ~180 KB in one event


def test_a_gemini_array_element_past_the_bound_ends_the_array_with_an_error_element(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = make_proxy(server={"max_event_bytes": 64 * 1024})
    answer = httpx.post(
        f"{proxy.base_url}/v1beta/models/{GEMINI_MODEL}:streamGenerateContent",
        headers={"x-goog-api-key": "k", "X-Task-Id": task, **HUGE_EVENT},
        json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
        timeout=20,
    )
    assert answer.status_code == 200
    assert len(answer.content) < 64 * 1024  # the element never reached the client
    elements = json.loads(answer.content)  # still one valid JSON array, in Gemini's shape
    assert [e["error"]["status"] for e in elements] == ["UNAVAILABLE"]
    assert "broke off" in elements[0]["error"]["message"]
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view and view.tokens_used >= 64 * 1024  # billed by the bytes that arrived


def test_a_gemini_array_element_is_refused_before_it_is_whole() -> None:
    decoder = JSONArrayDecoder(max_event=4096)
    assert [e.data for e in decoder.feed(b'[{"a": 1}')] == ["", '{"a": 1}']
    with pytest.raises(EventTooLarge) as refused:
        decoder.feed(b',\r\n{"text": "' + b"y" * 3000)
        decoder.feed(b"y" * 3000)  # the element is not closed yet: never buffered past 4096
    assert 4096 < refused.value.size <= 6100


def test_a_bedrock_message_past_the_bound_ends_the_stream_with_an_exception_event(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = make_proxy(
        server={"max_event_bytes": 64 * 1024},
        upstreams={"bedrock": {"base_url": mock.base_url, "format": "bedrock"}},
    )
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=proxy.base_url,
        aws_access_key_id="AKIDCLIENT",
        aws_secret_access_key="client-secret",
        config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"}),
    )

    def add_headers(request: Any, **_: Any) -> None:
        for name, value in {"X-Task-Id": task, **HUGE_EVENT}.items():
            request.headers[name] = value

    client.meta.events.register_first("before-sign.bedrock-runtime.*", add_headers)
    texts: list[str] = []
    try:
        with pytest.raises(EventStreamError) as cut:
            events = client.converse_stream(
                modelId="us.amazon.nova-lite-v1:0",
                messages=[{"role": "user", "content": [{"text": "Hello there"}]}],
            )["stream"]
            try:
                for item in events:
                    if "contentBlockDelta" in item:
                        texts.append(item["contentBlockDelta"]["delta"]["text"])
            finally:
                events.close()
    finally:
        client.close()
    assert "broke off" in str(cut.value)
    assert texts == []  # the oversized message never reached the client
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view and view.tokens_used >= 64 * 1024  # billed by the length it declared


def test_a_bedrock_message_is_refused_from_its_prelude() -> None:
    decoder = EventStreamDecoder(max_event=4096)
    small = event_message("messageStart", b'{"role": "assistant"}')
    huge = event_message("contentBlockDelta", b'{"delta": {"text": "' + b"y" * 10_000 + b'"}}')
    with pytest.raises(EventTooLarge) as refused:
        decoder.feed(small + huge[:16])  # the prelude says enough: nothing more is read
    assert [e.event for e in refused.value.before] == ["messageStart"]
    assert refused.value.size == len(huge)
    # A prelude whose CRC is wrong is lost framing, not a size: relayed unread, as before.
    broken = EventStreamDecoder(max_event=4096)
    garbled = bytearray(huge)
    garbled[9] ^= 0xFF
    assert [e.raw for e in broken.feed(bytes(garbled))] == [bytes(garbled)]


def test_a_huge_text_is_counted_in_bounded_time() -> None:
    text = "lorem ipsum dolor " * (40 * 1024 * 1024 // 18)
    started = time.perf_counter()
    counted = count_bounded(text)
    assert time.perf_counter() - started < 0.5
    assert counted >= len(text) // 4  # an upper bound, never an undercount
    assert count_bounded("hello world") == 2
