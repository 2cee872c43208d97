"""Fault injection as a feature: chaos rules answer a share of a task's calls with a provider
failure in the provider's own format, never reaching the provider, never charged, invisible to
the detectors, counted in metrics and marked in the logs."""

from __future__ import annotations

import time
from typing import Any

import httpx2
import pytest

from proxy.addons.chaos import Chaos
from proxy.app import HOOKS
from proxy.config import load_config
from proxy.errors import ConfigError
from tests.contract.sdk import KINDS, MODES, ask, errors_of
from tests.harness import MockProviderThread, ProxyThread
from tests.reliability.conftest import LogLines

STALL = 0.3


def chaos_proxy(make_proxy: Any, task: str, **chaos: Any) -> ProxyThread:
    settings = {"probability": 1.0, "stall": STALL, "retry_after": 0, **chaos}
    rules = [{"name": "drill", "match": {"task": task}, "chaos": settings}]
    return make_proxy(allow_chaos=True, policy={"rules": rules})  # type: ignore[no-any-return]


def scrape(proxy: ProxyThread) -> str:
    return httpx2.get(proxy.base_url + "/metrics", timeout=10).text


def injected_count(proxy: ProxyThread, fault: str) -> float:
    for line in scrape(proxy).splitlines():
        if line.startswith(f'tripwire_faults_injected_total{{fault="{fault}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series for {fault}")


def assert_untouched(proxy: ProxyThread, mock: MockProviderThread, task: str) -> None:
    """Nothing reached the provider and nothing was charged or counted for the task."""
    assert mock.provider.total_hits == 0
    view = proxy.task(task)
    assert view is None or (view.calls == 0 and view.tokens_used == 0)


# -- configuration ------------------------------------------------------------------------------


def test_a_chaos_rule_is_refused_without_allow_chaos() -> None:
    rules = [{"match": {"task": "drill-*"}, "chaos": {"probability": 0.1}}]
    with pytest.raises(ConfigError) as refused:
        load_config(None, policy={"rules": rules})
    assert "policy.rules[0].chaos" in str(refused.value)
    assert "allow_chaos: true" in str(refused.value)
    config = load_config(None, allow_chaos=True, policy={"rules": rules})
    assert config.policy.rules[0].chaos is not None


def test_allow_chaos_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIPWIRE_ALLOW_CHAOS", "true")
    rules = [{"chaos": {"probability": 0.5, "faults": ["rate_limit"]}}]
    assert load_config(None, policy={"rules": rules}).allow_chaos


@pytest.mark.parametrize(
    "chaos",
    [
        {"probability": 1.5},
        {"probability": 0.5, "faults": ["meteor"]},
        {"probability": 0.5, "faults": []},
        {"probability": 0.5, "stall": "soon"},
        {"faults": ["timeout"]},
    ],
)
def test_a_bad_chaos_section_names_the_field(chaos: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(None, allow_chaos=True, policy={"rules": [{"chaos": chaos}]})
    assert "policy.rules.0.chaos" in str(refused.value)


def test_chaos_off_leaves_the_pipeline_without_it(make_proxy: Any) -> None:
    plain = make_proxy()
    allowed_but_unused = make_proxy(allow_chaos=True)
    for proxy in (plain, allowed_but_unused):
        assert proxy._app is not None
        assert proxy._app[HOOKS].find(Chaos) is None


# -- each fault as the agent's SDK sees it ------------------------------------------------------

JSON_FAULTS = {
    "rate_limit": (429, "RateLimitError"),
    "server_error": (500, "InternalServerError"),
    "overloaded": (503, "InternalServerError"),
    "timeout": (504, "InternalServerError"),
}


@pytest.mark.parametrize("fault", list(JSON_FAULTS))
@pytest.mark.parametrize("kind", KINDS)
def test_an_injected_error_is_the_providers_error(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, fault: str
) -> None:
    proxy = chaos_proxy(make_proxy, task, faults=[fault])
    status, exception = JSON_FAULTS[fault]
    started = time.monotonic()
    with pytest.raises(errors_of(kind).APIStatusError) as raised:
        ask(kind, proxy.base_url, headers={"X-Task-Id": task})
    error = raised.value
    assert isinstance(error, getattr(errors_of(kind), exception))
    assert error.status_code == status
    headers = error.response.headers
    assert headers["x-tripwire-fault"] == fault
    assert headers["x-tripwire-task"] == task
    if status in (429, 503):
        assert headers["retry-after"] == "0"
    if fault == "timeout":
        assert time.monotonic() - started >= STALL
    body = error.response.json()
    if kind == "messages":
        assert set(body) == {"type", "error"} and body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "fault injected by Tripwire chaos" in str(error)
    assert_untouched(proxy, mock, task)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_an_injected_malformed_body_fails_to_parse(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    proxy = chaos_proxy(make_proxy, task, faults=["malformed"])
    with pytest.raises(ValueError):
        ask(kind, proxy.base_url, mode=mode, headers={"X-Task-Id": task})
    assert_untouched(proxy, mock, task)


@pytest.mark.parametrize("fault", ["stream_break", "stream_stall", "malformed"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_an_injected_stream_starts_then_breaks_off(
    make_proxy: Any, mock: MockProviderThread, task: str, kind: str, mode: str, fault: str
) -> None:
    proxy = chaos_proxy(make_proxy, task, faults=[fault])
    items: list[Any] = []
    started = time.monotonic()
    expected = ValueError if fault == "malformed" else errors_of(kind).APIError
    with pytest.raises(expected) as raised:
        ask(
            kind,
            proxy.base_url,
            mode=mode,
            stream=True,
            headers={"X-Task-Id": task},
            on_item=items.append,
        )
    assert items, "the stream did not start before it broke"
    if fault != "malformed":
        assert "stream broke off" in str(raised.value)
    if fault == "stream_stall":
        assert time.monotonic() - started >= STALL
    assert_untouched(proxy, mock, task)


def test_stream_faults_spare_calls_that_do_not_stream(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = chaos_proxy(make_proxy, task, faults=["stream_break", "stream_stall"])
    assert ask("chat", proxy.base_url, headers={"X-Task-Id": task}).status == 200
    assert mock.provider.total_hits == 1


# -- what an injected fault does to the task, the metrics and the logs ----------------------------


def test_injected_faults_are_counted_and_logged(
    make_proxy: Any, mock: MockProviderThread, task: str, log_lines: LogLines
) -> None:
    proxy = chaos_proxy(make_proxy, task, faults=["rate_limit"])
    calls: list[int] = []
    with pytest.raises(errors_of("chat").RateLimitError):
        ask(
            "chat",
            proxy.base_url,
            headers={"X-Task-Id": task, "X-Agent-Id": "planner"},
            max_retries=2,
            on_request=lambda: calls.append(1),
        )
    assert len(calls) == 3  # the SDK retried as it would a real rate limit
    assert injected_count(proxy, "rate_limit") == 3
    assert injected_count(proxy, "timeout") == 0
    assert 'outcome="fault_injected"' in scrape(proxy)
    lines = [line for line in log_lines.events("call") if line.get("task") == task]
    assert len(lines) == 3
    for line in lines:
        assert line["fault_injected"] == "rate_limit"
        assert line["outcome"] == "fault_injected"
        assert line["status"] == 429
        assert line["agent"] == "planner"
    assert_untouched(proxy, mock, task)


def test_injected_calls_do_not_count_toward_the_limits(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    rules = [
        {
            "match": {"task": task},
            "limits": {"max_calls": 5},
            "chaos": {"probability": 0.5, "faults": ["server_error"]},
        }
    ]
    proxy = make_proxy(allow_chaos=True, policy={"rules": rules})
    forwarded = injected = 0
    while forwarded < 5:
        try:
            ask("chat", proxy.base_url, headers={"X-Task-Id": task}, prompt=f"step {forwarded}")
            forwarded += 1
        except errors_of("chat").InternalServerError as error:
            assert error.response.headers["x-tripwire-fault"] == "server_error"
            injected += 1
        assert injected < 60
    view = proxy.task(task)
    assert view is not None and view.calls == 5 == mock.provider.total_hits
    assert view.killed is None
    # The sixth forwarded call is the one over the limit, however many faults came between.
    while True:
        try:
            ask("chat", proxy.base_url, headers={"X-Task-Id": task}, prompt="one more")
        except errors_of("chat").InternalServerError:
            continue
        except errors_of("chat").PermissionDeniedError as refused:
            assert "max_calls" in str(refused)
            break
    assert mock.provider.total_hits == 5


def test_a_killed_task_gets_its_refusal_not_a_fault(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    rules = [
        {
            "match": {"task": task},
            "limits": {"max_calls": 1},
            "chaos": {"probability": 1, "faults": ["rate_limit"], "header_opt_in": True},
        }
    ]
    proxy = make_proxy(allow_chaos=True, policy={"rules": rules})
    ask("chat", proxy.base_url, headers={"X-Task-Id": task})
    with pytest.raises(errors_of("chat").PermissionDeniedError):
        ask("chat", proxy.base_url, headers={"X-Task-Id": task})
    with pytest.raises(errors_of("chat").PermissionDeniedError):
        ask("chat", proxy.base_url, headers={"X-Task-Id": task, "X-Tripwire-Chaos": "1"})
    assert mock.provider.total_hits == 1


def test_only_matching_tasks_get_faults(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = chaos_proxy(make_proxy, task, faults=["server_error"])
    reply = ask("chat", proxy.base_url, headers={"X-Task-Id": task + "-other"})
    assert reply.status == 200 and "x-tripwire-fault" not in reply.headers
    assert mock.provider.total_hits == 1


def test_probability_is_the_share_of_calls_that_fail(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = chaos_proxy(make_proxy, task, probability=0.3, faults=["server_error"])
    injected = 0
    with httpx2.Client() as client:
        for number in range(200):
            response = client.post(
                proxy.openai_url + "/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"n{number}"}],
                },
                headers={"X-Task-Id": task},
            )
            injected += response.status_code == 500
    assert 25 <= injected <= 100  # 60 expected; far outside is a broken draw, not bad luck
    assert mock.provider.total_hits == 200 - injected
    view = proxy.task(task)
    assert view is not None and view.calls == 200 - injected


# -- opting in per request ------------------------------------------------------------------------


def test_with_header_opt_in_only_flagged_calls_get_faults(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = chaos_proxy(make_proxy, task, faults=["server_error", "timeout"], header_opt_in=True)
    headers = {"X-Task-Id": task}
    assert ask("chat", proxy.base_url, headers=headers).status == 200
    assert ask("chat", proxy.base_url, headers={**headers, "X-Tripwire-Chaos": "0"}).status == 200
    forwarded = mock.provider.last_request
    assert forwarded is not None and "x-tripwire-chaos" not in forwarded.headers
    assert mock.provider.total_hits == 2

    with pytest.raises(errors_of("chat").InternalServerError) as raised:
        ask("chat", proxy.base_url, headers={**headers, "X-Tripwire-Chaos": "1"})
    assert raised.value.response.headers["x-tripwire-fault"] in ("server_error", "timeout")
    # Naming a fault picks it among the rule's.
    for _ in range(3):
        with pytest.raises(errors_of("messages").InternalServerError) as named:
            ask("messages", proxy.base_url, headers={**headers, "X-Tripwire-Chaos": "timeout"})
        assert named.value.status_code == 504
    # A fault the rule does not list is not injected.
    reply = ask("chat", proxy.base_url, headers={**headers, "X-Tripwire-Chaos": "rate_limit"})
    assert reply.status == 200
    assert mock.provider.total_hits == 3


def test_a_rule_without_header_opt_in_cannot_be_skipped_by_the_client(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = chaos_proxy(make_proxy, task, faults=["server_error"])
    for opt_out in ("no", "0", "rate_limit"):
        with pytest.raises(errors_of("chat").InternalServerError):
            ask("chat", proxy.base_url, headers={"X-Task-Id": task, "X-Tripwire-Chaos": opt_out})
    assert mock.provider.total_hits == 0
