"""The pure parts: what an envelope is, how a completion is read as one, how a request asks
the provider for one, and which stream events wait for the verdict. No I/O here."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proxy.envelopes.settings import EnvelopeSettings, load_validator
from proxy.providers import adapter_for_kind
from proxy.providers.base import CallInfo, Output
from proxy.server.sse import SSEEvent
from proxy.tokens import count_text

Status = Literal["success", "failed", "partial"]
STATUSES: tuple[str, ...] = ("success", "failed", "partial")
INVALID = "invalid"
# The name of the forced Anthropic tool and of the OpenAI JSON schema.
ENVELOPE_NAME = "status_envelope"
MAX_PROBLEM_CHARS = 300

Confidence = Annotated[float, Field(ge=0, le=1, strict=True)]


class Envelope(BaseModel):
    """The default envelope. ``result`` may be any JSON value; ``reason`` says why a status
    is not ``success`` (or what the confidence rests on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Status
    result: Any
    confidence: Confidence
    reason: str = ""


class _Core(BaseModel):
    """What the gate reads from an envelope of a custom schema: the schema says the rest."""

    model_config = ConfigDict(extra="allow", frozen=True)

    status: Status
    confidence: Confidence


# What Tripwire asks the provider for. ``result`` is a string so the schema stays within what
# OpenAI's strict structured outputs accept; the check itself accepts any JSON value there.
DEFAULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": list(STATUSES)},
        "result": {"type": "string", "description": "the work's result"},
        "confidence": {
            "type": "number",
            "description": "how sure the worker is of the result, from 0 to 1",
        },
        "reason": {
            "type": "string",
            "description": "why the status is failed or partial, or what the confidence rests on",
        },
    },
    "required": ["status", "result", "confidence", "reason"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str  # success, failed, partial, or invalid
    confidence: float | None = None
    envelope: dict[str, Any] | None = None
    problem: str | None = None  # why it is invalid
    low_confidence: bool = False
    min_confidence: float | None = None


def schema_of(settings: EnvelopeSettings) -> dict[str, Any]:
    if settings.schema_file is None:
        return DEFAULT_SCHEMA
    schema = load_validator(settings.schema_file).schema
    return dict(schema) if isinstance(schema, dict) else DEFAULT_SCHEMA


def check(output: Output, settings: EnvelopeSettings) -> Verdict | None:
    """Read one completion as an envelope. None when it is not a final answer: the worker
    called one of its own tools, and its envelope comes with a later completion."""
    envelope_call = next((args for name, args in output.tool_calls if name == ENVELOPE_NAME), None)
    if envelope_call is not None:
        source = envelope_call
    elif output.tool_calls and not output.text.strip():
        return None
    else:
        source = output.text
    try:
        data = _parse(source)
    except _Unreadable as exc:
        return Verdict(INVALID, problem=str(exc))
    if not isinstance(data, dict):
        what = "no text" if not source.strip() else "text that is not a JSON object"
        return Verdict(INVALID, problem=f"the completion is {what}")
    if settings.schema_file is not None:
        errors = sorted(
            load_validator(settings.schema_file).iter_errors(data), key=lambda e: list(e.path)
        )
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
            return Verdict(INVALID, problem=_short(f"schema: {where}: {first.message}"))
    try:
        model = _Core if settings.schema_file is not None else Envelope
        parsed = model.model_validate(data)
    except ValidationError as exc:
        item = exc.errors()[0]
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        return Verdict(INVALID, problem=_short(f"{where}: {item['msg']}"))
    confidence = float(parsed.confidence)
    threshold = settings.min_confidence
    return Verdict(
        parsed.status,
        confidence,
        data,
        low_confidence=threshold is not None and confidence < threshold,
        min_confidence=threshold,
    )


# An envelope is a short status report: bounds that no honest one reaches, so a hostile or
# broken completion is an invalid envelope, never a crash of the call.
MAX_ENVELOPE_CHARS = 1024 * 1024
MAX_ENVELOPE_DEPTH = 32


class _Unreadable(ValueError):
    """JSON that is not read as an envelope at all: the message is the verdict's problem."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        duplicate = next(key for key, count in counts.items() if count > 1)
        # Parsers disagree on which of two equal keys wins: the worker's intent is unknown.
        raise _Unreadable(_short(f"the envelope has the key {duplicate!r} twice"))
    return data


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest, walked without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_ENVELOPE_DEPTH:
            return deepest
        todo.extend((child, depth + 1) for child in children)
    return deepest


def _parse(text: str) -> Any:
    text = text.strip()
    if text.startswith("```"):
        # Models asked for JSON in prose often fence it; the fence is not part of the answer.
        lines = text.splitlines()
        if len(lines) >= 2 and lines[-1].strip() == "```":
            text = "\n".join(lines[1:-1])
    if not text.startswith("{"):
        return None
    if len(text) > MAX_ENVELOPE_CHARS:
        raise _Unreadable(f"the envelope is longer than {MAX_ENVELOPE_CHARS} characters")
    too_deep = _Unreadable(f"the envelope nests deeper than {MAX_ENVELOPE_DEPTH} levels")
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise too_deep from None
    except _Unreadable:
        raise
    except ValueError:
        return None
    if _depth(data) > MAX_ENVELOPE_DEPTH:
        raise too_deep
    return data


def _short(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 3] + "..."


# -- asking the provider for an envelope ---------------------------------------------------


def wants_injection(body: dict[str, Any], info: CallInfo, settings: EnvelopeSettings) -> bool:
    """Whether the request leaves the output format open, so the envelope can be asked for."""
    if not settings.inject:
        return False
    adapter = adapter_for_kind(info.kind)
    return adapter is not None and adapter.output_format_open(body, info)


def inject(body: dict[str, Any], info: CallInfo, settings: EnvelopeSettings) -> bool:
    """Ask the provider for the envelope, in the call's wire format; True when the body
    changed."""
    adapter = adapter_for_kind(info.kind)
    if adapter is None or not wants_injection(body, info, settings):
        return False
    adapter.ask_for_schema(
        body, info, ENVELOPE_NAME, schema_of(settings), strict=settings.schema_file is None
    )
    return True


def final_event(kind: str) -> Callable[[SSEEvent], bool] | None:
    """The predicate that recognises a stream's first closing event, from the adapter that
    serves ``kind``: it and every event after it are held back until the envelope is judged."""
    adapter = adapter_for_kind(kind)
    return adapter.closing_event(CallInfo(kind=kind)) if adapter is not None else None


def injection_tokens(body: dict[str, Any], info: CallInfo, settings: EnvelopeSettings) -> int:
    """What an injection adds to the prompt, for the pre-flight estimate: high rather than
    low, as the estimate is everywhere (the tokenizer of Anthropic models is not public)."""
    if not wants_injection(body, info, settings):
        return 0
    return int(count_text(json.dumps(schema_of(settings))) * 1.35) + 40
