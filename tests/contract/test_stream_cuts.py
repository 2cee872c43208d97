"""Streams in flight cut by a kill: the deadline passing, or another call of the same task
tripping a limit. The agent's SDK raises; the provider stops generating."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.contract.sdk import KINDS, MODES, ask, errors_of, eventually
from tests.harness import MockProviderThread, ProxyThread

REPLY_TOKENS = 80
SLOW_STREAM = {
    "x-mock-reply-tokens": str(REPLY_TOKENS),
    "x-mock-chunks": "40",
    "x-mock-chunk-delay": "0.05",
}


def _provider_stopped(mock: MockProviderThread, proxy: ProxyThread, task: str) -> None:
    """The provider generated less than the whole reply, and all it billed is on the task."""
    billed = mock.provider.total_usage
    assert billed.completion_tokens < REPLY_TOKENS
    view = eventually(
        lambda: (
            (v := proxy.task(task))
            and v.tokens_reserved == 0
            and v.tokens_used >= mock.provider.total_usage.total_tokens
            and v
        )
    )
    assert view, (proxy.task(task), mock.provider.total_usage)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_deadline_cuts_a_stream_in_flight(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    proxy = make_proxy(
        policy={"rules": [{"match": {"task": task}, "limits": {"max_duration": 0.5}}]}
    )
    items: list[Any] = []
    started = time.monotonic()
    with pytest.raises(errors_of(kind).APIError) as cut:
        ask(
            kind,
            proxy.base_url,
            mode=mode,
            stream=True,
            headers={"X-Task-Id": task, **SLOW_STREAM},
            on_item=items.append,
        )
    elapsed = time.monotonic() - started
    assert "deadline" in str(cut.value) and task in str(cut.value)
    assert len(items) >= 3
    assert 0.45 <= elapsed <= 0.5 + 0.05 + 0.2
    _provider_stopped(mock, proxy, task)
    with pytest.raises(errors_of(kind).PermissionDeniedError):
        ask(kind, proxy.base_url, mode=mode, headers={"X-Task-Id": task})


def _stream_in_background(
    pool: ThreadPoolExecutor, kind: str, mode: str, proxy: ProxyThread, task: str
) -> tuple[Any, threading.Event]:
    flowing = threading.Event()
    items: list[Any] = []

    def on_item(item: Any) -> None:
        items.append(item)
        if len(items) >= 3:
            flowing.set()

    future = pool.submit(
        ask,
        kind,
        proxy.base_url,
        mode=mode,
        stream=True,
        prompt="write the long report",
        headers={"X-Task-Id": task, "X-Agent-Id": "writer", **SLOW_STREAM},
        on_item=on_item,
    )
    return future, flowing


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_loop_detected_on_another_call_cuts_the_tasks_stream(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    loop = {"X-Task-Id": task, "X-Agent-Id": "checker", "x-mock-reply": "still failing"}
    for attempt in range(2):
        ask(kind, proxy.base_url, mode=mode, prompt=f"check {attempt}", headers=loop)
    before = mock.provider.total_usage

    with ThreadPoolExecutor(1) as pool:
        stream, flowing = _stream_in_background(pool, kind, mode, proxy, task)
        assert flowing.wait(5), stream.exception(0) if stream.done() else "no stream items"
        third = ask(kind, proxy.base_url, mode=mode, prompt="check 2", headers=loop)
        assert third.text == "still failing"  # the call that trips still gets its answer
        tripped = time.monotonic()
        with pytest.raises(errors_of(kind).APIError) as cut:
            stream.result(5)
        assert time.monotonic() - tripped < 0.3

    assert "repeat_output" in str(cut.value) and task in str(cut.value)
    stream_billed = mock.provider.total_usage.completion_tokens - before.completion_tokens
    assert stream_billed < REPLY_TOKENS
    with pytest.raises(errors_of(kind).PermissionDeniedError):
        ask(kind, proxy.base_url, mode=mode, prompt="check 3", headers=loop)


@pytest.mark.parametrize("kind", KINDS)
def test_a_limit_reached_by_another_call_cuts_the_tasks_stream(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str
) -> None:
    proxy = make_proxy(policy={"rules": [{"match": {"task": task}, "limits": {"max_calls": 2}}]})
    with ThreadPoolExecutor(1) as pool:
        stream, flowing = _stream_in_background(pool, kind, "sync", proxy, task)
        assert flowing.wait(5), stream.exception(0) if stream.done() else "no stream items"
        ask(kind, proxy.base_url, headers={"X-Task-Id": task, "X-Agent-Id": "writer"})
        with pytest.raises(errors_of(kind).PermissionDeniedError):
            ask(kind, proxy.base_url, headers={"X-Task-Id": task, "X-Agent-Id": "writer"})
        tripped = time.monotonic()
        with pytest.raises(errors_of(kind).APIError) as cut:
            stream.result(5)
        assert time.monotonic() - tripped < 0.3

    assert "max_calls" in str(cut.value)
    assert mock.provider.total_hits == 2
    _provider_stopped(mock, proxy, task)
