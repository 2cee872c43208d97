"""What the console reads and acts through, without a browser: the local admin token, the
viewer role, ``/me``, ``/activity``, ``/trips`` with the money-saved estimate, the page's
headers, and ``tripwire tasks``/``tripwire console`` on a default local install."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.admin.local import ensure_token, read_token
from proxy.cli import main
from proxy.telemetry.activity import Activity
from proxy.telemetry.record import CallRecord
from tests.admin.conftest import SECRET, token
from tests.harness import ProxyThread, proxy_config


def ask(proxy: ProxyThread, task: str, content: str) -> str:
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk-x", max_retries=0)
    try:
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": content}],
            extra_headers={"X-Task-Id": task},
        )
    except openai.PermissionDeniedError:
        return "refused"
    return reply.choices[0].message.content or ""


def test_the_local_token_is_made_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "admin-token"
    first = ensure_token(path)
    assert first is not None and first.startswith("twl_")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(path) == first == read_token(path)
    # A folder that cannot be made (here, a file is in the way): no token, a warning, no crash.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert ensure_token(blocker / "admin-token") is None


def test_activity_counts_minutes_and_refusals_per_task() -> None:
    now = [1_000_020.0]
    activity = Activity(max_tasks=2, clock=lambda: now[0])
    activity.record(CallRecord("a", "x", "openai", "m", "ok", 200, 10, 5, cost_usd=0.5))
    activity.record(CallRecord("a", "x", "openai", "m", "refused", 403, forwarded=False))
    activity.record(CallRecord("a", "x", "openai", "m", "budget_busy", 429, forwarded=False))
    now[0] += 120
    activity.record(CallRecord("b", "y", "openai", "m", "ok", 200, 1, 1, cost_usd=0.25))
    assert activity.refused("a") == 1 and activity.refused("b") == 0
    assert [c.outcome for c in activity.calls("a")] == ["ok", "refused", "budget_busy"]
    hour = activity.hour()
    assert len(hour) == 60 and hour[-1].calls == 1 and hour[-3].calls == 1
    assert sum(m.cost_usd for m in hour) == 0.75 and sum(m.refused for m in hour) == 1
    assert sum(m.calls for m in activity.hour(["b"])) == 1
    activity.record(CallRecord("c", "z", "openai", "m", "ok", 200))
    assert activity.calls("a") == []  # the least recently active task gave way
    # Refused calls of tasks never forwarded (made-up ids) push no task out, and still count.
    for number in range(10):
        activity.record(
            CallRecord(f"x{number}", "z", "openai", "m", "refused", 403, forwarded=False)
        )
    assert [c.outcome for c in activity.calls("b")] == ["ok"]
    assert activity.refused("x0") == 0 and sum(m.refused for m in activity.hour()) == 10


def test_activity_keeps_a_tasks_last_calls_and_its_last_hour() -> None:
    now = [1_000_020.0]
    activity = Activity(calls_per_task=3, clock=lambda: now[0])
    for number in range(90):  # one call a minute for an hour and a half
        activity.record(CallRecord("a", "x", "openai", "m", "ok", 200, number, 0))
        now[0] += 60
    assert [c.tokens for c in activity.calls("a")] == [87, 88, 89]
    hour = activity.hour(["a"])
    # The minute now has no call yet; the 59 before it hold the last 59 of the 90.
    assert [m.tokens for m in hour] == [*range(31, 90), 0]
    # Older minutes are dropped, not kept past the hour the console shows.
    assert len(activity._tasks["a"].minutes) == 60


def test_the_local_token_is_a_global_admin_and_nothing_else_is(mock: Any, tmp_path: Path) -> None:
    local = ensure_token(tmp_path / "admin-token")
    assert local is not None
    proxy = ProxyThread(proxy_config(mock.base_url), local)
    try:
        api = proxy.base_url + "/tripwire/v1"
        me = httpx.get(api + "/me", headers={"Authorization": f"Bearer {local}"})
        assert me.status_code == 200
        assert me.json() | {"idle_after_s": 0} == {
            "actor": "local-admin",
            "tenant": None,
            "role": "admin",
            "may_act": True,
            "local": True,
            "idle_after_s": 0,
        }
        assert httpx.get(api + "/tasks").status_code == 401
        wrong = httpx.get(api + "/tasks", headers={"Authorization": "Bearer twl_" + "x" * 43})
        assert wrong.status_code == 401
        assert "auth.local_admin_file" in wrong.json()["error"]["message"]
        # An agent's call never carries admin rights, whatever it sends.
        assert ask(proxy, "t1", "hello") == "Answer to: hello"
    finally:
        proxy.stop()


def test_with_jwt_the_local_token_is_refused(mock: Any, tmp_path: Path) -> None:
    local = ensure_token(tmp_path / "admin-token")
    assert local is not None
    config = proxy_config(mock.base_url, auth={"mode": "jwt", "hs256_secret": SECRET})
    proxy = ProxyThread(config, local)
    try:
        me = httpx.get(
            proxy.base_url + "/tripwire/v1/me", headers={"Authorization": f"Bearer {local}"}
        )
        assert me.status_code == 401
    finally:
        proxy.stop()


@pytest.fixture
def keyed(make_proxy: Any) -> ProxyThread:
    return make_proxy(  # type: ignore[no-any-return]
        auth={"hs256_secret": SECRET}, policy={"defaults": {"max_calls": 2}}
    )


def get(proxy: ProxyThread, path: str, bearer: str) -> httpx.Response:
    return httpx.get(
        proxy.base_url + "/tripwire/v1" + path, headers={"Authorization": f"Bearer {bearer}"}
    )


def test_viewers_read_and_cannot_act(keyed: ProxyThread) -> None:
    viewer = token(role="viewer", sub="vic")
    for _ in range(4):
        ask(keyed, "v1", "same")
    assert get(keyed, "/tasks", viewer).json()["tasks"][0]["state"] == "killed"
    assert get(keyed, "/me", viewer).json()["may_act"] is False
    for action, body in (("kill", {"reason": "x"}), ("resume", {}), ("extend", {"seconds": 5})):
        response = httpx.post(
            f"{keyed.base_url}/tripwire/v1/tasks/v1/{action}",
            json=body,
            headers={"Authorization": f"Bearer {viewer}"},
        )
        assert response.status_code == 403, action
    # A token of neither role reads nothing.
    assert get(keyed, "/tasks", token(task="t")).status_code == 403


def test_trips_feed_and_money_saved_estimate(keyed: ProxyThread) -> None:
    admin = token(role="admin", sub="dana")
    answers = [ask(keyed, "loop", f"step {i}") for i in range(5)]
    assert answers[2:] == ["refused"] * 3
    feed = get(keyed, "/trips", admin).json()
    assert [(t["task"], t["action"], t["reason"]) for t in feed["trips"]] == [
        ("loop", "kill", "max_calls")
    ]
    (saved,) = feed["stopped"]
    task = get(keyed, "/tasks/loop", admin).json()
    assert saved["refused_calls"] == task["refused_calls"] == 3
    assert saved["calls"] == 2 and saved["average_cost_usd"] > 0
    assert saved["saved_usd_estimate"] == pytest.approx(3 * task["cost_usd"] / 2)
    assert feed["saved_usd_estimate"] == pytest.approx(saved["saved_usd_estimate"])
    assert [c["outcome"] for c in task["recent_calls"]] == ["ok", "ok", "refused"] + ["refused"] * 2
    assert task["max_calls"] == 2 and task["deadline"] is None
    minutes = get(keyed, "/activity", admin).json()["minutes"]
    assert sum(m["calls"] for m in minutes) == 2 and sum(m["refused"] for m in minutes) == 3
    # An operator's kill is in the feed with who did it.
    ask(keyed, "other", "hi")
    httpx.post(
        f"{keyed.base_url}/tripwire/v1/tasks/other/kill",
        json={"reason": "enough"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    first = get(keyed, "/trips", admin).json()["trips"][0]
    assert (first["task"], first["action"], first["actor"]) == ("other", "operator", "dana")


def test_a_tenant_admin_sees_only_its_tenant(make_proxy: Any) -> None:
    proxy = make_proxy(
        auth={"mode": "jwt", "hs256_secret": SECRET}, policy={"defaults": {"max_calls": 1}}
    )
    for tenant in ("acme", "globex"):
        client = openai.OpenAI(
            base_url=proxy.openai_url,
            api_key=token(tenant=tenant, task="job", agent="a"),
            max_retries=0,
        )
        for _ in range(2):
            with contextlib.suppress(openai.PermissionDeniedError):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                )
    acme = token(role="admin", tenant="acme", sub="a")
    feed = get(proxy, "/trips", acme).json()
    assert {t["tenant"] for t in feed["trips"]} == {"acme"}
    assert [s["task"] for s in feed["stopped"]] == ["job"]
    minutes = get(proxy, "/activity", acme).json()["minutes"]
    assert sum(m["calls"] for m in minutes) == 1


def test_the_page_is_served_with_a_strict_policy(proxy: ProxyThread) -> None:
    page = httpx.get(proxy.base_url + "/tripwire/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in page.text and "http" not in page.text.replace("https://", "")
    script = httpx.get(proxy.base_url + "/tripwire/ui/console.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert ".innerHTML" not in script.text
    assert httpx.get(proxy.base_url + "/tripwire/ui/../app.py").status_code == 404
    assert httpx.get(proxy.base_url + "/tripwire/ui/nope.js").status_code == 404
    moved = httpx.get(proxy.base_url + "/tripwire/ui")
    assert moved.status_code == 302 and moved.headers["location"] == "/tripwire/ui/"


def test_tasks_reads_the_local_token_and_a_refusal_says_how_to_fix_it(
    mock: Any, local_admin_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.delenv("TRIPWIRE_ADMIN_TOKEN", raising=False)
    code = main(["tasks", "list", "--url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "no local admin token in" in err and "--role admin" in err

    local = ensure_token(local_admin_file)
    assert local is not None
    proxy = ProxyThread(proxy_config(mock.base_url), local)
    try:
        ask(proxy, "cli-task", "hello")
        assert main(["tasks", "list", "--url", proxy.base_url]) == 0
        assert "cli-task" in capsys.readouterr().out
        assert main(["console", "--url", proxy.base_url]) == 0
        assert capsys.readouterr().out.strip() == f"{proxy.base_url}/tripwire/ui/#token={local}"
    finally:
        proxy.stop()
    local_admin_file.write_text("twl_" + "y" * 43)
    other = ProxyThread(proxy_config(mock.base_url), local)
    try:
        assert main(["tasks", "list", "--url", other.base_url]) == 1
        err = capsys.readouterr().err
        assert "HTTP 401" in err and "TRIPWIRE_ADMIN_TOKEN" in err
    finally:
        other.stop()
