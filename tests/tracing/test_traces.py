"""Traces a team reads in its own backend: one span per call, under the agent's trace, after
the OpenTelemetry GenAI conventions, with Tripwire's trips, refusals and cuts on it. The
official OpenAI SDK is the agent; the real OTLP exporter posts to a real receiver."""

from __future__ import annotations

import json
import secrets
import socket
from typing import Any
from urllib.parse import quote

import httpx2
import openai
import pytest

from tests.contract.sdk import OPENAI_MODEL, ask
from tests.harness import MockProviderThread
from tests.tracing.receiver import OtlpReceiver, Received


def caller_trace() -> tuple[str, str, dict[str, str]]:
    """The agent's own trace: its trace id, its span id and the header it sends."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


def span_of(receiver: OtlpReceiver, task: str, count: int = 1) -> list[Received]:
    spans = receiver.wait_for(lambda s: s.attributes.get("tripwire.task") == task, count)
    assert len(spans) >= count, f"{len(spans)} spans for {task}, wanted {count}"
    return spans


def test_a_json_call_is_one_span_under_the_agents_trace(
    traced: Any, receiver: OtlpReceiver, mock: MockProviderThread, task: str
) -> None:
    proxy = traced(policy={"rules": [{"match": {"task": task}, "limits": {"max_tokens": 50_000}}]})
    trace_id, parent_id, header = caller_trace()
    reply = ask(
        "chat", proxy.base_url, headers={"X-Task-Id": task, "X-Agent-Id": "planner", **header}
    )
    assert reply.status == 200

    (span,) = span_of(receiver, task)
    assert (span.trace_id, span.parent_id) == (trace_id, parent_id)
    assert span.name == f"chat {OPENAI_MODEL}"
    assert span.span.kind == span.span.SPAN_KIND_CLIENT
    attributes = span.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == OPENAI_MODEL
    assert attributes["gen_ai.response.model"].startswith(OPENAI_MODEL)
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["gen_ai.conversation.id"] == task
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.request.max_tokens"] > 0  # the cap Tripwire set
    assert attributes["tripwire.agent"] == "planner"
    assert attributes["tripwire.outcome"] == "ok"
    assert attributes["tripwire.hop"] == 0  # no hand-off between agents yet
    assert attributes["tripwire.tokens_used"] == reply.usage
    assert attributes["tripwire.overhead_ms"] >= 0
    assert attributes["http.response.status_code"] == 200
    assert attributes["tripwire.tokens_left"] == 50_000 - reply.usage
    # No prompt or completion text unless a setting asks for it.
    assert not any("messages" in key for key in attributes)
    assert span.span.status.code != span.span.status.STATUS_CODE_ERROR
    assert span.resource["service.name"] == "tripwire"

    # The provider got the proxy's span as its parent, in the agent's trace.
    sent = mock.provider.last_request
    assert sent is not None
    assert sent.headers["traceparent"] == f"00-{trace_id}-{span.span_id}-01"


def test_a_stream_is_one_span_with_its_usage(
    traced: Any, receiver: OtlpReceiver, mock: MockProviderThread, task: str
) -> None:
    proxy = traced()
    trace_id, parent_id, header = caller_trace()
    reply = ask("chat", proxy.base_url, stream=True, headers={"X-Task-Id": task, **header})
    assert reply.text

    (span,) = span_of(receiver, task)
    assert (span.trace_id, span.parent_id) == (trace_id, parent_id)
    attributes = span.attributes
    assert attributes["gen_ai.request.stream"] is True
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["gen_ai.response.model"].startswith(OPENAI_MODEL)
    assert attributes["gen_ai.response.time_to_first_chunk"] >= 0
    assert attributes["tripwire.outcome"] == "ok"


def test_a_call_without_a_traceparent_starts_a_trace(
    traced: Any, receiver: OtlpReceiver, mock: MockProviderThread, task: str
) -> None:
    proxy = traced()
    ask("messages", proxy.base_url, headers={"X-Task-Id": task})
    (span,) = span_of(receiver, task)
    assert span.parent_id == ""
    assert span.attributes["gen_ai.provider.name"] == "anthropic"
    assert span.attributes["gen_ai.response.finish_reasons"] == ["end_turn"]
    sent = mock.provider.last_request
    assert sent is not None and span.span_id in sent.headers["traceparent"]


def test_the_kill_is_on_the_span_that_caused_it_and_the_refusal_on_the_next(
    traced: Any, receiver: OtlpReceiver, mock: MockProviderThread, task: str
) -> None:
    proxy = traced(policy={"rules": [{"match": {"task": task}, "limits": {"max_calls": 1}}]})
    trace_id, _, header = caller_trace()
    headers = {"X-Task-Id": task, **header}
    ask("chat", proxy.base_url, headers=headers)
    with pytest.raises(openai.PermissionDeniedError):
        ask("chat", proxy.base_url, headers=headers)
    with pytest.raises(openai.PermissionDeniedError):
        ask("chat", proxy.base_url, headers=headers)

    spans = span_of(receiver, task, 3)
    assert {s.trace_id for s in spans} == {trace_id}
    first, killing, refused = sorted(spans, key=lambda s: s.span.start_time_unix_nano)
    assert first.attributes["tripwire.outcome"] == "ok" and not first.events("tripwire.trip")

    (trip,) = killing.events("tripwire.trip")
    assert trip["tripwire.trip.reason"] == "max_calls"
    assert trip["tripwire.trip.action"] == "kill"
    assert trip["tripwire.trip.figures.max_calls"] == 1
    assert trip["tripwire.trip.figures.calls"] == 1  # the calls made before it
    assert "max_calls" in killing.span.status.message or "calls" in killing.span.status.message
    assert killing.span.status.code == killing.span.status.STATUS_CODE_ERROR
    assert killing.attributes["error.type"] == "max_calls"
    assert killing.attributes["tripwire.outcome"] == "refused"

    (refusal,) = refused.events("tripwire.refused")
    assert refusal["tripwire.refusal.reason"] == "max_calls"
    assert refusal["tripwire.refusal.status"] == 403
    assert refused.span.status.code == refused.span.status.STATUS_CODE_ERROR
    assert not refused.events("tripwire.trip")  # the kill happened once, on the call before
    # A refused call never reached the provider.
    assert len(mock.provider.requests_to("/v1/chat/completions")) == 1


def test_a_stream_cut_by_the_deadline_is_an_error_event(
    traced: Any, receiver: OtlpReceiver, mock: MockProviderThread, task: str
) -> None:
    proxy = traced(policy={"rules": [{"match": {"task": task}, "limits": {"max_duration": 0.3}}]})
    trace_id, parent_id, header = caller_trace()
    slow = {"x-mock-reply-tokens": "120", "x-mock-chunks": "60", "x-mock-chunk-delay": "0.02"}
    with pytest.raises(openai.APIError):
        ask("chat", proxy.base_url, stream=True, headers={"X-Task-Id": task, **header, **slow})

    (span,) = span_of(receiver, task)
    assert (span.trace_id, span.parent_id) == (trace_id, parent_id)
    (cut,) = span.events("tripwire.stream_cut")
    assert cut["tripwire.cut.reason"] == "deadline"
    assert cut["tripwire.cut.figures.max_duration_s"] == pytest.approx(0.3)
    assert cut["tripwire.cut.figures.elapsed_s"] >= 0.3
    assert span.span.status.code == span.span.status.STATUS_CODE_ERROR
    assert "deadline" in span.attributes["error.type"]
    assert span.attributes["tripwire.outcome"] == "cut"
    assert span.attributes["gen_ai.usage.output_tokens"] < 120


def test_content_capture_is_a_setting(
    traced: Any, receiver: OtlpReceiver, mock: MockProviderThread, task: str
) -> None:
    proxy = traced(otel={"capture_content": True})
    reply = ask("chat", proxy.base_url, prompt="the secret plan", headers={"X-Task-Id": task})
    (span,) = span_of(receiver, task)
    assert "the secret plan" in span.attributes["gen_ai.input.messages"]
    assert reply.text in span.attributes["gen_ai.output.messages"]


def test_envelope_verdicts_are_events_and_a_blocked_answer_an_error(
    traced: Any, receiver: OtlpReceiver, mock: MockProviderThread, task: str
) -> None:
    proxy = traced(
        policy={
            "rules": [
                {
                    "match": {"agent": "worker"},
                    "envelope": {"min_confidence": 0.7, "on_low_confidence": "block"},
                }
            ]
        }
    )
    low = json.dumps({"status": "partial", "result": "?", "confidence": 0.2, "reason": ""})
    sent = {"X-Task-Id": task, "X-Agent-Id": "worker", "x-mock-reply": quote(low)}
    with pytest.raises(openai.UnprocessableEntityError):
        ask("chat", proxy.base_url, headers=sent)

    (span,) = span_of(receiver, task)
    (verdict,) = span.events("tripwire.envelope")
    assert verdict["tripwire.envelope.action"] == "block"
    assert verdict["tripwire.envelope.status"] == "partial"
    assert verdict["tripwire.envelope.confidence"] == pytest.approx(0.2)
    assert verdict["tripwire.envelope.min_confidence"] == pytest.approx(0.7)
    assert span.span.status.code == span.span.status.STATUS_CODE_ERROR
    assert span.attributes["tripwire.outcome"] == "blocked"


def test_a_full_export_queue_drops_spans_and_counts_them(
    traced: Any, receiver: OtlpReceiver, mock: MockProviderThread, task: str
) -> None:
    # A collector that never answers holds the exporter (2 s a batch) while calls go on.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        proxy = traced(
            otel={
                "endpoint": f"http://127.0.0.1:{port}",
                "max_queue_size": 1,
                "max_export_batch_size": 1,
                "export_timeout": 2,
            }
        )
        for number in range(4):
            reply = ask("chat", proxy.base_url, headers={"X-Task-Id": f"{task}-{number}"})
            assert reply.status == 200
        metrics = httpx2.get(proxy.base_url + "/metrics").text
    line = next(m for m in metrics.splitlines() if 'reason="queue_full"' in m and "_total" in m)
    assert float(line.rsplit(" ", 1)[1]) >= 1


PARAPHRASES = [
    "The plan is to collect the quarterly figures, compare them with last year and write a "
    "short summary for the board with the three main risks and what we do next about them.",
    "The plan is to collect the quarterly figures, compare them with last year and write a "
    "short summary for the board with the three main risks and what we will do next about them.",
]


def test_a_trip_decided_after_the_answer_is_a_span_under_the_calls(
    traced: Any, receiver: OtlpReceiver, mock: MockProviderThread, task: str
) -> None:
    proxy = traced(
        policy={"near_duplicate": {"action": "kill", "repeats": 2}, "cycle": {"enabled": False}}
    )
    trace_id, _, header = caller_trace()
    for number, answer in enumerate(PARAPHRASES):
        ask(
            "chat",
            proxy.base_url,
            prompt=f"plan {number}",
            headers={"X-Task-Id": task, "x-mock-reply": quote(answer), **header},
        )

    calls = span_of(receiver, task, 2)
    late = receiver.wait_for(
        lambda s: s.name == "tripwire trip near_duplicate" and s.trace_id == trace_id
    )
    assert len(late) == 1, "content detection's kill has a span of its own"
    (trip,) = late[0].events("tripwire.trip")
    assert trip["tripwire.trip.action"] == "kill"
    assert late[0].span.status.code == late[0].span.status.STATUS_CODE_ERROR
    second = max(
        (s for s in calls if s.span.kind == s.span.SPAN_KIND_CLIENT),
        key=lambda s: s.span.start_time_unix_nano,
    )
    assert late[0].parent_id == second.span_id  # under the call whose answer tripped it
