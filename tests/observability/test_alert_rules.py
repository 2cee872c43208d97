"""rules/alerts.yaml: valid for Prometheus, unit-tested with promtool, and written against
metrics the proxy really exports."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ProxyThread
from tests.observability.stack import ALERT_RULES, ROOT, RULE_TESTS, binary

# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_SERIES = {"up"}
ANNOTATIONS = ("summary", "description", "runbook")
SEVERITIES = {"warning", "critical"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_QUERY = re.compile(r'query\s+"((?:[^"\\]|\\.)*)"')
_MENTIONED = re.compile(r"\btripwire[_:][a-z0-9_:]*[a-z0-9]")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: every name that is not a function, a
    keyword, a label or part of a duration."""
    for pattern in (_STRING, _MATCHERS, _RANGE, _LABEL_LIST):
        expr = pattern.sub(" ", expr)
    return {
        name for name, call in _NAME.findall(expr) if not call and name.lower() not in _KEYWORDS
    }


def test_metric_names_reads_selectors_only() -> None:
    expr = (
        'sum by (job, le) (rate(a_bucket{le="0.1", x=~"y|z"}[5m] offset 1h)) '
        '> on (job) group_left () b:rec and absent(up{job="tripwire"}) * 86400'
    )
    assert metric_names(expr) == {"a_bucket", "b:rec", "up"}


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=50,
        check=False,
    )


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    files = sorted(RULE_TESTS.glob("*.yaml"))
    assert files, f"no rule unit tests in {RULE_TESTS}"
    result = run_promtool("test", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS.glob("*.yaml"):
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def test_alerts_carry_severity_and_runbook_annotations() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        for key in ANNOTATIONS:
            assert rule["annotations"].get(key, "").strip(), f"{rule['alert']} has no {key}"


def test_recording_rules_are_named_tripwire_colon() -> None:
    for rule in load_rules():
        if "record" in rule:
            assert rule["record"].startswith("tripwire:"), rule["record"]


# -- against a real scrape ------------------------------------------------------------------


@pytest.fixture
def scrape(make_proxy: Any) -> Iterator[str]:
    """The proxy's /metrics in the text format, after calls of agent `planner` that end in a
    trip and a refusal, so the call, token, cost, trip and refusal counters have samples."""
    proxy: ProxyThread = make_proxy()
    client = openai.OpenAI(
        base_url=proxy.openai_url,
        api_key="sk-test",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=False),
    )
    with client:
        for _ in range(3):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Is the plan done?"}],
                extra_headers={"X-Task-Id": "metrics-scrape", "X-Agent-Id": "planner"},
            )
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Is the plan done?"}],
                extra_headers={"X-Task-Id": "metrics-scrape", "X-Agent-Id": "planner"},
            )
    with urllib.request.urlopen(proxy.base_url + "/metrics", timeout=5) as response:
        yield response.read().decode("utf-8")


def exported_names(text: str) -> set[str]:
    """Every series name the scrape can produce: the samples it has, and for families without
    samples yet, the names their type gives them."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_rules_use_only_exported_metrics(scrape: str) -> None:
    exported = exported_names(scrape)
    assert {"tripwire_trips_total", "tripwire_overhead_seconds_bucket"} <= exported
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    used: dict[str, set[str]] = {}
    for rule in rules:
        name = rule.get("alert") or rule["record"]
        exprs = [rule["expr"]]
        for text in rule.get("annotations", {}).values():
            exprs += _QUERY.findall(text)
        for expr in exprs:
            for metric in metric_names(expr):
                used.setdefault(metric, set()).add(name)
        # Names the runbooks tell a person to query must exist too.
        for text in rule.get("annotations", {}).values():
            for metric in _MENTIONED.findall(text):
                used.setdefault(metric, set()).add(name)
    missing = {
        metric: sorted(rules_using)
        for metric, rules_using in used.items()
        if metric not in exported | recorded | PROMETHEUS_SERIES
    }
    assert missing == {}, "metrics the rules use that the proxy does not export"


def test_trips_and_dollars_name_the_agent(scrape: str) -> None:
    samples = [
        sample
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
        if sample.name in {"tripwire_trips_total", "tripwire_cost_usd_total"}
    ]
    tripped = {
        (s.labels["action"], s.labels["agent"])
        for s in samples
        if s.name == "tripwire_trips_total" and s.value
    }
    assert tripped == {("kill", "planner")}
    spent = {
        (s.labels["upstream"], s.labels["model"], s.labels["agent"])
        for s in samples
        if s.name == "tripwire_cost_usd_total"
    }
    assert spent == {("openai", "gpt-4o-mini", "planner")}


def test_scrape_passes_promtool_check_metrics(scrape: str) -> None:
    result = run_promtool("check", "metrics", stdin=scrape)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
