"""Every optional part renders into valid manifests, and the Deployment is what the values
asked for: replicas, probes, resources, security and spread."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import helm_python as helm
import kubernetes_validate

from proxy import __version__
from tests.helm.conftest import (
    CHART_DIR,
    FULLNAME,
    NAMESPACE,
    PRODUCTION,
    RELEASE,
    SCENARIOS,
    Rendered,
    merged,
    proxy_container,
    scenarios,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the schemas
# know, so that neither a too-new field nor a removed API slips through.
KUBE_VERSION = "1.30.0"
KUBE_VERSIONS = (KUBE_VERSION, kubernetes_validate.latest_version())
# Prometheus Operator kinds are custom resources, absent from Kubernetes' schemas; their
# structure is checked in test_wiring.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@scenarios
def test_lint_reports_nothing_above_info(values: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []


@scenarios
def test_manifests_validate_against_the_kubernetes_schemas(
    render: Callable[..., Rendered], values: dict[str, Any]
) -> None:
    rendered = render(values)
    for item in rendered.objects:
        if item["kind"] in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            # Strict: an unknown field (a misspelt key in a template) fails too.
            kubernetes_validate.validate(item, version, strict=True)


@scenarios
def test_every_object_carries_the_standard_labels(
    render: Callable[..., Rendered], values: dict[str, Any]
) -> None:
    objects = render(values).objects
    names = [(item["kind"], item["metadata"]["name"]) for item in objects]
    assert len(set(names)) == len(names)
    for item in objects:
        assert DNS_NAME.fullmatch(item["metadata"]["name"])
        labels = item["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "tripwire"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == __version__
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "tripwire-0.1.0"
        assert item["metadata"].get("namespace") == NAMESPACE


def test_optional_parts_appear_only_when_asked_for(render: Callable[..., Rendered]) -> None:
    assert render(PRODUCTION).kinds() == {
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    }
    assert "Ingress" in render(SCENARIOS["ingress"]).kinds()
    assert "HorizontalPodAutoscaler" in render(SCENARIOS["autoscaling"]).kinds()
    assert {"StatefulSet", "Secret"} <= render(SCENARIOS["bundled redis"]).kinds()
    assert "ServiceMonitor" in render(SCENARIOS["service monitor"]).kinds()


def test_selectors_pick_exactly_the_proxy_pods(render: Callable[..., Rendered]) -> None:
    rendered = render(
        {"redis": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}}
    )
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    redis_pods = rendered.one("StatefulSet", f"{FULLNAME}-redis")["spec"]["template"]["metadata"]
    assert selector.items() <= pod_labels.items()
    assert not selector.items() <= redis_pods["labels"].items()
    assert rendered.one("Service")["spec"]["selector"] == selector
    assert rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    monitor = rendered.one("ServiceMonitor")["spec"]
    assert (
        monitor["selector"]["matchLabels"].items()
        <= rendered.one("Service")["metadata"]["labels"].items()
    )


def test_deployment_runs_the_requested_replicas(render: Callable[..., Rendered]) -> None:
    assert render(PRODUCTION).one("Deployment")["spec"]["replicas"] == 2
    assert (
        render(merged(PRODUCTION, {"replicaCount": 5})).one("Deployment")["spec"]["replicas"] == 5
    )

    scaled = render(SCENARIOS["autoscaling"])
    # The autoscaler owns the count; a fixed one would reset it on every upgrade.
    assert "replicas" not in scaled.one("Deployment")["spec"]
    hpa = scaled.one("HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 8)
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }


def test_probes_resources_and_ports(render: Callable[..., Rendered]) -> None:
    container = proxy_container(render(PRODUCTION))
    assert container["image"] == f"tripwire:{__version__}"
    assert container["args"] == ["--config", "/etc/tripwire/config/tripwire.yaml"]
    assert container["ports"] == [{"name": "http", "containerPort": 8787, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}

    tuned = render(
        merged(
            PRODUCTION,
            {
                "port": 9000,
                "image": {"repository": "registry.example/tripwire", "tag": "0.2.0"},
                "probes": {"readiness": {"periodSeconds": 3}},
                "resources": {"limits": {"memory": "1Gi"}},
            },
        )
    )
    container = proxy_container(tuned)
    assert container["image"] == "registry.example/tripwire:0.2.0"
    assert container["ports"][0]["containerPort"] == 9000
    assert container["readinessProbe"]["periodSeconds"] == 3
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert tuned.one("Service")["spec"]["ports"][0]["targetPort"] == "http"


def assert_restrictive(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in context


def test_pods_run_restricted(render: Callable[..., Rendered]) -> None:
    rendered = render(SCENARIOS["bundled redis"])
    deployment_pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert_restrictive(deployment_pod, proxy_container(rendered))
    mounts = {each["mountPath"] for each in proxy_container(rendered)["volumeMounts"]}
    assert mounts == {"/etc/tripwire/config", "/tmp"}
    redis_pod = rendered.one("StatefulSet", f"{FULLNAME}-redis")["spec"]["template"]["spec"]
    assert_restrictive(redis_pod, redis_pod["containers"][0])


def test_replicas_spread_over_zones_and_nodes(render: Callable[..., Rendered]) -> None:
    rendered = render(PRODUCTION)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    selector = rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    spread = pod["topologySpreadConstraints"]
    assert [each["topologyKey"] for each in spread] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    for each in spread:
        assert each["labelSelector"]["matchLabels"] == selector
        assert each["maxSkew"] == 1
    off = render(merged(PRODUCTION, {"topologySpread": {"enabled": False}}))
    assert "topologySpreadConstraints" not in off.one("Deployment")["spec"]["template"]["spec"]


def test_pods_roll_when_config_or_secrets_change(render: Callable[..., Rendered]) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        annotations = render(values).one("Deployment")["spec"]["template"]["metadata"]
        return {k: v for k, v in annotations["annotations"].items() if k.startswith("checksum/")}

    base = checksums(SCENARIOS["secrets"])
    assert base == checksums(SCENARIOS["secrets"])
    policy = checksums(merged(SCENARIOS["secrets"], {"policy": {"on_trip": "observe"}}))
    assert policy["checksum/config"] != base["checksum/config"]
    key = checksums(merged(SCENARIOS["secrets"], {"secrets": {"env": {"K": "new"}}}))
    assert key["checksum/secret"] != base["checksum/secret"]
    jwt = checksums(merged(SCENARIOS["secrets"], {"secrets": {"jwtKeys": {"public.pem": "new"}}}))
    assert jwt["checksum/secret"] != base["checksum/secret"]
