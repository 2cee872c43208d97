"""A kill reaches a stream that has not started yet: the stream is on the kill board before its
request leaves, and registering checks for a kill since the call was reserved; the stream is
cut as the provider answers, before any of its text reaches the client."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from proxy.detectors.base import Trip, TripReason
from proxy.session.base import KillBoard
from tests.contract.sdk import ask, errors_of
from tests.harness import MockProviderThread
from tests.kills.conftest import ledger_of


@pytest.mark.parametrize("kind", ["chat", "messages"])
def test_a_kill_before_the_providers_headers_ends_the_stream(
    make_proxy: Any, mock: MockProviderThread, task: str, state: dict[str, Any], kind: str
) -> None:
    proxy = make_proxy(state=state)
    ledger = ledger_of(proxy)
    headers = {
        "X-Task-Id": task,
        "x-mock-delay": "1.5",
        "x-mock-reply-tokens": "40",
        "x-mock-chunks": "20",
        "x-mock-chunk-delay": "0.05",
    }
    items: list[Any] = []
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(
            ask, kind, proxy.base_url, stream=True, headers=headers, on_item=items.append
        )
        reserved = time.monotonic() + 10
        while time.monotonic() < reserved:  # the call is reserved and waits for the provider
            view = proxy.task(task)
            if view is not None and view.calls == 1:
                break
            time.sleep(0.02)
        time.sleep(0.3)
        trip = Trip(TripReason.OPERATOR, {"by": "ops", "note": "stop"})
        assert proxy.call(ledger.kill(task, trip))
        with pytest.raises(errors_of(kind).APIError) as cut:
            stream.result(10)
    # Cut as the provider answered: none of the answer's text reached the client.
    assert "operator" in str(cut.value)
    assert not [item for item in items if _text_of(item)]
    settled = time.monotonic() + 5
    while time.monotonic() < settled:  # the settle follows the stream's last event
        view = proxy.task(task)
        if view is not None and view.tokens_reserved == 0:
            break
        time.sleep(0.02)
    assert view is not None and view.tokens_reserved == 0 and view.tokens_used > 0
    assert mock.provider.total_usage.completion_tokens < 40  # the provider was stopped


def test_registering_after_a_kill_since_the_reservation_cuts_at_once() -> None:
    board = KillBoard()
    reserved = time.time()
    trip = Trip(TripReason.OPERATOR, {"by": "ops", "note": "stop"})
    board.cut("t", trip)
    cuts: list[Trip] = []
    board.watch("t", cuts.append, since=reserved)
    assert cuts == [trip]
    board.watch("t", cuts.append, since=time.time() + 1)  # a call reserved after the kill
    assert cuts == [trip]


def _text_of(item: Any) -> str:
    """The text an SDK stream item carries, in either format."""
    choices = getattr(item, "choices", None)
    if choices:
        return "".join(choice.delta.content or "" for choice in choices)
    delta = getattr(item, "delta", None)
    return str(getattr(delta, "text", "") or "")
