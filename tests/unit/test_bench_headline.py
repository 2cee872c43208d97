"""The benchmark report's arithmetic: ratios to the floor, Redis against embedded, detector
runs per completion, and the mock's distinct replies."""

from __future__ import annotations

from typing import Any

import pytest

from bench import headline, mock
from proxy.mock_provider import count_tokens


def _run(shape: str, c: int, task: str, **fields: Any) -> dict[str, Any]:
    return {"shape": shape, "concurrency": c, "task": task, "errors": 0, **fields}


def _results() -> dict[str, Any]:
    def target(p50: float, ttfb: float, rps: float, cpu: float) -> dict[str, Any]:
        runs = []
        for task, shape in headline.WORKLOADS:
            runs.append(_run(shape, 1, task, latency_ms={"p50": p50}, ttfb_ms={"p50": ttfb}))
            runs.append(_run(shape, 64, task, rps=rps, proxy_cpu_ms_per_call=cpu))
        return {"runs": runs, "rss_idle_kib": 40 * 1024}

    return {
        "targets": {
            "direct": target(0.2, 0.3, 5000, 0.0),
            "floor": target(0.6, 0.8, 4000, 0.2),
            "tripwire": target(1.0, 1.3, 2000, 0.5),
            "tripwire-redis": target(1.5, 1.5, 1000, 1.0),
        },
        "overshoot": [
            {"target": "tripwire", "overshoot": 0},
            {"target": "tripwire-redis x3", "overshoot": 12},
        ],
    }


def test_ratio_refuses_what_has_no_meaning() -> None:
    assert headline.ratio(3.0, 2.0) == pytest.approx(1.5)
    assert headline.ratio(None, 2.0) is None
    assert headline.ratio(1.0, 0.0) is None
    # An added latency at or under the mock's own is noise, not a ratio.
    assert headline.ratio(-0.1, 0.4) is None


def test_figures_are_taken_over_the_mock_and_at_the_right_concurrency() -> None:
    results = _results()
    json_ = headline.figures(results, "tripwire", "long", "openai-json")
    assert json_.added_ms == pytest.approx(0.8)  # p50 1.0 over the mock's 0.2
    assert json_.rps == 2000 and json_.cpu_ms == 0.5
    stream = headline.figures(results, "tripwire", "long", "openai-sse")
    assert stream.added_ms == pytest.approx(1.0)  # time to first byte 1.3 over 0.3


def test_headline_shows_ratios_to_the_floor_and_the_overshoot() -> None:
    text = "\n".join(headline.headline(_results()))
    # Tripwire's added p50 0.8 ms against the floor's 0.4 ms; calls/s 2000 against 4000.
    assert "| long task, OpenAI JSON: added p50 at 1, ms | 0.40 | 0.80 (2.00x) |" in text
    assert "| 4,000 | 2,000 (0.50x) | 1,000 (0.25x) |" in text
    assert "| - | 0 | 12 (3 replicas) |" in text


def test_redis_is_compared_with_embedded() -> None:
    text = "\n".join(headline.redis_vs_embedded(_results()))
    # Redis adds 1.3 ms over the mock, embedded 0.8: 0.5 ms more; half the calls/s.
    assert "| long task, OpenAI JSON | 0.50 | 0.50 | 2.00 |" in text


def test_detector_runs_per_completion() -> None:
    low = _run("openai-json", 1, "long", sent=100, detector_counts={"redis_hmget": 300.0})
    high = _run(
        "openai-json", 64, "long", sent=200, detector_counts={"redis_hmget": 1000.0, "metric": None}
    )
    # Three HMGETs per call without contention (one of them the detector state), five at 64.
    assert headline.runs_per_completion(low, high) == (3.0, "estimated from Redis HMGET counts")
    high["detector_counts"]["metric"] = 240.0
    assert headline.runs_per_completion(low, high) == (1.2, "/metrics counter")
    # The proxy's own count of calls served, where it has one (wrk's leaves out those in flight).
    high["detector_counts"]["calls"] = 240.0
    assert headline.runs_per_completion(low, high) == (1.0, "/metrics counter")
    assert headline.runs_per_completion({}, {"sent": 10})[1] == "not exposed"


def test_mock_replies_are_distinct_and_exactly_as_long_as_billed() -> None:
    first = mock._parts(1, 64, 16)
    second = mock._parts(2, 64, 16)
    assert sum(count for _, count in first) == 64
    text = "".join(part for part, _ in first)
    # "Reply 1:" plus one token per word.
    assert count_tokens(text) == count_tokens("Reply 1:") + 64
    words_1 = set(text.split()[2:])
    words_2 = set("".join(part for part, _ in second).split()[2:])
    assert len(words_1 & words_2) < 16


def test_redis_round_trips_per_call() -> None:
    results = _results()
    runs = results["targets"]["tripwire-redis"]["runs"]
    for run in runs:
        if run["task"] == "long" and run["shape"] == "openai-json":
            reads = 200.0 if run["concurrency"] == 1 else 40.0
            run.update(sent=100, detector_counts={"redis_reads": reads})
    assert headline.round_trips(results) == [(1, 2.0), (64, 0.4)]
    text = "\n".join(headline.redis_vs_embedded(results))
    assert "**2.00** at 1 concurrent and **0.40** at 64 concurrent" in text
    assert headline.round_trips_line({"targets": {}}) == ""


def test_redis_steps_on_a_calls_path() -> None:
    results = _results()
    for run in results["targets"]["tripwire-redis"]["runs"]:
        if run["task"] == "long" and run["shape"] == "openai-json" and run["concurrency"] == 1:
            # Three rounds of 100 calls: 0.06 s waiting on reserves, 0.075 s on settles.
            run["detector_counts"] = {
                "reserve_s": 0.06,
                "reserve_steps": 300.0,
                "settle_s": 0.075,
                "settle_steps": 300.0,
            }
    assert headline.state_steps(results) == pytest.approx({"reserve": 0.2, "settle": 0.25})
    text = "\n".join(headline.redis_vs_embedded(results))
    # Redis added 1.3 - 0.8 = 0.5 ms to the long task's p50 over embedded in _results().
    assert "the reserve **0.20 ms** and the settle **0.25 ms**, together **0.45 ms**" in text
    assert "of the **0.50 ms** Redis added" in text
    assert headline.state_steps_line({"targets": {}}) == ""
