"""Recorded conversations as the proxy would have seen them, and our own JSONL format.

A ``Trace`` is one task's turns in order. Only ``assistant`` turns are completions, what a
proxy sees coming back from the provider; the others (the user's request, tool output, relays,
log lines) are kept so that steps keep the numbering of the source.

Our JSONL: one message per line, ``{"task": ..., "agent": ..., "role": ..., "text": ...}``.
``text`` is required; ``task`` defaults to the file's name, ``agent`` to ``default``, ``role``
to ``assistant``. An assistant message may carry ``tool_calls``, a list of ``{"name": ...,
"arguments": ...}`` (arguments a JSON object or its text); a ``tool`` message's text is a tool
result, handed to the completion of its ``agent`` that follows. Blank lines and lines starting
with ``#`` are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ASSISTANT = "assistant"
# A trace is read whole into memory: bound it, so a device or a runaway file (`/dev/zero`, a
# log with no newline) is refused instead of filling memory.
MAX_TRACE_BYTES = 256 * 1024 * 1024
MAX_LINE_CHARS = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Turn:
    step: int  # position in the source trace, 0-based
    agent: str
    role: str  # "assistant" for a completion; "user", "tool", "handoff", "log" otherwise
    text: str
    tool_calls: tuple[tuple[str, str], ...] = ()  # (name, arguments as JSON text)

    @property
    def completion(self) -> bool:
        return self.role == ASSISTANT and (bool(self.text.strip()) or bool(self.tool_calls))


@dataclass(slots=True)
class Trace:
    task: str
    turns: list[Turn]
    source: str = "jsonl"
    # What the source says about the trace (a corpus's labels); never fed to a detector.
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def completions(self) -> list[Turn]:
        return [turn for turn in self.turns if turn.completion]


class TraceFormatError(ValueError):
    """The file is not in the format it was read as; the message says where."""


def read_bounded(path: Path) -> str:
    """The whole file as text, or an error past ``MAX_TRACE_BYTES``."""
    with path.open("rb") as file:
        data = file.read(MAX_TRACE_BYTES + 1)
    if len(data) > MAX_TRACE_BYTES:
        raise TraceFormatError(f"{path}: larger than {MAX_TRACE_BYTES // 2**20} MiB")
    return data.decode("utf-8")


def bounded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(number, line)`` of a text file, each line and the whole file bounded."""
    total = 0
    with path.open(encoding="utf-8") as file:
        number = 0
        while line := file.readline(MAX_LINE_CHARS + 1):
            number += 1
            if len(line) > MAX_LINE_CHARS:
                raise TraceFormatError(
                    f"{path}:{number}: a line longer than {MAX_LINE_CHARS // 2**20} Mi characters"
                )
            total += len(line)
            if total > MAX_TRACE_BYTES:
                raise TraceFormatError(f"{path}: larger than {MAX_TRACE_BYTES // 2**20} MiB")
            yield number, line


def parse_json(text: str, where: str) -> Any:
    """JSON, or a ``TraceFormatError`` naming where: nesting too deep for the parser included."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise TraceFormatError(f"{where}: not JSON: {reason}") from None


def load_jsonl(path: Path) -> list[Trace]:
    traces: dict[str, Trace] = {}
    for number, line in bounded_lines(path):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        record = parse_json(line, f"{path}:{number}")
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise TraceFormatError(f"{path}:{number}: expected an object with a text")
        task = str(record.get("task") or path.stem)
        trace = traces.setdefault(task, Trace(task, []))
        trace.turns.append(
            Turn(
                len(trace.turns),
                str(record.get("agent") or "default"),
                str(record.get("role") or ASSISTANT),
                record["text"],
                _tool_calls(record.get("tool_calls"), path, number),
            )
        )
    return list(traces.values())


def _tool_calls(value: Any, path: Path, number: int) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(call, dict) and isinstance(call.get("name"), str) for call in value
    ):
        raise TraceFormatError(f"{path}:{number}: tool_calls must be a list of {{name, arguments}}")
    return tuple(
        (
            call["name"],
            args if isinstance(args := call.get("arguments", {}), str) else json.dumps(args),
        )
        for call in value
    )
