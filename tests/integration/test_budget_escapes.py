"""No request shape escapes a task's token budget.

Each shape is sent repeatedly and concurrently against a task with a 1,000-token budget; the
mock provider bills what a provider would (every text it receives, every choice it generates),
and what it billed the task must stay within the budget, or the calls be refused clearly.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from proxy.auth import mint
from tests.harness import MockProviderThread
from tests.redis_server import PATIENT_REDIS_TIMEOUT_S

BUDGET = 1_000
# The mock writes this many tokens unless a cap stops it.
LONG_REPLY = {"x-mock-reply-tokens": "5000"}
# Some 3,000 tokens of text: the prompt alone is over the budget.
BIG = "lorem ipsum dolor sit amet " * 600


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return {
        "backend": "redis",
        "redis_url": request.getfixturevalue("redis_server").url,
        "redis_timeout": PATIENT_REDIS_TIMEOUT_S,
    }


def budgeted(make_proxy: Any, state: dict[str, Any], **sections: Any) -> Any:
    policy = {"defaults": {"max_tokens": BUDGET, "max_calls": 200}}
    return make_proxy(state=state, policy=policy, **sections)


def send_all(proxy: Any, path: str, body: dict[str, Any], times: int = 6) -> list[httpx.Response]:
    """The same call, twice in a row and then concurrently, on one fresh task."""
    task = "esc-" + uuid.uuid4().hex[:8]
    headers = {"X-Task-Id": task, "Authorization": "Bearer sk", **LONG_REPLY}
    headers["anthropic-version"] = "2023-06-01"

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=proxy.base_url, timeout=30) as http:
            return http.post(path, json=body, headers=headers)

    answers = [one(0), one(1)]
    with ThreadPoolExecutor(max_workers=times) as pool:
        answers.extend(pool.map(one, range(times)))
    return answers


def billed(mock: MockProviderThread) -> int:
    usage = mock.provider.total_usage
    return int(usage.prompt_tokens + usage.completion_tokens)


def assert_held(mock: MockProviderThread, answers: list[httpx.Response]) -> None:
    assert billed(mock) <= BUDGET, [a.status_code for a in answers]
    for answer in answers:
        assert answer.status_code in (200, 403, 429), answer.text


SHAPES = {
    "responses function_call_output with an array output": (
        "/v1/responses",
        {
            "model": "gpt-4o",
            "input": [
                {"type": "function_call", "call_id": "c1", "name": "read", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_text", "text": BIG}],
                },
            ],
        },
    ),
    "anthropic search_result block": (
        "/v1/messages",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100_000,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "search_result",
                            "source": "https://example.com/a",
                            "title": "A",
                            "content": [{"type": "text", "text": BIG}],
                        }
                    ],
                }
            ],
        },
    ),
    "anthropic document with a text source": (
        "/v1/messages",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100_000,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": BIG},
                        },
                        {"type": "text", "text": "Summarise."},
                    ],
                }
            ],
        },
    ),
    "anthropic document with a content source": (
        "/v1/messages",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100_000,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {
                                "type": "content",
                                "content": [{"type": "text", "text": BIG}],
                            },
                        }
                    ],
                }
            ],
        },
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_prompt_shapes_the_estimate_used_to_miss_are_counted(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any], shape: str
) -> None:
    proxy = budgeted(make_proxy, state)
    path, body = SHAPES[shape]
    answers = send_all(proxy, path, body)
    assert_held(mock, answers)
    assert all(a.status_code == 403 for a in answers)  # 3,000 tokens never fit in 1,000
    assert "max_tokens" in answers[0].text


def test_small_prompts_of_those_shapes_pass_and_stay_within_the_budget(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = budgeted(make_proxy, state)
    _, body = SHAPES["responses function_call_output with an array output"]
    small = {**body, "input": [dict(item) for item in body["input"]]}
    small["input"][1]["output"] = [{"type": "input_text", "text": "lorem ipsum " * 20}]
    answers = send_all(proxy, "/v1/responses", small)
    assert answers[0].status_code == 200
    assert_held(mock, answers)


def test_background_answers_without_usage_keep_their_reservation(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = budgeted(make_proxy, state)
    body = {"model": "gpt-4o", "input": "Write a long essay.", "background": True}
    answers = send_all(proxy, "/v1/responses", body)
    assert answers[0].status_code == 200
    assert answers[0].json()["usage"] is None
    assert_held(mock, answers)
    refused = [a for a in answers if a.status_code != 200]
    assert refused, "a queued call must book its whole reservation"


def test_legacy_completions_are_capped_and_counted(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = budgeted(make_proxy, state)
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b"], "max_tokens": 100_000}
    answers = send_all(proxy, "/v1/completions", body)
    assert answers[0].status_code == 200
    assert_held(mock, answers)
    sent = mock.provider.requests_to("/v1/completions")[0].body
    assert sent["max_tokens"] * 2 <= BUDGET  # two prompts: two completions under the cap


def test_legacy_completions_best_of_multiplies_the_reservation(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = budgeted(make_proxy, state)
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "a", "n": 2, "best_of": 5}
    assert_held(mock, send_all(proxy, "/v1/completions", {**body, "max_tokens": 500}))


def test_message_batches_reserve_every_item(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = budgeted(make_proxy, state)
    params = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100_000,
        "messages": [{"role": "user", "content": "Write a long essay."}],
    }
    body = {"requests": [{"custom_id": f"r{i}", "params": params} for i in range(4)]}
    answers = send_all(proxy, "/v1/messages/batches", body)
    assert_held(mock, answers)
    for request in mock.provider.requests_to("/v1/messages/batches"):
        caps = [item["params"]["max_tokens"] for item in request.body["requests"]]
        assert sum(caps) <= BUDGET


def test_a_trailing_slash_is_still_a_chat_completion(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = budgeted(make_proxy, state)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=proxy.base_url) as http:
        for path in ("/v1/chat/completions/", "/v1//chat/completions", "/V1/Chat/Completions"):
            http.post(path, json=body, headers={"X-Task-Id": "slash-" + uuid.uuid4().hex[:6]})
    sent = [r.body for r in mock.provider.requests if r.body]
    assert len(sent) == 3
    assert all(0 < s["max_completion_tokens"] <= BUDGET for s in sent)


def test_unmodelled_paths_are_refused_under_a_budget(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = budgeted(make_proxy, state)
    with httpx.Client(base_url=proxy.base_url) as http:
        refused = http.post(
            "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": BIG},
            headers={"X-Task-Id": "emb-" + uuid.uuid4().hex[:6]},
        )
        batch = http.post(
            "/v1/batches",
            json={"input_file_id": "file-1", "endpoint": "/v1/chat/completions"},
            headers={"X-Task-Id": "bat-" + uuid.uuid4().hex[:6]},
        )
        read = http.get("/v1/models")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "tripwire_unbounded_path"
    assert "/v1/embeddings" in error["message"] and "unbounded_paths" in error["message"]
    assert batch.status_code == 403
    assert read.status_code == 404  # a read is forwarded (the mock knows no such path)
    assert [r.path for r in mock.provider.requests] == ["/v1/models"]


def test_unbounded_paths_opens_a_path_on_purpose(
    make_proxy: Any, mock: MockProviderThread, caplog: pytest.LogCaptureFixture
) -> None:
    rule = {"match": {"task": "emb-*"}, "unbounded_paths": ["/v1/embeddings"]}
    proxy = make_proxy(policy={"defaults": {"max_tokens": BUDGET}, "rules": [rule]})
    assert "unbounded_paths" in caplog.text
    with httpx.Client(base_url=proxy.base_url) as http:
        opened = http.post("/v1/embeddings", json={"input": "x"}, headers={"X-Task-Id": "emb-1"})
        closed = http.post("/v1/embeddings", json={"input": "x"}, headers={"X-Task-Id": "other"})
    assert opened.status_code == 404  # forwarded: the mock has no embeddings
    assert closed.status_code == 403


def test_without_a_budget_unmodelled_paths_are_forwarded(
    make_proxy: Any, mock: MockProviderThread
) -> None:
    proxy = make_proxy()
    with httpx.Client(base_url=proxy.base_url) as http:
        answer = http.post("/v1/embeddings", json={"input": "x"})
    assert answer.status_code == 404
    assert mock.provider.total_hits == 1


def test_the_cap_tripwire_sets_is_the_only_one_sent(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    upstreams = {"openai": {"base_url": mock.base_url, "cap_field": "max_tokens"}}
    proxy = budgeted(make_proxy, state, upstreams=upstreams)
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Write a long essay."}],
        "max_completion_tokens": None,
        "max_tokens": 100_000,
    }
    answers = send_all(proxy, "/v1/chat/completions", body)
    assert_held(mock, answers)
    sent = mock.provider.requests_to("/v1/chat/completions")[0].body
    assert "max_completion_tokens" not in sent
    assert sent["max_tokens"] <= BUDGET


def test_n_as_a_float_is_normalised_and_divides_the_cap(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = budgeted(make_proxy, state)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "n": 5.0}
    answers = send_all(proxy, "/v1/chat/completions", body)
    assert_held(mock, answers)
    sent = mock.provider.requests_to("/v1/chat/completions")[0].body
    assert sent["n"] == 5 and isinstance(sent["n"], int)
    assert sent["max_completion_tokens"] * 5 <= BUDGET


@pytest.mark.parametrize("n", ["5", 5.5, 0, True])
def test_n_the_provider_would_refuse_is_refused(
    make_proxy: Any, mock: MockProviderThread, n: Any
) -> None:
    proxy = budgeted(make_proxy, {})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "n": n}
    with httpx.Client(base_url=proxy.base_url) as http:
        answer = http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400
    assert "'n' must be an integer" in answer.json()["error"]["message"]
    assert mock.provider.total_hits == 0


SECRET = "tripwire-tests-hs256-secret-0123456789"


def test_signed_limits_without_a_task_bind_to_the_token(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = make_proxy(state=state, auth={"mode": "jwt", "hs256_secret": SECRET})
    token = mint(SECRET, {"sub": "agent-7", "limits": {"max_tokens": 100}}, 600)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Tell me more."}]}
    statuses = []
    with httpx.Client(base_url=proxy.base_url) as http:
        for number in range(5):
            headers = {"X-Tripwire-Token": token, "X-Task-Id": f"fresh-{number}", **LONG_REPLY}
            statuses.append(http.post("/v1/chat/completions", json=body, headers=headers))
    assert billed(mock) <= 100, [s.status_code for s in statuses]
    assert statuses[-1].status_code in (403, 429)


def test_a_long_stream_cut_without_usage_is_booked_in_full(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = make_proxy(state=state)
    task = "long-" + uuid.uuid4().hex[:6]
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Write at length."}],
        "stream": True,
    }
    # Some 750 KB of text, cut half-way: past what is kept for fingerprints.
    headers = {
        "X-Task-Id": task,
        "x-mock-reply-tokens": "150000",
        "x-mock-chunks": "30",
        "x-mock-reset": "mid",
    }
    with (
        httpx.Client(base_url=proxy.base_url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as answer,
    ):
        tail = b"".join(answer.iter_raw())[-300:]
    assert b"upstream_stream_broken" in tail  # Tripwire says the provider broke off
    assert mock.provider.total_usage.completion_tokens > 60_000
    view = None
    for _ in range(100):
        view = proxy.task(task)
        if view is not None and view.tokens_used:
            break
        time.sleep(0.05)
    assert view is not None
    assert view.tokens_used >= billed(mock)
