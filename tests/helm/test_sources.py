"""The chart's copies of the repository's files, and the image it runs."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import helm_python as helm
import yaml

from proxy import __version__
from tests.helm.conftest import CHART_DIR, NAMESPACE, PRODUCTION, RELEASE, ROOT, Rendered, merged


def load_sync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_sync", ROOT / "helm" / "sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_copies_equal_their_sources() -> None:
    """rules/policy.yaml, rules/alerts.yaml, dashboards/*.json and the package version stay the
    one source of truth; `python helm/sync.py` brings the chart's copies up to date."""
    assert load_sync().differences() == []


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == __version__


def test_dashboards_keep_every_byte(tmp_path: Path) -> None:
    """Whatever a dashboard holds reaches Grafana unchanged: template braces, non-ASCII, tabs,
    trailing blanks, CRLF line ends, no final newline."""
    copy = tmp_path / "tripwire"
    shutil.copytree(CHART_DIR, copy)
    shutil.rmtree(copy / "files" / "dashboards")
    (copy / "files" / "dashboards").mkdir()
    panel = {"title": "Coût {{ $labels.task }}", "expr": 'sum(x{a="\\t"})'}
    contents = {
        "Fleet_View.json": json.dumps({"panels": [panel]}, indent=2, ensure_ascii=False) + "\n",
        "tabs.json": '{\n\t"title": "tabs",  \n\t"panels": []\n}',
        "crlf.json": '{\r\n  "title": "crlf"\r\n}\r\n',
    }
    for name, text in contents.items():
        (copy / "files" / "dashboards" / name).write_bytes(text.encode())
    values = merged(PRODUCTION, {"grafana": {"dashboards": {"enabled": True}}})
    with helm.Chart.load(copy) as chart:
        rendered = Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))
    carried = {
        configmap["metadata"]["name"]: configmap["data"]
        for configmap in rendered.all("ConfigMap")
        if "grafana_dashboard" in configmap["metadata"]["labels"]
    }
    assert carried == {
        "tw-tripwire-dashboard-fleet-view": {"Fleet_View.json": contents["Fleet_View.json"]},
        "tw-tripwire-dashboard-tabs": {"tabs.json": contents["tabs.json"]},
        "tw-tripwire-dashboard-crlf": {"crlf.json": contents["crlf.json"]},
    }


def test_dockerfile_builds_the_image_the_chart_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    instructions = {
        match["op"]: match["args"]
        for match in re.finditer(r"^(?P<op>[A-Z]+) (?P<args>.*)$", dockerfile, re.MULTILINE)
    }
    assert re.fullmatch(r"python:3\.\d+-slim", instructions["FROM"])
    assert json.loads(instructions["ENTRYPOINT"]) == ["tripwire", "serve"]
    assert instructions["EXPOSE"] == str(values["port"])
    user, group = instructions["USER"].split(":")
    assert int(user) == values["podSecurityContext"]["runAsUser"]
    assert int(group) == values["podSecurityContext"]["runAsGroup"]
    assert "TRIPWIRE_SERVER__HOST=0.0.0.0" in dockerfile
    assert values["image"]["repository"] == "tripwire" and values["image"]["tag"] == ""


def test_readme_example_values_install(render: Callable[..., Rendered]) -> None:
    readme = (ROOT / "helm" / "README.md").read_text(encoding="utf-8")
    [example] = re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
    rendered = render(yaml.safe_load(example))
    assert {"Secret", "ServiceMonitor", "PrometheusRule"} <= rendered.kinds()
