"""A stream's deadline is the task's, as the operator leaves it: the task's own
``max_duration``, its extensions and a resume's new limits reach a stream already running."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.contract.sdk import ask, errors_of
from tests.harness import MockProviderThread
from tests.kills.conftest import ledger_of


def slow_stream(seconds: float, chunks: int = 40) -> dict[str, str]:
    return {
        "x-mock-reply-tokens": str(chunks * 2),
        "x-mock-chunks": str(chunks),
        "x-mock-chunk-delay": str(seconds / chunks),
    }


def policy(task: str, **limits: Any) -> dict[str, Any]:
    return {"rules": [{"match": {"task": task}, "limits": limits}]}


def test_a_task_created_with_its_own_deadline_cuts_a_longer_stream(
    make_proxy: Any, mock: MockProviderThread, task: str, state: dict[str, Any]
) -> None:
    proxy = make_proxy(state=state)  # the policy sets no deadline: the task's own does
    proxy.call(
        ledger_of(proxy).create(task, tenant=None, owner=None, overrides={"max_duration": 1})
    )
    with pytest.raises(errors_of("chat").APIError) as cut:
        ask("chat", proxy.base_url, stream=True, headers={"X-Task-Id": task, **slow_stream(4)})
    ended = time.time()
    assert "deadline" in str(cut.value)
    view = proxy.task(task)
    assert view is not None
    assert 0 <= ended - (view.started + 1) <= 0.5  # cut at the task's deadline, not at 4 s
    assert view is not None and view.killed is not None


@pytest.mark.parametrize("step", ["extend", "resume"])
def test_the_operator_moves_the_deadline_of_a_stream_in_flight(
    make_proxy: Any, mock: MockProviderThread, task: str, state: dict[str, Any], step: str
) -> None:
    proxy = make_proxy(state=state, policy=policy(task, max_duration=1))
    ledger = ledger_of(proxy)
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(
            ask,
            "chat",
            proxy.base_url,
            stream=True,
            headers={"X-Task-Id": task, **slow_stream(2.5)},
        )
        # Moved once the stream's call is reserved (its task exists), not after a fixed
        # sleep: on a busy machine the client may take longer than the old deadline to start.
        waited = time.monotonic() + 5
        while proxy.task(task) is None and time.monotonic() < waited:
            time.sleep(0.02)
        if step == "extend":
            moved = proxy.call(ledger.extend(task, 600, "more time"))
        else:
            moved = proxy.call(ledger.resume(task, {"max_duration": 600}, "approved"))
        assert moved is not None
        reply = stream.result(10)  # ran past the old deadline to its end
    assert reply.text
    view = proxy.task(task)
    assert view is not None and view.killed is None
    assert ask("chat", proxy.base_url, headers={"X-Task-Id": task}).status == 200


def test_after_extend_and_resume_the_next_stream_runs_past_the_old_deadline(
    make_proxy: Any, mock: MockProviderThread, task: str, state: dict[str, Any]
) -> None:
    """The human escalation path for a streaming agent (#18 item 1): a stream killed at the
    deadline, the task extended and resumed, and the agent's next stream is not cut at the
    old deadline, nor the task killed again."""
    proxy = make_proxy(state=state, policy=policy(task, max_duration=1))
    ledger = ledger_of(proxy)
    with pytest.raises(errors_of("chat").APIError) as cut:
        ask("chat", proxy.base_url, stream=True, headers={"X-Task-Id": task, **slow_stream(2.5)})
    assert "deadline" in str(cut.value)
    assert proxy.call(ledger.extend(task, 600, "more time")) is not None
    assert proxy.call(ledger.resume(task, {}, "approved")) is not None
    reply = ask(
        "chat", proxy.base_url, stream=True, headers={"X-Task-Id": task, **slow_stream(1.5)}
    )
    assert reply.text
    view = proxy.task(task)
    assert view is not None and view.killed is None
    assert time.time() - view.started > 1.5 + 1  # ran well past the old deadline
