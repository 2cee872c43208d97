"""The admin API against both state backends: tasks created ahead, listed, inspected, killed,
resumed with a raised budget, extended, and every action in the audit trail."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.admin.conftest import SECRET, Admin, admin_token, error_of, token, unique, wait_for
from tests.contract.sdk import ask
from tests.harness import MockProviderThread, ProxyThread

AUTH = {"hs256_secret": SECRET}  # the admin API needs keys; agent traffic stays tokenless


def call(proxy: ProxyThread, task: str, agent: str = "planner", **headers: str) -> Any:
    """One Chat Completions call of ``task``, its request and answer its own, so no loop
    detector steps in."""
    answer = " ".join(uuid.uuid4().hex for _ in range(4))
    return ask(
        "chat",
        proxy.base_url,
        prompt=f"next step {uuid.uuid4().hex}",
        headers={"X-Task-Id": task, "X-Agent-Id": agent, "x-mock-reply": answer, **headers},
    )


@pytest.fixture
def proxy(make_proxy: Any, state: dict[str, Any]) -> ProxyThread:
    return make_proxy(auth=AUTH, state=state)  # type: ignore[no-any-return]


@pytest.fixture
def admin(proxy: ProxyThread, admins: Any) -> Admin:
    return admins(proxy, admin_token(sub="alice"))  # type: ignore[no-any-return]


def test_create_ahead_kill_by_budget_resume_with_more(
    proxy: ProxyThread, admin: Admin, mock: MockProviderThread
) -> None:
    task = unique("job")
    created = admin.post(
        "/tasks", {"task": task, "owner": "team-research", "limits": {"max_tokens": 300}}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["task"] == body["key"] == task
    assert body["owner"] == "team-research" and body["limits"] == {"max_tokens": 300}
    assert body["state"] == "active" and body["calls"] == 0 and body["trip"] is None
    assert body["max_tokens"] == body["tokens_left"] == 300
    assert [e["kind"] for e in body["timeline"]] == ["created"]
    again = admin.post("/tasks", {"task": task})
    assert again.status_code == 409 and error_of(again)["code"] == "task_exists"

    with pytest.raises(openai.PermissionDeniedError) as refused:
        for _ in range(10):
            call(proxy, task)
    assert "budget_tokens" in refused.value.message
    detail = admin.task(task).json()
    assert detail["state"] == "killed" and detail["trip"]["reason"] == "budget_tokens"
    assert detail["trip"]["figures"]["max_tokens"] == 300
    assert 0 < detail["tokens_used"] <= 300 and detail["max_tokens"] == 300
    assert detail["calls"] >= 2 and detail["agents"] == ["planner"]
    assert detail["previews"] and all(len(p["fingerprint"]) >= 8 for p in detail["previews"])
    assert detail["previews"][-1]["agent"] == "planner" and detail["previews"][-1]["text"]
    assert [e["kind"] for e in detail["timeline"]] == ["created", "kill"]

    resumed = admin.act(task, "resume", {"limits": {"max_tokens": 5000}, "note": "approved"})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["state"] == "active"
    assert resumed.json()["limits"] == {"max_tokens": 5000}
    assert resumed.json()["max_tokens"] == 5000
    assert resumed.json()["tokens_left"] == 5000 - detail["tokens_used"]
    assert call(proxy, task).status == 200
    assert admin.task(task).json()["max_tokens"] == 5000

    events = wait_for(lambda: len(admin.audit(task=task)) >= 3 and admin.audit(task=task))
    assert [e["action"] for e in events] == ["resume", "kill", "create"]  # newest first
    resume, kill, create = events
    assert resume["actor"] == "alice" and resume["detail"] == "approved"
    assert resume["data"]["limits"] == {"max_tokens": 5000}
    assert resume["data"]["previous_limits"] == {"max_tokens": 300}
    assert resume["data"]["was_killed"] == "budget_tokens"
    assert kill["actor"] == "tripwire" and kill["data"]["reason"] == "budget_tokens"
    assert create["actor"] == "alice" and create["data"]["limits"] == {"max_tokens": 300}


def test_list_filters_sorts_and_pages(proxy: ProxyThread, admin: Admin) -> None:
    a, b, c = unique("a"), unique("b"), unique("c")
    call(proxy, a)
    for _ in range(3):
        call(proxy, b)
    call(proxy, c, agent="critic")
    call(proxy, c, agent="critic")
    assert admin.act(b, "kill", {"reason": "enough"}).status_code == 200

    def ids(**params: Any) -> list[str]:
        return [t["task"] for t in admin.tasks(**params)]

    assert ids(sort="calls") == [b, c, a]
    assert ids(sort="calls", order="asc") == [a, c, b]
    assert ids(sort="age") == [a, b, c]  # oldest first
    assert ids(sort="age", order="asc") == [c, b, a]
    tokens = [t["tokens_used"] for t in admin.tasks(sort="tokens")]
    assert tokens == sorted(tokens, reverse=True)
    assert ids(state="killed") == [b]
    assert sorted(ids(state="active")) == sorted([a, c])
    assert ids(agent="critic") == [c]
    listed = {t["task"]: t for t in admin.tasks()}
    assert listed[b]["trip"]["reason"] == "operator" and listed[b]["state"] == "killed"
    assert listed[c]["agents"] == ["critic"] and listed[c]["calls"] == 2

    first = admin.get("/tasks", sort="calls", limit=2).json()
    assert [t["task"] for t in first["tasks"]] == [b, c] and first["next_cursor"]
    second = admin.get("/tasks", sort="calls", limit=2, cursor=first["next_cursor"]).json()
    assert [t["task"] for t in second["tasks"]] == [a] and second["next_cursor"] is None

    for bad in ({"limit": 0}, {"limit": 501}, {"state": "dead"}, {"sort": "x"}, {"cursor": "-1"}):
        response = admin.get("/tasks", **bad)
        assert response.status_code == 400, bad
        assert error_of(response)["code"] == "invalid_request"


def test_kill_cuts_streams_and_refuses_later_calls(
    proxy: ProxyThread, admin: Admin, mock: MockProviderThread
) -> None:
    task = unique("kill")
    call(proxy, task)
    slow = {"x-mock-reply-tokens": "200", "x-mock-chunks": "100", "x-mock-chunk-delay": "0.02"}
    items: list[Any] = []
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(
            ask,
            "chat",
            proxy.base_url,
            stream=True,
            headers={"X-Task-Id": task, **slow},
            on_item=items.append,
        )
        assert wait_for(lambda: len(items) >= 3)
        killed = admin.act(task, "kill", {"reason": "runaway, stopping it by hand"})
        assert killed.status_code == 200, killed.text
        with pytest.raises(openai.APIError) as cut:
            stream.result(10)
    assert "runaway, stopping it by hand" in str(cut.value)
    assert len(items) < 100
    trip = killed.json()["trip"]
    assert trip["reason"] == "operator" and trip["figures"] == {
        "by": "alice",
        "note": "runaway, stopping it by hand",
    }
    with pytest.raises(openai.PermissionDeniedError) as refused:
        call(proxy, task)
    assert "stopped by alice: runaway, stopping it by hand" in refused.value.message
    again = admin.act(task, "kill", {"reason": "again"})
    assert again.status_code == 409 and error_of(again)["code"] == "task_killed"
    kill = admin.audit(task=task)[0]
    assert kill["action"] == "kill" and kill["actor"] == "alice"
    assert kill["detail"] == "runaway, stopping it by hand"


def test_extend_moves_the_deadline(proxy: ProxyThread, admin: Admin) -> None:
    late, extended = unique("late"), unique("extended")
    for task in (late, extended):
        response = admin.post("/tasks", {"task": task, "limits": {"max_duration": 0.3}})
        assert response.status_code == 201
        time.sleep(0.4)  # the deadline runs from the first call, not from creation
        assert call(proxy, task).status == 200
    moved = admin.act(extended, "extend", {"seconds": 60, "note": "the report is long"})
    assert moved.status_code == 200 and moved.json()["extra_duration_s"] == 60
    time.sleep(0.4)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        call(proxy, late)
    assert "deadline" in refused.value.message
    assert call(proxy, extended).status == 200
    timeline = admin.task(extended).json()["timeline"]
    assert [e["kind"] for e in timeline] == ["created", "extend"]
    assert "60s later the report is long" in timeline[-1]["detail"]
    event = admin.audit(task=extended)[0]
    assert event["action"] == "extend" and event["data"]["seconds"] == 60


def test_request_bodies_are_checked(proxy: ProxyThread, admin: Admin) -> None:
    task = unique("bodies")
    assert admin.post("/tasks", {"task": task}).status_code == 201
    for path, body in (
        ("/tasks", {"task": "a/b"}),
        ("/tasks", {"task": "x", "limits": {"max_tokenz": 5}}),
        ("/tasks", {"task": "x", "limits": {"max_tokens": 0}}),
        ("/tasks", {"task": "x", "limits": {"max_tokens": "500"}}),
        ("/tasks", {"task": "x", "limits": {"max_tokens": None}}),
        ("/tasks", {"task": "x", "extra": 1}),
        ("/tasks", {"task": "x", "owner": "https://hooks.example.com/x"}),
        (f"/tasks/{task}/kill", {}),
        (f"/tasks/{task}/kill", {"reason": ""}),
        (f"/tasks/{task}/extend", {"seconds": -5}),
        (f"/tasks/{task}/resume", {"limits": {"max_duration": "30m"}}),
        (f"/tasks/{task}/resume", [1, 2]),
    ):
        response = admin.post(path, body)
        assert response.status_code == 400, (path, body, response.text)
        assert error_of(response)["code"] == "invalid_request"
    not_json = admin.http.post("/tasks", content=b"task=x", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 415
    # An empty body is fine where every field is optional.
    assert admin.post(f"/tasks/{task}/resume").status_code == 200


def test_signed_budget_resumed_with_more_by_a_tenant_admin(
    make_proxy: Any, state: dict[str, Any], admins: Any, mock: MockProviderThread
) -> None:
    proxy = make_proxy(auth={"mode": "jwt", **AUTH}, state=state)
    task = unique("signed")
    agent = token(task=task, agent="writer", tenant="acme", limits={"max_tokens": 300})
    admin = admins(proxy, admin_token(tenant="acme", sub="acme-ops"))

    def one() -> Any:
        answer = " ".join(uuid.uuid4().hex for _ in range(4))
        return ask(
            "chat",
            proxy.base_url,
            api_key=agent,
            prompt=f"next step {uuid.uuid4().hex}",
            headers={"x-mock-reply": answer},
        )

    with pytest.raises(openai.PermissionDeniedError):
        for _ in range(10):
            one()
    shown = admin.task(task).json()
    assert shown["task"] == task and shown["key"] == f"acme/{task}"
    assert shown["tenant"] == "acme" and shown["trip"]["reason"] == "budget_tokens"
    resumed = admin.act(task, "resume", {"limits": {"max_tokens": 10_000}})
    assert resumed.status_code == 200, resumed.text
    assert one().status == 200
    events = admin.audit()
    assert [e["action"] for e in events][:2] == ["resume", "kill"]
    assert all(e["task"] == task and e["tenant"] == "acme" for e in events)


def test_admin_auth(make_proxy: Any, admins: Any) -> None:
    proxy = make_proxy(auth=AUTH)
    cases = {
        "no token": (None, 401),
        "not a jwt": ("nonsense", 401),
        "expired": (token(ttl=-300, role="admin"), 401),
        "another secret": (token(secret="x" * 40, role="admin"), 401),
        "an agent's token": (token(task="t"), 403),
    }
    for name, (bearer, status) in cases.items():
        response = admins(proxy, bearer).get("/tasks")
        assert response.status_code == status, name
        assert error_of(response)["code"] == ("unauthorized" if status == 401 else "forbidden")
        if status == 401:
            assert response.headers["WWW-Authenticate"] == "Bearer"
    anonymous = admins(proxy, None)
    assert anonymous.get("/openapi.json").status_code == 200
    admin = admins(proxy, admin_token())
    unknown = admin.get("/nothing-here")
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "not_found"
    wrong_method = admin.http.delete("/tasks")
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "GET, POST"
    missing = admin.task("no-such-task")
    assert missing.status_code == 404 and error_of(missing)["code"] == "task_not_found"


def test_no_keys_no_admin_api(make_proxy: Any, admins: Any) -> None:
    proxy = make_proxy()
    response = admins(proxy, admin_token()).get("/tasks")
    assert response.status_code == 401
    assert "no token keys configured" in error_of(response)["message"]
