"""Anthropic Messages wire format (``/v1/messages``), JSON and SSE."""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from functools import partial
from typing import Any

from proxy import jsonio
from proxy.providers.base import (
    CallInfo,
    Output,
    StreamDecoder,
    StreamTally,
    Usage,
    load_json,
    sse,
    sse_decoder,
    usage_from_generic,
)
from proxy.server.sse import SSEEvent
from proxy.tokens import PromptParts
from proxy.tokens.walk import collect


def _blocks(content: Any, texts: list[str]) -> int:
    """Collect the text of a content value (string or blocks); return the number of images."""
    if isinstance(content, str):
        texts.append(content)
        return 0
    images = 0
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in ("image", "document"):
            images += 1
        elif kind == "tool_use":
            texts.append(str(block.get("name", "")))
            texts.append(json.dumps(block.get("input", {})))
        elif kind == "tool_result":
            images += _blocks(block.get("content"), texts)
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                texts.append(block[key])
    return images


def _cap(body: dict[str, Any]) -> int | None:
    cap = body.get("max_tokens")
    return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None


def _system_text(body: dict[str, Any]) -> str | None:
    system_texts: list[str] = []
    _blocks(body.get("system"), system_texts)
    return "\n".join(system_texts) or None


def _messages_prompt(body: dict[str, Any]) -> PromptParts:
    messages = body.get("messages")
    count = sum(1 for m in messages if isinstance(m, dict)) if isinstance(messages, list) else 0
    # Every text of the request counts (``proxy.tokens.walk``); tools as their JSON text.
    found = collect(body, _AS_JSON)
    if body.get("tools"):
        found.texts.append(json.dumps(body["tools"]))
    return PromptParts(found.texts, count, found.images, found.media_tokens)


_AS_JSON = frozenset({"tools"})


def _batch_params(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = body.get("requests")
    return [
        item["params"]
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict) and isinstance(item.get("params"), dict)
    ]


def _batch_info(body: dict[str, Any]) -> CallInfo:
    """A Message Batch: every item is a Messages call billed on its own, so the batch costs at
    most the sum of their prompts plus one cap per item (the largest item's cap is reserved
    for each)."""
    items = _batch_params(body)
    info = CallInfo(kind="batch", model=str(items[0].get("model", "")) if items else "")
    caps = [_cap(params) for params in items]
    info.read_prompt = partial(_batch_prompt, items)
    info.cap_field = "max_tokens"
    info.cap = None if not caps or None in caps else max(c for c in caps if c is not None)
    info.choices = max(len(items), 1)
    return info


def _batch_prompt(items: list[dict[str, Any]]) -> PromptParts:
    texts: list[str] = []
    messages = images = media = 0
    for params in items:
        prompt = _messages_prompt(params)
        texts.extend(prompt.texts)
        messages += prompt.messages
        images += prompt.images
        media += prompt.media_tokens
    return PromptParts(texts, messages, images, media, requests=max(len(items), 1))


ERROR_TYPES = {
    "not_found": "not_found_error",
    "invalid_request": "invalid_request_error",
    "unauthorized": "authentication_error",
    "forbidden": "permission_error",
    "refused": "permission_error",
    "busy": "rate_limit_error",
    "unavailable": "overloaded_error",
    "timeout": "timeout_error",
    "upstream": "api_error",
    "internal": "api_error",
    # The caller's answer never arrived: the SDK raises BadRequestError, and does not retry.
    "blocked": "invalid_request_error",
    "rate_limited": "rate_limit_error",
    "overloaded": "overloaded_error",
}


