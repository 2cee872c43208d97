"""Observe (shadow) mode: trips are logged, agents are never refused or cut."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.sdk import KINDS, ask
from tests.harness import MockProviderThread, ProxyThread


@pytest.fixture
def observing(make_proxy: Any) -> ProxyThread:
    return make_proxy(policy={"on_trip": "observe"})  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mode", "stream"), [("sync", False), ("async", True)], ids=["sync-json", "async-stream"]
)
@pytest.mark.parametrize("kind", KINDS)
def test_repeating_agent_is_never_refused(
    observing: ProxyThread,
    mock: MockProviderThread,
    task: str,
    kind: str,
    mode: str,
    stream: bool,
) -> None:
    for turn in range(6):
        reply = ask(
            kind,
            observing.base_url,
            mode=mode,
            stream=stream,
            prompt="the same question",  # same request and same answer: both loops
            headers={"X-Task-Id": task, "x-mock-reply": "same"},
        )
        assert reply.text == "same", turn
    assert mock.provider.total_hits == 6
    view = observing.task(task)
    assert view is not None and view.killed is None and view.calls == 6


def test_limits_in_observe_mode_refuse_nothing(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = make_proxy(
        policy={
            "on_trip": "observe",
            "rules": [{"match": {"task": task}, "limits": {"max_calls": 2, "max_hops": 1}}],
        }
    )
    for turn in range(5):
        reply = ask(
            "chat",
            proxy.base_url,
            prompt=f"step {turn}",
            headers={"X-Task-Id": task, "X-Agent-Id": f"agent-{turn % 2}"},
        )
        assert reply.status == 200
    assert mock.provider.total_hits == 5


@pytest.mark.parametrize(
    ("kind", "cap_field"), [("chat", "max_completion_tokens"), ("responses", "max_output_tokens")]
)
def test_budget_in_observe_mode_rewrites_no_cap(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, cap_field: str
) -> None:
    proxy = make_proxy(
        policy={
            "on_trip": "observe",
            "rules": [{"match": {"task": task}, "limits": {"max_tokens": 100}}],
        }
    )
    for turn in range(3):
        reply = ask(
            kind,
            proxy.base_url,
            prompt=f"step {turn}",
            headers={"X-Task-Id": task, "x-mock-reply-tokens": "80"},
        )
        # Untouched: neither capped to the budget nor refused once it is spent.
        assert reply.text == " lorem" * 80, turn
    forwarded = mock.provider.requests_to(
        "/v1/chat/completions" if kind == "chat" else "/v1/responses"
    )
    assert [cap_field in r.body for r in forwarded] == [False, False, False]
