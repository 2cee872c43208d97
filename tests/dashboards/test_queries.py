"""Every query of every dashboard parses with Prometheus' own parser, and names only metrics
and labels a real scrape of the proxy carries."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboards import traffic
from tests.dashboards.promql import (
    DASHBOARD_FILES,
    TARGET_LABELS,
    Query,
    all_queries,
    legend_labels,
    load,
    names,
    panels,
)
from tests.harness import MockProviderThread, running

QUERIES = all_queries()
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# Families the test traffic (embedded state) cannot give samples to: only a Redis outage counts
# these errors, and only Redis steps are timed.
NO_SAMPLES_EXPECTED = {
    "tripwire_state_backend_errors_total",
    "tripwire_state_backend_seconds_bucket",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: it comes with Debian's prometheus package "
            "(apt-get install -y prometheus); the dashboard tests parse every query with it"
        )
    return found


def check_rules(tmp_path: Path, exprs: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on one recording rule per expression, one group each, so an
    error names the dashboard and panel (the group's name)."""
    groups = [
        {"name": where, "rules": [{"record": f"dashboard:query_{number}:check", "expr": expr}]}
        for number, (where, expr) in enumerate(exprs.items())
    ]
    path = tmp_path / "dashboard-queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    return subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


def test_every_query_parses_with_prometheus(tmp_path: Path) -> None:
    exprs = {f"{q.dashboard}: {q.where}": q.promql() for q in QUERIES}
    assert len(exprs) == len(QUERIES) > 60
    checked = check_rules(tmp_path, exprs)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout, checked.stderr


def test_promtool_rejects_a_query_that_does_not_parse(tmp_path: Path) -> None:
    checked = check_rules(tmp_path, {"broken": "sum(rate(tripwire_calls_total[1m])"})
    assert checked.returncode != 0
    assert "broken" in checked.stdout + checked.stderr


def test_every_grafana_variable_is_known() -> None:
    for query in QUERIES:
        assert "$" not in query.promql(), query.where


@dataclass
class Scrape:
    # exported series name (calls_total, latency_seconds_bucket, active_tasks) -> label names
    labels: dict[str, set[str]]
    with_samples: set[str]


@pytest.fixture(scope="module")
def scrape(mock_thread: MockProviderThread) -> Iterator[Scrape]:
    mock_thread.provider.reset()
    with running(mock_thread, policy=traffic.POLICY) as proxy:
        traffic.fleet(proxy.base_url)
        traffic.runaway(proxy.base_url)
        text = httpx.get(proxy.base_url + "/metrics", timeout=10).text
    labels: dict[str, set[str]] = {}
    with_samples: set[str] = set()
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("tripwire_"):
            continue
        for suffix in SUFFIXES[family.type]:
            labels.setdefault(family.name + suffix, set())
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            with_samples.add(sample.name)
    yield Scrape(labels, with_samples)


def test_the_scrape_has_what_the_traffic_caused(scrape: Scrape) -> None:
    assert {
        "tripwire_calls_total",
        "tripwire_trips_total",
        "tripwire_refused_calls_total",
        "tripwire_streams_cut_total",
        "tripwire_top_task_spend_usd",
        "tripwire_task_hops_bucket",
        "tripwire_envelopes_total",
        "tripwire_envelopes_blocked_total",
    } <= scrape.with_samples


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.dashboard}:{q.where}")
def test_every_metric_is_one_tripwire_exports(query: Query, scrape: Scrape) -> None:
    used = names(query.promql())
    assert used.metrics, "no metric found in the query"
    assert used.metrics <= set(scrape.labels), sorted(used.metrics - set(scrape.labels))


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.dashboard}:{q.where}")
def test_every_label_is_one_the_metric_carries(query: Query, scrape: Scrape) -> None:
    used = names(query.promql())
    unverified = {m for m in used.metrics if m not in scrape.with_samples}
    assert unverified <= NO_SAMPLES_EXPECTED
    verified = used.metrics - unverified
    for metric, labels in used.matchers.items():
        if metric in verified:
            assert labels <= scrape.labels[metric], (metric, sorted(labels))
    if verified == used.metrics:
        carried = set().union(*(scrape.labels[m] for m in used.metrics)) | TARGET_LABELS
        wanted = used.grouping | legend_labels(query.legend) | set(query.labels_out)
        assert wanted <= carried, sorted(wanted - carried)


def test_panels_filter_on_every_variable_their_metric_carries(scrape: Scrape) -> None:
    """A metric with an upstream, model or agent label is filtered by that variable wherever a
    panel reads it, so the dashboard's selectors mean the same in every panel."""
    for path in DASHBOARD_FILES:
        for panel in panels(load(path)):
            for target in panel.get("targets", []):
                for metric, matchers in re.findall(r"(tripwire_\w+)\{([^}]*)\}", target["expr"]):
                    filters = {"upstream", "model", "agent"} & scrape.labels[metric]
                    for label in filters:
                        assert f'{label}=~"${label}"' in matchers, (panel["title"], metric)
                for metric in re.findall(r"(tripwire_\w+)(?![\w{])", target["expr"]):
                    carried = {"upstream", "model", "agent"} & scrape.labels[metric]
                    assert not carried, (panel["title"], metric, "unfiltered")


def test_the_name_check_sees_a_misspelt_metric(scrape: Scrape) -> None:
    used = names('sum by (reason) (rate(tripwire_trip_total{action="kill"}[1m])) / tripwre_x')
    assert used.metrics == {"tripwire_trip_total", "tripwre_x"}
    assert not used.metrics <= set(scrape.labels)
