"""Gemini wire format (``generateContent``, ``streamGenerateContent``), on the Gemini API
(``/v1beta/models/{model}:...``) and on Vertex AI
(``/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:...``).

A stream is SSE with ``alt=sse`` and one JSON array delivered piece by piece without it
(``proxy.server.jsonstream``); Tripwire's own events follow whichever the answer uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, MutableMapping
from typing import Any

from proxy import jsonio
from proxy.providers.base import (
    CallInfo,
    Output,
    StreamDecoder,
    StreamTally,
    Usage,
    load_json,
)
from proxy.server.jsonstream import JSONArrayDecoder
from proxy.server.sse import SSEDecoder, SSEEvent
from proxy.tokens import PromptParts

# The method after the model: ``.../models/gemini-2.5-flash:streamGenerateContent``.
# Paths come lower-cased (``routing.normal_path``); methods are compared so.
_METHOD = re.compile(r"/(?:models|tunedmodels)/([^/:]+):([a-z]+)$", re.IGNORECASE)
GENERATE = "generatecontent"
STREAM = "streamgeneratecontent"
CAP_FIELD = "generationConfig.maxOutputTokens"

ERROR_TYPES = {
    "not_found": "NOT_FOUND",
    "invalid_request": "INVALID_ARGUMENT",
    "unauthorized": "UNAUTHENTICATED",
    "forbidden": "PERMISSION_DENIED",
    # 403: google-genai retries only 408, 429 and 5xx, and only when asked to.
    "refused": "PERMISSION_DENIED",
    "busy": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
    "timeout": "DEADLINE_EXCEEDED",
    "upstream": "UNAVAILABLE",
    "internal": "INTERNAL",
    # The caller's answer never arrived: a 400 the SDK raises as ClientError and never retries.
    "blocked": "FAILED_PRECONDITION",
    "rate_limited": "RESOURCE_EXHAUSTED",
    "overloaded": "UNAVAILABLE",
}

# google.rpc.Code -> the HTTP status Google answers it with; the SDK reads ``error.code``.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def model_and_method(path: str) -> tuple[str, str]:
    found = _METHOD.search(path.rstrip("/"))
    return (found.group(1), found.group(2).lower()) if found else ("", "")


def _parts(content: Any, texts: list[str]) -> int:
    """Collect the text of a Content's parts; return how many media parts it holds."""
    media = 0
    parts = content.get("parts") if isinstance(content, dict) else None
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        if "inlineData" in part or "fileData" in part:
            media += 1
        call = part.get("functionCall")
        if isinstance(call, dict):
            texts.append(str(call.get("name", "")))
            texts.append(json.dumps(call.get("args", {})))
        answer = part.get("functionResponse")
        if isinstance(answer, dict):
            texts.append(str(answer.get("name", "")))
            texts.append(json.dumps(answer.get("response", {})))
        code = part.get("executableCode")
        if isinstance(code, dict) and isinstance(code.get("code"), str):
            texts.append(code["code"])
        result = part.get("codeExecutionResult")
        if isinstance(result, dict) and isinstance(result.get("output"), str):
            texts.append(result["output"])
    return media


