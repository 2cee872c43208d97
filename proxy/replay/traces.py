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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ASSISTANT = "assistant"


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


def load_jsonl(path: Path) -> list[Trace]:
    traces: dict[str, Trace] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise TraceFormatError(f"{path}:{number}: not JSON: {exc}") from exc
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
