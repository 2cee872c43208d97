"""The dashboards' queries as Prometheus sees them, and the metric and label names they use.

Prometheus' parser (promtool) judges whether a query parses; the name extraction here only has
to find the names in queries that parse, so a tokenizer is enough: strings, label matchers,
range selectors and grouping clauses are taken out, and every remaining identifier that is not
a function, a keyword or a duration is a metric name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))

# What Grafana puts in place of its own variables; a query must parse with any of them.
BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}
# The dashboards' variables, at their "All" (or empty) value.
VARIABLES = {"upstream": ".*", "model": ".*", "agent": ".*", "task": ""}
# Labels Prometheus adds to every scraped series; the proxy cannot export them.
TARGET_LABELS = frozenset({"instance", "job"})

_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$")


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # panel title and refId, or the variable's name
    expr: str  # as written in the dashboard, Grafana variables included
    legend: str = ""
    labels_out: tuple[str, ...] = ()  # labels the query's result must carry

    def promql(self, **builtins: str) -> str:
        return substitute(self.expr, **builtins)


@dataclass
class Names:
    metrics: set[str] = field(default_factory=set)
    # metric name -> label names its own matchers use
    matchers: dict[str, set[str]] = field(default_factory=dict)
    # labels named outside a selector: grouping clauses
    grouping: set[str] = field(default_factory=set)


def load(path: Path) -> dict[str, Any]:
    board = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(board, dict)
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def queries(board: dict[str, Any]) -> Iterator[Query]:
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield Query(
                board["uid"],
                f"panel {panel['title']!r} {target['refId']}",
                target["expr"],
                legend=target.get("legendFormat", ""),
            )
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        text = variable["query"]
        text = text["query"] if isinstance(text, dict) else text
        found = _LABEL_VALUES.match(text)
        assert found, f"{board['uid']}: variable {variable['name']} is not label_values(...)"
        yield Query(
            board["uid"],
            f"variable {variable['name']}",
            found.group(1),
            labels_out=(found.group(2),),
        )


def all_queries() -> list[Query]:
    return [query for path in DASHBOARD_FILES for query in queries(load(path))]


def substitute(expr: str, **builtins: str) -> str:
    values = {**BUILTINS, **builtins, **VARIABLES}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def names(promql: str) -> Names:
    """Metric names, and the label names used with each, of a query that parses."""
    found = Names()
    text = _STRING.sub('""', promql)

    def selector(match: re.Match[str]) -> str:
        metric = match.group(1)
        labels = set(_MATCHER.findall(match.group(2)))
        if metric and metric not in _KEYWORDS:
            found.matchers.setdefault(metric, set()).update(labels)
            return metric
        found.grouping.update(labels)  # {__name__=...} style selectors: no metric to pin
        return ""

    text = _SELECTOR.sub(selector, text)
    text = _RANGE.sub("", text)

    def grouping(match: re.Match[str]) -> str:
        found.grouping.update(label.strip() for label in match.group(2).split(",") if label)
        return ""

    text = _GROUPING.sub(grouping, text)
    for identifier in _IDENTIFIER.findall(text):
        if identifier.lower() not in _KEYWORDS:
            found.metrics.add(identifier)
    for metric in found.matchers:
        found.metrics.add(metric)
    return found


def legend_labels(legend: str) -> set[str]:
    return set(_LEGEND.findall(legend))
