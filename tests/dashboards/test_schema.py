"""Each dashboard is a Grafana dashboard that imports as is: the schema of Grafana's dashboard
model, a layout whose panels do not overlap, and the conventions the issue asks for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.dashboards.promql import DASHBOARD_DIR, DASHBOARD_FILES, load, panels, queries

SCHEMA = json.loads(
    (Path(__file__).parent / "grafana-dashboard.schema.json").read_text(encoding="utf-8")
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILTERS = ("upstream", "model", "agent")
# Range and offset windows: Grafana's own, or a fixed window where the panel means one
# (spend of the last 24 hours, daily spend projected from the last hour).
WINDOWS = {"$__rate_interval", "$__range", "1h", "24h"}
by_file = pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)


def test_the_four_dashboards_exist() -> None:
    assert [p.stem for p in DASHBOARD_FILES] == [
        "tripwire-cost",
        "tripwire-fleet",
        "tripwire-health",
        "tripwire-runaways",
    ]


def test_the_schema_itself_is_valid() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_the_schema_rejects_what_grafana_would() -> None:
    board = load(DASHBOARD_DIR / "tripwire-fleet.json")
    validator = Draft202012Validator(SCHEMA)
    assert validator.is_valid(board)
    broken: list[dict[str, Any]] = [
        {k: v for k, v in board.items() if k != "uid"},
        {**board, "panels": [{**board["panels"][0], "targets": []}]},
        {**board, "panels": [{k: v for k, v in board["panels"][0].items() if k != "gridPos"}]},
        {**board, "templating": {"list": [{"name": "x", "type": "query"}]}},
    ]
    for case in broken:
        assert not validator.is_valid(case)


@by_file
def test_valid_against_the_grafana_dashboard_schema(path: Path) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft202012Validator(SCHEMA).iter_errors(load(path))
    ]
    assert errors == []


@by_file
def test_identity_refresh_and_time(path: Path) -> None:
    board = load(path)
    assert board["uid"] == path.stem
    assert board["id"] is None
    assert board["schemaVersion"] >= 39
    assert board["refresh"] == "10s"
    assert board["time"] == {"from": "now-1h", "to": "now"}
    assert "tripwire" in board["tags"]


@by_file
def test_panel_ids_and_titles_are_unique_and_the_layout_has_no_overlap(path: Path) -> None:
    board = load(path)
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in panels(board)]
    assert len(titles) == len(set(titles))
    taken: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


@by_file
def test_variables(path: Path) -> None:
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    for name in FILTERS:
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
        assert variable["datasource"] == DATASOURCE
        assert variable["query"]["query"].startswith("label_values(tripwire_calls_total")
        assert variable["query"]["query"].endswith(f", {name})")


@by_file
def test_every_panel_and_query_uses_the_datasource_variable(path: Path) -> None:
    for panel in panels(load(path)):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


@by_file
def test_rates_use_grafana_windows(path: Path) -> None:
    for query in queries(load(path)):
        windows = re.findall(r"\[([^\]]+)\]", query.expr)
        windows += re.findall(r"offset\s+(\S+?)\)", query.expr)
        assert set(windows) <= WINDOWS, (query.where, windows)
        for function in ("rate", "increase"):
            assert f"{function}(" not in query.expr or "[" in query.expr, query.where


@by_file
def test_units(path: Path) -> None:
    for panel in panels(load(path)):
        if panel["type"] == "row":
            continue
        unit = panel["fieldConfig"]["defaults"].get("unit")
        exprs = " ".join(target["expr"] for target in panel["targets"])
        units = {unit} | {
            prop["value"]
            for override in panel["fieldConfig"]["overrides"]
            for prop in override["properties"]
            if prop["id"] == "unit"
        }
        if "cost_usd" in exprs or "spend_usd" in exprs:
            assert "currency:USD" in units, panel["title"]
        elif "_seconds_bucket" in exprs and "histogram_quantile" in exprs:
            assert unit == "s", panel["title"]
        else:
            assert unit in {"short", "reqps", "percentunit"}, panel["title"]


def _panel(uid: str, title: str) -> dict[str, Any]:
    board = load(DASHBOARD_DIR / f"{uid}.json")
    found = [panel for panel in panels(board) if panel["title"] == title]
    assert len(found) == 1, f"{uid} has no single panel {title!r}"
    return found[0]


def test_trips_carry_exemplars_to_jump_to_the_task() -> None:
    for uid, title in (
        ("tripwire-runaways", "Trips by reason"),
        ("tripwire-runaways", "Trips by agent"),
        ("tripwire-cost", "Budget trips by reason"),
    ):
        panel = _panel(uid, title)
        assert panel["type"] == "timeseries"
        assert all(t["exemplar"] and "tripwire_trips_total" in t["expr"] for t in panel["targets"])


def test_trips_and_spend_break_down_by_agent() -> None:
    trips = _panel("tripwire-runaways", "Trips by agent")
    (target,) = trips["targets"]
    assert target["expr"].startswith("sum by (agent, action) (")
    assert target["legendFormat"] == "{{agent}} ({{action}})"
    spend = _panel("tripwire-cost", "Spend by agent")
    assert spend["type"] == "bargauge"
    (target,) = spend["targets"]
    assert target["expr"].startswith("sort_desc(topk(10, sum by (agent) (")
    assert target["instant"] and target["legendFormat"] == "{{agent}}"


def test_top_tasks_come_from_the_bounded_gauge() -> None:
    panel = _panel("tripwire-runaways", "Top tasks by spend")
    assert panel["type"] == "table"
    (target,) = panel["targets"]
    assert target["expr"].startswith("topk(10, max by (task) (tripwire_top_task_spend_usd")
    assert target["instant"] and target["format"] == "table"


def test_task_ids_appear_only_through_the_top_spend_gauge_and_exemplars() -> None:
    for path in DASHBOARD_FILES:
        for query in queries(load(path)):
            if "task" in re.findall(r"\b(task)\b", query.expr):
                assert "tripwire_top_task_spend_usd" in query.expr, query.where


def test_provisioning_examples() -> None:
    provisioning = DASHBOARD_DIR / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards.yaml").read_text(encoding="utf-8"))
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")

    sources = yaml.safe_load((provisioning / "datasource.yaml").read_text(encoding="utf-8"))
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    for path in DASHBOARD_FILES:
        variable = load(path)["templating"]["list"][0]
        assert variable["current"]["value"] == source["uid"]
        assert variable["current"]["text"] == source["name"]
    (destination,) = source["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == "task_id"
    # `$$` so Grafana does not expand ${__value.raw} as an environment variable.
    assert destination["url"].startswith("/d/tripwire-runaways/")
    assert destination["url"].endswith("var-task=$${__value.raw}")
    runaways = load(DASHBOARD_DIR / "tripwire-runaways.json")
    assert "task" in {v["name"] for v in runaways["templating"]["list"]}
