"""OpenAI wire format: Chat Completions and the Responses API, for every OpenAI-compatible host."""

from __future__ import annotations

import json
import time
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

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"


def _kind(path: str) -> str:
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/responses"):
        return "responses"
    if path.endswith("/completions"):
        return "completions"  # the legacy text completions
    return "other"


# Calls that never cost tokens, so no budget needs to bound them (by the end of their path).
_FREE_ENDINGS = ("/moderations", "/files", "/uploads", "/parts", "/cancel", "/input_tokens")


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


_CHAT_AS_JSON = ("tools", "functions", "response_format")
_RESPONSES_AS_JSON = ("tools", "text")


def _chat_prompt(body: dict[str, Any], info: CallInfo) -> None:
    count, info.system_text = _messages_and_system(body.get("messages"))
    info.read_prompt = partial(_walked, body, _CHAT_AS_JSON, count)


def _responses_prompt(body: dict[str, Any], info: CallInfo) -> None:
    system = body.get("instructions") if isinstance(body.get("instructions"), str) else None
    items = body.get("input")
    count, first_system = _messages_and_system(items)
    if isinstance(items, str):
        count = 1
    info.system_text = system or first_system
    info.read_prompt = partial(_walked, body, _RESPONSES_AS_JSON, count)


def _messages_and_system(messages: Any) -> tuple[int, str | None]:
    """How many messages (or input items) there are, and the first system message's text.
    What is counted is not read here: ``_walked`` walks the whole request."""
    if not isinstance(messages, list):
        return 0, None
    count = 0
    system: str | None = None
    for message in messages:
        if not isinstance(message, dict):
            continue
        count += 1
        if system is None and message.get("role") in ("system", "developer"):
            texts: list[str] = []
            _content_parts(message.get("content"), texts)
            system = "\n".join(texts)
    return count, system


def _walked(body: dict[str, Any], as_json: tuple[str, ...], messages: int) -> PromptParts:
    """Every text of the request (``proxy.tokens.walk``), with the fields in ``as_json``
    counted as their JSON text: the provider renders tool definitions and schemas whole."""
    found = collect(body, frozenset(as_json))
    found.texts.extend(json.dumps(body[key]) for key in as_json if body.get(key))
    return PromptParts(found.texts, messages, found.images, found.media_tokens)


# Model-name prefixes of OpenAI's own models; other models served over the OpenAI wire format
# (Llama, Mistral, Qwen...) have tokenizers that may split text finer than cl100k.
_OPENAI_MODEL_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-", "text-", "davinci", "babbage")

ERROR_TYPES = {
    "not_found": "invalid_request_error",
    "invalid_request": "invalid_request_error",
    "unauthorized": "invalid_request_error",
    "forbidden": "invalid_request_error",
    "refused": "tripwire_error",
    "busy": "rate_limit_error",
    "unavailable": "server_error",
    "timeout": "server_error",
    "upstream": "server_error",
    "internal": "server_error",
    # The caller's answer never arrived: its SDK raises an error of this type, and must not
    # retry it.
    "blocked": "tripwire_error",
    "rate_limited": "requests",
    "overloaded": "server_error",
}


def _is_plain(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and value.get("type") == "text")


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


CHAT_CAP_FIELDS = ("max_completion_tokens", "max_tokens")


def _is_ids(prompt: list[Any]) -> bool:
    """A legacy prompt given as one array of token ids, not as several prompts."""
    return all(isinstance(item, int) for item in prompt)


def _sent_caps(body: dict[str, Any]) -> tuple[str, ...]:
    """The chat cap fields the body sets, in ``CHAT_CAP_FIELDS`` order."""
    first, second = CHAT_CAP_FIELDS
    if first in body:
        return CHAT_CAP_FIELDS if second in body else (first,)
    return (second,) if second in body else ()


def _largest_cap(body: dict[str, Any], fields: tuple[str, ...]) -> int | None:
    """The highest cap among the fields sent: the one a host might obey. None when any of
    them is no positive integer (null, a string): that host may run uncapped."""
    largest: int | None = None
    for name in fields:
        cap = _positive_int(body[name])
        if cap is None:
            return None
        if largest is None or cap > largest:
            largest = cap
    return largest


def _count_field(body: dict[str, Any], name: str) -> int:
    """A choice count (``n``, ``best_of``) as the provider validates it: an integer of at
    least 1; a float with no fraction (``5.0``) is that integer, as a JSON number is to a
    server that coerces it. Anything else is refused, not guessed at: ``"5"`` or ``5.5``
    might be generated as five choices by a lenient host."""
    value = body.get(name)
    if value is None:
        return 1
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        # A shape error: the server answers it with a 400 in the provider's format.
        raise ValueError(f"'{name}' must be an integer of at least 1, not {json.dumps(value)}")
    return value


