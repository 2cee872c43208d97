"""Gemini agents through Tripwire with the official ``google-genai`` SDK, changing only its
base URL: tagged, capped, stopped and cut exactly like the OpenAI and Anthropic ones."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pytest
from google.genai import errors, types

from proxy.telemetry.logs import LOGGER_NAME
from tests.contract.gemini_sdk import GEMINI_MODEL, generate
from tests.contract.sdk import assert_generation_stopped, eventually
from tests.harness import MockProviderThread, ProxyThread

MODES = ("sync", "async")
GENERATE = f"/v1/models/{GEMINI_MODEL}:generateContent"
STREAM = f"/v1/models/{GEMINI_MODEL}:streamGenerateContent"


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", MODES)
def test_a_call_is_tagged_and_booked_from_the_url(
    proxy: ProxyThread, mock: MockProviderThread, task: str, mode: str, stream: bool
) -> None:
    reply = generate(
        f"{proxy.base_url}/t/{task}/a/planner",
        mode=mode,
        stream=stream,
        headers={"x-mock-reply": "the plan is ready"},
    )
    assert reply.text == "the plan is ready"
    assert reply.headers.get("x-tripwire-task") == task
    billed = mock.provider.total_usage
    assert reply.usage == billed.total_tokens
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view and view.agents == ["planner"]
    assert view.tokens_used == billed.total_tokens  # usageMetadata, not the estimate
    assert view.cost_usd > 0  # priced as a Google model
    (forwarded,) = mock.provider.requests_to(STREAM if stream else GENERATE)
    assert forwarded.headers["x-goog-api-key"] == "gemini-test-key"  # the client's, passed on


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_output_cap_is_lowered_to_the_budget_left(
    make_proxy: Any, mock: MockProviderThread, task: str, stream: bool
) -> None:
    budget = 1000
    proxy = make_proxy(
        policy={"rules": [{"match": {"task": task}, "limits": {"max_tokens": budget}}]}
    )
    reply = generate(
        proxy.base_url,
        stream=stream,
        headers={"X-Task-Id": task, "x-mock-reply-tokens": "3000"},
        config=types.GenerateContentConfig(max_output_tokens=5000, temperature=0.5),
    )
    (forwarded,) = mock.provider.requests_to(STREAM if stream else GENERATE)
    config = forwarded.body["generationConfig"]
    billed = mock.provider.total_usage
    assert 0 < config["maxOutputTokens"] <= budget - billed.prompt_tokens
    assert config["temperature"] == 0.5  # the rest of the request untouched
    assert len(reply.text.split()) == config["maxOutputTokens"]
    assert billed.total_tokens <= budget
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view and view.tokens_used <= budget


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", MODES)
def test_an_agent_getting_the_same_answer_is_stopped_and_the_sdk_does_not_retry(
    proxy: ProxyThread, mock: MockProviderThread, task: str, mode: str, stream: bool
) -> None:
    headers = {"X-Task-Id": task, "x-mock-reply": "same"}
    for turn in range(3):
        reply = generate(
            proxy.base_url, mode=mode, stream=stream, prompt=f"again {turn}", headers=headers
        )
        assert reply.text == "same"
    requests = Counter()
    with pytest.raises(errors.ClientError) as refused:
        generate(
            proxy.base_url,
            mode=mode,
            stream=stream,
            prompt="again 3",
            headers=headers,
            retries=True,  # the SDK's retry policy on: a refusal is still final
            on_request=requests,
        )
    assert refused.value.code == 403 and refused.value.status == "PERMISSION_DENIED"
    assert task in str(refused.value) and "repeat" in str(refused.value)
    assert requests.count == 1
    assert mock.provider.total_hits == 3


@pytest.mark.parametrize("mode", MODES)
def test_the_deadline_cuts_a_stream_and_the_sdk_raises(
    make_proxy: Any, mock: MockProviderThread, task: str, mode: str
) -> None:
    proxy = make_proxy(
        policy={"rules": [{"match": {"task": task}, "limits": {"max_duration": 0.3}}]}
    )
    chunks: list[Any] = []
    with pytest.raises(errors.APIError) as cut:
        generate(
            proxy.base_url,
            mode=mode,
            stream=True,
            headers={
                "X-Task-Id": task,
                "x-mock-reply-tokens": "120",
                "x-mock-chunks": "60",
                "x-mock-chunk-delay": "0.02",
            },
            on_chunk=chunks.append,
        )
    assert "deadline" in str(cut.value) and task in str(cut.value)
    assert len(chunks) >= 3
    assert_generation_stopped(mock.provider, lambda: proxy.task(task), 120, 0.02, 2)


def _array_stream(proxy: ProxyThread, task: str, **headers: str) -> httpx.Response:
    """streamGenerateContent without alt=sse, as a REST client calls it."""
    return httpx.post(
        f"{proxy.base_url}/v1beta/models/{GEMINI_MODEL}:streamGenerateContent",
        headers={"x-goog-api-key": "k", "X-Task-Id": task, **headers},
        json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
        timeout=10,
    )


def test_a_stream_without_alt_sse_is_read_as_one_json_array(
    proxy: ProxyThread, mock: MockProviderThread, task: str
) -> None:
    answer = _array_stream(proxy, task, **{"x-mock-reply": "one two three four five six"})
    chunks = json.loads(answer.content)  # relayed byte for byte: still one JSON array
    assert len(chunks) == 2
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == "one two three four five six"
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view and view.tokens_used == mock.provider.total_usage.total_tokens


def test_a_cut_array_stream_ends_with_an_error_element_and_stays_valid_json(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = make_proxy(
        policy={"rules": [{"match": {"task": task}, "limits": {"max_duration": 0.2}}]}
    )
    answer = _array_stream(
        proxy,
        task,
        **{"x-mock-reply-tokens": "120", "x-mock-chunks": "60", "x-mock-chunk-delay": "0.02"},
    )
    chunks = json.loads(answer.content)
    assert len(chunks) >= 3 and "candidates" in chunks[0]
    error = chunks[-1]["error"]
    assert error["code"] == 403 and error["status"] == "PERMISSION_DENIED"
    assert "deadline" in error["message"]


def test_countTokens_passes_through_without_booking(
    proxy: ProxyThread, mock: MockProviderThread, task: str
) -> None:
    answer = httpx.post(
        f"{proxy.base_url}/v1beta/models/{GEMINI_MODEL}:countTokens",
        headers={"x-goog-api-key": "k", "X-Task-Id": task},
        json={"contents": [{"role": "user", "parts": [{"text": "count me"}]}]},
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["totalTokens"] > 0
    view = proxy.task(task)
    assert view is None or view.tokens_used == 0


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {getattr(record, 'fields', '')}")


def test_the_key_query_parameter_is_a_credential_replaced_and_never_logged(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = make_proxy(
        upstreams={
            "gemini": {"base_url": mock.base_url, "format": "gemini", "api_key": "server-key"}
        }
    )
    lines = _Lines()
    logger = logging.getLogger(LOGGER_NAME)
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.DEBUG)
    try:
        for status in ("200", "500"):
            httpx.post(
                f"{proxy.base_url}/v1beta/models/{GEMINI_MODEL}:generateContent"
                "?key=client-secret-key&alt=json",
                headers={"X-Task-Id": task, "x-mock-status": status},
                json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
                timeout=10,
            )
        time.sleep(0.2)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    forwarded = mock.provider.requests[0]
    assert forwarded.headers["x-goog-api-key"] == "server-key"
    assert forwarded.query == "alt=json"  # Tripwire's key in place of the client's
    assert lines.lines and not any("client-secret-key" in line for line in lines.lines)
    metrics = httpx.get(f"{proxy.base_url}/metrics", timeout=10).text
    assert "client-secret-key" not in metrics
