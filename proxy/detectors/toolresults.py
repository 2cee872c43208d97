"""The tool results a request hands back to the model: the tool-loop detector's evidence of
change.

An agent's request after it called tools ends with the tools' answers. Only those trailing
answers are new to the agent; earlier ones were in its previous requests too. Read from the
parsed body of each format:

* OpenAI Chat Completions: the ``tool`` (and legacy ``function``) messages after the last
  assistant message;
* OpenAI Responses: the ``function_call_output`` items at the end of ``input``;
* Anthropic Messages: the ``tool_result`` blocks of the last message, a user message.

Content is text or a list of text parts; other parts (images) are left out. At most
``MAX_RESULTS`` results of at most ``MAX_CHARS`` characters each are returned, so a huge body
costs no more than a small one. Bodies are parsed JSON: their objects are dicts (a check for
``dict``, not ``Mapping``, on every call).
"""

from __future__ import annotations

from typing import Any

MAX_RESULTS = 16
MAX_CHARS = 4096


def tool_results(body: dict[str, Any]) -> list[str]:
    """The texts of the tool results at the end of a request body (any of the three formats);
    ``[]`` when it ends with something else or has an unexpected shape."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        return _chat_or_anthropic(messages)
    items = body.get("input")
    if isinstance(items, list):
        return _responses(items)
    return []


def _chat_or_anthropic(messages: list[Any]) -> list[str]:
    last = messages[-1]
    if not isinstance(last, dict):
        return []
    content = last.get("content")
    if last.get("role") == "user" and isinstance(content, list):
        blocks = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        return [_text(block.get("content")) for block in blocks[-MAX_RESULTS:]]
    found: list[str] = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") not in ("tool", "function"):
            break
        found.append(_text(message.get("content")))
    return found[:MAX_RESULTS][::-1]


def _responses(items: list[Any]) -> list[str]:
    found: list[str] = []
    for item in reversed(items):
        if not isinstance(item, dict) or item.get("type") != "function_call_output":
            break
        found.append(_text(item.get("output")))
    return found[:MAX_RESULTS][::-1]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content[:MAX_CHARS]
    if isinstance(content, list):
        parts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(parts)[:MAX_CHARS]
    return ""
