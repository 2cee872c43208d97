"""OpenAI wire format: Chat Completions and the Responses API, for every OpenAI-compatible host."""

from __future__ import annotations

import json
from typing import Any

from proxy.providers.base import CallInfo, Output, StreamTally, Usage, load_json, usage_from_generic
from proxy.server.sse import SSEEvent
from proxy.tokens import PromptParts

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"


def _kind(path: str) -> str:
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/responses"):
        return "responses"
    return "other"


def _content_parts(content: Any, texts: list[str]) -> int:
    """Collect the text of a message's content; return how many images it holds."""
    if isinstance(content, str):
        texts.append(content)
        return 0
    images = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type", "")
            if kind in ("image_url", "input_image", "image", "input_file", "file"):
                images += 1
            for key in ("text", "refusal", "output"):
                value = part.get(key)
                if isinstance(value, str):
                    texts.append(value)
    return images


def _chat_prompt(body: dict[str, Any]) -> tuple[PromptParts, str | None]:
    texts: list[str] = []
    images = 0
    system: str | None = None
    messages = body.get("messages")
    count = 0
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            count += 1
            before = len(texts)
            images += _content_parts(message.get("content"), texts)
            if system is None and message.get("role") in ("system", "developer"):
                system = "\n".join(texts[before:])
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    texts.append(str(function.get("name", "")))
                    texts.append(str(function.get("arguments", "")))
    for key in ("tools", "functions", "response_format"):
        if body.get(key):
            texts.append(json.dumps(body[key]))
    return PromptParts(texts, count, images), system


def _responses_prompt(body: dict[str, Any]) -> tuple[PromptParts, str | None]:
    texts: list[str] = []
    images = 0
    count = 0
    system = body.get("instructions") if isinstance(body.get("instructions"), str) else None
    if system:
        texts.append(system)
    items = body.get("input")
    if isinstance(items, str):
        texts.append(items)
        count = 1
    elif isinstance(items, list):
        for item in items:
            if not isinstance(item, dict):
                continue
            count += 1
            before = len(texts)
            images += _content_parts(item.get("content"), texts)
            if system is None and item.get("role") in ("system", "developer"):
                system = "\n".join(texts[before:])
            for key in ("arguments", "output", "name"):
                value = item.get(key)
                if isinstance(value, str):
                    texts.append(value)
    for key in ("tools", "text"):
        if body.get(key):
            texts.append(json.dumps(body[key]))
    return PromptParts(texts, count, images), system


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class OpenAIAdapter:
    name = "openai"

    def parse_request(self, path: str, body: dict[str, Any]) -> CallInfo:
        kind = _kind(path)
        info = CallInfo(
            kind=kind, model=str(body.get("model", "")), stream=body.get("stream") is True
        )
        if kind == "chat":
            info.prompt, info.system_text = _chat_prompt(body)
            if "max_completion_tokens" in body:
                info.cap_field = "max_completion_tokens"
            elif "max_tokens" in body:
                info.cap_field = "max_tokens"
            info.cap = _positive_int(body.get(info.cap_field)) if info.cap_field else None
            info.choices = _positive_int(body.get("n")) or 1
            options = body.get("stream_options")
            info.wants_stream_usage = (
                isinstance(options, dict) and options.get("include_usage") is True
            )
        elif kind == "responses":
            info.prompt, info.system_text = _responses_prompt(body)
            info.cap_field = "max_output_tokens"
            info.cap = _positive_int(body.get("max_output_tokens"))
        return info

    def enforce(
        self, body: dict[str, Any], info: CallInfo, cap: int | None, cap_field: str | None
    ) -> bool:
        changed = False
        if cap is not None and cap_field is not None:
            body[cap_field] = cap
            changed = True
        if info.kind == "chat" and info.stream and not info.wants_stream_usage:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            changed = True
        return changed

    def usage_from_body(self, info: CallInfo, body: dict[str, Any]) -> Usage | None:
        return usage_from_generic(body)

    def output_from_body(self, info: CallInfo, body: dict[str, Any]) -> Output:
        output = Output()
        texts: list[str] = []
        if info.kind == "chat":
            for choice in body.get("choices") or []:
                message = choice.get("message") if isinstance(choice, dict) else None
                if not isinstance(message, dict):
                    continue
                if isinstance(message.get("content"), str):
                    texts.append(message["content"])
                for call in message.get("tool_calls") or []:
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        output.tool_calls.append(
                            (str(function.get("name", "")), str(function.get("arguments", "")))
                        )
        elif info.kind == "responses":
            _responses_output(body.get("output"), texts, output)
        output.text = "".join(texts)
        return output

    def stream_tally(self, info: CallInfo) -> StreamTally:
        if info.kind == "responses":
            return _ResponsesTally()
        if info.kind == "chat":
            return _ChatTally(drop_usage_chunk=not info.wants_stream_usage)
        return _GenericTally()

    def error_body(self, message: str, error_type: str, code: str) -> bytes:
        return json.dumps(
            {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        ).encode()

    def error_event(self, message: str, error_type: str, code: str, info: CallInfo) -> bytes:
        error = {"message": message, "type": error_type, "param": None, "code": code}
        if info.kind == "responses":
            payload = {
                "type": "error",
                "code": code,
                "message": message,
                "param": None,
                "error": error,
            }
            return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
        return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


def _responses_output(items: Any, texts: list[str], output: Output) -> None:
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        elif item.get("type") == "function_call":
            output.tool_calls.append((str(item.get("name", "")), str(item.get("arguments", ""))))


class _ChatTally(StreamTally):
    def __init__(self, drop_usage_chunk: bool) -> None:
        super().__init__()
        self._drop_usage_chunk = drop_usage_chunk

    def feed(self, event: SSEEvent) -> bool:
        if not event.data or event.data.startswith("[DONE]"):
            return True
        chunk = load_json(event.data)
        if not isinstance(chunk, dict):
            return True
        if chunk.get("error"):
            self.error = str(chunk["error"])
            return True
        choices = chunk.get("choices") or []
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_from_generic(chunk)
            self.final = True
            if not choices and self._drop_usage_chunk:
                return False
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                self.add_text(delta["content"])
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                self.add_tool(
                    int(call.get("index", 0)),
                    str(function.get("name") or ""),
                    str(function.get("arguments") or ""),
                )
        return True


class _ResponsesTally(StreamTally):
    def feed(self, event: SSEEvent) -> bool:
        payload = load_json(event.data) if event.data else None
        if not isinstance(payload, dict):
            return True
        kind = payload.get("type") or event.event
        if kind == "response.output_text.delta":
            self.add_text(str(payload.get("delta", "")))
        elif kind == "response.function_call_arguments.delta":
            self.add_tool(int(payload.get("output_index", 0)), "", str(payload.get("delta", "")))
        elif kind == "response.output_item.added":
            item = payload.get("item") or {}
            if item.get("type") == "function_call":
                self.add_tool(int(payload.get("output_index", 0)), str(item.get("name", "")))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = payload.get("response") or {}
            self.usage = usage_from_generic(response)
            self.final = self.usage is not None
        elif kind == "error":
            self.error = str(payload.get("message") or payload)
        return True


class _GenericTally(StreamTally):
    """A stream of an endpoint we do not model: take usage wherever an event carries it."""

    def feed(self, event: SSEEvent) -> bool:
        payload = load_json(event.data) if event.data else None
        if isinstance(payload, dict):
            usage = usage_from_generic(payload) or usage_from_generic(payload.get("response") or {})
            if usage is not None:
                self.usage = usage
                self.final = True
        return True
