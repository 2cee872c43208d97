"""Who&When traces (Zhang et al., ICML 2025; MIT licence): one JSON record per line.

Hand-crafted records are Magentic-One runs. Their orchestrator writes, at every step, a ledger
judging ``is_in_loop`` and ``is_progress_being_made``: those judgments are the trace's labels,
so ledger turns are never replayed (they would hand the detectors the answer). What a proxy
would have seen from each role:

* ``Orchestrator (-> X)``: the instruction the orchestrator's ledger chose, a completion;
* ``Orchestrator (thought)``: the initial plan is a completion; "Next speaker X" is a log line;
* ``WebSurfer``: the first paragraph ("I clicked 'Issues'.") renders the action the model
  chose; what follows (page title, OCR text, metadata) is the browser's output, not the
  model's;
* ``FileSurfer`` and ``ComputerTerminal``: tool output.

Algorithm-generated records are AG2 group chats; ``Computer_terminal`` is tool output and the
first message is the task given to the team.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from proxy.replay.traces import (
    ASSISTANT,
    Trace,
    TraceFormatError,
    Turn,
    bounded_lines,
    parse_json,
)

_TOOLS = {"FileSurfer", "ComputerTerminal", "Computer_terminal"}
_BROWSER_STATE = re.compile(
    r"\n\s*\n(?=Here is a screenshot|The web browser is open|The viewport shows|"
    r"Automatic OCR|The following (?:metadata|text))"
)
_JUDGMENT = re.compile(r'"(is_in_loop|is_progress_being_made)"\s*:\s*\{[^{}]*?"answer"\s*:\s*(\w+)')
_HANDOFF = re.compile(r"^Orchestrator \(-> (.+)\)$")


def magentic_turn(step: int, agent: str, text: str) -> Turn:
    """A Magentic-One message as the proxy saw it (also used for MAST's Magentic logs)."""
    if agent in _TOOLS:
        return Turn(step, agent, "tool", text)
    if agent == "WebSurfer":
        return Turn(step, agent, ASSISTANT, _BROWSER_STATE.split(text, maxsplit=1)[0])
    return Turn(step, agent, ASSISTANT, text)


def _judgments(text: str) -> dict[str, bool]:
    return {name: answer.lower() == "true" for name, answer in _JUDGMENT.findall(text)}


def _hand_crafted(record: dict[str, Any], task: str) -> Trace:
    turns: list[Turn] = []
    loop_steps: list[int] = []
    stalled_steps: list[int] = []
    ledgers = 0
    for step, message in enumerate(record["history"]):
        role, text = str(message.get("role", "")), str(message.get("content") or "")
        if role == "human":
            turns.append(Turn(step, "human", "user", text))
        elif role == "Orchestrator (thought)":
            if text.lstrip().startswith("Updated Ledger"):
                ledgers += 1
                judged = _judgments(text)
                if judged.get("is_in_loop"):
                    loop_steps.append(step)
                if judged.get("is_progress_being_made") is False:
                    stalled_steps.append(step)
                turns.append(Turn(step, "Orchestrator", "label", ""))
            elif text.startswith("Next speaker"):
                turns.append(Turn(step, "Orchestrator", "log", text))
            else:
                turns.append(Turn(step, "Orchestrator", ASSISTANT, text))
        elif _HANDOFF.match(role):
            turns.append(Turn(step, "Orchestrator", ASSISTANT, text))
        elif role.startswith("Orchestrator"):
            turns.append(Turn(step, "Orchestrator", "log", text))
        else:
            turns.append(magentic_turn(step, role, text))
    labels = {
        "ledgers": ledgers,
        "loop_steps": loop_steps,
        "no_progress_steps": stalled_steps,
        "mistake_step": record.get("mistake_step"),
        "mistake_agent": record.get("mistake_agent"),
    }
    return Trace(task, turns, "who_and_when", labels)


def _algorithm_generated(record: dict[str, Any], task: str) -> Trace:
    turns = []
    for step, message in enumerate(record["history"]):
        agent = str(message.get("name") or message.get("role") or "agent")
        text = str(message.get("content") or "")
        role = "user" if step == 0 else "tool" if agent in _TOOLS else ASSISTANT
        turns.append(Turn(step, agent, role, text))
    labels = {
        "mistake_step": record.get("mistake_step"),
        "mistake_agent": record.get("mistake_agent"),
    }
    return Trace(task, turns, "who_and_when", labels)


def load_who_and_when(path: Path) -> list[Trace]:
    traces = []
    for number, line in bounded_lines(path):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}:{number}")
        if not isinstance(record, dict) or not isinstance(record.get("history"), list):
            raise TraceFormatError(f"{path}:{number}: not a Who&When record (no history)")
        subset = str(record.get("_subset") or path.stem)
        name = Path(str(record.get("_file") or number)).stem
        task = f"{subset}/{name}"
        roles = {str(m.get("role", "")) for m in record["history"] if isinstance(m, dict)}
        if any(role.startswith("Orchestrator") for role in roles):
            traces.append(_hand_crafted(record, task))
        else:
            traces.append(_algorithm_generated(record, task))
    return traces
