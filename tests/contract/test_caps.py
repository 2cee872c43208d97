"""Cap rewriting: a task with a token budget never asks the provider for more than is left."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.sdk import MODES, ask, eventually, params_for
from tests.harness import MockProviderThread, ProxyThread

BUDGET = 1000
POLICY = {"rules": [{"match": {"task": "cap-*"}, "limits": {"max_tokens": BUDGET}}]}
PATH = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
CHAT_CAP_FIELDS = ("max_completion_tokens", "max_tokens")

# (kind, the cap field the client sets or None, the field the provider must get)
CASES = [
    ("chat", None, "max_completion_tokens"),
    ("chat", "max_tokens", "max_tokens"),
    ("chat", "max_completion_tokens", "max_completion_tokens"),
    ("responses", None, "max_output_tokens"),
    ("responses", "max_output_tokens", "max_output_tokens"),
    ("messages", "max_tokens", "max_tokens"),
]


@pytest.fixture
def proxy(make_proxy: Any) -> ProxyThread:
    return make_proxy(policy=POLICY)  # type: ignore[no-any-return]


def _without(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in keys}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("kind", "client_field", "cap_field"), CASES)
def test_missing_or_larger_cap_is_lowered_to_the_budget_left(
    proxy: ProxyThread,
    mock: MockProviderThread,
    kind: str,
    client_field: str | None,
    cap_field: str,
    mode: str,
    stream: bool,
) -> None:
    task = f"cap-{kind}-{client_field}-{mode}-{stream}"
    extra = {client_field: 5000} if client_field else {}
    reply = ask(
        kind,
        proxy.base_url,
        mode=mode,
        stream=stream,
        headers={"X-Task-Id": task, "x-mock-reply-tokens": "3000"},
        **extra,
    )

    (forwarded,) = mock.provider.requests_to(PATH[kind])
    billed = mock.provider.total_usage
    cap = forwarded.body[cap_field]
    assert 0 < cap <= BUDGET - billed.prompt_tokens
    if kind == "chat":
        other = next(f for f in CHAT_CAP_FIELDS if f != cap_field)
        assert other not in forwarded.body
    sent = params_for(kind, stream=stream, **extra)
    assert _without(forwarded.body, cap_field, "stream_options") == _without(
        sent, cap_field, "stream_options"
    )
    # What the agent notices: a reply cut at the cap, and a task within its budget.
    assert len(reply.text.split()) == cap
    assert billed.total_tokens <= BUDGET
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view and view.tokens_used <= BUDGET


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("kind", "cap_field"),
    [
        ("chat", "max_tokens"),
        ("chat", "max_completion_tokens"),
        ("responses", "max_output_tokens"),
        ("messages", "max_tokens"),
    ],
)
def test_smaller_cap_is_left_alone(
    proxy: ProxyThread, mock: MockProviderThread, kind: str, cap_field: str, stream: bool
) -> None:
    task = f"cap-small-{kind}-{cap_field}-{stream}"
    reply = ask(
        kind,
        proxy.base_url,
        stream=stream,
        headers={"X-Task-Id": task, "x-mock-reply-tokens": "3000"},
        **{cap_field: 50},
    )
    (forwarded,) = mock.provider.requests_to(PATH[kind])
    sent = params_for(kind, stream=stream, **{cap_field: 50})
    assert forwarded.body[cap_field] == 50
    assert _without(forwarded.body, "stream_options") == _without(sent, "stream_options")
    assert len(reply.text.split()) == 50


@pytest.mark.parametrize("kind", ["chat", "responses", "messages"])
def test_a_later_call_gets_only_what_the_task_has_left(
    proxy: ProxyThread, mock: MockProviderThread, kind: str
) -> None:
    task = f"cap-later-{kind}"
    headers = {"X-Task-Id": task}
    first = ask(
        kind, proxy.base_url, prompt="first", headers={**headers, "x-mock-reply-tokens": "300"}
    )
    assert first.usage is not None
    mock.provider.reset()

    ask(kind, proxy.base_url, prompt="second", headers={**headers, "x-mock-reply-tokens": "3000"})
    (forwarded,) = mock.provider.requests_to(PATH[kind])
    cap_field = "max_completion_tokens" if kind == "chat" else "max_output_tokens"
    if kind == "messages":
        cap_field = "max_tokens"
    billed = mock.provider.total_usage
    assert 0 < forwarded.body[cap_field] <= BUDGET - first.usage - billed.prompt_tokens
    view = proxy.task(task)
    assert view is not None
    assert view.tokens_used == first.usage + billed.total_tokens <= BUDGET