class AnthropicAdapter:
    name = "anthropic"
    kinds = frozenset({"messages", "batch"})
    default_base_url = "https://api.anthropic.com"
    default_routes = ("/v1/messages",)
    price_provider = "anthropic"
    error_types = ERROR_TYPES
    query_credentials: tuple[str, ...] = ()

    def tokenizer_family(self, model: str) -> str:
        return "anthropic"

    def set_credential(self, headers: MutableMapping[str, str], api_key: str) -> None:
        headers.pop("Authorization", None)
        headers["x-api-key"] = api_key

    def parse_request(self, path: str, body: dict[str, Any]) -> CallInfo:
        if path.endswith("/v1/messages/batches"):
            return _batch_info(body)
        is_messages = path.endswith("/v1/messages")
        info = CallInfo(
            kind="messages" if is_messages else "other",
            model=str(body.get("model", "")),
            stream=body.get("stream") is True,
        )
        if not is_messages:
            return info
        info.system_text = _system_text(body)
        info.read_prompt = partial(_messages_prompt, body)
        info.cap_field = "max_tokens"
        info.cap = _cap(body)
        return info

    def costs_nothing(self, path: str) -> bool:
        return path.endswith(("/count_tokens", "/cancel", "/files")) or "/files/" in path

    def enforce(
        self, body: dict[str, Any], info: CallInfo, cap: int | None, cap_field: str | None
    ) -> bool:
        if cap is None or cap_field is None:
            return False
        if info.kind == "batch":
            # Every item is held to the cap granted per item.
            for params in _batch_params(body):
                own = _cap(params)
                params["max_tokens"] = cap if own is None else min(own, cap)
            return True
        body[cap_field] = cap
        return True

    def usage_from_body(self, info: CallInfo, body: dict[str, Any]) -> Usage | None:
        return usage_from_generic(body)

    def output_from_body(self, info: CallInfo, body: dict[str, Any]) -> Output:
        output = Output(model=str(body.get("model") or ""))
        if body.get("stop_reason"):
            output.finish_reasons.append(str(body["stop_reason"]))
        texts: list[str] = []
        for block in body.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                texts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                output.tool_calls.append(
                    (str(block.get("name", "")), json.dumps(block.get("input", {})))
                )
        output.text = "".join(texts)
        return output

    def stream_decoder(
        self, info: CallInfo, status: int, content_type: str
    ) -> StreamDecoder | None:
        return sse_decoder(content_type)

    def stream_tally(self, info: CallInfo) -> StreamTally:
        return _MessagesTally()

    def error_body(self, message: str, error_type: str, code: str) -> bytes:
        return jsonio.dumps({"type": "error", "error": {"type": error_type, "message": message}})

    def error_event(self, message: str, error_type: str, code: str, info: CallInfo) -> bytes:
        return b"event: error\ndata: " + self.error_body(message, error_type, code) + b"\n\n"

    def output_format_open(self, body: dict[str, Any], info: CallInfo) -> bool:
        if info.kind != "messages":
            return False
        # The agent's own tools are its format; a forced tool would take them away.
        thinking = body.get("thinking")
        thinks = isinstance(thinking, dict) and thinking.get("type") == "enabled"
        return not body.get("tools") and body.get("tool_choice") is None and not thinks

    def ask_for_schema(
        self, body: dict[str, Any], info: CallInfo, name: str, schema: dict[str, Any], strict: bool
    ) -> None:
        # A forced tool whose input is the schema: Messages has no other structured answer.
        body["tools"] = [
            {
                "name": name,
                "description": "Report the outcome of the work as a typed status envelope.",
                "input_schema": schema,
            }
        ]
        body["tool_choice"] = {"type": "tool", "name": name}

    def closing_event(self, info: CallInfo) -> Callable[[SSEEvent], bool] | None:
        """``message_stop``, for a Messages stream."""
        return _messages_final if info.kind == "messages" else None

    def partial_stream(self, info: CallInfo, text: str) -> bytes:
        message: dict[str, object] = {
            "id": "msg_chaos",
            "type": "message",
            "role": "assistant",
            "model": info.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        }
        return (
            sse({"type": "message_start", "message": message}, "message_start")
            + sse(block, "content_block_start")
            + sse(delta, "content_block_delta")
        )

    def malformed_body(self, info: CallInfo) -> bytes:
        return (
            b'{"id": "msg_chaos", "type": "message", "role": "assistant", '
            b'"content": [{"type": "text", "text": "Partial'
        )

    def malformed_event(self, info: CallInfo) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n'


def _messages_final(event: SSEEvent) -> bool:
    if event.event:
        return event.event == "message_stop"
    payload = load_json(event.data) if event.data else None
    return isinstance(payload, dict) and payload.get("type") == "message_stop"


class _MessagesTally(StreamTally):
    def feed(self, event: SSEEvent) -> bool:
        if event.event == "ping" or not event.data:
            return True
        payload = load_json(event.data)
        if not isinstance(payload, dict):
            return True
        kind = payload.get("type") or event.event
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.add_text(str(delta.get("text", "")))
            elif delta.get("type") == "input_json_delta":
                self.add_tool(int(payload.get("index", 0)), "", str(delta.get("partial_json", "")))
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.add_tool(int(payload.get("index", 0)), str(block.get("name", "")))
        elif kind == "message_start":
            self._opening(payload.get("message"))
        elif kind == "message_delta":
            self._closing_usage(payload.get("usage"))
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.finish_reasons = [str(delta["stop_reason"])]
        elif kind == "error":
            self.error = str((payload.get("error") or {}).get("message") or payload)
        return True

    def _opening(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        self.usage = usage_from_generic(message)
        if message.get("model"):
            self.model = str(message["model"])

    def _closing_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if self.usage is None:
            self.usage = Usage()
        # message_delta's output_tokens is cumulative; newer servers repeat the input figures.
        if isinstance(usage.get("output_tokens"), int):
            self.usage.output_tokens = usage["output_tokens"]
        if isinstance(usage.get("input_tokens"), int) and usage["input_tokens"] > 0:
            full = usage_from_generic({"usage": usage})
            if full is not None:
                self.usage.input_tokens = full.input_tokens
                self.usage.cached_tokens = full.cached_tokens
                self.usage.cache_write_tokens = full.cache_write_tokens
        self.final = True
