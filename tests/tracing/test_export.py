"""How spans leave: over gRPC as well as HTTP, never at a call's expense when the collector is
away, and not at all (nor the SDK imported) unless tracing is configured."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent import futures
from typing import Any

import grpc
import httpx2
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from proxy.app import build_app
from proxy.config import load_config
from proxy.errors import ConfigError
from tests.contract.sdk import ask
from tests.harness import MockProviderThread


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Any] = []

    def Export(self, request: Any, context: Any) -> Any:  # the gRPC method's own name
        for resource_spans in request.resource_spans:
            for scope in resource_spans.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_go_over_grpc(make_proxy: Any, mock: MockProviderThread, task: str) -> None:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        proxy = make_proxy(
            telemetry={
                "otel": {
                    "endpoint": f"http://127.0.0.1:{port}",
                    "protocol": "grpc",
                    "schedule_delay": 0.05,
                }
            }
        )
        ask("chat", proxy.base_url, headers={"X-Task-Id": task})
        deadline = time.monotonic() + 10
        while not collector.spans and time.monotonic() < deadline:
            time.sleep(0.02)
        (span,) = collector.spans
        assert span.name.startswith("chat ")
    finally:
        server.stop(0)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _dropped(base_url: str) -> float:
    text = httpx2.get(base_url + "/metrics").text
    for line in text.splitlines():
        if line.startswith('tripwire_otel_spans_dropped_total{reason="export_failed"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_unreachable_collector_never_fails_a_call(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = make_proxy(
        telemetry={
            "otel": {
                "endpoint": f"http://127.0.0.1:{_closed_port()}",
                "schedule_delay": 0.05,
                "export_timeout": 0.5,
            }
        }
    )
    started = time.monotonic()
    for number in range(5):
        headers = {"X-Task-Id": f"{task}-{number}"}
        reply = ask("chat", proxy.base_url, headers=headers)
        assert reply.status == 200 and reply.text
        stream = ask("chat", proxy.base_url, stream=True, headers=headers)
        assert stream.text
    assert time.monotonic() - started < 5  # no call waited on the collector
    deadline = time.monotonic() + 10
    while _dropped(proxy.base_url) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dropped(proxy.base_url) >= 1


def test_tracing_is_off_and_its_modules_unimported_unless_configured() -> None:
    script = (
        "import os, sys\n"
        "for name in list(os.environ):\n"
        "    if name.startswith('OTEL_'): del os.environ[name]\n"
        "from proxy.app import build_app, HOOKS\n"
        "from proxy.config import load_config\n"
        "app = build_app(load_config(None))\n"
        "assert [a for a in app[HOOKS].addons if type(a).__name__ == 'Tracing'] == []\n"
        "assert 'proxy.addons.tracing' not in sys.modules\n"
        "assert 'proxy.telemetry.otlp' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


def test_the_standard_endpoint_variable_turns_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.addons.tracing import Tracing
    from proxy.app import HOOKS

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert any(isinstance(a, Tracing) for a in build_app(load_config(None))[HOOKS].addons)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not any(isinstance(a, Tracing) for a in build_app(load_config(None))[HOOKS].addons)


def test_tracing_configured_without_the_extra_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name.startswith("opentelemetry") or name in (
            "proxy.addons.tracing",
            "proxy.telemetry.otlp",
        ):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    config = load_config(None, telemetry={"otel": {"endpoint": "http://127.0.0.1:4318"}})
    with pytest.raises(ConfigError, match=r"tripwire-proxy\[otel\]"):
        build_app(config)
    build_app(load_config(None))  # tracing off: starts without it


def test_a_batch_larger_than_the_queue_is_refused() -> None:
    from proxy.telemetry.otlp import build_provider

    settings = load_config(
        None, telemetry={"otel": {"enabled": True, "max_queue_size": 10}}
    ).telemetry.otel.model_copy(update={"max_export_batch_size": 20})
    with pytest.raises(ConfigError, match="max_export_batch_size"):
        build_provider(settings, lambda reason, spans: None, {})
