"""Tagging: which task and agent a call counts against, from what clients already send."""

from __future__ import annotations

import pytest

from tests.contract.sdk import KINDS, MODES, ask
from tests.harness import MockProviderThread, ProxyThread


@pytest.mark.parametrize("kind", KINDS)
def test_task_from_another_gateways_session_header(
    proxy: ProxyThread, mock: MockProviderThread, kind: str
) -> None:
    session = f"sess-81-{kind}"
    reply = ask(kind, proxy.base_url, headers={"x-litellm-session-id": session})
    assert reply.headers["x-tripwire-task"] == session
    view = proxy.task(session)
    assert view is not None and view.tokens_used == reply.usage
    # Other gateways' headers travel on unchanged.
    assert mock.provider.last_request is not None
    assert mock.provider.last_request.headers["x-litellm-session-id"] == session


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_task_and_agent_from_the_url_prefix(
    proxy: ProxyThread, mock: MockProviderThread, kind: str, mode: str
) -> None:
    job = f"job-42-{kind}-{mode}"
    reply = ask(kind, f"{proxy.base_url}/t/{job}/a/planner", mode=mode, stream=True)
    assert reply.headers["x-tripwire-task"] == job
    assert reply.headers["x-tripwire-agent"] == "planner"
    forwarded = mock.provider.last_request
    assert forwarded is not None and forwarded.path in (
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
    )
    view = proxy.task(job)
    assert view is not None and view.agents == ["planner"] and view.calls == 1


def test_header_names_the_task_over_the_url_prefix(proxy: ProxyThread) -> None:
    reply = ask("chat", f"{proxy.base_url}/t/from-url", headers={"X-Task-Id": "from-header"})
    assert reply.headers["x-tripwire-task"] == "from-header"
    assert proxy.task("from-url") is None


@pytest.mark.parametrize("kind", KINDS)
def test_task_from_the_trace_id_of_traceparent(proxy: ProxyThread, kind: str) -> None:
    trace = "4BF92F3577B34DA6A3CE929D0E0E473" + str(KINDS.index(kind))
    reply = ask(kind, proxy.base_url, headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert reply.headers["x-tripwire-task"] == trace.lower()
    assert proxy.task(trace.lower()) is not None


@pytest.mark.parametrize("kind", KINDS)
def test_task_from_the_credential(proxy: ProxyThread, kind: str) -> None:
    first = ask(kind, proxy.base_url, api_key=f"sk-team-alpha-{kind}")
    again = ask(kind, proxy.base_url, api_key=f"sk-team-alpha-{kind}")
    other = ask(kind, proxy.base_url, api_key=f"sk-team-beta-{kind}")

    task = first.headers["x-tripwire-task"]
    assert task.startswith("key:")
    assert "sk-team-alpha" not in task
    assert again.headers["x-tripwire-task"] == task
    assert other.headers["x-tripwire-task"].startswith("key:")
    assert other.headers["x-tripwire-task"] != task
    view = proxy.task(task)
    assert view is not None and view.calls == 2


@pytest.mark.parametrize("kind", KINDS)
def test_agent_from_the_system_prompt(proxy: ProxyThread, task: str, kind: str) -> None:
    headers = {"X-Task-Id": task}
    planner = ask(kind, proxy.base_url, headers=headers, system="You plan the work.")
    planner_again = ask(
        kind, proxy.base_url, headers=headers, system="You plan the work.", prompt="next step"
    )
    critic = ask(kind, proxy.base_url, headers=headers, system="You criticise the plan.")

    agent = planner.headers["x-tripwire-agent"]
    assert agent.startswith("sys:")
    assert planner_again.headers["x-tripwire-agent"] == agent
    assert critic.headers["x-tripwire-agent"].startswith("sys:")
    assert critic.headers["x-tripwire-agent"] != agent
    view = proxy.task(task)
    assert view is not None and view.hops == 1  # planner, planner, critic
    assert sorted(view.agents) == sorted({agent, critic.headers["x-tripwire-agent"]})


def test_agent_header_names_the_agent_over_the_system_prompt(proxy: ProxyThread, task: str) -> None:
    reply = ask(
        "chat",
        proxy.base_url,
        headers={"X-Task-Id": task, "X-Agent-Id": "reviewer"},
        system="You plan the work.",
    )
    assert reply.headers["x-tripwire-agent"] == "reviewer"
