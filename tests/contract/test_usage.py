"""Usage accounting: a task's tokens are what the provider reported for its calls."""

from __future__ import annotations

import pytest

from tests.contract.sdk import KINDS, MODES, ask, eventually
from tests.harness import MockProviderThread, ProxyThread


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_task_tokens_equal_provider_reported_usage(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str, mode: str, stream: bool
) -> None:
    # A chat stream reports usage only to a client that asks for it.
    extra = {"stream_options": {"include_usage": True}} if kind == "chat" and stream else {}
    reported = []
    for prompt, tokens in (("Plan the trip", "37"), ("Now book the hotel, please", "11")):
        reply = ask(
            kind,
            proxy.base_url,
            mode=mode,
            stream=stream,
            prompt=prompt,
            headers={"X-Task-Id": task, "x-mock-reply-tokens": tokens},
            **extra,
        )
        assert reply.text == " lorem" * int(tokens)
        assert reply.usage is not None
        reported.append(reply.usage)

    expected = sum(reported)
    assert expected == mock.provider.total_usage.total_tokens
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_used == expected and v)
    assert view, f"task {task}: {proxy.task(task)}, provider reported {expected}"
    assert view.calls == 2
    assert view.tokens_reserved == 0


@pytest.mark.parametrize("kind", KINDS)
def test_calls_of_other_tasks_are_not_counted(proxy: ProxyThread, task: str, kind: str) -> None:
    mine = ask(kind, proxy.base_url, headers={"X-Task-Id": task, "x-mock-reply-tokens": "9"})
    ask(kind, proxy.base_url, headers={"X-Task-Id": task + "-other", "x-mock-reply-tokens": "50"})
    view = proxy.task(task)
    assert view is not None
    assert view.tokens_used == mine.usage
