"""The prompt estimate counts every text a request carries, whatever its nesting; a stream's
deltas are all counted; ``tripwire token`` says what task-less limits bind to."""

from __future__ import annotations

import json

import jwt
import pytest

from proxy.auth import Claims
from proxy.cli import main
from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.base import MAX_OUTPUT_CHARS
from proxy.providers.openai import OpenAIAdapter
from proxy.server.sse import SSEEvent
from proxy.tokens import count_text, estimate_prompt
from proxy.tokens.walk import REFERENCED_FILE_TOKENS, collect

TEXT = "The committee reviewed the figures and asked for a second opinion. " * 300
EXACT = count_text(TEXT)


def openai_estimate(path: str, body: dict[str, object]) -> int:
    return estimate_prompt(OpenAIAdapter().parse_request(path, body).prompt, "openai")


def anthropic_estimate(content: list[object]) -> int:
    body = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": content}]}
    return estimate_prompt(AnthropicAdapter().parse_request("/v1/messages", body).prompt, "x")


def test_a_tool_output_given_as_parts_is_counted() -> None:
    body = {
        "model": "gpt-4o",
        "input": [
            {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": [{"type": "input_text", "text": TEXT}],
            }
        ],
    }
    assert openai_estimate("/v1/responses", body) >= EXACT


@pytest.mark.parametrize(
    "block",
    [
        {
            "type": "search_result",
            "source": "https://a",
            "title": "t",
            "content": [{"type": "text", "text": TEXT}],
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": TEXT}},
        {
            "type": "document",
            "source": {"type": "content", "content": [{"type": "text", "text": TEXT}]},
        },
        {"type": "mystery_block_of_tomorrow", "payload": {"deep": [[{"note": TEXT}]]}},
    ],
)
def test_anthropic_blocks_are_counted_whatever_their_shape(block: dict[str, object]) -> None:
    assert anthropic_estimate([block]) >= EXACT


def test_documents_without_their_text_are_charged_from_a_bound() -> None:
    by_url = {"type": "document", "source": {"type": "url", "url": "https://a/b.pdf"}}
    assert anthropic_estimate([by_url]) >= REFERENCED_FILE_TOKENS
    inline = {"type": "document", "source": {"type": "base64", "data": "QUJD" * 5000}}
    assert anthropic_estimate([inline]) >= 20_000


def test_ids_enums_and_settings_are_not_counted() -> None:
    found = collect(
        {
            "model": "gpt-4o",
            "store": True,
            "metadata": {"k": "v" * 100},
            "input": [{"type": "message", "role": "user", "id": "msg_1", "content": "hello"}],
        }
    )
    assert found.texts == ["hello"]


def test_legacy_prompts_count_strings_and_token_ids() -> None:
    body = {"model": "m", "prompt": [TEXT, TEXT]}
    assert openai_estimate("/v1/completions", body) >= 2 * EXACT
    assert openai_estimate("/v1/completions", {"model": "m", "prompt": [7] * 5000}) >= 5000


def test_a_long_stream_without_usage_counts_every_delta() -> None:
    tally = OpenAIAdapter().stream_tally(
        OpenAIAdapter().parse_request("/v1/chat/completions", {"messages": [], "stream": True})
    )
    delta = "word " * 1000
    chunks = 2 * MAX_OUTPUT_CHARS // len(delta)
    chunk = json.dumps({"choices": [{"delta": {"content": delta}}]})
    for _ in range(chunks):
        tally.feed(SSEEvent(b"", None, chunk))
    assert tally.billed_usage(0).output_tokens >= chunks * count_text(delta)


def test_task_less_limits_bind_to_the_token() -> None:
    by_jti = Claims(jti="abc", limits={"max_tokens": 5})
    assert by_jti.bound_task("t") == "token-abc"
    by_sub = Claims(sub="me", iat=1, limits={"max_tokens": 5})
    assert by_sub.bound_task("t1") == by_sub.bound_task("t2")
    assert Claims().bound_task("t1") != Claims().bound_task("t2")


def test_tripwire_token_says_what_its_limits_bind_to(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "tripwire-tests-hs256-secret-0123456789"
    assert main(["token", "--secret", secret, "--max-tokens", "100"]) == 0
    out, err = capsys.readouterr()
    jti = jwt.decode(out.strip(), secret, algorithms=["HS256"])["jti"]
    assert f"token-{jti}" in err and "X-Task-Id" in err
    assert main(["token", "--secret", secret, "--max-tokens", "100", "--task", "t"]) == 0
    assert capsys.readouterr().err == ""