def _usage(metadata: Any) -> Usage | None:
    if not isinstance(metadata, dict):
        return None
    prompt = _int(metadata.get("promptTokenCount")) + _int(metadata.get("toolUsePromptTokenCount"))
    # Thinking is billed as output, and maxOutputTokens bounds it with the answer.
    output = _int(metadata.get("candidatesTokenCount")) + _int(metadata.get("thoughtsTokenCount"))
    # promptTokenCount already includes the cached tokens.
    return Usage(prompt, output, _int(metadata.get("cachedContentTokenCount")))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _answer_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of the first candidate (the one an agent reads)."""
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return []
    content = candidates[0].get("content") if isinstance(candidates[0], dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _finished(body: dict[str, Any]) -> bool:
    candidates = body.get("candidates")
    return isinstance(candidates, list) and any(
        isinstance(c, dict) and c.get("finishReason") for c in candidates
    )


class GeminiAdapter:
    name = "gemini"
    kinds = frozenset({"generate"})
    default_base_url = "https://generativelanguage.googleapis.com"
    default_routes = ("/v1beta/", "/v1alpha/", "/v1/models/*:", "/v1/tunedmodels/*:")
    price_provider = "google"
    error_types = ERROR_TYPES
    query_credentials: tuple[str, ...] = ("key",)

    def tokenizer_family(self, model: str) -> str:
        return "unknown"  # bounded by bytes: no Gemini tokenizer ships offline

    def set_credential(self, headers: MutableMapping[str, str], api_key: str) -> None:
        headers.pop("Authorization", None)
        headers["x-goog-api-key"] = api_key

    def parse_request(self, path: str, body: dict[str, Any]) -> CallInfo:
        model, method = model_and_method(path)
        if method not in (GENERATE, STREAM):
            return CallInfo(kind="other", model=model)  # countTokens and the rest pass through
        info = CallInfo(kind="generate", model=model, stream=method == STREAM)
        texts: list[str] = []
        system: list[str] = []
        media = _parts(body.get("systemInstruction"), system)
        texts.extend(system)
        contents = body.get("contents")
        count = 0
        for content in contents if isinstance(contents, list) else []:
            if isinstance(content, dict):
                count += 1
                media += _parts(content, texts)
        if body.get("tools"):
            texts.append(json.dumps(body["tools"]))
        config = body.get("generationConfig")
        config = config if isinstance(config, dict) else {}
        for key in ("responseSchema", "responseJsonSchema"):
            if config.get(key):
                texts.append(json.dumps(config[key]))
        info.prompt = PromptParts(texts, count, media)
        info.system_text = "\n".join(system) or None
        info.cap_field = CAP_FIELD
        cap = config.get("maxOutputTokens")
        info.cap = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None
        choices = config.get("candidateCount")
        if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
            info.choices = choices
        return info

    def costs_nothing(self, path: str) -> bool:
        return path.endswith((":counttokens", "/files")) or "/files/" in path

    def enforce(
        self, body: dict[str, Any], info: CallInfo, cap: int | None, cap_field: str | None
    ) -> bool:
        if cap is None or info.kind != "generate":
            return False
        config = body.get("generationConfig")
        if not isinstance(config, dict):
            config = body["generationConfig"] = {}
        config["maxOutputTokens"] = cap
        return True

    def output_format_open(self, body: dict[str, Any], info: CallInfo) -> bool:
        if info.kind != "generate":
            return False
        config = body.get("generationConfig")
        config = config if isinstance(config, dict) else {}
        constrained = config.get("responseMimeType") not in (None, "text/plain")
        return not body.get("tools") and not constrained

    def ask_for_schema(
        self, body: dict[str, Any], info: CallInfo, name: str, schema: dict[str, Any], strict: bool
    ) -> None:
        config = body.get("generationConfig")
        if not isinstance(config, dict):
            config = body["generationConfig"] = {}
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = schema

    # -- answers --------------------------------------------------------------------------

    def usage_from_body(self, info: CallInfo, body: dict[str, Any]) -> Usage | None:
        return _usage(body.get("usageMetadata"))

    def output_from_body(self, info: CallInfo, body: dict[str, Any]) -> Output:
        output = Output()
        texts: list[str] = []
        for part in _answer_parts(body):
            if isinstance(part.get("text"), str) and not part.get("thought"):
                texts.append(part["text"])
            call = part.get("functionCall")
            if isinstance(call, dict):
                output.tool_calls.append((str(call.get("name", "")), json.dumps(call.get("args"))))
        output.text = "".join(texts)
        return output

    def stream_tally(self, info: CallInfo) -> StreamTally:
        return _GenerateTally()

    def stream_decoder(
        self, info: CallInfo, status: int, content_type: str
    ) -> StreamDecoder | None:
        if content_type.startswith("text/event-stream"):
            return SSEDecoder()
        if info.stream and 200 <= status < 300 and "json" in content_type:
            info.framing = "json-array"
            return JSONArrayDecoder()
        return None

    def closing_event(self, info: CallInfo) -> Callable[[SSEEvent], bool] | None:
        """The chunk that carries the finish reason."""
        return _closing if info.kind == "generate" else None

    # -- Tripwire's own answers -----------------------------------------------------------

    def error_body(self, message: str, error_type: str, code: str) -> bytes:
        return jsonio.dumps(self._error(message, error_type, code))

    def error_event(self, message: str, error_type: str, code: str, info: CallInfo) -> bytes:
        # In a JSON-array stream the relay frames the object (a comma before, "]" after).
        body = self.error_body(message, error_type, code)
        return body if info.framing == "json-array" else b"data: " + body + b"\r\n\r\n"

    def _error(self, message: str, error_type: str, code: str) -> dict[str, Any]:
        return {
            "error": {
                "code": HTTP_STATUS.get(error_type, 500),
                "message": message,
                "status": error_type,
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": code,
                        "domain": "tripwire",
                    }
                ],
            }
        }

    def partial_stream(self, info: CallInfo, text: str) -> bytes:
        chunk = {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
            "modelVersion": info.model,
        }
        return b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"

    def malformed_body(self, info: CallInfo) -> bytes:
        return b'{"candidates": [{"content": {"role": "model", "parts": [{"text": "Partial'

    def malformed_event(self, info: CallInfo) -> bytes:
        return b'data: {"candidates": [{"content": {"ro\r\n\r\n'


def _closing(event: SSEEvent) -> bool:
    payload = load_json(event.data) if event.data else None
    return isinstance(payload, dict) and _finished(payload)


class _GenerateTally(StreamTally):
    """Each chunk is a GenerateContentResponse; ``usageMetadata`` is cumulative and whole in
    the chunk with the finish reason."""

    def __init__(self) -> None:
        super().__init__()
        self._calls = 0

    def feed(self, event: SSEEvent) -> bool:
        if not event.data:
            return True
        payload = load_json(event.data)
        if not isinstance(payload, dict):
            return True
        if isinstance(payload.get("error"), dict):
            self.error = str(payload["error"].get("message") or payload)
            return True
        for part in _answer_parts(payload):
            if isinstance(part.get("text"), str) and not part.get("thought"):
                self.add_text(part["text"])
            call = part.get("functionCall")
            if isinstance(call, dict):
                self.add_tool(self._calls, str(call.get("name", "")), json.dumps(call.get("args")))
                self._calls += 1
        usage = _usage(payload.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
            if _finished(payload):
                self.final = True
        return True
