"""Values: documented, typed by the schema, and refused when they cannot work."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helm.conftest import CHART_DIR, PRODUCTION, Rendered, merged

KEY = re.compile(r"^(?P<indent> *)(?:- )?(?P<key>[A-Za-z_][\w.-]*):")


def test_values_yaml_documents_every_value() -> None:
    """Each key has a comment right above it, or sits inside a key that has one."""
    undocumented = []
    documented_depths: list[int] = []  # indents of the enclosing keys that carry a comment
    previous = ""
    for number, line in enumerate(
        (CHART_DIR / "values.yaml").read_text(encoding="utf-8").splitlines(), 1
    ):
        match = KEY.match(line)
        if match:
            depth = len(match["indent"])
            documented_depths = [d for d in documented_depths if d < depth]
            if previous.lstrip().startswith("#"):
                documented_depths.append(depth)
            elif not documented_depths and not line.rstrip().endswith(":"):
                undocumented.append(f"line {number}: {line.strip()}")
        if line.strip():
            previous = line
    assert undocumented == []


def test_defaults_satisfy_the_schema(chart: helm.Chart) -> None:
    chart.validate_schema(yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8")))
    chart.validate_schema(PRODUCTION)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "2"}, "/replicaCount"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"replicas": 2}, "'replicas' not allowed"),
        ({"image": {"tags": "1"}}, "'tags' not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"port": 70000}, "/port"),
        ({"service": {"type": "ExternalName"}}, "/service/type"),
        ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
        ({"redis": {"enabled": "yes"}}, "/redis/enabled"),
        ({"secrets": {"env": {"openai-key": "sk"}}}, "'openai-key' does not match"),
        ({"secrets": {"env": {"OPENAI_KEY": 123}}}, "/secrets/env/OPENAI_KEY"),
        ({"secrets": {"jwtKeys": {"keys/public.pem": "k"}}}, "'keys/public.pem' does not match"),
        ({"probes": {"readiness": {"periodSeconds": "5s"}}}, "/probes/readiness/periodSeconds"),
        ({"probes": {"readiness": {"path": "/"}}}, "'path' not allowed"),
        ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
        ({"metrics": {"serviceMonitor": {"interval": "30"}}}, "/metrics/serviceMonitor/interval"),
        ({"grafana": {"dashboards": {"labelValue": 1}}}, "/grafana/dashboards/labelValue"),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget"),
        ({"config": "server: {port: 1}"}, "/config"),
    ],
)
def test_schema_refuses_wrong_types_and_unknown_keys(
    chart: helm.Chart, render: Callable[..., Rendered], values: dict[str, Any], complaint: str
) -> None:
    values = merged(PRODUCTION, values)
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        chart.validate_schema(values)
    # An install renders with the same check first, so nothing of it reaches the cluster.
    with pytest.raises(helm.HelmValuesError):
        render(values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({}, "2 replicas need a shared Redis"),
        ({"replicaCount": 3}, "set redis.url"),
        ({"replicaCount": 1, "autoscaling": {"enabled": True}}, "10 replicas need a shared Redis"),
        (
            merged(
                PRODUCTION, {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}
            ),
            "minReplicas is above",
        ),
        ({"redis": {"url": "redis://r:6379", "enabled": True}}, "not both"),
        (
            {"redis": {"url": "redis://:secret@r:6379", "password": "other"}},
            "already carries credentials",
        ),
        ({"redis": {"enabled": True, "cluster": True}}, "needs redis.url"),
        (
            merged(PRODUCTION, {"secrets": {"existingSecret": "keys", "env": {"K": "v"}}}),
            "keep every secret variable in keys",
        ),
        (
            {"secrets": {"existingSecret": "keys"}, "redis": {"url": "redis://:pw@r:6379"}},
            "put no password in redis.url",
        ),
        (
            merged(PRODUCTION, {"secrets": {"jwtExistingSecret": "jwt", "jwtKeys": {"k": "v"}}}),
            "not both",
        ),
        (merged(PRODUCTION, {"config": {"policy": {"on_trip": "observe"}}}), "`policy` value"),
        (merged(PRODUCTION, {"config": {"policy_file": "/p.yaml"}}), "`policy` value"),
    ],
)
def test_templates_refuse_combinations_that_cannot_work(
    render: Callable[..., Rendered], values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(complaint)):
        render(values)
