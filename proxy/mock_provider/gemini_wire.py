"""Gemini wire format: generateContent bodies, streams (SSE or one JSON array), errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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

_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}

INVALID_JSON = "Invalid JSON payload received. Unexpected token."


def request_id() -> str:
    return random_id("", 16)


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": code}}


def status_error_body(status: int, _request_id: str = "") -> dict[str, Any]:
    known = _STATUS_ERRORS.get(status)
    if known is None:
        known = _STATUS_ERRORS[500] if status >= 500 else _STATUS_ERRORS[400]
    return error_body(status, *known)


def invalid_request_body(error: RequestError, _request_id: str = "") -> dict[str, Any]:
    return error_body(400, "INVALID_ARGUMENT", error.message)


def _texts(content: Any) -> list[str]:
    parts = content.get("parts") if isinstance(content, Mapping) else None
    texts: list[str] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, Mapping):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        for key, inner in (("functionCall", "args"), ("functionResponse", "response")):
            value = part.get(key)
            if isinstance(value, Mapping):
                texts.append(str(value.get("name", "")))
                texts.append(json.dumps(value.get(inner, {})))
    return texts


def parse_generate_request(body: Any, model: str, stream: bool) -> ParsedRequest:
    if not isinstance(body, Mapping):
        raise RequestError("Invalid JSON payload received. Expected an object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise RequestError("* GenerateContentRequest.contents: contents is not specified")
    config = body.get("generationConfig") or {}
    if not isinstance(config, Mapping):
        raise RequestError("Invalid value at 'generation_config'")
    cap = config.get("maxOutputTokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise RequestError(
            "* GenerateContentRequest.generation_config.max_output_tokens: "
            "max_output_tokens must be positive."
        )
    extras = _texts(body.get("systemInstruction"))
    if body.get("tools"):
        extras.append(schema_text(body["tools"]))
    last = ""
    for content in reversed(contents):
        if isinstance(content, Mapping) and content.get("role", "user") == "user":
            last = "\n".join(t for t in _texts(content))
            break
    return ParsedRequest(
        body=body,
        model=model,
        prompt_tokens=prompt_token_count((_texts(c) for c in contents), extras),
        last_user_text=last,
        cap=cap,
        stream=stream,
    )


def count_tokens_body(body: Any) -> dict[str, Any]:
    contents = body.get("contents") if isinstance(body, Mapping) else None
    contents = contents if isinstance(contents, list) else []
    return {"totalTokens": prompt_token_count(_texts(c) for c in contents)}


def _usage(request: ParsedRequest, output: int) -> dict[str, Any]:
    return {
        "promptTokenCount": request.prompt_tokens,
        "candidatesTokenCount": output,
        "totalTokenCount": request.prompt_tokens + output,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": request.prompt_tokens}],
    }


def _chunk(
    request: ParsedRequest, text: str, finish: str | None, usage: dict[str, Any]
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": request.model,
        "responseId": _response_id(),
    }


def _response_id() -> str:
    return random_id("", 22)


def _finish(completion: Completion) -> str:
    return "MAX_TOKENS" if completion.truncated else "STOP"


def generate_body(request: ParsedRequest, completion: Completion) -> dict[str, Any]:
    return _chunk(request, completion.text, _finish(completion), _usage(request, completion.tokens))


def _stream_chunks(request: ParsedRequest, completion: Completion) -> list[dict[str, Any]]:
    """Every chunk repeats the prompt's usage; the last one also carries the output's and
    the finish reason, as the API does."""
    chunks: list[dict[str, Any]] = []
    parts = completion.chunks or ()
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        usage = _usage(request, completion.tokens) if last else _prompt_usage(request)
        chunks.append(_chunk(request, part.text, _finish(completion) if last else None, usage))
    if not parts:
        chunks.append(_chunk(request, "", _finish(completion), _usage(request, 0)))
    return chunks


def _prompt_usage(request: ParsedRequest) -> dict[str, Any]:
    return {"promptTokenCount": request.prompt_tokens, "totalTokenCount": request.prompt_tokens}


def sse_stream(request: ParsedRequest, completion: Completion) -> list[StreamEvent]:
    tokens = [part.tokens for part in completion.chunks] or [0]
    return [
        StreamEvent(f"data: {compact_json(chunk)}\r\n\r\n".encode(), tokens=t, is_delta=t > 0)
        for chunk, t in zip(_stream_chunks(request, completion), tokens, strict=True)
    ]


def array_stream(request: ParsedRequest, completion: Completion) -> list[StreamEvent]:
    """The stream without ``alt=sse``: one JSON array, pretty-printed, written element by
    element (``[{`` first, then ``,\\r\\n{`` ..., then ``]``)."""
    tokens = [part.tokens for part in completion.chunks] or [0]
    events: list[StreamEvent] = []
    for index, (chunk, t) in enumerate(
        zip(_stream_chunks(request, completion), tokens, strict=True)
    ):
        head = "[" if index == 0 else ",\r\n"
        data = (head + json.dumps(chunk, indent=2, ensure_ascii=False)).encode()
        events.append(StreamEvent(data, tokens=t, is_delta=t > 0))
    events.append(StreamEvent(b"]"))
    return events
