"""OpenAI wire format: Chat Completions and Responses bodies, stream events, errors."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .common import (
    Completion,
    ParsedRequest,
    RequestError,
    StreamEvent,
    coerced_count,
    last_user_text,
    optional_bool,
    optional_int,
    prompt_token_count,
    random_hex_id,
    random_id,
    schema_text,
    sse_event,
    text_fragments,
)

SYSTEM_FINGERPRINT = "fp_7b3f5a9c21"
SERVICE_TIER = "default"
STREAM_DONE = "[DONE]"


# --- errors ---------------------------------------------------------------


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid_request_body(error: RequestError) -> dict[str, Any]:
    return error_body(
        error.message, type="invalid_request_error", code=error.code, param=error.param
    )


def invalid_url_body(method: str, path: str) -> dict[str, Any]:
    return error_body(f"Invalid URL ({method} {path})", type="invalid_request_error")


def status_error_body(status: int) -> dict[str, Any]:
    """The body OpenAI sends with `status`, for simulated failures."""
    if status == 429:
        return error_body(
            "Rate limit reached for requests. Please try again in 0s.",
            type="requests",
            code="rate_limit_exceeded",
        )
    if status == 500:
        return error_body(
            "The server had an error while processing your request. Sorry about that!",
            type="server_error",
        )
    if status >= 500:
        return error_body("The server is overloaded or not ready yet.", type="server_error")
    if status == 401:
        return error_body(
            "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key"
        )
    if status == 404:
        return error_body(
            "The model does not exist or you do not have access to it.",
            type="invalid_request_error",
            code="model_not_found",
        )
    return error_body(f"Simulated error with status {status}.", type="invalid_request_error")


def request_id() -> str:
    return random_hex_id("req_", 32)


# --- chat completions -----------------------------------------------------


def parse_chat_request(body: Any) -> ParsedRequest:
    fields = _object_body(body)
    model = _model(fields)
    messages = fields.get("messages")
    if messages is None:
        raise RequestError(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list):
        raise RequestError(
            "Invalid type for 'messages': expected an array.", param="messages", code="invalid_type"
        )
    if not messages:
        raise RequestError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    stream = optional_bool(fields, "stream")
    stream_options = fields.get("stream_options")
    if stream_options is not None and not stream:
        raise RequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    include_usage = (
        isinstance(stream_options, Mapping) and stream_options.get("include_usage") is True
    )
    # Hosts differ on which cap field they obey: bill as one that obeys the higher one.
    caps = [optional_int(fields, key, minimum=1) for key in ("max_completion_tokens", "max_tokens")]
    present = [c for c in caps if c is not None]
    cap = max(present) if present else None
    extras = [schema_text(fields[key]) for key in ("tools", "functions") if fields.get(key)]
    return ParsedRequest(
        body=fields,
        model=model,
        prompt_tokens=prompt_token_count((_chat_message_text(m) for m in messages), extras),
        last_user_text=last_user_text(messages),
        cap=cap,
        stream=stream,
        include_usage=include_usage,
        choices=coerced_count(fields, "n"),
    )


def _chat_message_text(message: Any) -> list[str]:
    if not isinstance(message, Mapping):
        return []
    fragments = text_fragments(message.get("content"))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            fragments.extend(
                v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str)
            )
    return fragments


def chat_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish_reason(completion: Completion) -> str:
    return "length" if completion.truncated else "stop"


def chat_completion_body(request: ParsedRequest, completion: Completion) -> dict[str, Any]:
    return {
        "id": random_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": completion.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": _finish_reason(completion),
            }
        ],
        "usage": chat_usage(request.prompt_tokens, completion.tokens * request.choices),
        "service_tier": SERVICE_TIER,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chat_completion_stream(request: ParsedRequest, completion: Completion) -> list[StreamEvent]:
    """Chunks as OpenAI sends them; with include_usage every chunk carries
    `usage: null` and a final choice-less chunk carries the real usage."""
    envelope: dict[str, Any] = {
        "id": random_id("chatcmpl-", 29),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
        "service_tier": SERVICE_TIER,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        payload = dict(envelope)
        payload["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
        if request.include_usage:
            payload["usage"] = None
        return sse_event(payload)

    events = [StreamEvent(chunk({"role": "assistant", "content": "", "refusal": None}, None))]
    events.extend(
        StreamEvent(chunk({"content": part.text}, None), tokens=part.tokens, is_delta=True)
        for part in completion.chunks
    )
    events.append(StreamEvent(chunk({}, _finish_reason(completion))))
    if request.include_usage:
        usage = chat_usage(request.prompt_tokens, completion.tokens)
        events.append(StreamEvent(sse_event({**envelope, "choices": [], "usage": usage})))
    events.append(StreamEvent(sse_event(STREAM_DONE)))
    return events


# --- responses --------------------------------------------------------------


def parse_responses_request(body: Any) -> ParsedRequest:
    fields = _object_body(body)
    model = _model(fields)
    raw_input = fields.get("input")
    messages: list[list[str]]
    if raw_input is None:
        messages, last_text = [], ""
    elif isinstance(raw_input, str):
        messages, last_text = [[raw_input]], raw_input
    elif isinstance(raw_input, list):
        messages = [_response_item_text(item) for item in raw_input]
        last_text = last_user_text(raw_input)
    else:
        raise RequestError(
            "Invalid type for 'input': expected a string or an array of input items.",
            param="input",
            code="invalid_type",
        )
    instructions = fields.get("instructions")
    extras = [instructions] if isinstance(instructions, str) else []
    if fields.get("tools"):
        extras.append(schema_text(fields["tools"]))
    return ParsedRequest(
        body=fields,
        model=model,
        prompt_tokens=prompt_token_count(messages, extras),
        last_user_text=last_text,
        # The real API insists on at least 16; tests want tiny caps, so any
        # positive cap is honoured.
        cap=optional_int(fields, "max_output_tokens", minimum=1),
        stream=optional_bool(fields, "stream"),
        background=optional_bool(fields, "background"),
    )


def _response_item_text(item: Any) -> list[str]:
    if isinstance(item, Mapping) and "role" in item:
        return text_fragments(item.get("content"))
    return text_fragments(item)


def response_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


class _ResponseIds:
    def __init__(self) -> None:
        self.response_id = random_hex_id("resp_", 50)
        self.message_id = random_hex_id("msg_", 50)
        self.created_at = int(time.time())


def _response_object(
    request: ParsedRequest,
    ids: _ResponseIds,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    body = request.body
    finished = status in ("completed", "incomplete")
    return {
        "id": ids.response_id,
        "object": "response",
        "created_at": ids.created_at,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": request.cap,
        "max_tool_calls": body.get("max_tool_calls"),
        "model": request.model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": SERVICE_TIER if finished else "auto",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text", {"format": {"type": "text"}, "verbosity": "medium"}),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _final_status(completion: Completion) -> str:
    return "incomplete" if completion.truncated else "completed"


def response_body(request: ParsedRequest, completion: Completion) -> dict[str, Any]:
    ids = _ResponseIds()
    status = _final_status(completion)
    output = [_message_item(ids.message_id, status, [_output_text(completion.text)])]
    if request.background:
        # Queued: the work (and its bill) comes later; the answer has no usage yet.
        return _response_object(request, ids, status="queued", output=[], usage=None)
    usage = response_usage(request.prompt_tokens, completion.tokens)
    return _response_object(request, ids, status=status, output=output, usage=usage)


def response_stream(request: ParsedRequest, completion: Completion) -> list[StreamEvent]:
    """The Responses event sequence. A capped reply ends with
    `response.incomplete` rather than `response.completed`, as the API does."""
    ids = _ResponseIds()
    events: list[StreamEvent] = []

    def emit(kind: str, fields: dict[str, Any], *, tokens: int = 0, delta: bool = False) -> None:
        payload = {"type": kind, "sequence_number": len(events), **fields}
        events.append(StreamEvent(sse_event(payload, event=kind), tokens=tokens, is_delta=delta))

    pending = _response_object(request, ids, status="in_progress", output=[], usage=None)
    emit("response.created", {"response": pending})
    emit("response.in_progress", {"response": pending})
    position = {"item_id": ids.message_id, "output_index": 0, "content_index": 0}
    emit(
        "response.output_item.added",
        {"output_index": 0, "item": _message_item(ids.message_id, "in_progress", [])},
    )
    emit("response.content_part.added", {**position, "part": _output_text("")})
    for part in completion.chunks:
        emit(
            "response.output_text.delta",
            {**position, "delta": part.text, "logprobs": []},
            tokens=part.tokens,
            delta=True,
        )
    emit("response.output_text.done", {**position, "text": completion.text, "logprobs": []})
    emit("response.content_part.done", {**position, "part": _output_text(completion.text)})
    status = _final_status(completion)
    item = _message_item(ids.message_id, status, [_output_text(completion.text)])
    emit("response.output_item.done", {"output_index": 0, "item": item})
    usage = response_usage(request.prompt_tokens, completion.tokens)
    final = _response_object(request, ids, status=status, output=[item], usage=usage)
    emit(f"response.{status}", {"response": final})
    return events


# --- shared -----------------------------------------------------------------


def _object_body(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError("Invalid type for request body: expected an object.")
    return body


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("you must provide a model parameter")
    return model
