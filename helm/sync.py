"""Keep the chart's copies of the repository's rules and dashboards equal to their sources.

Helm reads only files inside the chart, so helm/tripwire/files/ carries copies of
rules/policy.yaml, rules/alerts.yaml and dashboards/*.json, and Chart.yaml's appVersion repeats
the package version. The repository's files stay the one source of truth: run

    python helm/sync.py            # copy them into the chart
    python helm/sync.py --check    # list what differs, exit 1 if anything does

tests/helm checks the same, so a copy that drifts fails the suite.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "tripwire"
FILES = CHART / "files"

_VERSION = re.compile(r'^__version__ = "([^"]+)"$', re.MULTILINE)
_APP_VERSION = re.compile(r"^appVersion: .*$", re.MULTILINE)


def copies() -> dict[Path, Path]:
    """Each chart copy and the repository file it mirrors; only sources that exist."""
    pairs = {
        FILES / "policy.yaml": ROOT / "rules" / "policy.yaml",
        FILES / "alerts.yaml": ROOT / "rules" / "alerts.yaml",
    }
    for dashboard in sorted((ROOT / "dashboards").glob("*.json")):
        pairs[FILES / "dashboards" / dashboard.name] = dashboard
    return {copy: source for copy, source in pairs.items() if source.is_file()}


def package_version() -> str:
    match = _VERSION.search((ROOT / "proxy" / "__init__.py").read_text(encoding="utf-8"))
    if match is None:
        raise SystemExit("proxy/__init__.py has no __version__")
    return match.group(1)


def _chart_yaml_with(version: str) -> str:
    text = (CHART / "Chart.yaml").read_text(encoding="utf-8")
    return _APP_VERSION.sub(f'appVersion: "{version}"', text, count=1)


def _stale(expected: dict[Path, Path]) -> list[Path]:
    """Copies in the chart whose source is gone."""
    present = [FILES / "policy.yaml", FILES / "alerts.yaml"]
    present += sorted((FILES / "dashboards").glob("*.json"))
    return [path for path in present if path.is_file() and path not in expected]


def differences() -> list[str]:
    """What `sync` would change, one line each; empty when the chart is current."""
    expected = copies()
    found = [
        f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}"
        for copy, source in expected.items()
        if not copy.is_file() or copy.read_bytes() != source.read_bytes()
    ]
    found += [f"{path.relative_to(ROOT)} has no source any more" for path in _stale(expected)]
    chart_yaml = (CHART / "Chart.yaml").read_text(encoding="utf-8")
    if chart_yaml != _chart_yaml_with(package_version()):
        found.append("helm/tripwire/Chart.yaml appVersion differs from proxy.__version__")
    return found


def sync() -> None:
    expected = copies()
    for copy, source in expected.items():
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(source.read_bytes())
    for path in _stale(expected):
        path.unlink()
    chart_yaml = CHART / "Chart.yaml"
    chart_yaml.write_text(_chart_yaml_with(package_version()), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences, change nothing")
    args = parser.parse_args(argv)
    if not args.check:
        sync()
    found = differences()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
