"""``tripwire token`` and ``tripwire tasks ...`` against a running proxy: the README's walkthrough
(mint a task token with a budget, run an agent on it, watch it, resume it with more)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import jwt
import openai
import pytest

from proxy.auth import TokenVerifier
from proxy.cli import main
from proxy.config import AuthSettings
from tests.admin.conftest import SECRET, admin_token, token, unique
from tests.contract.sdk import ask
from tests.harness import ProxyThread


def tripwire(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def proxy(make_proxy: Any) -> ProxyThread:
    return make_proxy(auth={"mode": "jwt", "hs256_secret": SECRET})  # type: ignore[no-any-return]


@pytest.fixture
def env(proxy: ProxyThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIPWIRE_URL", proxy.base_url)
    monkeypatch.setenv("TRIPWIRE_ADMIN_TOKEN", admin_token(sub="cli-user"))
    monkeypatch.setenv("TW_SECRET", SECRET)


def test_token_mints_what_the_proxy_verifies(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TW_SECRET", SECRET)
    code, out, _ = tripwire(
        capsys,
        "token",
        "--secret-env",
        "TW_SECRET",
        "--task",
        "job-42",
        "--tenant",
        "acme",
        "--agent",
        "planner",
        "--owner",
        "team-research",
        "--max-tokens",
        "2000",
        "--max-cost-usd",
        "0.5",
        "--max-duration",
        "30m",
        "--ttl",
        "2h",
        "--issuer",
        "https://auth.example.com",
        "--audience",
        "tripwire",
    )
    assert code == 0
    settings = AuthSettings(
        hs256_secret=SECRET, issuer="https://auth.example.com", audience="tripwire"
    )
    claims = TokenVerifier(settings).verify(out.strip())
    assert (claims.task, claims.tenant, claims.agent, claims.owner) == (
        "job-42",
        "acme",
        "planner",
        "team-research",
    )
    assert claims.limits is not None
    assert claims.limits.model_dump(exclude_none=True) == {
        "max_tokens": 2000,
        "max_cost_usd": 0.5,
        "max_duration": 1800.0,
    }
    assert not claims.is_admin
    payload = jwt.decode(out.strip(), options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 7200
    assert jwt.get_unverified_header(out.strip())["alg"] == "HS256"

    code, out, _ = tripwire(capsys, "token", "--secret", SECRET, "--role", "admin", "--sub", "me")
    admin = TokenVerifier(AuthSettings(hs256_secret=SECRET)).verify(out.strip())
    assert code == 0 and admin.is_admin and admin.sub == "me" and admin.tenant is None

    code, out, _ = tripwire(capsys, "token", "--secret", SECRET, "--role", "metrics")
    scraper = TokenVerifier(AuthSettings(hs256_secret=SECRET)).verify(out.strip())
    assert code == 0 and scraper.may_scrape and not scraper.is_viewer


def test_token_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TW_MISSING", raising=False)
    code, _, err = tripwire(capsys, "token", "--secret-env", "TW_MISSING")
    assert code == 2 and "TW_MISSING" in err
    code, _, err = tripwire(capsys, "token", "--secret", SECRET, "--tenant", "not valid!")
    assert code == 2 and "tenant" in err
    code, _, err = tripwire(capsys, "token", "--secret", SECRET, "--max-tokens", "0")
    assert code == 2 and "max_tokens" in err
    with pytest.raises(SystemExit):
        main(["token", "--secret", SECRET, "--max-duration", "soon"])
    assert "not a duration" in capsys.readouterr().err


@pytest.mark.usefixtures("env")
def test_walkthrough(proxy: ProxyThread, capsys: pytest.CaptureFixture[str]) -> None:
    task = unique("job")
    code, agent_token, _ = tripwire(
        capsys, "token", "--secret-env", "TW_SECRET", "--task", task, "--max-tokens", "300"
    )
    assert code == 0
    client = openai.OpenAI(base_url=proxy.openai_url, api_key=agent_token.strip(), max_retries=0)
    with client, pytest.raises(openai.PermissionDeniedError):
        for _ in range(10):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"next step {uuid.uuid4().hex}"}],
                extra_headers={"x-mock-reply": uuid.uuid4().hex * 6},
            )

    code, out, _ = tripwire(capsys, "tasks", "list")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["TASK", "STATE", "TOKENS", "COST", "CALLS", "HOPS", "AGENTS", "TRIP"]
    cells = row.split()
    assert cells[0] == task and cells[1] == "killed" and cells[2].endswith("/300")
    assert cells[-1] == "budget_tokens"

    code, out, _ = tripwire(capsys, "tasks", "show", task)
    assert code == 0
    assert f"task      {task}" in out and "state     killed (budget_tokens)" in out
    assert "last completions:" in out and "timeline:" in out and " kill " in out

    code, out, _ = tripwire(
        capsys, "tasks", "resume", task, "--max-tokens", "5000", "--note", "approved by dana"
    )
    assert code == 0 and f"resumed task {task}" in out and "state     active" in out
    assert "max_tokens=5000" in out
    assert ask("chat", proxy.base_url, api_key=agent_token.strip()).status == 200

    code, out, _ = tripwire(capsys, "tasks", "extend", task, "--seconds", "10m")
    assert code == 0 and "extended  600s" in out
    code, out, _ = tripwire(capsys, "tasks", "kill", task, "--reason", "done for today")
    assert code == 0 and "stopped by cli-user: done for today" in out
    code, out, _ = tripwire(capsys, "tasks", "list", "--state", "killed", "--json")
    assert code == 0 and [t["task"] for t in json.loads(out)["tasks"]] == [task]
    code, out, _ = tripwire(capsys, "tasks", "audit", "--task", task)
    actions = [line.split()[2] for line in out.splitlines()]
    assert code == 0 and actions == ["kill", "extend", "resume", "kill"]
    assert "by cli-user: approved by dana [max_tokens 300 -> 5000]" in out


@pytest.mark.usefixtures("env")
def test_create_and_page(proxy: ProxyThread, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = unique("first"), unique("second")
    for task in (first, second):
        code, out, _ = tripwire(
            capsys, "tasks", "create", task, "--owner", "ops", "--max-calls", "5"
        )
        assert code == 0 and f"created task {task}" in out and "limits    max_calls=5" in out
    code, out, _ = tripwire(capsys, "tasks", "list", "--sort", "age", "--limit", "1")
    assert code == 0 and out.splitlines()[1].startswith(first)
    assert "(more: --cursor 1)" in out
    code, out, _ = tripwire(capsys, "tasks", "list", "--sort", "age", "--cursor", "1")
    assert out.splitlines()[1].startswith(second) and "more" not in out


@pytest.mark.usefixtures("env")
def test_errors_exit_non_zero_with_the_api_message(
    proxy: ProxyThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = tripwire(capsys, "tasks", "show", "no-such-task")
    assert code == 1 and "no task 'no-such-task' (HTTP 404, task_not_found)" in err
    code, _, err = tripwire(capsys, "tasks", "list", "--limit", "0")
    assert code == 1 and "HTTP 400" in err and "limit" in err
    code, _, err = tripwire(capsys, "tasks", "list", "--token", "garbage")
    assert code == 1 and "HTTP 401" in err
    code, _, err = tripwire(capsys, "tasks", "list", "--token", token(task="t"))
    assert code == 1 and "does not carry the admin role (HTTP 403, forbidden)" in err
    code, _, err = tripwire(capsys, "tasks", "list", "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach Tripwire at http://127.0.0.1:9" in err
    monkeypatch.delenv("TRIPWIRE_ADMIN_TOKEN")
    code, _, err = tripwire(capsys, "tasks", "list")
    assert code == 2 and "TRIPWIRE_ADMIN_TOKEN" in err


def test_the_installed_command(proxy: ProxyThread) -> None:
    """The same, as a user runs it: a separate process."""
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "tasks", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "TRIPWIRE_URL": proxy.base_url,
            "TRIPWIRE_ADMIN_TOKEN": admin_token(),
        },
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"tasks": [], "next_cursor": None}
