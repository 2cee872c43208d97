"""Prometheus, Alertmanager and a webhook receiver of the tests' own, on free ports of
127.0.0.1, each with its config and data in the test's tmp_path, stopped by pid.

The binaries are Debian's (`prometheus` provides `prometheus` and `promtool`,
`prometheus-alertmanager` provides `prometheus-alertmanager`); a missing one fails the test,
since CI installs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.processes import stop as stop_process
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "rules" / "alerts.yaml"
RULE_TESTS = ROOT / "rules" / "tests"

_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
}


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: .ci/run installs it with Debian's {_PACKAGES[name]} "
            f"package (apt-get install {_PACKAGES[name]})"
        )
    return found


def get_json(url: str, timeout: float = 2) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


class Daemon:
    """One server process writing its output to ``<workdir>/<name>.log``."""

    def __init__(self, name: str, argv: list[str], workdir: Path, port: int) -> None:
        self.name = name
        self.port = port
        self.log_file = workdir / f"{name}.log"
        self._log = self.log_file.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} was not ready within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


def start_prometheus(
    workdir: Path,
    proxy_address: str,
    alertmanager_address: str,
    rule_file: Path = ALERT_RULES,
    bearer: str | None = None,
) -> Daemon:
    """Scrapes the proxy as job ``tripwire`` (sending ``bearer`` as its token, when given) and
    evaluates the rules every second."""
    workdir.mkdir(parents=True, exist_ok=True)
    job: dict[str, Any] = {"job_name": "tripwire", "static_configs": [{"targets": [proxy_address]}]}
    if bearer is not None:
        job["authorization"] = {"type": "Bearer", "credentials": bearer}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule_file)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_address]}]}]},
        "scrape_configs": [job],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    daemon = Daemon(
        "prometheus",
        [
            binary("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir,
        port,
    )
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.stop()
        raise
    return daemon


def start_alertmanager(workdir: Path, webhook_url: str) -> Daemon:
    """Routes every alert to ``webhook_url`` at once: group_wait and group_interval of 1s."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "test-webhook",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "test-webhook",
                "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
            }
        ],
    }
    config_file = workdir / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    daemon = Daemon(
        "alertmanager",
        [
            binary("prometheus-alertmanager"),
            f"--config.file={config_file}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        workdir,
        port,
    )
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.stop()
        raise
    return daemon


class Webhook:
    """An HTTP server in this process that keeps the JSON body of every POST it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []  # (monotonic time, body)
        self._changed = threading.Condition()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with webhook._changed:
                    webhook.received.append((time.monotonic(), body))
                    webhook._changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def wait_for_alert(
        self, alertname: str, deadline: float
    ) -> tuple[float, dict[str, Any]] | None:
        """The first firing alert of that name delivered before ``deadline`` (monotonic), with
        the time it arrived."""
        with self._changed:
            while True:
                for arrived, body in self.received:
                    for alert in body.get("alerts", []):
                        labels = alert.get("labels", {})
                        if labels.get("alertname") == alertname and alert["status"] == "firing":
                            return arrived, alert
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def query(prometheus: Daemon, expr: str) -> list[dict[str, Any]]:
    url = prometheus.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    reply = get_json(url)
    assert reply["status"] == "success", reply
    return reply["data"]["result"]  # type: ignore[no-any-return]


def alerts(prometheus: Daemon) -> list[dict[str, Any]]:
    reply = get_json(prometheus.url + "/api/v1/alerts")
    assert reply["status"] == "success", reply
    return reply["data"]["alerts"]  # type: ignore[no-any-return]
