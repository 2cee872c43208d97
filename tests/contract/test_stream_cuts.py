"""Streams in flight cut by a kill: the deadline passing, or another call of the same task
tripping a limit. The agent's SDK raises; the provider stops generating."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.contract.sdk import KINDS, MODES, ask, assert_generation_stopped, errors_of
from tests.harness import MockProviderThread, ProxyThread

REPLY_TOKENS = 120
DEADLINE = 0.3
CHUNK_DELAY = 0.02
CHUNKS = 60
SLOW_STREAM = {
    "x-mock-reply-tokens": str(REPLY_TOKENS),
    "x-mock-chunks": str(CHUNKS),
    "x-mock-chunk-delay": str(CHUNK_DELAY),
}


def _provider_stopped(mock: MockProviderThread, proxy: ProxyThread, task: str) -> None:
    assert_generation_stopped(
        mock.provider, lambda: proxy.task(task), REPLY_TOKENS, CHUNK_DELAY, REPLY_TOKENS // CHUNKS
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_deadline_cuts_a_stream_in_flight(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    proxy = make_proxy(
        policy={"rules": [{"match": {"task": task}, "limits": {"max_duration": DEADLINE}}]}
    )
    items: list[Any] = []
    with pytest.raises(errors_of(kind).APIError) as cut:
        ask(
            kind,
            proxy.base_url,
            mode=mode,
            stream=True,
            headers={"X-Task-Id": task, **SLOW_STREAM},
            on_item=items.append,
        )
    ended = time.time()
    assert "deadline" in str(cut.value) and task in str(cut.value)
    assert len(items) >= 3
    view = proxy.task(task)
    assert view is not None
    # Ended within about one chunk of the deadline, counted from the task's first call.
    assert 0 <= ended - (view.started + DEADLINE) <= CHUNK_DELAY + 0.15
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
        assert time.monotonic() - tripped < 0.5

    assert "repeat_output" in str(cut.value) and task in str(cut.value)
    _provider_stopped(mock, proxy, task)
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
        assert time.monotonic() - tripped < 0.5

    assert "max_calls" in str(cut.value)
    assert mock.provider.total_hits == 2
    _provider_stopped(mock, proxy, task)
