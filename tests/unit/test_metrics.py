"""Metric cardinality stays bounded, and task ids reach only exemplars and the top-10 gauge."""

from __future__ import annotations

from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from proxy.detectors.base import TripReason
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


def test_a_call_with_new_names_every_time_grows_no_table_past_the_caps() -> None:
    """A client that names a new agent and model on every call: the series, and what the
    proxy keeps to find them, stay bounded by the label caps."""
    import tracemalloc

    metrics = Metrics(max_agents=3, max_models=2)

    def calls(start: int) -> None:
        for n in range(start, start + 5_000):
            name = f"agent-{n}-" + "x" * 40
            metrics.call("openai", f"model-{n}", name, "ok")
            metrics.usage("openai", f"model-{n}", name, f"task-{n}", 10, 5, 0, 0.001)
            metrics.timings("openai", f"model-{n}", 0.5, 0.1, 0.001)

    calls(0)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    calls(5_000)
    grown = sum(
        stat.size_diff
        for stat in tracemalloc.take_snapshot().compare_to(before, "filename")
        if stat.traceback[0].filename.endswith("metrics.py")
        or stat.traceback[0].filename.endswith("series.py")
    )
    tracemalloc.stop()
    assert grown < 10_000, f"{grown} bytes kept for 5,000 calls of names never seen before"
    samples = scrape(metrics)["tripwire_calls"]
    assert len([s for s in samples if s.name == "tripwire_calls_total"]) <= 3 * 4


def test_task_ids_travel_as_exemplars_not_labels() -> None:
    metrics = Metrics()
    metrics.usage("openai", "gpt-4o", "planner", "job-42", 100, 20, 0, 0.01)
    metrics.trip("max_hops", "kill", "planner", "job-42")
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


def test_trips_and_dollars_name_the_agent() -> None:
    metrics = Metrics()
    metrics.usage("openai", "gpt-4o", "planner", "job-42", 100, 20, 0, 0.01)
    metrics.usage("openai", "gpt-4o", "critic", "job-42", 100, 20, 0, 0.03)
    metrics.trip("repeat_output", "kill", "critic", "job-42")
    samples = scrape(metrics)
    cost = {
        (s.labels["upstream"], s.labels["model"], s.labels["agent"]): s.value
        for s in samples["tripwire_cost_usd"]
        if s.name == "tripwire_cost_usd_total"
    }
    assert cost == {("openai", "gpt-4o", "planner"): 0.01, ("openai", "gpt-4o", "critic"): 0.03}
    tripped = {
        (s.labels["reason"], s.labels["action"], s.labels["agent"])
        for s in samples["tripwire_trips"]
        if s.name == "tripwire_trips_total" and s.value
    }
    assert tripped == {("repeat_output", "kill", "critic")}
    assert all(
        set(s.labels) == {"reason", "action", "agent"}
        for s in samples["tripwire_trips"]
        if s.name == "tripwire_trips_total"
    )


def test_an_agents_trip_series_exist_at_zero_from_its_first_call() -> None:
    """A counter born at 1 is no increase() to Prometheus: the agent's first trip would be
    missed by the rate alerts unless its series were scraped at 0 before."""
    metrics = Metrics(max_agents=1)
    assert not [s for s in scrape(metrics)["tripwire_trips"] if s.name == "tripwire_trips_total"]
    metrics.call("openai", "gpt-4o", "planner", "ok")
    metrics.call("openai", "gpt-4o", "critic", "ok")  # over the cap: folds into other
    series = {
        (s.labels["reason"], s.labels["action"], s.labels["agent"]): s.value
        for s in scrape(metrics)["tripwire_trips"]
        if s.name == "tripwire_trips_total"
    }
    assert set(series) == {
        (str(reason), action, agent)
        for reason in TripReason
        for action in ("kill", "observe")
        for agent in ("planner", "other")
    }
    assert set(series.values()) == {0}


def test_trips_of_agents_beyond_the_cap_fold_into_other() -> None:
    metrics = Metrics(max_agents=1)
    metrics.trip("max_hops", "observe", "planner", "t1")
    metrics.trip("max_hops", "observe", "critic", "t1")
    metrics.trip("max_hops", "observe", "writer", "t2")
    counted = {
        s.labels["agent"]: s.value
        for s in scrape(metrics)["tripwire_trips"]
        if s.name == "tripwire_trips_total"
        and s.labels["reason"] == "max_hops"
        and s.labels["action"] == "observe"
    }
    assert counted == {"planner": 1, "other": 2}