class OpenAIAdapter:
    name = "openai"
    kinds = frozenset({"chat", "responses", "completions"})
    default_base_url = "https://api.openai.com"
    default_routes = ("/v1/",)
    price_provider = "openai"
    error_types = ERROR_TYPES
    query_credentials: tuple[str, ...] = ()

    def tokenizer_family(self, model: str) -> str:
        return "openai" if model.lower().startswith(_OPENAI_MODEL_PREFIXES) else "unknown"

    def set_credential(self, headers: MutableMapping[str, str], api_key: str) -> None:
        headers["Authorization"] = f"Bearer {api_key}"

    def parse_request(self, path: str, body: dict[str, Any]) -> CallInfo:
        kind = _kind(path)
        info = CallInfo(kind, str(body.get("model", "")), body.get("stream") is True)
        if kind == "chat":
            _chat_prompt(body, info)
            sent = _sent_caps(body)
            # One cap field: the client's own. Several: the upstream's (``Upstream.cap_field``)
            # takes them all, since which of them a host obeys is not known.
            info.cap_field = sent[0] if len(sent) == 1 else None
            info.cap = _largest_cap(body, sent)
            info.choices = _count_field(body, "n")
            options = body.get("stream_options")
            info.wants_stream_usage = (
                isinstance(options, dict) and options.get("include_usage") is True
            )
        elif kind == "responses":
            _responses_prompt(body, info)
            info.cap_field = "max_output_tokens"
            info.cap = _positive_int(body.get("max_output_tokens"))
        elif kind == "completions":
            prompt = body.get("prompt")
            prompts = (
                len(prompt) if isinstance(prompt, list) and prompt and not _is_ids(prompt) else 1
            )
            info.read_prompt = partial(_walked, body, (), prompts)
            info.cap_field = "max_tokens"
            # The legacy endpoint's default cap is 16 tokens.
            info.cap = _positive_int(body.get("max_tokens")) if "max_tokens" in body else 16
            # Every prompt gets ``best_of`` completions generated (``n`` returned), each
            # billed up to the cap.
            info.choices = prompts * max(_count_field(body, "n"), _count_field(body, "best_of"))
            options = body.get("stream_options")
            info.wants_stream_usage = (
                isinstance(options, dict) and options.get("include_usage") is True
            )
        return info

    def costs_nothing(self, path: str) -> bool:
        return path.endswith(_FREE_ENDINGS) or "/files/" in path or "/uploads/" in path

    def enforce(
        self, body: dict[str, Any], info: CallInfo, cap: int | None, cap_field: str | None
    ) -> bool:
        changed = False
        if info.kind == "chat":
            sent = _sent_caps(body)
            if cap is None and len(sent) > 1 and info.cap is not None:
                cap = info.cap  # the client's own cap, in the one field the upstream reads
            if cap is not None and cap_field is not None:
                for name in sent:
                    if name != cap_field:
                        del body[name]  # the cap set here must be the one the host obeys
                        changed = True
        for name in ("n", "best_of"):
            if isinstance(body.get(name), float):
                body[name] = int(body[name])  # validated in parse_request: 5.0 -> 5
                changed = True
        if cap is not None and cap_field is not None:
            body[cap_field] = cap
            changed = True
        if info.kind in ("chat", "completions") and info.stream and not info.wants_stream_usage:
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
        output = Output(model=str(body.get("model") or ""))
        texts: list[str] = []
        if info.kind == "chat":
            for choice in body.get("choices") or []:
                message = choice.get("message") if isinstance(choice, dict) else None
                if not isinstance(message, dict):
                    continue
                if choice.get("finish_reason"):
                    output.finish_reasons.append(str(choice["finish_reason"]))
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
            output.finish_reasons = _responses_finish(body)
        elif info.kind == "completions":
            for choice in body.get("choices") or []:
                if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                    texts.append(choice["text"])
        output.text = "".join(texts)
        return output

    def stream_decoder(
        self, info: CallInfo, status: int, content_type: str
    ) -> StreamDecoder | None:
        return sse_decoder(content_type)

    def stream_tally(self, info: CallInfo) -> StreamTally:
        if info.kind == "responses":
            return _ResponsesTally()
        if info.kind in ("chat", "completions"):
            return _ChatTally(drop_usage_chunk=not info.wants_stream_usage)
        return _GenericTally()

    def error_body(self, message: str, error_type: str, code: str) -> bytes:
        return jsonio.dumps(
            {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        )

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
            return b"event: error\ndata: " + jsonio.dumps(payload) + b"\n\n"
        return b"data: " + jsonio.dumps({"error": error}) + b"\n\n"

    def output_format_open(self, body: dict[str, Any], info: CallInfo) -> bool:
        if info.kind == "chat":
            return _is_plain(body.get("response_format"))
        if info.kind == "responses":
            text = body.get("text")
            if text is not None and not isinstance(text, dict):
                return False
            return _is_plain((text or {}).get("format"))
        return False

    def ask_for_schema(
        self, body: dict[str, Any], info: CallInfo, name: str, schema: dict[str, Any], strict: bool
    ) -> None:
        structured = {"type": "json_schema", "name": name, "schema": schema, "strict": strict}
        if info.kind == "chat":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": strict},
            }
        elif info.kind == "responses":
            text = body.get("text")
            body["text"] = {**(text if isinstance(text, dict) else {}), "format": structured}

    def closing_event(self, info: CallInfo) -> Callable[[SSEEvent], bool] | None:
        """Chat Completions: the chunk carrying ``finish_reason`` (then the usage chunk and
        ``[DONE]``); Responses API: ``response.completed`` and its kin."""
        return {"chat": _chat_final, "responses": _responses_final}.get(info.kind)

    def partial_stream(self, info: CallInfo, text: str) -> bytes:
        model, now = info.model, int(time.time())
        if info.kind == "responses":
            return _responses_opening(model, now, text)
        chunk = {"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "created": now}
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        return sse({**chunk, "model": model, "choices": [first]}) + sse(
            {**chunk, "model": model, "choices": [delta]}
        )

    def malformed_body(self, info: CallInfo) -> bytes:
        if info.kind == "responses":
            return (
                b'{"id": "resp_chaos", "object": "response", "status": "completed", '
                b'"output": [{"type": "message", "content": [{"type": "output_text", '
                b'"text": "Partial'
            )
        return (
            b'{"id": "chatcmpl-chaos", "object": "chat.completion", "choices": [{"index": 0, '
            b'"message": {"role": "assistant", "content": "Partial'
        )

    def malformed_event(self, info: CallInfo) -> bytes:
        if info.kind == "responses":
            return b'event: response.output_text.delta\ndata: {"type": "response.output_text.de\n\n'
        return b'data: {"id": "chatcmpl-chaos", "choices": [{"delta": {"content": "Parti\n\n'


def _responses_opening(model: str, now: int, text: str) -> bytes:
    response = {
        "id": "resp_chaos",
        "object": "response",
        "created_at": now,
        "status": "in_progress",
        "model": model,
        "output": [],
    }
    item = {
        "id": "msg_chaos",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    at = {"item_id": "msg_chaos", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    events: list[tuple[str, dict[str, object]]] = [
        ("response.created", {"response": response}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.content_part.added", {**at, "part": part}),
        ("response.output_text.delta", {**at, "delta": text}),
    ]
    return b"".join(
        sse({"type": name, "sequence_number": number, **fields}, name)
        for number, (name, fields) in enumerate(events)
    )


def _chat_final(event: SSEEvent) -> bool:
    data = event.data
    if data.startswith("[DONE]"):
        return True
    if '"finish_reason"' not in data and '"usage"' not in data:
        return False  # the common delta: no parse
    chunk = load_json(data)
    if not isinstance(chunk, dict):
        return False
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices:
        return any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    return isinstance(chunk.get("usage"), dict)


_RESPONSES_FINAL = ("response.completed", "response.incomplete", "response.failed")


def _responses_final(event: SSEEvent) -> bool:
    if event.event:
        return event.event in _RESPONSES_FINAL
    payload = load_json(event.data) if event.data else None
    return isinstance(payload, dict) and payload.get("type") in _RESPONSES_FINAL


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


def _responses_finish(response: dict[str, Any]) -> list[str]:
    """The Responses API has a status, not a finish reason: ``completed`` reads as ``stop``,
    an incomplete answer as the reason it gives (``max_output_tokens``)."""
    status = response.get("status")
    if status == "completed":
        return ["stop"]
    details = response.get("incomplete_details")
    if isinstance(details, dict) and details.get("reason"):
        return [str(details["reason"])]
    return [str(status)] if status else []


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
        if not self.model and chunk.get("model"):
            self.model = str(chunk["model"])
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_from_generic(chunk)
            self.final = True
            if not choices and self._drop_usage_chunk:
                return False
        for choice in choices:
            if isinstance(choice, dict):
                self._choice(choice)
        return True

    def _choice(self, choice: dict[str, Any]) -> None:
        if choice.get("finish_reason"):
            self.finish_reasons.append(str(choice["finish_reason"]))
        if isinstance(choice.get("text"), str):  # a legacy completion's delta
            self.add_text(choice["text"])
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
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
            if isinstance(response, dict):
                self.model = str(response.get("model") or self.model)
                self.finish_reasons = _responses_finish(response)
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
