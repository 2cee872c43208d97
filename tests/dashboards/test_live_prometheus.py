"""The dashboards' queries on a real Prometheus scraping the proxy: each one evaluates, the
panels that must show something do, and a runaway task appears on the runaway dashboard, with
its task id as an exemplar, well within a minute of its first call.

Prometheus scrapes every second here (the dashboards assume 15 s), and Grafana's windows are
set as Grafana would set them for that interval; what is tested is that the queries find the
runaway at all, including its very first trip, which plain increase() would miss."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.dashboards import traffic
from tests.dashboards.promql import DASHBOARD_DIR, all_queries, load, panels, substitute
from tests.harness import MockProviderThread, ProxyThread, running
from tests.processes import stop

SCRAPE_S = 1
# $__rate_interval is four scrape intervals; $__range covers the whole test.
WINDOWS = {"__rate_interval": "4s", "__range": "5m", "__interval": "1s"}
# Panels with nothing to show without a Redis outage, or without Redis at all.
EMPTY_WITHOUT_REDIS_OUTAGE = {
    ("tripwire-health", "State backend errors by operation"),
    ("tripwire-health", "Calls refused for the state backend"),
    ("tripwire-health", "State backend step time by operation, p99"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = self.client.get("/api/v1/query", params={"query": promql}).json()
        assert answer["status"] == "success", (promql, answer)
        assert not answer.get("warnings"), (promql, answer["warnings"])
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def exemplars(self, promql: str, start: float) -> list[dict[str, Any]]:
        answer = self.client.get(
            "/api/v1/query_exemplars",
            params={"query": promql, "start": start, "end": time.time() + 1},
        ).json()
        assert answer["status"] == "success", answer
        return answer["data"] or []


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what}: not seen within {seconds} s")


@pytest.fixture
def proxy(mock: MockProviderThread) -> Iterator[ProxyThread]:
    with running(mock, policy=traffic.POLICY) as proxy:
        yield proxy


@pytest.fixture
def prometheus(proxy: ProxyThread, tmp_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "prometheus is not installed: it comes with Debian's prometheus package "
            "(apt-get install -y prometheus)"
        )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "tripwire",
                        "static_configs": [{"targets": [f"127.0.0.1:{proxy.port}"]}],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            def ready() -> bool:
                assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
                try:
                    return client.get("/-/ready").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(ready, 20, "Prometheus ready")
            server = Prometheus(client)
            wait_for(lambda: server.query('up{job="tripwire"} == 1'), 20, "first scrape")
            yield server
    finally:
        stop(process)
        log.close()


def _expr(uid: str, title: str) -> str:
    board = load(DASHBOARD_DIR / f"{uid}.json")
    (panel,) = [p for p in panels(board) if p["title"] == title]
    (target,) = panel["targets"]
    return str(target["expr"])


def promql(expr: str) -> str:
    return substitute(expr, **WINDOWS)


def test_a_runaway_task_shows_on_the_dashboards_within_a_minute(
    proxy: ProxyThread, prometheus: Prometheus
) -> None:
    traffic.fleet(proxy.base_url)
    started = time.time()
    statuses = traffic.runaway(proxy.base_url)
    assert statuses.count(403) >= 1

    trips = promql(_expr("tripwire-runaways", "Trips by reason"))
    trips_by_agent = promql(_expr("tripwire-runaways", "Trips by agent"))

    def runaway_tripped() -> bool:
        # Both panels in one look: a trip stays in a rate window for a few seconds only.
        by_reason = any(
            s["metric"].get("reason", "").startswith("repeat_")
            and s["metric"].get("action") == "kill"
            and float(s["value"][1]) >= 1
            for s in prometheus.query(trips)
        )
        by_agent = any(
            s["metric"].get("agent") == traffic.RUNAWAY_AGENT
            and s["metric"].get("action") == "kill"
            and float(s["value"][1]) >= 1
            for s in prometheus.query(trips_by_agent)
        )
        return by_reason and by_agent

    wait_for(runaway_tripped, 60, "the runaway's trip on 'Trips by reason' and 'Trips by agent'")
    kills = promql(_expr("tripwire-runaways", "Kills"))
    assert float(prometheus.query(kills)[0]["value"][1]) >= 1

    def exemplar_of_the_runaway() -> bool:
        return any(
            exemplar["labels"].get("task_id") == traffic.RUNAWAY
            for series in prometheus.exemplars(trips, started - 5)
            for exemplar in series["exemplars"]
        )

    wait_for(exemplar_of_the_runaway, 60, "the runaway's task_id as an exemplar")
    assert time.time() - started < 60

    # Every query of every dashboard evaluates, and every panel but those that need a Redis
    # outage shows something once the new series have the two samples rate() needs.
    def empty_panels() -> set[tuple[str, str]]:
        empty = set()
        for query in all_queries():
            if not prometheus.query(query.promql(**WINDOWS)):
                title = query.where.split("'")[1] if "'" in query.where else query.where
                empty.add((query.dashboard, title))
        return empty - EMPTY_WITHOUT_REDIS_OUTAGE

    try:
        wait_for(lambda: not empty_panels(), 15, "data on every panel")
    except AssertionError:
        assert sorted(empty_panels()) == []

    top = prometheus.query(promql(_expr("tripwire-runaways", "Top tasks by spend")))
    assert traffic.STEADY in {s["metric"]["task"] for s in top}

    spenders = prometheus.query(promql(_expr("tripwire-cost", "Spend by agent")))
    assert {"planner", "critic", "writer", traffic.RUNAWAY_AGENT} <= {
        s["metric"]["agent"] for s in spenders
    }
