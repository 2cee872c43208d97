"""A runaway agent reaches a person: Tripwire kills the task, Prometheus (scraping the proxy
and evaluating rules/alerts.yaml every second) fires TripwireRunawayTaskKilled, and
Alertmanager delivers it to a webhook, all within a minute of the agent's first call."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.mock_provider import HEADER_REPLY
from tests.harness import ProxyThread
from tests.observability.stack import (
    Daemon,
    Webhook,
    alerts,
    query,
    start_alertmanager,
    start_prometheus,
)

SCRAPE_TOKEN = "prometheus-scrape-token-0123456789"
ALERT = "TripwireRunawayTaskKilled"
TASK = "e2e-runaway"
AGENT = "fixer"
REPLY = "I could not find config.yaml. Let me search the repository again."
WITHIN_S = 60.0


def wait_until_scraped(prometheus: Daemon, deadline: float) -> None:
    """Prometheus has scraped the proxy successfully, so it saw the proxy before any kill."""
    while time.monotonic() < deadline:
        if any(float(s["value"][1]) == 1 for s in query(prometheus, 'up{job="tripwire"}')):
            return
        time.sleep(0.2)
    raise TimeoutError("Prometheus never scraped the proxy:\n" + prometheus.log())


def run_away(proxy: ProxyThread) -> int:
    """An agent that gets the same answer every time and keeps asking, until refused; the
    number of the refused call."""
    client = openai.OpenAI(
        base_url=proxy.openai_url,
        api_key="sk-test",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=False),
    )
    messages: list[Any] = [
        {"role": "system", "content": "You fix CI failures."},
        {"role": "user", "content": "The CI build fails with 'config.yaml not found'. Fix it."},
    ]
    with client:
        for call in range(1, 21):
            try:
                reply = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=messages,
                    extra_headers={"X-Task-Id": TASK, "X-Agent-Id": AGENT, HEADER_REPLY: REPLY},
                )
            except openai.PermissionDeniedError:
                return call
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
            messages.append({"role": "user", "content": "The build still fails. Try again."})
    raise AssertionError("the runaway agent was never stopped")


def firing(prometheus: Daemon, deadline: float) -> dict[str, Any] | None:
    while time.monotonic() < deadline:
        for alert in alerts(prometheus):
            if alert["labels"].get("alertname") == ALERT and alert["state"] == "firing":
                return alert
        time.sleep(0.2)
    return None


@pytest.mark.timeout(120)
def test_runaway_task_alert_reaches_the_webhook_within_a_minute(
    make_proxy: Any, tmp_path: Path
) -> None:
    # Scrapes carry the token a guarded /metrics asks for, as the Helm chart's ServiceMonitor.
    proxy: ProxyThread = make_proxy(telemetry={"metrics_token": SCRAPE_TOKEN})
    webhook = Webhook()
    alertmanager: Daemon | None = None
    prometheus: Daemon | None = None
    try:
        alertmanager = start_alertmanager(tmp_path / "alertmanager", webhook.url)
        prometheus = start_prometheus(
            tmp_path / "prometheus",
            proxy_address=f"127.0.0.1:{proxy.port}",
            alertmanager_address=f"127.0.0.1:{alertmanager.port}",
            bearer=SCRAPE_TOKEN,
        )
        wait_until_scraped(prometheus, time.monotonic() + 30)
        assert not [a for a in alerts(prometheus) if a["labels"].get("alertname") == ALERT]

        started = time.monotonic()
        deadline = started + WITHIN_S
        refused_at = run_away(proxy)
        assert refused_at == 4  # three identical answers, then the default repeat threshold

        alert = firing(prometheus, deadline)
        assert alert is not None, (
            f"{ALERT} did not fire within {WITHIN_S:.0f}s: {alerts(prometheus)}\n"
            + prometheus.log()
        )
        assert alert["labels"] == {
            "alertname": ALERT,
            "job": "tripwire",
            "reason": "repeat_output",
            "severity": "warning",
        }
        assert float(alert["value"]) == 1
        # The agent's trip series appeared at 0 with its first call; none of them is a kill.
        others = [a["labels"] for a in alerts(prometheus) if a["labels"].get("alertname") == ALERT]
        assert others == [alert["labels"]]
        # The counter names the agent that ran away; the alert adds agents up per reason.
        killed = query(
            prometheus, 'tripwire_trips_total{action="kill", reason="repeat_output"} > 0'
        )
        assert [(s["metric"]["agent"], s["value"][1]) for s in killed] == [(AGENT, "1")]

        delivered = webhook.wait_for_alert(ALERT, deadline)
        assert delivered is not None, (
            f"Alertmanager did not deliver {ALERT} within {WITHIN_S:.0f}s of the runaway's "
            f"start; the webhook got {webhook.received}\n" + alertmanager.log()
        )
        arrived, sent = delivered
        assert sent["labels"] == alert["labels"]
        annotations = sent["annotations"]
        assert annotations["summary"] == "Tripwire killed a runaway task (repeat_output)"
        assert annotations["description"].startswith(
            "Tripwire (job tripwire) killed 1 task(s) for repeat_output in the last 2 minutes."
        )
        assert '"reason": "repeat_output"' in annotations["runbook"]
        assert arrived - started < WITHIN_S
    finally:
        if prometheus is not None:
            prometheus.stop()
        if alertmanager is not None:
            alertmanager.stop()
        webhook.stop()
