"""Bedrock Converse wire format (``/model/{modelId}/converse`` and ``converse-stream``): JSON
bodies, and streams in AWS's binary event-stream framing (``proxy.server.eventstream``).

A Bedrock API key goes in ``Authorization: Bearer``; SigV4 re-signing, when Tripwire holds AWS
credentials for the upstream, happens after the adapter, at sending (``proxy.server.sigv4``).
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
from proxy.server.eventstream import (
    EventStreamDecoder,
    error_message,
    event_message,
    exception_message,
)
from proxy.server.sse import SSEEvent
from proxy.tokens import PromptParts

_PATH = re.compile(r"/model/(.+)/(converse|converse-stream)$")
CAP_FIELD = "inferenceConfig.maxTokens"
EVENT_STREAM = "application/vnd.amazon.eventstream"

# The exception names botocore raises as ClientError codes; a 403 AccessDeniedException is
# retried by none of botocore's retry modes.
ERROR_TYPES = {
    "not_found": "ResourceNotFoundException",
    "invalid_request": "ValidationException",
    "unauthorized": "UnrecognizedClientException",
    "forbidden": "AccessDeniedException",
    "refused": "AccessDeniedException",
    "busy": "ThrottlingException",
    "unavailable": "ServiceUnavailableException",
    "timeout": "ModelTimeoutException",
    "upstream": "ServiceUnavailableException",
    "internal": "InternalServerException",
    "blocked": "ValidationException",
    "rate_limited": "ThrottlingException",
    "overloaded": "ServiceUnavailableException",
}


# The exceptions a ConverseStream stream carries as events of its own.
STREAM_EXCEPTIONS = frozenset(
    {
        "internalServerException",
        "modelStreamErrorException",
        "validationException",
        "throttlingException",
        "serviceUnavailableException",
    }
)


def _blocks(content: Any, texts: list[str]) -> int:
    """Collect the text of content blocks; return how many media blocks they hold."""
    media = 0
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        if isinstance(block.get("json"), dict | list):
            texts.append(json.dumps(block["json"]))
        if any(key in block for key in ("image", "document", "video")):
            media += 1
        use = block.get("toolUse")
        if isinstance(use, dict):
            texts.append(str(use.get("name", "")))
            texts.append(json.dumps(use.get("input", {})))
        result = block.get("toolResult")
        if isinstance(result, dict):
            media += _blocks(result.get("content"), texts)
        reasoning = block.get("reasoningContent")
        text = reasoning.get("reasoningText") if isinstance(reasoning, dict) else None
        if isinstance(text, dict) and isinstance(text.get("text"), str):
            texts.append(text["text"])
    return media


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    read = _int(usage.get("cacheReadInputTokens"))
    write = _int(usage.get("cacheWriteInputTokens"))
    # inputTokens leaves out the cache reads and writes, billed beside it.
    return Usage(
        _int(usage.get("inputTokens")) + read + write, _int(usage.get("outputTokens")), read, write
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


class BedrockAdapter:
    name = "bedrock"
    kinds = frozenset({"converse"})
    default_base_url = "https://bedrock-runtime.us-east-1.amazonaws.com"
    default_routes = ("/model/",)
    price_provider = "aws"
    error_types = ERROR_TYPES
    query_credentials: tuple[str, ...] = ()

    def tokenizer_family(self, model: str) -> str:
        return "anthropic" if "anthropic." in model else "unknown"

    def set_credential(self, headers: MutableMapping[str, str], api_key: str) -> None:
        """A Bedrock API key; a client's own SigV4 headers mean nothing upstream."""
        for name in ("X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256"):
            headers.pop(name, None)
        headers["Authorization"] = f"Bearer {api_key}"

    def parse_request(self, path: str, body: dict[str, Any]) -> CallInfo:
        found = _PATH.search(path.rstrip("/"))
        if found is None:
            return CallInfo(kind="other")
        info = CallInfo(
            kind="converse", model=found.group(1), stream=found.group(2) == "converse-stream"
        )
        texts: list[str] = []
        system: list[str] = []
        media = _blocks(body.get("system"), system)
        texts.extend(system)
        messages = body.get("messages")
        count = 0
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, dict):
                count += 1
                media += _blocks(message.get("content"), texts)
        if body.get("toolConfig"):
            texts.append(json.dumps(body["toolConfig"]))
        if body.get("additionalModelRequestFields"):
            texts.append(json.dumps(body["additionalModelRequestFields"]))
        info.prompt = PromptParts(texts, count, media)
        info.system_text = "\n".join(system) or None
        info.cap_field = CAP_FIELD
        config = body.get("inferenceConfig")
        cap = config.get("maxTokens") if isinstance(config, dict) else None
        info.cap = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None
        return info

    def costs_nothing(self, path: str) -> bool:
        return path.endswith("/count-tokens")

    def enforce(
        self, body: dict[str, Any], info: CallInfo, cap: int | None, cap_field: str | None
    ) -> bool:
        if cap is None or info.kind != "converse":
            return False
        config = body.get("inferenceConfig")
        if not isinstance(config, dict):
            config = body["inferenceConfig"] = {}
        config["maxTokens"] = cap
        return True

    def output_format_open(self, body: dict[str, Any], info: CallInfo) -> bool:
        # A forced tool is Converse's structured answer, as with Anthropic Messages.
        return info.kind == "converse" and not body.get("toolConfig")

    def ask_for_schema(
        self, body: dict[str, Any], info: CallInfo, name: str, schema: dict[str, Any], strict: bool
    ) -> None:
        body["toolConfig"] = {
            "tools": [
                {
                    "toolSpec": {
                        "name": name,
                        "description": "Report the outcome of the work as a typed status envelope.",
                        "inputSchema": {"json": schema},
                    }
                }
            ],
            "toolChoice": {"tool": {"name": name}},
        }

    # -- answers --------------------------------------------------------------------------

    def usage_from_body(self, info: CallInfo, body: dict[str, Any]) -> Usage | None:
        return _usage(body.get("usage"))

    def output_from_body(self, info: CallInfo, body: dict[str, Any]) -> Output:
        output = Output()
        texts: list[str] = []
        message = (body.get("output") or {}).get("message") or {}
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            use = block.get("toolUse")
            if isinstance(use, dict):
                output.tool_calls.append((str(use.get("name", "")), json.dumps(use.get("input"))))
        output.text = "".join(texts)
        return output

    def stream_tally(self, info: CallInfo) -> StreamTally:
        return _ConverseTally()

    def stream_decoder(
        self, info: CallInfo, status: int, content_type: str
    ) -> StreamDecoder | None:
        return EventStreamDecoder() if content_type.startswith(EVENT_STREAM) else None

    def closing_event(self, info: CallInfo) -> Callable[[SSEEvent], bool] | None:
        """``messageStop`` (``metadata``, with the usage, follows it)."""
        return _closing if info.kind == "converse" else None

    # -- Tripwire's own answers -----------------------------------------------------------

    def error_body(self, message: str, error_type: str, code: str) -> bytes:
        return jsonio.dumps({"__type": error_type, "message": message, "reason": code})

    def error_event(self, message: str, error_type: str, code: str, info: CallInfo) -> bytes:
        """An exception ConverseStream models, else an error message with the code in its
        headers (AccessDeniedException is not one of the stream's exceptions); botocore raises
        either as EventStreamError."""
        member = _lower_first(error_type)
        if member in STREAM_EXCEPTIONS:
            payload = jsonio.dumps({"message": message, "reason": code})
            return exception_message(member, payload)
        return error_message(error_type, message)

    def partial_stream(self, info: CallInfo, text: str) -> bytes:
        return event_message("messageStart", b'{"role": "assistant"}') + event_message(
            "contentBlockDelta",
            json.dumps({"contentBlockIndex": 0, "delta": {"text": text}}).encode(),
        )

    def malformed_body(self, info: CallInfo) -> bytes:
        return b'{"output": {"message": {"role": "assistant", "content": [{"text": "Partial'

    def malformed_event(self, info: CallInfo) -> bytes:
        return event_message("contentBlockDelta", b'{"contentBlockIndex": 0, "del')


def _closing(event: SSEEvent) -> bool:
    return event.event in ("messageStop", "metadata")


class _ConverseTally(StreamTally):
    def feed(self, event: SSEEvent) -> bool:
        name = event.event
        if not name or not event.data:
            return True
        if name.startswith("exception:"):
            payload = load_json(event.data)
            detail = payload.get("message") if isinstance(payload, dict) else None
            self.error = f"{name[10:]}: {detail or event.data}"
            return True
        payload = load_json(event.data)
        if not isinstance(payload, dict):
            return True
        index = payload.get("contentBlockIndex")
        index = index if isinstance(index, int) else 0
        if name == "contentBlockDelta":
            delta = payload.get("delta") or {}
            if isinstance(delta.get("text"), str):
                self.add_text(delta["text"])
            use = delta.get("toolUse")
            if isinstance(use, dict):
                self.add_tool(index, "", str(use.get("input", "")))
        elif name == "contentBlockStart":
            use = (payload.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                self.add_tool(index, str(use.get("name", "")))
        elif name == "metadata":
            usage = _usage(payload.get("usage"))
            if usage is not None:
                self.usage = usage
                self.final = True
        return True
