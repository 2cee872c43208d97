"""Who may scrape /metrics, and what a scrape shows of tenants' tasks: with JWT auth a scrape
needs a token of the metrics role (or a configured bearer token), and a tenant's task ids stay
out of exemplars and the top-spend gauge unless the config says otherwise."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.admin.conftest import SECRET, admin_token, token
from tests.contract.sdk import ask
from tests.harness import ProxyThread

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
JWT = {"mode": "jwt", "hs256_secret": SECRET}
STATIC = "static-scrape-token-" + "x" * 16


def scrape(proxy: ProxyThread, bearer: str | None = None) -> httpx.Response:
    headers = {"Accept": OPENMETRICS}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return httpx.get(proxy.base_url + "/metrics", headers=headers, timeout=10)


def test_jwt_mode_needs_a_scrape_token(make_proxy: Any) -> None:
    proxy = make_proxy(auth=JWT)
    refused = scrape(proxy)
    assert refused.status_code == 401 and "bearer token" in refused.text
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert "tripwire_" not in refused.text
    assert scrape(proxy, "not-a-jwt").status_code == 401
    agent = token(sub="agent", task="t")
    assert scrape(proxy, agent).status_code == 403
    assert (
        scrape(proxy, token(sub="acme-scraper", role="metrics", tenant="acme")).status_code == 403
    )
    assert scrape(proxy, token(sub="prometheus", role="metrics")).status_code == 200
    assert scrape(proxy, admin_token()).status_code == 200
    assert scrape(proxy, admin_token(tenant="acme")).status_code == 403


def test_a_configured_token_guards_metrics_in_any_mode(make_proxy: Any) -> None:
    open_proxy = make_proxy()
    assert scrape(open_proxy).status_code == 200
    guarded = make_proxy(telemetry={"metrics_token": STATIC})
    assert scrape(guarded).status_code == 401
    assert scrape(guarded, STATIC + "y").status_code == 401
    assert scrape(guarded, STATIC).status_code == 200
    both = make_proxy(auth=JWT, telemetry={"metrics_token": STATIC})
    assert scrape(both, STATIC).status_code == 200
    assert scrape(both, token(sub="prometheus", role="metrics")).status_code == 200
    lifted = make_proxy(auth=JWT, telemetry={"metrics_auth": "open"})
    assert scrape(lifted).status_code == 200


@pytest.mark.parametrize("shown", ["untenanted", "all"])
def test_tenants_task_ids_stay_out_of_a_scrape(make_proxy: Any, shown: str) -> None:
    proxy = make_proxy(auth=JWT, telemetry={"metrics_task_ids": shown})
    secret_task = f"merger-{uuid.uuid4().hex[:8]}"
    plain_task = f"plain-{uuid.uuid4().hex[:8]}"
    ask("chat", proxy.base_url, api_key=token(task=plain_task))
    ask("chat", proxy.base_url, api_key=token(tenant="acme", task=secret_task))
    text = scrape(proxy, token(sub="prometheus", role="metrics")).text
    assert f'tripwire_top_task_spend_usd{{task="{plain_task}"}}' in text
    assert "tripwire_cost_usd_total" in text
    if shown == "untenanted":
        assert secret_task not in text
        # The latest exemplar, the tenant's call, still says whose spend it was.
        assert '# {tenant="acme"}' in text
    else:
        assert f"acme/{secret_task}" in text
