"""The per-call series (``proxy/telemetry/series.py``) expose exactly what prometheus-client's
own Counter and Histogram would for the same increments: a dashboard, an alert rule or a
scraper cannot tell them apart."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from proxy.telemetry.series import SeriesCollector

BUCKETS = (0.0001, 0.001, 0.25, 1, 5)
# Bounds exactly, between them, past the last, and zero.
OBSERVED = [0.0, 0.0001, 0.00011, 0.25, 0.3, 1.0, 4.99, 5.0, 7.5, 300.0]
# Timestamps (created series, exemplars) differ between the two by construction.
_CREATED = re.compile(r"^(\w+_created(\{[^}]*\})?) \S+$")
_EXEMPLAR_TIME = re.compile(r"( # \{[^}]*\} \S+) \S+$")


def _exposed(registry: CollectorRegistry, openmetrics: bool) -> list[str]:
    text = (generate_openmetrics if openmetrics else generate_latest)(registry).decode()
    lines = (_CREATED.sub(r"\1 T", line) for line in text.splitlines())
    return sorted(_EXEMPLAR_TIME.sub(r"\1 T", line) for line in lines)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_counters_and_histograms_expose_what_the_library_does(openmetrics: bool) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    calls = Counter("t_calls", "Calls.", ["upstream", "outcome"], registry=theirs)
    spend = Counter("t_cost_usd", "Dollars.", registry=theirs)
    latency = Histogram(
        "t_latency_seconds", "Latency.", ["upstream"], buckets=BUCKETS, registry=theirs
    )
    overhead = Histogram("t_overhead_seconds", "Overhead.", buckets=BUCKETS, registry=theirs)
    Counter("t_unused", "Never moved.", ["reason"], registry=theirs)
    series = SeriesCollector()
    ours.register(series)
    our_calls = series.counter("t_calls", "Calls.", ["upstream", "outcome"])
    our_spend = series.counter("t_cost_usd", "Dollars.", [])
    our_latency = series.histogram("t_latency_seconds", "Latency.", ["upstream"], buckets=BUCKETS)
    our_overhead = series.histogram("t_overhead_seconds", "Overhead.", buckets=BUCKETS)
    series.counter("t_unused", "Never moved.", ["reason"])

    for upstream, outcome in [("openai", "ok"), ("openai", "ok"), ("anthropic", "timeout")]:
        calls.labels(upstream, outcome).inc()
        our_calls.child((upstream, outcome)).inc(1)
    spend.inc(0.25, {"task_id": "task-7"})
    our_spend.child().inc(0.25, {"task_id": "task-7"})
    spend.inc(0.5)
    our_spend.child().inc(0.5)
    for value in OBSERVED:
        latency.labels("openai").observe(value)
        our_latency.child(("openai",)).observe(value)
        overhead.observe(value / 2)
        our_overhead.child().observe(value / 2)

    assert _exposed(ours, openmetrics) == _exposed(theirs, openmetrics)


def test_a_series_with_the_wrong_number_of_labels_is_refused() -> None:
    family = SeriesCollector().counter("t_calls", "Calls.", ["upstream", "outcome"])
    with pytest.raises(ValueError):
        family.child(("openai",))
