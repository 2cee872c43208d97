"""Addons as the pipeline runs them: an observer hook that fails costs a log line and a count,
never the call nor the addons after it; a stream hook sees every event and can cut the stream."""

from __future__ import annotations

import time
from typing import Any

import httpx

from proxy.app import FORWARDER, HOOKS, METRICS, TELEMETRY
from proxy.detectors.base import Trip, TripReason
from proxy.pipeline.hooks import Hooks


class Faulty:
    name = "faulty"

    def settled(self, call: Any, settlement: Any) -> None:
        raise RuntimeError("a bug in an addon")

    def done(self, call: Any) -> None:
        raise RuntimeError("another bug in an addon")


def test_a_failing_observer_is_counted_and_the_call_goes_on(make_proxy: Any) -> None:
    proxy = make_proxy()
    app = proxy._app
    assert app is not None
    # First in the list, so the telemetry addon after it must still see the call.
    hooks = Hooks([Faulty(), *app[HOOKS].addons], app[TELEMETRY].addon_failed)

    async def install() -> None:
        app[FORWARDER].hooks = hooks

    proxy.call(install())
    response = httpx.post(
        proxy.openai_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Task-Id": "faulty-addon", "Authorization": "Bearer sk-test"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    registry = app[METRICS].registry
    for hook in ("settled", "done"):
        failures = registry.get_sample_value(
            "tripwire_addon_failures_total", {"addon": "faulty", "hook": hook}
        )
        assert failures == 1
    view = proxy.task("faulty-addon")
    assert view is not None and view.calls == 1
    calls = registry.get_sample_value(
        "tripwire_calls_total",
        {"upstream": "openai", "model": "gpt-4o-mini", "agent": "default", "outcome": "ok"},
    )
    assert calls == 1


class CutAtThirdEvent:
    """Watches a stream event by event and cuts it: the shape a check of a stream's counted
    output against its reservation takes."""

    name = "cut_at_third"

    def stream_started(self, call: Any, grant: Any, cut: Any) -> None:
        call.notes["cut"] = cut
        call.notes["events"] = 0

    def stream_event(self, call: Any, sse: Any, tally: Any) -> None:
        call.notes["events"] += 1
        if call.notes["events"] == 3:
            call.notes["cut"](Trip(TripReason.BUDGET_TOKENS, {"tokens": 3}))


def test_a_stream_event_hook_sees_the_stream_and_can_cut_it(make_proxy: Any) -> None:
    proxy = make_proxy()
    app = proxy._app
    assert app is not None
    hooks = Hooks([*app[HOOKS].addons, CutAtThirdEvent()], app[TELEMETRY].addon_failed)

    async def install() -> None:
        app[FORWARDER].hooks = hooks

    proxy.call(install())
    response = httpx.post(
        proxy.openai_url + "/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"X-Task-Id": "watched-stream", "x-mock-chunks": "20"},
        timeout=10,
    )
    assert response.status_code == 200
    assert "tripwire_budget_tokens" in response.text
    assert "[DONE]" not in response.text
    # The count follows the stream's last byte: the proxy may still be finishing the call.
    deadline = time.monotonic() + 5
    cut = None
    while cut != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
        cut = app[METRICS].registry.get_sample_value(
            "tripwire_streams_cut_total", {"reason": "budget_tokens"}
        )
    assert cut == 1
