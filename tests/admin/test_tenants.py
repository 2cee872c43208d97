"""Tenant isolation in the admin API: a tenant's admin can neither list, read, kill, resume nor
extend another tenant's tasks, and learns nothing about them: they answer 404 exactly as tasks
that do not exist."""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

from tests.admin.conftest import SECRET, Admin, admin_token, error_of, token, unique
from tests.contract.sdk import ask
from tests.harness import ProxyThread


@pytest.fixture
def proxy(make_proxy: Any, state: dict[str, Any]) -> ProxyThread:
    return make_proxy(auth={"mode": "jwt", "hs256_secret": SECRET}, state=state)  # type: ignore[no-any-return]


def agent_call(proxy: ProxyThread, tenant: str, task: str) -> None:
    bearer = token(tenant=tenant, task=task, agent="worker")
    ask("chat", proxy.base_url, api_key=bearer, prompt=f"work {uuid.uuid4().hex}")


def test_a_tenant_admin_sees_only_its_tenant(proxy: ProxyThread, admins: Any) -> None:
    mine, theirs, shared = unique("mine"), unique("theirs"), unique("shared")
    agent_call(proxy, "tenant-a", mine)
    agent_call(proxy, "tenant-b", theirs)
    agent_call(proxy, "tenant-a", shared)
    agent_call(proxy, "tenant-b", shared)
    a: Admin = admins(proxy, admin_token(tenant="tenant-a", sub="a-ops"))
    b: Admin = admins(proxy, admin_token(tenant="tenant-b", sub="b-ops"))
    everyone: Admin = admins(proxy, admin_token(sub="root"))

    assert sorted(t["task"] for t in a.tasks()) == sorted([mine, shared])
    assert {t["tenant"] for t in a.tasks()} == {"tenant-a"}
    assert sorted(t["key"] for t in everyone.tasks()) == sorted(
        [f"tenant-a/{mine}", f"tenant-a/{shared}", f"tenant-b/{theirs}", f"tenant-b/{shared}"]
    )
    assert [t["key"] for t in everyone.tasks(tenant="tenant-b", sort="age")] == [
        f"tenant-b/{theirs}",
        f"tenant-b/{shared}",
    ]

    nowhere = a.task("no-such-task")
    assert nowhere.status_code == 404
    for reach in (theirs, f"tenant-b/{theirs}"):
        assert a.task(reach).status_code == 404
        assert error_of(a.task(reach))["code"] == error_of(nowhere)["code"]
        for action, body in (
            ("kill", {"reason": "sabotage"}),
            ("resume", {"limits": {"max_tokens": 10**9}}),
            ("extend", {"seconds": 3600}),
        ):
            response = a.act(reach, action, body)
            assert response.status_code == 404, (reach, action)
            assert error_of(response)["code"] == "task_not_found"
    listing = a.get("/tasks", tenant="tenant-b")
    assert listing.status_code == 404
    assert a.get("/audit", tenant="tenant-b").status_code == 404
    assert a.post("/tasks", {"task": "x", "tenant": "tenant-b"}).status_code == 403

    # The same plain id names each tenant's own task.
    assert a.task(shared).json()["key"] == f"tenant-a/{shared}"
    assert a.act(shared, "kill", {"reason": "mine to stop"}).status_code == 200
    assert b.task(shared).json()["state"] == "active"
    assert b.task(theirs).json()["state"] == "active"
    # Its own task by its full key too, as trip notifications link to it.
    assert a.task(f"tenant-a/{mine}").json()["task"] == mine

    assert [e["task"] for e in a.audit()] == [shared]
    assert b.audit() == []
    assert [e["tenant"] for e in everyone.audit()] == ["tenant-a"]

    # A global admin reaches any task by its full key, URL-encoded.
    killed = everyone.act(f"tenant-b/{theirs}", "kill", {"reason": "by root"})
    assert killed.status_code == 200 and killed.json()["task"] == f"tenant-b/{theirs}"
    assert b.task(theirs).json()["trip"]["figures"]["by"] == "root"


def test_tasks_created_by_a_tenant_admin_belong_to_it(proxy: ProxyThread, admins: Any) -> None:
    task = unique("ahead")
    a: Admin = admins(proxy, admin_token(tenant="tenant-a"))
    created = a.post("/tasks", {"task": task, "limits": {"max_calls": 1}})
    assert created.status_code == 201
    assert created.json()["key"] == f"tenant-a/{task}" and created.json()["tenant"] == "tenant-a"
    other: Admin = admins(proxy, admin_token(tenant="tenant-b"))
    assert other.task(task).status_code == 404
    # The tenant's agents find the limits set ahead: the second call is refused.
    agent_call(proxy, "tenant-a", task)
    assert a.task(task).json()["calls"] == 1
    with pytest.raises(openai.PermissionDeniedError, match="max_calls"):
        agent_call(proxy, "tenant-a", task)
