"""Anthropic wire format: Messages bodies, stream events, errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .common import (
    Completion,
    ParsedRequest,
    RequestError,
    StreamEvent,
    last_user_text,
    optional_bool,
    optional_int,
    prompt_token_count,
    random_id,
    schema_text,
    sse_event,
    text_fragments,
)

# Anthropic ids use base58-like characters after a fixed prefix.
_ID_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization. Please retry later.",
    ),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}


def request_id() -> str:
    return random_id("req_011C", 20, _ID_ALPHABET)


def error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def status_error_body(status: int, request_id: str) -> dict[str, Any]:
    """The body Anthropic sends with `status`, for simulated failures."""
    known = _STATUS_ERRORS.get(status)
    if known is None:
        known = _STATUS_ERRORS[500] if status >= 500 else _STATUS_ERRORS[400]
    return error_body(known[0], known[1], request_id)


def invalid_request_body(error: RequestError, request_id: str) -> dict[str, Any]:
    return error_body("invalid_request_error", error.message, request_id)


def parse_messages_request(body: Any) -> ParsedRequest:
    if not isinstance(body, Mapping):
        raise RequestError("Input should be a valid dictionary")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model: Field required")
    if body.get("max_tokens") is None:
        raise RequestError("max_tokens: Field required")
    try:
        cap = optional_int(body, "max_tokens", minimum=1)
    except RequestError:
        raise RequestError("max_tokens: Input should be greater than or equal to 1") from None
    messages = body.get("messages")
    if messages is None:
        raise RequestError("messages: Field required")
    if not isinstance(messages, list):
        raise RequestError("messages: Input should be a valid list")
    extras = text_fragments(body.get("system"))
    if body.get("tools"):
        extras.append(schema_text(body["tools"]))
    fragments = (
        text_fragments(m.get("content")) if isinstance(m, Mapping) else [] for m in messages
    )
    return ParsedRequest(
        body=body,
        model=model,
        prompt_tokens=prompt_token_count(fragments, extras),
        last_user_text=last_user_text(messages),
        cap=cap,
        stream=optional_bool(body, "stream"),
    )


def _stop_reason(completion: Completion, tool: str | None = None) -> str:
    if completion.truncated:
        return "max_tokens"
    return "tool_use" if tool is not None else "end_turn"


def forced_tool(body: Mapping[str, Any]) -> str | None:
    """The tool a request's ``tool_choice`` forces (``tool``, or ``any`` of its tools), whose
    ``tool_use`` block is then the whole reply, as the API answers it."""
    choice = body.get("tool_choice")
    tools = body.get("tools")
    if not isinstance(choice, Mapping) or not isinstance(tools, list) or not tools:
        return None
    if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    first = tools[0]
    if choice.get("type") == "any" and isinstance(first, Mapping):
        return str(first.get("name", ""))
    return None


def tool_input_text(reply: str) -> str:
    """A scripted reply as a forced tool's input: the reply itself when it is a JSON object,
    else the reply wrapped as ``{"text": ...}`` (a model forced to a tool answers in JSON)."""
    try:
        if isinstance(json.loads(reply), dict):
            return reply
    except ValueError:
        pass
    return json.dumps({"text": reply})


def _tool_input(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return {}  # cut by max_tokens mid-object
    return value if isinstance(value, dict) else {}


def _tool_block(name: str, tool_input: Any) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": random_id("toolu_01", 22, _ID_ALPHABET),
        "name": name,
        "input": tool_input,
    }


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _message(
    message_id: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str | None,
    message_usage: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": message_usage,
    }


def _message_id() -> str:
    return random_id("msg_01", 22, _ID_ALPHABET)


def message_body(request: ParsedRequest, completion: Completion) -> dict[str, Any]:
    tool = forced_tool(request.body)
    content = (
        [_tool_block(tool, _tool_input(completion.text))]
        if tool is not None
        else [{"type": "text", "text": completion.text}]
    )
    return _message(
        _message_id(),
        request.model,
        content,
        _stop_reason(completion, tool),
        usage(request.prompt_tokens, completion.tokens),
    )


def message_stream(request: ParsedRequest, completion: Completion) -> list[StreamEvent]:
    """The Messages event sequence; `message_start` reports one output token
    and `message_delta` the cumulative total, as the API does."""
    events: list[StreamEvent] = []

    def emit(kind: str, fields: dict[str, Any], *, tokens: int = 0, delta: bool = False) -> None:
        payload = {"type": kind, **fields}
        events.append(StreamEvent(sse_event(payload, event=kind), tokens=tokens, is_delta=delta))

    start = _message_id()
    emit(
        "message_start",
        {"message": _message(start, request.model, [], None, usage(request.prompt_tokens, 1))},
    )
    tool = forced_tool(request.body)
    block = _tool_block(tool, {}) if tool is not None else {"type": "text", "text": ""}
    emit("content_block_start", {"index": 0, "content_block": block})
    emit("ping", {})
    for part in completion.chunks:
        delta = (
            {"type": "input_json_delta", "partial_json": part.text}
            if tool is not None
            else {"type": "text_delta", "text": part.text}
        )
        emit("content_block_delta", {"index": 0, "delta": delta}, tokens=part.tokens, delta=True)
    emit("content_block_stop", {"index": 0})
    emit(
        "message_delta",
        {
            "delta": {"stop_reason": _stop_reason(completion, tool), "stop_sequence": None},
            "usage": {
                "input_tokens": request.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": completion.tokens,
            },
        },
    )
    emit("message_stop", {})
    return events
