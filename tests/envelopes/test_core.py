"""The pure parts: reading a completion as an envelope, the settings, the request rewrite and
the stream events that wait for the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.config import load_config
from proxy.envelopes.core import (
    DEFAULT_SCHEMA,
    ENVELOPE_NAME,
    INVALID,
    check,
    final_event,
    inject,
    injection_tokens,
)
from proxy.envelopes.settings import EnvelopeSettings
from proxy.errors import ConfigError
from proxy.policy.rules import PolicyBook
from proxy.providers.base import CallInfo, Output
from proxy.server.sse import SSEDecoder

DEFAULT = EnvelopeSettings()
GATED = EnvelopeSettings(min_confidence=0.7, on_low_confidence="block")


def envelope(**fields: Any) -> str:
    base: dict[str, Any] = {"status": "success", "result": "done", "confidence": 0.9}
    return json.dumps({**base, **fields})


@pytest.mark.parametrize("status", ["success", "failed", "partial"])
def test_a_valid_envelope_is_read_with_its_status_and_confidence(status: str) -> None:
    verdict = check(Output(envelope(status=status, reason="why")), GATED)
    assert verdict is not None
    assert (verdict.status, verdict.confidence, verdict.low_confidence) == (status, 0.9, False)
    assert verdict.envelope == json.loads(envelope(status=status, reason="why"))


def test_result_may_be_any_json_and_reason_may_be_left_out() -> None:
    verdict = check(Output(envelope(result={"rows": [1, 2]})), DEFAULT)
    assert verdict is not None and verdict.status == "success"


def test_a_fenced_envelope_is_still_an_envelope() -> None:
    verdict = check(Output("```json\n" + envelope() + "\n```"), DEFAULT)
    assert verdict is not None and verdict.status == "success"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("The report is done.", "not a JSON object"),
        ("", "no text"),
        ("[1, 2]", "not a JSON object"),
        (envelope(status="done"), "status"),
        (envelope(confidence=1.5), "confidence"),
        (envelope(confidence="0.9"), "confidence"),
        (envelope(confidence=True), "confidence"),
        (json.dumps({"status": "success", "confidence": 0.9}), "result"),
        (envelope(extra=1), "extra"),
    ],
)
def test_anything_else_is_invalid_and_says_why(text: str, problem: str) -> None:
    verdict = check(Output(text), DEFAULT)
    assert verdict is not None and verdict.status == INVALID
    assert verdict.problem is not None and problem in verdict.problem


def test_confidence_under_the_threshold_is_low() -> None:
    verdict = check(Output(envelope(status="partial", confidence=0.4)), GATED)
    assert verdict is not None and verdict.low_confidence
    assert (verdict.confidence, verdict.min_confidence) == (0.4, 0.7)
    at_threshold = check(Output(envelope(confidence=0.7)), GATED)
    assert at_threshold is not None and not at_threshold.low_confidence


def test_the_forced_tool_is_the_envelope_and_other_tool_calls_are_not_final() -> None:
    forced = Output("", [(ENVELOPE_NAME, envelope(confidence=0.2))])
    verdict = check(forced, GATED)
    assert verdict is not None and verdict.low_confidence
    assert check(Output("", [("search", '{"q": "x"}')]), GATED) is None


def test_a_custom_schema_adds_its_own_constraints(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "required": ["status", "confidence", "result"],
        "properties": {"result": {"type": "object", "required": ["url"]}},
    }
    path = tmp_path / "envelope.json"
    path.write_text(json.dumps(schema))
    settings = EnvelopeSettings.model_validate({"schema": str(path)})
    good = check(Output(envelope(result={"url": "x"}, extra="kept")), settings)
    assert good is not None and good.status == "success"
    bad = check(Output(envelope(result={"name": "x"})), settings)
    assert bad is not None and bad.status == INVALID
    assert bad.problem is not None and "url" in bad.problem


def test_config_refuses_a_broken_schema_file_or_a_misspelt_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"type": 5}')
    rule = {"match": {"agent": "worker-*"}, "envelope": {"schema": str(path)}}
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        load_config(None, policy={"rules": [rule]})
    rule = {"match": {"agent": "worker-*"}, "envelope": {"min_confidance": 0.5}}
    with pytest.raises(ConfigError, match="min_confidance"):
        load_config(None, policy={"rules": [rule]})


def test_rules_declare_workers_by_glob_and_later_rules_override_fields() -> None:
    config = load_config(
        None,
        policy={
            "rules": [
                {"match": {"agent": "worker-*"}, "envelope": {"min_confidence": 0.6}},
                {
                    "match": {"agent": "worker-sql"},
                    "envelope": {"on_low_confidence": "block", "inject": True},
                },
            ]
        },
    )
    book = PolicyBook(config.policy)
    assert book.resolve("t", "planner").envelope is None
    assert book.resolve("t", "worker-a").envelope == EnvelopeSettings(min_confidence=0.6)
    sql = book.resolve("t", "worker-sql").envelope
    assert sql == EnvelopeSettings(min_confidence=0.6, on_low_confidence="block", inject=True)


INJECTING = EnvelopeSettings(inject=True)


def test_inject_adds_the_structured_output_of_each_format() -> None:
    chat: dict[str, Any] = {"messages": []}
    assert inject(chat, CallInfo("chat"), INJECTING)
    assert chat["response_format"]["json_schema"]["schema"] == DEFAULT_SCHEMA
    responses: dict[str, Any] = {"input": "x", "text": {"verbosity": "low"}}
    assert inject(responses, CallInfo("responses"), INJECTING)
    assert responses["text"]["verbosity"] == "low"
    assert responses["text"]["format"]["type"] == "json_schema"
    messages: dict[str, Any] = {"messages": []}
    assert inject(messages, CallInfo("messages"), INJECTING)
    assert messages["tool_choice"] == {"type": "tool", "name": ENVELOPE_NAME}
    assert messages["tools"][0]["input_schema"] == DEFAULT_SCHEMA


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("chat", {"response_format": {"type": "json_object"}}),
        ("responses", {"text": {"format": {"type": "json_object"}}}),
        ("messages", {"tools": [{"name": "search", "input_schema": {}}]}),
        ("messages", {"thinking": {"type": "enabled", "budget_tokens": 1024}}),
        ("other", {}),
    ],
)
def test_inject_leaves_a_format_the_agent_chose(kind: str, body: dict[str, Any]) -> None:
    before = json.dumps(body)
    assert not inject(body, CallInfo(kind), INJECTING)
    assert json.dumps(body) == before
    assert injection_tokens(body, CallInfo(kind), INJECTING) == 0


def test_inject_is_off_unless_the_rule_says_so() -> None:
    body: dict[str, Any] = {"messages": []}
    assert not inject(body, CallInfo("chat"), DEFAULT)
    assert body == {"messages": []}
    assert injection_tokens({"messages": []}, CallInfo("chat"), INJECTING) > 100


def held(kind: str, stream: bytes) -> list[str]:
    final = final_event(kind)
    assert final is not None
    events = list(SSEDecoder().feed(stream))
    first = next(i for i, e in enumerate(events) if final(e))
    return [e.raw.decode() for e in events[first:]]


def test_the_events_held_back_are_each_formats_closing_events() -> None:
    chat = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],'
        b'"usage":null}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert len(held("chat", chat)) == 3
    responses = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed"}\n\n'
    )
    assert held("responses", responses) == [
        'event: response.completed\ndata: {"type":"response.completed"}\n\n'
    ]
    messages = (
        b'event: message_delta\ndata: {"type":"message_delta"}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert held("messages", messages) == ['event: message_stop\ndata: {"type":"message_stop"}\n\n']
    assert final_event("other") is None


def test_nesting_size_and_duplicate_keys_are_bounded() -> None:
    from proxy.envelopes.core import MAX_ENVELOPE_CHARS, MAX_ENVELOPE_DEPTH

    nested = envelope(result=json.loads("[" * MAX_ENVELOPE_DEPTH + "]" * MAX_ENVELOPE_DEPTH))
    verdict = check(Output(nested), DEFAULT)
    assert verdict is not None and verdict.status == INVALID
    assert verdict.problem == f"the envelope nests deeper than {MAX_ENVELOPE_DEPTH} levels"
    fits = envelope(result=json.loads("[" * 30 + "]" * 30))
    assert check(Output(fits), DEFAULT).status == "success"  # type: ignore[union-attr]
    for depth in (1000, 100_000):
        deep = '{"status": "success", "result": ' + "[" * depth + "]" * depth + "}"
        verdict = check(Output(deep), DEFAULT)
        assert verdict is not None and verdict.status == INVALID
        assert "nests deeper" in (verdict.problem or "")
    huge = envelope(result="x" * MAX_ENVELOPE_CHARS)
    verdict = check(Output(huge), DEFAULT)
    assert verdict is not None and "longer than" in (verdict.problem or "")
    twice = '{"status": "failed", "result": 1, "confidence": 0.5, "status": "success"}'
    verdict = check(Output(twice), DEFAULT)
    assert verdict is not None and verdict.status == INVALID
    assert verdict.problem == "the envelope has the key 'status' twice"
