"""Provider adapters on copies of real wire shapes: request parsing, usage, output, events."""

from __future__ import annotations

import json

from proxy.providers import ADAPTERS
from proxy.server.sse import SSEDecoder

OPENAI = ADAPTERS["openai"]
ANTHROPIC = ADAPTERS["anthropic"]


def events(raw: bytes) -> list:  # type: ignore[type-arg]
    return list(SSEDecoder().feed(raw))


def test_chat_request_parsing() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a planner."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "plan"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            },
        ],
        "max_tokens": 100,
        "n": 2,
        "stream": True,
    }
    info = OPENAI.parse_request("/v1/chat/completions", body)
    assert (info.kind, info.model, info.stream, info.cap, info.cap_field, info.choices) == (
        "chat",
        "gpt-4o",
        True,
        100,
        "max_tokens",
        2,
    )
    assert info.system_text == "You are a planner."
    assert info.prompt.messages == 2 and info.prompt.images == 1
    assert not info.wants_stream_usage


def test_chat_enforce_sets_cap_and_asks_for_stream_usage() -> None:
    body = {"model": "m", "messages": [], "stream": True}
    info = OPENAI.parse_request("/v1/chat/completions", body)
    assert OPENAI.enforce(body, info, 42, "max_completion_tokens")
    assert body["max_completion_tokens"] == 42
    assert body["stream_options"] == {"include_usage": True}


def test_chat_stream_drops_only_the_injected_usage_chunk() -> None:
    info = OPENAI.parse_request("/v1/chat/completions", {"stream": True, "messages": []})
    tally = OPENAI.stream_tally(info)
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,'
        b'"total_tokens":9}}\n\n'
        b"data: [DONE]\n\n"
    )
    kept = [e for e in events(stream) if tally.feed(e)]
    assert len(kept) == 3 and b"usage" not in kept[-2].raw.replace(b'"usage":null', b"")
    usage = tally.billed_usage(100)
    assert (usage.input_tokens, usage.output_tokens) == (7, 2)
    assert tally.output().text == "Hello"


def test_stream_without_usage_counts_deltas() -> None:
    info = OPENAI.parse_request("/v1/chat/completions", {"stream": True, "messages": []})
    tally = OPENAI.stream_tally(info)
    for event in events(b'data: {"choices":[{"index":0,"delta":{"content":"one two three"}}]}\n\n'):
        tally.feed(event)
    usage = tally.billed_usage(50)
    assert usage.input_tokens == 50 and usage.output_tokens == 3


def test_responses_api() -> None:
    body = {"model": "gpt-4o", "instructions": "Be brief.", "input": "hi", "max_output_tokens": 9}
    info = OPENAI.parse_request("/v1/responses", body)
    assert (info.kind, info.cap, info.cap_field, info.system_text) == (
        "responses",
        9,
        "max_output_tokens",
        "Be brief.",
    )
    reply = {
        "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "Hi!"}]},
            {"type": "function_call", "name": "search", "arguments": '{"q": 1}'},
        ],
        "usage": {
            "input_tokens": 20,
            "input_tokens_details": {"cached_tokens": 5},
            "output_tokens": 3,
        },
    }
    usage = OPENAI.usage_from_body(info, reply)
    assert usage is not None and (usage.input_tokens, usage.cached_tokens) == (20, 5)
    output = OPENAI.output_from_body(info, reply)
    assert output.text == "Hi!" and output.tool_calls == [("search", '{"q": 1}')]


def test_anthropic_usage_adds_cache_reads_and_writes_to_input() -> None:
    info = ANTHROPIC.parse_request(
        "/v1/messages",
        {
            "model": "claude",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Critic."}],
            "messages": [{"role": "user", "content": "go"}],
        },
    )
    assert info.cap == 64 and info.system_text == "Critic."
    body = {
        "content": [{"type": "text", "text": "ok"}],
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
            "output_tokens": 5,
        },
    }
    usage = ANTHROPIC.usage_from_body(info, body)
    assert usage is not None
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens) == (130, 100, 20)


def test_anthropic_stream_usage_from_start_and_delta() -> None:
    info = ANTHROPIC.parse_request("/v1/messages", {"max_tokens": 5, "messages": []})
    tally = ANTHROPIC.stream_tally(info)
    start = {
        "type": "message_start",
        "message": {"usage": {"input_tokens": 12, "output_tokens": 1}},
    }
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hi"},
    }
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 4},
    }
    raw = b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in (start, delta, end)
    )
    for event in events(raw):
        assert tally.feed(event)
    usage = tally.billed_usage(999)
    assert (usage.input_tokens, usage.output_tokens) == (12, 4)


def test_error_shapes() -> None:
    assert json.loads(OPENAI.error_body("m", "t", "c")) == {
        "error": {"message": "m", "type": "t", "param": None, "code": "c"}
    }
    assert json.loads(ANTHROPIC.error_body("m", "t", "c")) == {
        "type": "error",
        "error": {"type": "t", "message": "m"},
    }


def test_fingerprint_ignores_case_and_spacing_but_not_tool_arguments() -> None:
    from proxy.providers import Output

    assert Output("Hello   World").fingerprint() == Output("hello world").fingerprint()
    a = Output("", [("search", '{"q": 1, "p": 2}')]).fingerprint()
    b = Output("", [("search", '{"p":2,"q":1}')]).fingerprint()
    c = Output("", [("search", '{"q": 2}')]).fingerprint()
    assert a == b != c
    assert Output("").fingerprint() is None
