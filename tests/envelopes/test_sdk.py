"""Workers' status envelopes through the official SDKs, against the mock provider: what passes,
what is counted, killed, blocked or escalated, and what is never touched."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import anthropic
import httpx
import pytest

from proxy.app import LEDGER
from proxy.envelopes.core import DEFAULT_SCHEMA, ENVELOPE_NAME
from tests.admin.conftest import SECRET, Admin, admin_token
from tests.contract.sdk import KINDS, SDK_DEFAULT, ask, errors_of, raw_stream
from tests.escalation.receiver import Receiver
from tests.harness import MockProviderThread, ProxyThread

POLICY: dict[str, Any] = {
    "rules": [
        {"match": {"agent": "worker-*"}, "envelope": {"inject": True}},
        {"match": {"agent": "worker-strict"}, "envelope": {"on_invalid": "kill"}},
        {
            "match": {"agent": "worker-gated"},
            "envelope": {"min_confidence": 0.7, "on_low_confidence": "block"},
        },
        {
            "match": {"agent": "worker-escalating"},
            "envelope": {"min_confidence": 0.7, "on_low_confidence": "escalate"},
        },
    ]
}
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
CLOSING = {"chat": b"[DONE]", "responses": b"response.completed", "messages": b"message_stop"}


def envelope(status: str = "success", confidence: float = 0.9, **extra: Any) -> str:
    return json.dumps(
        {"status": status, "result": "42 rows", "confidence": confidence, "reason": "", **extra}
    )


def headers(agent: str, reply: str, task: str | None = None) -> dict[str, str]:
    return {
        "X-Task-Id": task or f"job-{uuid.uuid4().hex[:8]}",
        "X-Agent-Id": agent,
        "x-mock-reply": quote(reply),
    }


@pytest.fixture
def proxy(make_proxy: Any) -> ProxyThread:
    return make_proxy(policy=POLICY)  # type: ignore[no-any-return]


def envelopes_of(proxy: ProxyThread, task: str) -> dict[str, int]:
    view = proxy.task(task)
    return dict(view.envelopes) if view is not None else {}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_a_valid_envelope_passes_unchanged(
    proxy: ProxyThread, mock: MockProviderThread, kind: str, stream: bool
) -> None:
    sent = headers("worker-gated", envelope("partial", 0.8), "job-valid")
    reply = ask(kind, proxy.base_url, headers=sent, stream=stream)
    assert reply.status == 200
    assert reply.text == envelope("partial", 0.8)
    assert envelopes_of(proxy, "job-valid") == {"partial": 1}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_workers_answer_through_the_forced_tool(
    proxy: ProxyThread, mock: MockProviderThread, stream: bool
) -> None:
    sent = headers("worker-gated", envelope("failed", 0.95, reason="no access"), "job-tool")
    params: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 512,
        "messages": [{"role": "user", "content": "count the rows"}],
    }
    client = anthropic.Anthropic(base_url=proxy.base_url, api_key="sk-test", max_retries=0)
    with client:
        if stream:
            with client.messages.stream(**params, extra_headers=sent) as events:
                message = events.get_final_message()
        else:
            message = client.messages.create(**params, extra_headers=sent)
    (block,) = message.content
    assert block.type == "tool_use" and block.name == ENVELOPE_NAME
    assert block.input == json.loads(envelope("failed", 0.95, reason="no access"))
    assert message.stop_reason == "tool_use"
    body = mock.provider.requests_to("/v1/messages")[-1].body
    assert body["tool_choice"] == {"type": "tool", "name": ENVELOPE_NAME}
    assert body["tools"][0]["input_schema"] == DEFAULT_SCHEMA
    assert envelopes_of(proxy, "job-tool") == {"failed": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_injection_reaches_the_provider_only_for_workers(
    proxy: ProxyThread, mock: MockProviderThread, kind: str
) -> None:
    ask(kind, proxy.base_url, headers=headers("worker-a", envelope()))
    ask(kind, proxy.base_url, headers=headers("planner", "Plan: step 1"))
    worker, planner = (r.body for r in mock.provider.requests_to(PATHS[kind]))
    if kind == "chat":
        assert worker["response_format"]["type"] == "json_schema"
        assert worker["response_format"]["json_schema"]["schema"] == DEFAULT_SCHEMA
        assert "response_format" not in planner
    elif kind == "responses":
        assert worker["text"]["format"]["name"] == ENVELOPE_NAME
        assert "text" not in planner
    else:
        assert worker["tool_choice"]["name"] == ENVELOPE_NAME
        assert "tools" not in planner and "tool_choice" not in planner


def test_a_format_the_worker_chose_is_left_alone(
    proxy: ProxyThread, mock: MockProviderThread
) -> None:
    chosen = {"type": "json_object"}
    ask("chat", proxy.base_url, headers=headers("worker-a", envelope()), response_format=chosen)
    assert mock.provider.requests_to(PATHS["chat"])[-1].body["response_format"] == chosen


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_non_workers_are_never_touched_nor_counted(
    proxy: ProxyThread, mock: MockProviderThread, stream: bool
) -> None:
    sent = headers("planner", "Freeform plan, no envelope.", "job-planner")
    reply = ask("chat", proxy.base_url, headers=sent, stream=stream, temperature=0.5)
    assert reply.text == "Freeform plan, no envelope."
    body = mock.provider.last_request.body  # type: ignore[union-attr]
    assert "response_format" not in body and body["temperature"] == 0.5
    assert envelopes_of(proxy, "job-planner") == {}
    assert "tripwire_envelopes_total{" not in httpx.get(proxy.base_url + "/metrics").text


def test_freeform_text_from_a_worker_is_counted_invalid(
    proxy: ProxyThread, mock: MockProviderThread
) -> None:
    for kind in KINDS:
        sent = headers("worker-a", "Sure! The table has 42 rows.", "job-freeform")
        reply = ask(kind, proxy.base_url, headers=sent)
        assert reply.status == 200  # observed: delivered all the same
    assert envelopes_of(proxy, "job-freeform") == {"invalid": 3}
    metrics = httpx.get(proxy.base_url + "/metrics").text
    assert 'tripwire_envelopes_total{agent="worker-a",status="invalid"} 3.0' in metrics


@pytest.mark.parametrize("kind", KINDS)
def test_freeform_text_kills_the_task_when_so_configured(
    proxy: ProxyThread, mock: MockProviderThread, kind: str
) -> None:
    task = f"job-{uuid.uuid4().hex[:8]}"
    sent = headers("worker-strict", "I think it went fine.", task)
    with pytest.raises(errors_of(kind).PermissionDeniedError) as refused:
        ask(kind, proxy.base_url, headers=sent, max_retries=SDK_DEFAULT)
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert refused.value.response.headers["X-Tripwire-Reason"] == "invalid_envelope"
    assert "without a valid status envelope. Figures: agent=worker-strict, problem=" in str(
        refused.value
    )
    with pytest.raises(errors_of(kind).PermissionDeniedError):
        ask(kind, proxy.base_url, headers=headers("worker-strict", envelope(), task))
    assert mock.provider.total_hits == 1  # the second call never reached the provider
    view = proxy.task(task)
    assert view is not None and view.killed is not None
    assert str(view.killed.reason) == "invalid_envelope"


@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_stream_ends_with_an_error_event_instead_of_its_closing_events(
    proxy: ProxyThread, mock: MockProviderThread, kind: str
) -> None:
    sent = headers("worker-strict", "no envelope here at all", "job-strict-stream")
    raw = raw_stream(kind, proxy.base_url, headers=sent)
    assert raw.status == 200
    assert CLOSING[kind] not in raw.data
    assert b"(invalid_envelope)" in raw.data
    assert raw.data.rstrip().endswith(b"}")


@pytest.mark.parametrize("kind", KINDS)
def test_a_low_confidence_answer_is_blocked_with_a_final_422(
    proxy: ProxyThread, mock: MockProviderThread, kind: str
) -> None:
    task = f"job-{uuid.uuid4().hex[:8]}"
    sent = headers("worker-gated", envelope("partial", 0.4), task)
    with pytest.raises(errors_of(kind).UnprocessableEntityError) as blocked:
        ask(kind, proxy.base_url, headers=sent, max_retries=SDK_DEFAULT)
    error = blocked.value
    assert error.status_code == 422
    assert error.response.headers["x-should-retry"] == "false"
    assert error.response.headers["X-Tripwire-Reason"] == "low_confidence"
    assert "confidence 0.4 (status partial), below the threshold of 0.7" in str(error)
    body = error.response.json()
    if kind == "messages":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    else:
        assert body["error"]["code"] == "tripwire_low_confidence"
    assert mock.provider.total_hits == 1  # not retried
    # The task goes on: the orchestrator decides what to do with the step.
    again = ask(kind, proxy.base_url, headers=headers("worker-gated", envelope(), task))
    assert again.status == 200
    assert envelopes_of(proxy, task) == {"partial": 1, "success": 1}
    metrics = httpx.get(proxy.base_url + "/metrics").text
    assert 'tripwire_envelopes_blocked_total{agent="worker-gated"} 1.0' in metrics
    assert 'tripwire_envelope_confidence_bucket{agent="worker-gated",le="0.5"} 1.0' in metrics


@pytest.mark.parametrize("kind", KINDS)
def test_a_blocked_stream_flows_then_ends_with_an_error_before_its_closing_event(
    proxy: ProxyThread, mock: MockProviderThread, kind: str
) -> None:
    sent = headers("worker-gated", envelope("partial", 0.3), "job-gated-stream")
    raw = raw_stream(kind, proxy.base_url, headers=sent)
    assert CLOSING[kind] not in raw.data
    assert b"tripwire_low_confidence" in raw.data or b"below the threshold" in raw.data
    delta = {"chat": b'"content"', "responses": b"output_text.delta", "messages": b"_delta"}
    assert delta[kind] in raw.data  # the deltas flowed before the verdict
    with pytest.raises(errors_of(kind).APIError, match=r"below the threshold of 0\.7"):
        ask(kind, proxy.base_url, headers=sent, stream=True)


def test_a_held_stream_still_flows_event_by_event(
    proxy: ProxyThread, mock: MockProviderThread
) -> None:
    """Only the closing events wait for the verdict: the deltas reach the caller as they come."""
    sent = {
        **headers("worker-gated", envelope("success", 0.9)),
        "x-mock-chunks": "8",
        "x-mock-chunk-delay": "0.1",
    }
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    started = time.monotonic()
    arrivals: list[float] = []
    with (
        httpx.Client(base_url=proxy.base_url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=sent) as response,
    ):
        data = b""
        for chunk in response.iter_raw():
            if b'"content"' in chunk:
                arrivals.append(time.monotonic() - started)
            data += chunk
    ended = time.monotonic() - started
    assert data.rstrip().endswith(b"data: [DONE]")
    assert arrivals and arrivals[0] < ended - 0.4, (arrivals, ended)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    started.stop()


def test_a_low_confidence_answer_reaches_the_owner(
    make_proxy: Any, mock: MockProviderThread, receiver: Receiver
) -> None:
    proxy = make_proxy(policy=POLICY, escalation={"owners": {"ops": {"url": receiver.url}}})
    task = f"job-{uuid.uuid4().hex[:8]}"
    app = proxy._app
    assert app is not None
    proxy.call(app[LEDGER].create(task, tenant=None, owner="ops", overrides={}))
    sent = headers("worker-escalating", envelope("partial", 0.35, reason="half the rows"), task)
    reply = ask("chat", proxy.base_url, headers=sent)
    assert reply.status == 200  # delivered: the owner reviews it
    (delivered,) = receiver.wait_for(1)
    event = delivered.json()
    assert event["event"] == "tripwire.low_confidence"
    assert event["action"] == "escalate" and event["reason"] == "low_confidence"
    assert event["envelope"] == json.loads(envelope("partial", 0.35, reason="half the rows"))
    assert event["figures"] == {
        "agent": "worker-escalating",
        "status": "partial",
        "confidence": 0.35,
        "min_confidence": 0.7,
    }
    assert event["task_figures"]["calls"] == 1
    assert proxy.task(task).killed is None  # type: ignore[union-attr]


def test_the_admin_api_shows_failed_and_partial_per_task(
    make_proxy: Any, mock: MockProviderThread
) -> None:
    proxy = make_proxy(policy=POLICY, auth={"hs256_secret": SECRET})
    task = f"job-{uuid.uuid4().hex[:8]}"
    for step, status in enumerate(("success", "partial", "failed", "partial")):
        sent = headers("worker-a", envelope(status), task)
        ask("chat", proxy.base_url, headers=sent, prompt=f"step {step}")
    ask("chat", proxy.base_url, headers=headers("worker-a", "prose", task))
    admin = Admin(proxy, admin_token())
    try:
        detail = admin.task(task)
        listed = admin.tasks()
    finally:
        admin.close()
    assert detail.status_code == 200, detail.text
    expected = {"success": 1, "partial": 2, "failed": 1, "invalid": 1}
    assert detail.json()["envelopes"] == expected
    assert next(t for t in listed if t["task"] == task)["envelopes"] == expected


def test_shadow_mode_counts_but_never_blocks_kills_or_injects(
    make_proxy: Any, mock: MockProviderThread
) -> None:
    proxy = make_proxy(policy={**POLICY, "on_trip": "observe"})
    task = f"job-{uuid.uuid4().hex[:8]}"
    assert (
        ask(
            "chat", proxy.base_url, headers=headers("worker-gated", envelope(confidence=0.1), task)
        ).status
        == 200
    )
    assert (
        ask("chat", proxy.base_url, headers=headers("worker-strict", "prose", task)).status == 200
    )
    assert all("response_format" not in r.body for r in mock.provider.requests)
    assert envelopes_of(proxy, task) == {"success": 1, "invalid": 1}
    assert proxy.task(task).killed is None  # type: ignore[union-attr]


DEEP = '{"status": "success", "result": ' + "[" * 1000 + "]" * 1000 + ', "confidence": 0.9}'


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_a_deeply_nested_envelope_is_invalid_not_a_crash(
    proxy: ProxyThread, mock: MockProviderThread, kind: str, stream: bool
) -> None:
    observed = f"job-{uuid.uuid4().hex[:8]}"
    reply = ask(kind, proxy.base_url, headers=headers("worker-a", DEEP, observed), stream=stream)
    assert reply.status == 200 and reply.text == DEEP  # observed: delivered as sent
    assert envelopes_of(proxy, observed) == {"invalid": 1}
    killed = f"job-{uuid.uuid4().hex[:8]}"
    if stream:
        raw = raw_stream(kind, proxy.base_url, headers=headers("worker-strict", DEEP, killed))
        assert b"(invalid_envelope)" in raw.data and b"nests deeper than 32" in raw.data
    else:
        with pytest.raises(errors_of(kind).PermissionDeniedError) as refused:
            ask(kind, proxy.base_url, headers=headers("worker-strict", DEEP, killed))
        assert "nests deeper than 32" in str(refused.value)
    view = proxy.task(killed)
    assert view is not None and view.killed is not None
    assert str(view.killed.reason) == "invalid_envelope"


@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_an_envelope_with_a_key_twice_is_invalid(
    proxy: ProxyThread, mock: MockProviderThread, kind: str
) -> None:
    twice = '{"status": "failed", "result": "x", "confidence": 0.9, "status": "success"}'
    task = f"job-{uuid.uuid4().hex[:8]}"
    reply = ask(kind, proxy.base_url, headers=headers("worker-a", twice, task))
    assert reply.status == 200
    assert envelopes_of(proxy, task) == {"invalid": 1}
