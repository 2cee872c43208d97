"""The chart rendered by Helm's own engine (the helm-python-sdk wheel), without a cluster."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "tripwire"
RELEASE = "tw"
NAMESPACE = "agents"
FULLNAME = "tw-tripwire"

# The production path the README documents: an existing Redis, everything else default.
REDIS_URL = "redis://redis.example:6379/0"
PRODUCTION: dict[str, Any] = {"redis": {"url": REDIS_URL}}


class Rendered:
    """One render: the manifests as parsed objects, and each template's text."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = {
            path.removeprefix("tripwire/templates/"): text for path, text in texts.items()
        }
        self.objects: list[dict[str, Any]] = [
            item
            for path, text in self.texts.items()
            if path.endswith(".yaml")
            for item in yaml.safe_load_all(text)
            if item
        ]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.objects if item["kind"] == kind]

    def one(self, kind: str, name: str = FULLNAME) -> dict[str, Any]:
        found = [item for item in self.all(kind) if item["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {item["kind"] for item in self.objects}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Values layered as `-f a.yaml -f b.yaml` would: later maps win key by key."""
    result: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Callable[..., Rendered]:
    def run(values: dict[str, Any] | None = None) -> Rendered:
        return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))

    return run


def secret_env(rendered: Rendered) -> dict[str, str]:
    data = rendered.one("Secret")["data"]
    return {name: base64.b64decode(value).decode() for name, value in data.items()}


def proxy_container(rendered: Rendered) -> dict[str, Any]:
    containers = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert [each["name"] for each in containers] == ["tripwire"]
    return containers[0]  # type: ignore[no-any-return]


ALERTS = ROOT / "rules" / "alerts.yaml"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
needs_alerts = pytest.mark.skipif(not ALERTS.is_file(), reason="rules/alerts.yaml not written yet")
needs_dashboards = pytest.mark.skipif(not DASHBOARDS, reason="dashboards/ has no dashboard yet")

PUBLIC_KEY = (
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
)
# A password that needs escaping in a URL.
PASSWORD = "p@ss w/rd+$:%"

# Each optional part switched on, mostly over the production values.
SCENARIOS = {
    "production": PRODUCTION,
    "one replica, in memory": {"replicaCount": 1},
    "ingress": merged(
        PRODUCTION,
        {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"},
                "tls": [{"secretName": "tripwire-tls", "hosts": ["tripwire.example.com"]}],
            }
        },
    ),
    "autoscaling": merged(
        PRODUCTION, {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 8}}
    ),
    "bundled redis": {
        "redis": {"enabled": True, "password": PASSWORD, "persistence": {"enabled": True}}
    },
    "secrets": merged(
        PRODUCTION,
        {
            "redis": {"password": PASSWORD},
            "secrets": {
                "env": {"TEAM_OPENAI_KEY": "sk-team", "ESCALATION_SECRET": "hmac"},
                "jwtKeys": {"public.pem": PUBLIC_KEY},
            },
            "config": {
                "upstreams": {
                    "team-openai": {
                        "base_url": "https://api.openai.com",
                        "api_key_env": "TEAM_OPENAI_KEY",
                    }
                },
                "state": {"on_state_error": "open", "max_tasks": 1000000},
            },
        },
    ),
    "existing secrets": merged(
        PRODUCTION,
        {"secrets": {"existingSecret": "tripwire-keys", "jwtExistingSecret": "tripwire-jwt"}},
    ),
    "service monitor": merged(
        PRODUCTION, {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}}
    ),
    "prometheus rule": pytest.param(
        merged(PRODUCTION, {"metrics": {"prometheusRule": {"enabled": True}}}), marks=needs_alerts
    ),
    "traces": merged(
        PRODUCTION,
        {
            "otel": {"endpoint": "http://otel-collector.observability:4317", "protocol": "grpc"},
            "extraEnv": [{"name": "TRIPWIRE_LOGGING__LEVEL", "value": "DEBUG"}],
        },
    ),
    "grafana dashboards": pytest.param(
        merged(PRODUCTION, {"grafana": {"dashboards": {"enabled": True, "folder": "Tripwire"}}}),
        marks=needs_dashboards,
    ),
}
scenarios = pytest.mark.parametrize("values", list(SCENARIOS.values()), ids=list(SCENARIOS))
