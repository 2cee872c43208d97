"""Calls refused before a reservation succeeds create no task (#18 item 3): refused calls of
made-up task ids neither fill the killed-task table nor push a real kill or a live task out,
nor show up in ``GET /tasks``; each is still counted, logged and kept in its own tenant's audit
trail."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from tests.admin.conftest import SECRET, Admin, admin_token, token, wait_for

LONG_PROMPT = "please summarise the following report in detail " * 4


def call(
    proxy: Any, tenant: str, task: str, prompt: str, path: str = "/v1/chat/completions"
) -> httpx.Response:
    bearer = token(tenant=tenant, task=task, agent="worker")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    return httpx.post(
        proxy.base_url + path,
        json=body,
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=10,
    )


def refused_count(proxy: Any, reason: str) -> float:
    metrics = httpx.get(
        proxy.base_url + "/metrics",
        headers={"Authorization": f"Bearer {admin_token(sub='scraper')}"},
        timeout=10,
    ).text
    found = re.search(
        rf'^tripwire_refused_calls_total\{{reason="{reason}"\}} (\S+)$', metrics, re.M
    )
    return float(found.group(1)) if found else 0.0


def test_refused_first_calls_of_fresh_ids_leave_no_task(
    make_proxy: Any, state: dict[str, Any]
) -> None:
    proxy = make_proxy(
        auth={"mode": "jwt", "hs256_secret": SECRET},
        # Small tables, so that refused calls creating tasks would push the real ones out.
        state={**state, "max_tasks": 5, "max_killed_tasks": 2},
        policy={
            "rules": [
                {"match": {"task": "noisy/over-*"}, "limits": {"max_tokens": 40}},
                {"match": {"task": "noisy/agent-*"}, "limits": {"max_tokens_per_agent": 40}},
                {"match": {"task": "noisy/path-*"}, "limits": {"max_tokens": 10_000}},
            ]
        },
    )
    root = Admin(proxy, admin_token(sub="root"))
    try:
        check(proxy, root)
    finally:
        root.close()


def check(proxy: Any, root: Admin) -> None:
    victim, alive = f"victim-{uuid.uuid4().hex[:6]}", f"alive-{uuid.uuid4().hex[:6]}"
    assert call(proxy, "acme", victim, "hello").status_code == 200
    assert call(proxy, "acme", alive, "hello").status_code == 200
    assert root.act(f"acme/{victim}", "kill", {"reason": "runaway"}).status_code == 200

    refusals: list[httpx.Response] = []
    for number in range(10):
        refusals.append(call(proxy, "noisy", f"over-{number}", LONG_PROMPT))  # budget at reserve
        refusals.append(call(proxy, "noisy", f"agent-{number}", LONG_PROMPT))  # agent budget
        # A path Tripwire cannot bound, under a budget: refused before the ledger is asked.
        refusals.append(call(proxy, "noisy", f"path-{number}", "hi", "/v1/fine_tuning/jobs"))
    assert [r.status_code for r in refusals] == [403] * 30

    # Nothing of the refused ids is kept; the kill and the live task are.
    listed = {task["key"]: task for task in root.tasks()}
    assert set(listed) == {f"acme/{victim}", f"acme/{alive}"}
    assert listed[f"acme/{victim}"]["state"] == "killed"
    assert listed[f"acme/{alive}"]["state"] == "active"
    assert root.task("noisy/over-0").status_code == 404
    assert call(proxy, "acme", victim, "hello").status_code == 403  # still killed
    # The caller is told no task was started (the refusal of a killed task says further calls
    # are refused).
    first = refusals[0].json()["error"]
    assert first["code"] == "tripwire_budget_tokens"
    assert "refused the first call of task 'noisy/over-0'" in first["message"]
    assert "not started" in first["message"]

    # Counted and recorded all the same: the trips in the refusing tenant's own audit trail.
    assert refused_count(proxy, "budget_tokens") == 10
    assert refused_count(proxy, "budget_agent_tokens") == 10
    assert refused_count(proxy, "unbounded_path") == 10
    noisy = wait_for(lambda: len(root.audit(tenant="noisy", limit=100)) == 20 or None)
    assert noisy
    assert {e["tenant"] for e in root.audit(tenant="noisy", limit=100)} == {"noisy"}
    assert [e["action"] for e in root.audit(tenant="acme")] == ["kill"]

    # A refused first call started nothing: the same id within its limits starts a task.
    assert call(proxy, "noisy", "over-0", "hi").status_code == 200
    assert root.task("noisy/over-0").json()["calls"] == 1
