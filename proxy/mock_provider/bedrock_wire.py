"""Bedrock Converse wire format: converse bodies, converse-stream event-stream messages, errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from proxy.server.eventstream import event_message

from .common import (
    Completion,
    ParsedRequest,
    RequestError,
    StreamEvent,
    compact_json,
    prompt_token_count,
    random_id,
    schema_text,
)

EVENT_STREAM = "application/vnd.amazon.eventstream"
INVALID_JSON = "Unable to parse request body as JSON."

_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("ValidationException", "The provided request is not valid"),
    403: (
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    404: ("ResourceNotFoundException", "The requested resource could not be found."),
    408: ("ModelTimeoutException", "The request took too long to process."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error."),
    503: ("ServiceUnavailableException", "The service is unavailable. Please try again later."),
}


def request_id() -> str:
    return random_id("", 36)


def status_error_body(status: int, _request_id: str = "") -> dict[str, Any]:
    known = _STATUS_ERRORS.get(status)
    if known is None:
        known = _STATUS_ERRORS[500] if status >= 500 else _STATUS_ERRORS[400]
    return {"__type": known[0], "message": known[1]}


def invalid_request_body(error: RequestError, _request_id: str = "") -> dict[str, Any]:
    return {"__type": "ValidationException", "message": error.message}


def _texts(content: Any) -> list[str]:
    texts: list[str] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, Mapping):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        use = block.get("toolUse")
        if isinstance(use, Mapping):
            texts.append(str(use.get("name", "")))
            texts.append(json.dumps(use.get("input", {})))
        result = block.get("toolResult")
        if isinstance(result, Mapping):
            texts.extend(_texts(result.get("content")))
    return texts


def parse_converse_request(body: Any, model: str, stream: bool) -> ParsedRequest:
    if not isinstance(body, Mapping):
        raise RequestError(INVALID_JSON)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("A conversation must start with a user message.")
    config = body.get("inferenceConfig") or {}
    cap = config.get("maxTokens") if isinstance(config, Mapping) else None
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise RequestError(
            "1 validation error detected: Value at 'inferenceConfig.maxTokens' failed to "
            "satisfy constraint: Member must have value greater than or equal to 1"
        )
    extras = _texts(body.get("system"))
    if body.get("toolConfig"):
        extras.append(schema_text(body["toolConfig"]))
    last = ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            last = "\n".join(_texts(message.get("content")))
            break
    return ParsedRequest(
        body=body,
        model=model,
        prompt_tokens=prompt_token_count(
            (_texts(m.get("content")) for m in messages if isinstance(m, Mapping)), extras
        ),
        last_user_text=last,
        cap=cap,
        stream=stream,
    )


def _stop(completion: Completion) -> str:
    return "max_tokens" if completion.truncated else "end_turn"


def _usage(request: ParsedRequest, output: int) -> dict[str, Any]:
    return {
        "inputTokens": request.prompt_tokens,
        "outputTokens": output,
        "totalTokens": request.prompt_tokens + output,
    }


def converse_body(request: ParsedRequest, completion: Completion) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": completion.text}]}},
        "stopReason": _stop(completion),
        "usage": _usage(request, completion.tokens),
        "metrics": {"latencyMs": 42},
    }


def converse_stream(request: ParsedRequest, completion: Completion) -> list[StreamEvent]:
    """messageStart, contentBlockDelta..., contentBlockStop, messageStop, then metadata with
    the usage, each one event-stream message."""

    def message(kind: str, payload: dict[str, Any], tokens: int = 0) -> StreamEvent:
        data = event_message(kind, compact_json(payload).encode())
        return StreamEvent(data, tokens=tokens, is_delta=tokens > 0)

    events = [message("messageStart", {"role": "assistant"})]
    for part in completion.chunks:
        delta = {"contentBlockIndex": 0, "delta": {"text": part.text}}
        events.append(message("contentBlockDelta", delta, part.tokens))
    events.append(message("contentBlockStop", {"contentBlockIndex": 0}))
    events.append(message("messageStop", {"stopReason": _stop(completion)}))
    metadata = {"usage": _usage(request, completion.tokens), "metrics": {"latencyMs": 42}}
    events.append(message("metadata", metadata))
    return events
