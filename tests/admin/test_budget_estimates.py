"""A token budget an operator gives a task through the admin API bounds its calls' prompts as
a policy's budget does, although the policy sets none and calls without a budget go
unestimated: created ahead, raised on a task already running, kept through a restart of the
embedded ledger with its state file, and set through another replica sharing Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.admin.conftest import SECRET, admin_token, unique
from tests.harness import MockProviderThread, ProxyThread

AUTH = {"hs256_secret": SECRET}  # the admin API needs keys; agent traffic stays tokenless
LONG_PROMPT = "the quarterly figures again " * 400  # about 2,000 tokens


def ask(proxy: ProxyThread, task: str, prompt: str) -> Any:
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk-test", max_retries=0)
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        extra_headers={"X-Task-Id": task},
    )


def refused_for_its_prompt(proxy: ProxyThread, task: str, mock: MockProviderThread) -> None:
    hits = mock.provider.total_hits
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask(proxy, task, LONG_PROMPT)
    assert "budget_tokens" in refused.value.message
    assert mock.provider.total_hits == hits  # never reached the provider


def test_a_budget_created_ahead_bounds_the_first_prompt(
    make_proxy: Any, admins: Any, state: dict[str, Any], mock: MockProviderThread
) -> None:
    proxy = make_proxy(auth=AUTH, state=state)
    admin = admins(proxy, admin_token())
    task = unique("ahead")
    created = admin.post("/tasks", {"task": task, "limits": {"max_tokens": 300}})
    assert created.status_code == 201, created.text
    refused_for_its_prompt(proxy, task, mock)


def test_a_budget_given_to_a_running_task_bounds_its_next_prompt(
    make_proxy: Any, admins: Any, state: dict[str, Any], mock: MockProviderThread
) -> None:
    proxy = make_proxy(auth=AUTH, state=state)
    admin = admins(proxy, admin_token())
    task = unique("running")
    ask(proxy, task, "a short question")  # no budget yet
    resumed = admin.act(task, "resume", {"limits": {"max_tokens": 300}})
    assert resumed.status_code == 200, resumed.text
    refused_for_its_prompt(proxy, task, mock)


def test_a_budget_kept_through_a_restart_bounds_the_prompt(
    make_proxy: Any, admins: Any, tmp_path: Path, mock: MockProviderThread
) -> None:
    state = {"persist_file": str(tmp_path / "tasks.json")}
    before = make_proxy(auth=AUTH, state=state)
    task = unique("kept")
    created = admins(before, admin_token()).post(
        "/tasks", {"task": task, "limits": {"max_tokens": 300}}
    )
    assert created.status_code == 201, created.text
    before.stop()
    after = make_proxy(auth=AUTH, state=state)
    refused_for_its_prompt(after, task, mock)


def test_a_budget_set_through_another_replica_bounds_the_prompt(
    make_proxy: Any, admins: Any, redis_server: Any, mock: MockProviderThread
) -> None:
    state = {"backend": "redis", "redis_url": redis_server.url, "key_prefix": unique("tw")}
    one, other = make_proxy(auth=AUTH, state=state), make_proxy(auth=AUTH, state=state)
    task = unique("elsewhere")
    ask(other, task, "a short question")  # no budget yet: not estimated
    resumed = admins(one, admin_token()).act(task, "resume", {"limits": {"max_tokens": 300}})
    assert resumed.status_code == 200, resumed.text
    refused_for_its_prompt(other, task, mock)
