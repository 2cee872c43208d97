"""Metric cardinality stays bounded, and task ids reach only exemplars and the top-10 gauge."""

from __future__ import annotations

from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from proxy.telemetry.metrics import Metrics


def scrape(metrics: Metrics) -> dict[str, list]:  # type: ignore[type-arg]
    families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    return {family.name: family.samples for family in families}


def test_agents_and_models_beyond_the_cap_fold_into_other() -> None:
    metrics = Metrics(max_agents=2, max_models=1)
    for agent in ("a", "b", "c", "d"):
        metrics.call("openai", f"model-{agent}", agent, "ok")
    samples = scrape(metrics)["tripwire_calls"]
    agents = {s.labels["agent"] for s in samples if s.name == "tripwire_calls_total"}
    models = {s.labels["model"] for s in samples if s.name == "tripwire_calls_total"}
    assert agents == {"a", "b", "other"}
    assert models == {"model-a", "other"}


def test_task_ids_travel_as_exemplars_not_labels() -> None:
    metrics = Metrics()
    metrics.usage("openai", "gpt-4o", "planner", "job-42", 100, 20, 0, 0.01)
    metrics.trip("max_hops", "kill", "job-42")
    text = generate_latest(metrics.registry).decode()
    assert 'task_id="job-42"' in text
    for family in text_string_to_metric_families(text):
        if family.name == "tripwire_top_task_spend_usd":
            continue
        for sample in family.samples:
            assert "task" not in sample.labels and "task_id" not in sample.labels


def test_top_spend_gauge_keeps_only_the_ten_largest() -> None:
    metrics = Metrics()
    for number in range(25):
        metrics.task_seen(f"t{number}", tokens=10, calls=1, hops=0, cost=float(number))
    top = scrape(metrics)["tripwire_top_task_spend_usd"]
    assert sorted(s.labels["task"] for s in top) == sorted(f"t{n}" for n in range(15, 25))


def test_task_histograms_observe_ended_tasks_once() -> None:
    metrics = Metrics(active_window_s=60)
    metrics.task_seen("done", tokens=500, calls=4, hops=2, cost=0.0)
    metrics.task_ended("done")
    metrics.task_ended("done")
    metrics.task_seen("idle", tokens=50, calls=1, hops=0, cost=0.0)
    metrics.expire_tasks(now=10**10)
    samples = {s.name: s.value for s in scrape(metrics)["tripwire_task_calls"]}
    assert samples["tripwire_task_calls_count"] == 2
    assert samples["tripwire_task_calls_sum"] == 5
    active = scrape(metrics)["tripwire_active_tasks"]
    assert active[0].value == 0


def test_an_idle_task_ends_when_traffic_moves_on_without_a_scrape() -> None:
    metrics = Metrics(active_window_s=0.0)
    metrics.task_seen("idle", tokens=50, calls=3, hops=0, cost=0.0)
    metrics.task_seen("next", tokens=10, calls=1, hops=0, cost=0.0)
    # Read the histogram alone: collecting the whole registry would expire tasks itself.
    [family] = metrics.task_calls.collect()
    samples = {s.name: s.value for s in family.samples}
    assert samples["tripwire_task_calls_count"] == 1
    assert samples["tripwire_task_calls_sum"] == 3
    assert list(metrics.tasks) == ["next"]
