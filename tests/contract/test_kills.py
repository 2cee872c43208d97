"""Killing a runaway task: what its agents' SDKs see, and what never reaches the provider."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.contract.sdk import (
    KINDS,
    MODES,
    SDK_DEFAULT,
    ask,
    errors_of,
    make_client,
    params_for,
    resource,
    summarize_body,
)
from tests.harness import MockProviderThread, ProxyThread


def _refusal(error: Any, task: str, reason: str) -> None:
    """A refusal as the SDK presents it: 403, final, naming the task and the reason."""
    assert error.status_code == 403
    assert error.response.headers["x-should-retry"] == "false"
    assert f"'{task}'" in str(error)
    assert reason in str(error)


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


# -- (a) an agent whose provider answers the same thing forever --------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_agent_getting_the_same_answer_is_stopped_after_three(
    proxy: ProxyThread,
    mock: MockProviderThread,
    task: str,
    kind: str,
    mode: str,
    stream: bool,
) -> None:
    headers = {"X-Task-Id": task, "x-mock-reply": "same"}
    for turn in range(3):
        reply = ask(
            kind,
            proxy.base_url,
            mode=mode,
            stream=stream,
            prompt=f"try again, attempt {turn}",
            headers=headers,
            max_retries=SDK_DEFAULT,
        )
        assert reply.text == "same"

    requests = Counter()
    with pytest.raises(errors_of(kind).PermissionDeniedError) as refused:
        ask(
            kind,
            proxy.base_url,
            mode=mode,
            stream=stream,
            prompt="try again, attempt 3",
            headers=headers,
            max_retries=SDK_DEFAULT,
            on_request=requests,
        )
    _refusal(refused.value, task, "repeat_output")
    assert requests.count == 1  # the SDK did not retry
    assert mock.provider.total_hits == 3


_STREAM_CALLS = {
    "chat": (
        "/v1/chat/completions",
        {"model": "gpt-4o-mini"},
        {"authorization": "Bearer sk-test"},
        "data: [DONE]",
    ),
    "messages": (
        "/v1/messages",
        {"model": "claude-sonnet-4-5", "max_tokens": 200},
        {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
        "event: message_stop",
    ),
}


@pytest.mark.parametrize("kind", ["chat", "messages"])
def test_a_client_calling_again_at_the_end_of_a_stream_finds_the_kill_in_place(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str
) -> None:
    """The third identical answer trips the loop detector. A client that calls again the
    moment it reads the stream's last event, while the provider has yet to close the
    connection, must be refused: that event reaches it only once the call is settled."""
    path, body, auth, last = _STREAM_CALLS[kind]
    headers = {**auth, "X-Task-Id": task, "x-mock-reply": "same", "x-mock-linger": "0.5"}
    with httpx.Client(base_url=proxy.base_url, timeout=10) as client:
        for turn in range(3):
            payload = {
                **body,
                "messages": [{"role": "user", "content": f"again {turn}"}],
                "stream": True,
            }
            with client.stream("POST", path, json=payload, headers=headers) as reply:
                assert reply.status_code == 200
                lines = []
                for line in reply.iter_lines():
                    lines.append(line)
                    if line.startswith(last):
                        break  # the end as the client sees it; the connection is dropped
            assert lines[-1].startswith(last) and '"same' in "".join(lines)
        refused = client.post(
            path, json={**body, "messages": [{"role": "user", "content": "3"}]}, headers=headers
        )
    assert refused.status_code == 403
    assert "repeat_output" in refused.text
    assert mock.provider.total_hits == 3


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["chat", "messages"])
def test_refusal_with_a_retryable_status_is_still_not_retried(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, mode: str, status: int
) -> None:
    proxy = make_proxy(policy={"refuse_status": status, "defaults": {"max_calls": 1}})
    ask(kind, proxy.base_url, mode=mode, headers={"X-Task-Id": task})
    requests = Counter()
    sdk = errors_of(kind)
    expected = sdk.RateLimitError if status == 429 else sdk.InternalServerError
    with pytest.raises(expected) as refused:
        ask(
            kind,
            proxy.base_url,
            mode=mode,
            headers={"X-Task-Id": task},
            max_retries=SDK_DEFAULT,
            on_request=requests,
        )
    assert refused.value.status_code == status
    assert "max_calls" in str(refused.value)
    assert requests.count == 1
    assert mock.provider.total_hits == 1


# -- (b) two agents handing off to each other ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_handoffs_are_refused_at_hop_13(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str
) -> None:
    agents = ["planner", "critic"]
    for call in range(1, 14):
        reply = ask(
            kind,
            proxy.base_url,
            prompt=f"round {call}: over to you",
            headers={"X-Task-Id": task, "X-Agent-Id": agents[(call - 1) % 2]},
        )
        assert reply.headers["x-tripwire-hops"] == str(call - 1)
    assert mock.provider.total_hits == 13

    with pytest.raises(errors_of(kind).PermissionDeniedError) as refused:
        ask(
            kind,
            proxy.base_url,
            prompt="round 14: over to you",
            headers={"X-Task-Id": task, "X-Agent-Id": "critic"},
        )
    _refusal(refused.value, task, "max_hops")
    assert "hop 13" in str(refused.value)
    assert mock.provider.total_hits == 13


def test_one_agent_calling_repeatedly_makes_no_hops(
    proxy: ProxyThread, mock: MockProviderThread, task: str
) -> None:
    for call in range(14):
        ask("chat", proxy.base_url, prompt=f"step {call}", headers={"X-Task-Id": task})
    view = proxy.task(task)
    assert view is not None and view.hops == 0 and view.killed is None
    assert mock.provider.total_hits == 14


# -- (c) concurrent calls against one token budget --------------------------------------------


async def _one_of_many(client: Any, kind: str, task: str, index: int, stream: bool) -> Any:
    params = params_for(kind, prompt=f"part {index} of the report", stream=stream)
    headers = {"X-Task-Id": task, "x-mock-reply-tokens": "400"}
    if kind == "chat" and stream:
        params["stream_options"] = {"include_usage": True}
    try:
        result = await resource(client, kind).create(**params, extra_headers=headers)
        if stream:
            return [item async for item in result]
        return summarize_body(kind, result)
    except errors_of(kind).APIError as exc:
        return exc


def _check_budget_refusal(error: Exception, kind: str, task: str) -> None:
    """A call that did not fit: either the budget is spent (the task is stopped) or what is
    left is held by calls in flight (a retryable 429)."""
    sdk = errors_of(kind)
    if isinstance(error, sdk.PermissionDeniedError):
        _refusal(error, task, "budget_tokens")
    else:
        assert isinstance(error, sdk.RateLimitError), error
        assert "budget" in str(error) and task in str(error)


async def _settled_view(proxy: ProxyThread, task: str) -> Any:
    for _ in range(100):
        view = await asyncio.to_thread(proxy.task, task)
        if view.tokens_reserved == 0:
            return view
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task} still has calls in flight: {view}")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_calls_stay_within_the_token_budget(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, stream: bool
) -> None:
    proxy = make_proxy(
        policy={"rules": [{"match": {"task": "budget-*"}, "limits": {"max_tokens": 1000}}]}
    )
    task = "budget-" + task
    async with make_client(kind, proxy.base_url, mode="async", max_retries=0) as client:
        results = await asyncio.gather(
            *(_one_of_many(client, kind, task, i, stream) for i in range(20))
        )

    refused = [r for r in results if isinstance(r, Exception)]
    answered = [r for r in results if not isinstance(r, Exception)]
    assert answered, refused[:1]
    for error in refused:
        _check_budget_refusal(error, kind, task)
    billed = mock.provider.total_usage.total_tokens
    assert 0 < billed <= 1000
    assert mock.provider.total_hits == len(answered)
    view = await _settled_view(proxy, task)
    assert billed <= view.tokens_used <= 1000


@pytest.mark.parametrize("kind", ["chat"])
async def test_concurrent_calls_retrying_as_told_stay_within_the_token_budget(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str
) -> None:
    proxy = make_proxy(
        policy={"rules": [{"match": {"task": "budget-*"}, "limits": {"max_tokens": 1000}}]}
    )
    task = "budget-" + task
    async with make_client(kind, proxy.base_url, mode="async", max_retries=2) as client:
        results = await asyncio.gather(
            *(_one_of_many(client, kind, task, i, False) for i in range(20))
        )

    answered = [r for r in results if not isinstance(r, Exception)]
    assert len(answered) >= 2  # a retry found the budget the first call had left
    for error in (r for r in results if isinstance(r, Exception)):
        _check_budget_refusal(error, kind, task)
    billed = mock.provider.total_usage.total_tokens
    assert billed <= 1000
    view = await _settled_view(proxy, task)
    assert billed <= view.tokens_used <= 1000


# -- (d) a streaming call of a task that passes its deadline ---------------------------------


@pytest.mark.parametrize("kind", ["chat", "messages"])
def test_stream_past_the_deadline_ends_with_an_error_and_the_task_is_refused(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str
) -> None:
    task = "deadline-" + task
    proxy = make_proxy(
        policy={"rules": [{"match": {"task": "deadline-*"}, "limits": {"max_duration": 1}}]}
    )
    seen: list[float] = []
    with pytest.raises(errors_of(kind).APIError) as cut:
        ask(
            kind,
            proxy.base_url,
            stream=True,
            headers={
                "X-Task-Id": task,
                "x-mock-reply-tokens": "60",
                "x-mock-chunks": "30",
                "x-mock-chunk-delay": "0.1",
            },
            on_item=lambda _item: seen.append(time.time()),
        )
    ended = time.time()
    assert "deadline" in str(cut.value) and task in str(cut.value)
    view = proxy.task(task)
    assert view is not None
    deadline = view.started + 1  # counted from the task's first call
    assert deadline - 0.25 < seen[-1] < deadline  # it was streaming until the deadline...
    assert 0 <= ended - deadline <= 0.1 + 0.15  # ...and stopped within about one chunk of it

    with pytest.raises(errors_of(kind).PermissionDeniedError) as refused:
        ask(kind, proxy.base_url, headers={"X-Task-Id": task})
    _refusal(refused.value, task, "deadline")
    assert mock.provider.total_hits == 1


# -- (e) refused calls never reach the provider -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_refused_calls_never_reach_the_provider(
    make_proxy: Any, mock: MockProviderThread, task: str, mode: str
) -> None:
    proxy = make_proxy(policy={"rules": [{"match": {"task": task}, "limits": {"max_calls": 1}}]})
    ask("chat", proxy.base_url, mode=mode, headers={"X-Task-Id": task})
    assert mock.provider.total_hits == 1

    for kind in KINDS:
        for stream in (False, True):
            with pytest.raises(errors_of(kind).PermissionDeniedError) as refused:
                ask(
                    kind,
                    proxy.base_url,
                    mode=mode,
                    stream=stream,
                    headers={"X-Task-Id": task, "X-Agent-Id": kind},
                    max_retries=SDK_DEFAULT,
                )
            _refusal(refused.value, task, "max_calls")
    assert mock.provider.total_hits == 1
    view = proxy.task(task)
    assert view is not None and view.calls == 1


def test_refusal_bodies_are_in_each_providers_format(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = make_proxy(policy={"rules": [{"match": {"task": task}, "limits": {"max_calls": 1}}]})
    ask("chat", proxy.base_url, headers={"X-Task-Id": task})
    with pytest.raises(openai.PermissionDeniedError) as by_openai:
        ask("responses", proxy.base_url, headers={"X-Task-Id": task})
    with pytest.raises(anthropic.PermissionDeniedError) as by_anthropic:
        ask("messages", proxy.base_url, headers={"X-Task-Id": task})

    error = by_openai.value.response.json()["error"]
    assert error["code"] == "tripwire_max_calls"
    assert task in error["message"] and error["type"]
    assert by_openai.value.code == "tripwire_max_calls"
    body = by_anthropic.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"
    assert task in body["error"]["message"]
    assert by_anthropic.value.type == "permission_error"
