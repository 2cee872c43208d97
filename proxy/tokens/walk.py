"""Everything in a request body that can reach the model's context, found by walking it.

The prompt estimate must be an upper bound whatever shape a request takes, including shapes
no adapter knows yet (a tool result given as an array of parts, a search result block, a
document whose source is text). So it is not built from the fields an adapter recognises:
``collect`` walks the whole body and keeps every string, every object key that is not a
known structural name, and every integer in an array (a legacy prompt given as token ids).
Only the fields listed in ``NOT_INPUT`` are left out: ids, enums, URLs and settings that
the provider never puts in the context. A string in such a field longer than
``NOT_INPUT_MAX_CHARS`` is counted all the same: no id or enum is that long, so the field is
being used for something else.

Media whose tokens cannot be read from the request are charged from an upper bound per part:

* images: ``IMAGE_TOKENS`` (see ``proxy.tokens``): providers downsize images first;
* audio, files and documents given inline: the length of their data (base64 or text), since
  every billed token covers at least one byte of what was sent;
* files and documents given by reference (a file id or a URL): ``REFERENCED_FILE_TOKENS``,
  the context window of most current models, since nothing in the request says their size.

What the provider adds on its side (stored prompts, a previous response's context, what its
server-side tools fetch) is not in the request, so no walk can see it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Upper bound charged for a file or document the request only names (file id, URL).
REFERENCED_FILE_TOKENS = 200_000

# Fields whose value the provider does not put into the model's context.
NOT_INPUT = frozenset(
    {
        "id",
        "call_id",
        "tool_call_id",
        "tool_use_id",
        "custom_id",
        "type",
        "role",
        "status",
        "model",
        "media_type",
        "mime_type",
        "detail",
        "format",
        "cache_control",
        "signature",
        "url",
        "file_id",
        "file_url",
        "image_url",
        "metadata",
        "user",
        "store",
        "stream",
        "stream_options",
        "service_tier",
        "previous_response_id",
        "prompt_cache_key",
        "safety_identifier",
        "include",
        "truncation",
        "background",
        "voice",
        "modalities",
        "reasoning_effort",
        "effort",
    }
)
NOT_INPUT_MAX_CHARS = 256

# Object keys that are the format's own structure, rendered by the chat template rather than
# tokenized as text. Any other key (a JSON schema's property names, a tool's parameters) is
# counted.
STRUCTURAL = frozenset(
    {
        "messages",
        "content",
        "text",
        "name",
        "arguments",
        "function",
        "tool_calls",
        "input",
        "output",
        "instructions",
        "system",
        "prompt",
        "source",
        "data",
        "title",
        "citations",
        "thinking",
        "refusal",
        "params",
        "requests",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "temperature",
        "top_p",
        "n",
    }
    | NOT_INPUT
)

_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})
_AUDIO_TYPES = frozenset({"input_audio", "audio"})
_FILE_TYPES = frozenset({"input_file", "file", "document"})
_MEDIA_TYPES = _IMAGE_TYPES | _AUDIO_TYPES | _FILE_TYPES


@dataclass(slots=True)
class Collected:
    texts: list[str] = field(default_factory=list)
    images: int = 0
    media_tokens: int = 0  # audio, files and documents, from their bound


def collect(
    value: Any, skip: frozenset[str] = frozenset(), into: Collected | None = None
) -> Collected:
    """Every piece of a (parsed JSON) request that may reach the model, with the top-level
    keys in ``skip`` left out (the adapter counts those its own way)."""
    found = into if into is not None else Collected()
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in skip:
                _field(key, item, found)
    else:
        _walk(value, found)
    return found


def _field(key: str, value: Any, found: Collected) -> None:
    if key in NOT_INPUT:
        if isinstance(value, str) and len(value) > NOT_INPUT_MAX_CHARS:
            found.texts.append(value)
        return
    if key not in STRUCTURAL:
        found.texts.append(key)
    _walk(value, found)


def _walk(value: Any, found: Collected) -> None:
    if isinstance(value, str):
        found.texts.append(value)
    elif isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind in _MEDIA_TYPES:
            _media(kind, value, found)
            return
        json_input = isinstance(kind, str) and kind.endswith("tool_use")
        texts = found.texts
        for key, item in value.items():
            if json_input and key == "input":
                # A tool call's input reaches the model as its JSON text, punctuation included.
                texts.append(json.dumps(item))
            elif key in STRUCTURAL and key not in NOT_INPUT and type(item) is str:
                texts.append(item)  # the common case (a message's content), without a call
            else:
                _field(key, item, found)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                found.media_tokens += 1  # a token id (a legacy prompt given as tokens)
            else:
                _walk(item, found)


_INLINE = ("data", "file_data")


def _media(kind: str, part: dict[str, Any], found: Collected) -> None:
    if kind in _IMAGE_TYPES:
        found.images += 1
        return
    if kind in _AUDIO_TYPES:
        audio = part.get(kind)
        data = audio.get("data") if isinstance(audio, dict) else None
        found.media_tokens += len(data) if isinstance(data, str) else REFERENCED_FILE_TOKENS
        return
    # A document's source, a chat file part's "file", or the Responses part itself.
    holder_key = "source" if kind == "document" else "file"
    inner = part.get(holder_key)
    holder: dict[str, Any] = inner if isinstance(inner, dict) else part
    for key, item in part.items():
        if key != holder_key and key not in _INLINE:
            _field(key, item, found)
    if holder is not part:
        for key, item in holder.items():
            if key not in _INLINE and key != "content":
                _field(key, item, found)
    source_type = holder.get("type") if kind == "document" else None
    data = next((holder[k] for k in _INLINE if isinstance(holder.get(k), str)), None)
    if source_type == "text" and data is not None:
        found.texts.append(data)
    elif source_type == "content":
        _walk(holder.get("content"), found)
    elif data:
        found.media_tokens += len(data)  # every billed token covers at least one byte sent
    else:
        found.media_tokens += REFERENCED_FILE_TOKENS
