"""The Gemini adapter: what it reads from requests and answers, on both of its routings."""

from __future__ import annotations

import json

import pytest

from proxy.providers.gemini import GeminiAdapter
from proxy.server.routing import resolve
from proxy.server.sse import SSEEvent

ADAPTER = GeminiAdapter()
BODY = {
    "systemInstruction": {"parts": [{"text": "You plan trips."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "Book Rome"}, {"inlineData": {"data": "..."}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "book", "args": {"city": "Rome"}}}]},
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "book", "response": {"ok": True}}}],
        },
    ],
    "tools": [{"functionDeclarations": [{"name": "book"}]}],
    "generationConfig": {"maxOutputTokens": 256, "candidateCount": 2},
}


@pytest.mark.parametrize(
    "path",
    [
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "/v1/models/gemini-2.5-flash:streamGenerateContent",
        "/v1beta1/projects/p/locations/us-central1/publishers/google/models/"
        "gemini-2.5-flash:streamGenerateContent",
    ],
)
def test_every_text_the_model_reads_is_in_the_prompt(path: str) -> None:
    info = ADAPTER.parse_request(path, BODY)
    assert (info.kind, info.model, info.stream) == ("generate", "gemini-2.5-flash", True)
    assert (info.cap, info.choices, info.prompt.images) == (256, 2, 1)
    texts = " ".join(info.prompt.texts)
    for seen in (
        "You plan trips.",
        "Book Rome",
        "book",
        '"city": "Rome"',
        '"ok": true',
        "functionDeclarations",
    ):
        assert seen in texts
    assert info.system_text == "You plan trips."


def test_count_tokens_and_other_methods_pass_through() -> None:
    info = ADAPTER.parse_request("/v1beta/models/gemini-2.5-flash:countTokens", BODY)
    assert not info.modelled


def test_the_cap_goes_into_generation_config() -> None:
    body: dict[str, object] = {"contents": []}
    info = ADAPTER.parse_request("/v1beta/models/m:generateContent", body)
    assert ADAPTER.enforce(body, info, 100, info.cap_field)
    assert body["generationConfig"] == {"maxOutputTokens": 100}


def test_usage_counts_thoughts_as_output_and_cached_tokens_inside_the_prompt() -> None:
    usage = ADAPTER.usage_from_body(
        ADAPTER.parse_request("/v1beta/models/m:generateContent", BODY),
        {
            "usageMetadata": {
                "promptTokenCount": 100,
                "cachedContentTokenCount": 40,
                "candidatesTokenCount": 10,
                "thoughtsTokenCount": 30,
            }
        },
    )
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (100, 40, 40)


def test_output_and_stream_tally_read_text_and_function_calls_not_thoughts() -> None:
    info = ADAPTER.parse_request("/v1beta/models/m:streamGenerateContent", BODY)
    chunk = {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "thinking...", "thought": True},
                        {"text": "Booked."},
                        {"functionCall": {"name": "pay", "args": {"eur": 9}}},
                    ]
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3},
    }
    output = ADAPTER.output_from_body(info, chunk)
    assert output.text == "Booked." and output.tool_calls == [("pay", '{"eur": 9}')]
    tally = ADAPTER.stream_tally(info)
    tally.feed(SSEEvent(b"", None, json.dumps(chunk)))
    assert tally.final and tally.output() == output
    assert tally.usage is not None and tally.usage.total == 8


def test_errors_are_google_rpc_statuses_the_sdk_reads() -> None:
    body = json.loads(ADAPTER.error_body("no", ADAPTER.error_types["refused"], "tripwire_repeat"))
    assert body["error"]["code"] == 403 and body["error"]["status"] == "PERMISSION_DENIED"
    assert body["error"]["details"][0]["reason"] == "tripwire_repeat"


def test_gemini_paths_route_to_the_gemini_upstream_and_openai_keeps_its_own() -> None:
    names = frozenset({"openai", "anthropic", "gemini"})
    assert resolve("/v1/models/gemini-2.5-flash:generateContent", names).upstream == "gemini"
    assert resolve("/v1beta/models/gemini-2.5-flash:countTokens", names).upstream == "gemini"
    assert resolve("/v1/models/gpt-4o", names).upstream == "openai"
    assert resolve("/v1/chat/completions", names).upstream == "openai"
