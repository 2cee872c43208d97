"""What the chart wires together: Tripwire's config and policy, its secrets, Redis, the
Ingress, and the Prometheus and Grafana objects carrying the repository's rules and dashboards."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.connection import parse_url

from proxy.config import load_config
from tests.helm.conftest import (
    ALERTS,
    DASHBOARDS,
    FULLNAME,
    NAMESPACE,
    PASSWORD,
    PRODUCTION,
    PUBLIC_KEY,
    REDIS_URL,
    ROOT,
    SCENARIOS,
    Rendered,
    merged,
    needs_alerts,
    needs_dashboards,
    proxy_container,
    secret_env,
)


def load_rendered_config(
    rendered: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Load the ConfigMap's tripwire.yaml with Tripwire's own loader, as the pod would: the
    policy file at its mounted path, the Secret's keys in the environment."""
    data = rendered.one("ConfigMap")["data"]
    mount = next(
        each["mountPath"]
        for each in proxy_container(rendered)["volumeMounts"]
        if each["name"] == "config"
    )
    config = yaml.safe_load(data["tripwire.yaml"])
    assert config["policy_file"] == f"{mount}/policy.yaml"
    (tmp_path / "policy.yaml").write_text(data["policy.yaml"], encoding="utf-8")
    config["policy_file"] = str(tmp_path / "policy.yaml")
    (tmp_path / "tripwire.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    if "Secret" in rendered.kinds():
        for name, value in secret_env(rendered).items():
            monkeypatch.setenv(name, value)
    return load_config(tmp_path / "tripwire.yaml")


def test_generated_config_is_what_tripwire_loads(
    render: Callable[..., Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_rendered_config(render(PRODUCTION), tmp_path, monkeypatch)
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8787)
    assert (config.state.backend, config.state.redis_url) == ("redis", REDIS_URL)
    assert config.telemetry.metrics_path == "/metrics"
    assert (
        config.policy
        == load_config(
            None,
            policy=yaml.safe_load((ROOT / "rules" / "policy.yaml").read_text(encoding="utf-8")),
        ).policy
    )

    memory = load_rendered_config(render({"replicaCount": 1}), tmp_path, monkeypatch)
    assert memory.state.backend == "memory"


def test_secrets_stay_out_of_the_configmap(
    render: Callable[..., Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEAM_OPENAI_KEY", raising=False)
    rendered = render(SCENARIOS["secrets"])
    env = secret_env(rendered)
    assert env["TEAM_OPENAI_KEY"] == "sk-team"
    assert env["ESCALATION_SECRET"] == "hmac"
    assert parse_url(env["TRIPWIRE_STATE__REDIS_URL"])["password"] == PASSWORD
    container = proxy_container(rendered)
    assert container["envFrom"] == [{"secretRef": {"name": FULLNAME}}]
    configmap = yaml.safe_dump(rendered.one("ConfigMap"))
    assert "sk-team" not in configmap and "ss w" not in configmap and "redis_url" not in configmap

    jwt = rendered.one("Secret", f"{FULLNAME}-jwt")["data"]
    assert {name: base64.b64decode(value).decode() for name, value in jwt.items()} == {
        "public.pem": PUBLIC_KEY
    }
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert {"name": "jwt", "mountPath": "/etc/tripwire/jwt", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {"name": "jwt", "secret": {"secretName": f"{FULLNAME}-jwt", "defaultMode": 0o440}} in (
        pod["volumes"]
    )

    inline = render({"redis": {"url": "redis://:inline@r.example:6379/0"}})
    assert secret_env(inline)["TRIPWIRE_STATE__REDIS_URL"] == "redis://:inline@r.example:6379/0"
    assert "inline" not in yaml.safe_dump(inline.one("ConfigMap"))

    config = load_rendered_config(rendered, tmp_path, monkeypatch)
    assert parse_url(config.state.redis_url)["password"] == PASSWORD
    assert config.upstreams["team-openai"].resolved_key() == "sk-team"
    assert config.state.on_state_error == "open"
    assert config.state.max_tasks == 1000000


def test_existing_secrets_replace_the_charts(render: Callable[..., Rendered]) -> None:
    rendered = render(SCENARIOS["existing secrets"])
    assert "Secret" not in rendered.kinds()
    container = proxy_container(rendered)
    assert container["envFrom"] == [{"secretRef": {"name": "tripwire-keys"}}]
    volumes = rendered.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "jwt",
        "secret": {"secretName": "tripwire-jwt", "defaultMode": 0o440},
    } in volumes
    plain = proxy_container(render(PRODUCTION))
    assert "envFrom" not in plain
    assert "jwt" not in {each["name"] for each in plain["volumeMounts"]}


def test_bundled_redis_serves_the_proxy(
    render: Callable[..., Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(SCENARIOS["bundled redis"])
    name = f"{FULLNAME}-redis"
    service = rendered.one("Service", name)
    statefulset = rendered.one("StatefulSet", name)
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] == name
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    redis = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert "--requirepass" in redis["args"]
    assert redis["env"][0]["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME,
        "key": "REDIS_PASSWORD",
    }
    assert secret_env(rendered)["REDIS_PASSWORD"] == PASSWORD

    config = load_rendered_config(rendered, tmp_path, monkeypatch)
    url = parse_url(config.state.redis_url)
    assert (url["host"], url["port"], url["password"]) == (name, 6379, PASSWORD)

    memory = render({"redis": {"enabled": True}}).one("StatefulSet", name)["spec"]
    assert "volumeClaimTemplates" not in memory
    assert memory["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_ingress_routes_to_the_service(render: Callable[..., Rendered]) -> None:
    rendered = render(SCENARIOS["ingress"])
    spec = rendered.one("Ingress")["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "tripwire-tls", "hosts": ["tripwire.example.com"]}]
    [rule] = spec["rules"]
    assert rule["host"] == "tripwire.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": FULLNAME,
        "port": {"name": "http"},
    }
    assert "https://tripwire.example.com" in rendered.texts["NOTES.txt"]


def test_service_monitor_scrapes_as_the_job_the_alerts_watch(
    render: Callable[..., Rendered],
) -> None:
    rendered = render(SCENARIOS["service monitor"])
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == rendered.one("Service")["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    [relabel] = endpoint["relabelings"]
    assert relabel == {"targetLabel": "job", "replacement": "tripwire"}
    if ALERTS.is_file():
        assert 'job="tripwire"' in ALERTS.read_text(encoding="utf-8")


@needs_alerts
def test_prometheus_rule_is_alerts_yaml_byte_for_byte(render: Callable[..., Rendered]) -> None:
    rendered = render(merged(PRODUCTION, {"metrics": {"prometheusRule": {"enabled": True}}}))
    rule = rendered.one("PrometheusRule")
    source = ALERTS.read_text(encoding="utf-8")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(source)
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for each in group["rules"]:
            assert ("alert" in each) != ("record" in each) and each["expr"]
    indented = "".join(f"  {line}" for line in source.splitlines(keepends=True))
    assert indented.rstrip() in rendered.texts["prometheusrule.yaml"]


@needs_dashboards
def test_dashboards_are_carried_byte_for_byte(render: Callable[..., Rendered]) -> None:
    rendered = render(SCENARIOS["grafana dashboards"].values[0])
    carried: dict[str, str] = {}
    for configmap in rendered.all("ConfigMap"):
        labels = configmap["metadata"]["labels"]
        if labels.get("grafana_dashboard") == "1":
            assert configmap["metadata"]["annotations"] == {"grafana_folder": "Tripwire"}
            carried.update(configmap["data"])
    assert carried == {each.name: each.read_text(encoding="utf-8") for each in DASHBOARDS}

    elsewhere = render(
        merged(
            SCENARIOS["grafana dashboards"].values[0],
            {"grafana": {"dashboards": {"namespace": "monitoring", "labelValue": "tripwire"}}},
        )
    )
    for configmap in elsewhere.all("ConfigMap"):
        if "grafana_dashboard" in configmap["metadata"]["labels"]:
            assert configmap["metadata"]["namespace"] == "monitoring"
            assert configmap["metadata"]["labels"]["grafana_dashboard"] == "tripwire"


def test_policy_is_rules_policy_yaml_unless_values_give_one(
    render: Callable[..., Rendered],
) -> None:
    data = render(PRODUCTION).one("ConfigMap")["data"]
    assert data["policy.yaml"] == (ROOT / "rules" / "policy.yaml").read_text(encoding="utf-8")
    policy = {"defaults": {"max_cost_usd": 5}, "on_trip": "observe"}
    data = render(merged(PRODUCTION, {"policy": policy})).one("ConfigMap")["data"]
    assert yaml.safe_load(data["policy.yaml"]) == policy


def test_notes_give_the_in_cluster_base_url(render: Callable[..., Rendered]) -> None:
    notes = render(PRODUCTION).texts["NOTES.txt"]
    assert f'base_url="http://{FULLNAME}.{NAMESPACE}.svc.cluster.local:8787/v1"' in notes
    assert f'base_url="http://{FULLNAME}.{NAMESPACE}.svc.cluster.local:8787"' in notes
    assert "in memory" in render({"replicaCount": 1}).texts["NOTES.txt"]


def _env(rendered: Rendered) -> dict[str, str]:
    return {
        each["name"]: each.get("value", "") for each in proxy_container(rendered).get("env", [])
    }


def test_the_otlp_endpoint_turns_tracing_on(render: Callable[..., Rendered]) -> None:
    assert not any(name.startswith("OTEL_") for name in _env(render(PRODUCTION)))
    env = _env(render(SCENARIOS["traces"]))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert env["OTEL_SERVICE_NAME"] == FULLNAME
    assert env["TRIPWIRE_LOGGING__LEVEL"] == "DEBUG"  # extraEnv still applies
    # What the proxy reads from that environment: tracing on, over gRPC.
    from proxy.telemetry.otlp import protocol_of

    settings = load_config(None).telemetry.otel
    assert settings.wanted(env)
    assert protocol_of(settings, env) == "grpc"
    named = {
        "otel": {"endpoint": "http://c:4318", "serviceName": "agents", "resourceAttributes": "a=b"}
    }
    env = _env(render(merged(PRODUCTION, named)))
    assert env["OTEL_SERVICE_NAME"] == "agents" and env["OTEL_RESOURCE_ATTRIBUTES"] == "a=b"
