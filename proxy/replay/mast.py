"""MAST human-labelled traces (Cemri et al., "Why Do Multi-Agent LLM Systems Fail?", CC-BY-4.0).

One JSON array; every record holds one raw log as a string, in its framework's own layout. Each
splitter below turns a log into the turns a proxy would have seen, marking as completions only
what a model wrote: tool output, relays, prompts and logger noise are kept out, and annotators'
``note`` fields are never read (they name the failure).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from proxy.replay.traces import (
    ASSISTANT,
    Trace,
    TraceFormatError,
    Turn,
    parse_json,
    read_bounded,
)
from proxy.replay.who_and_when import magentic_turn

Pieces = Iterator[tuple[str, str, str]]  # (agent, role, text)


def _ag2(raw: str) -> Pieces:
    for message in parse_json(raw, "a MAST record")["trajectory"]:
        content = message.get("content") or ""
        text = "\n".join(content) if isinstance(content, list) else str(content)
        agent = str(message.get("name") or message.get("role") or "agent")
        # The user proxy sends the task, "Continue." and code results: none is a completion.
        yield agent, "user" if agent.lower().endswith("proxyagent") else ASSISTANT, text


_APPWORLD = re.compile(
    r"^\s*(?:Response from (?P<api>\S+) API|Response from (?P<agent>.+?) Agent|Message to .+"
    r"|Reply from .+|Code Execution Output|Entering .+ message loop|Exiting .+ message loop"
    r"|\*{10,}.*)\s*$"
)


def _appworld(raw: str) -> Pieces:
    agent, lines = "", list[str]()
    for line in [*raw.splitlines(), "**********"]:
        match = _APPWORLD.match(line)
        if match is None:
            lines.append(line)
            continue
        if agent:
            yield agent, ASSISTANT, textwrap.dedent("\n".join(lines)).strip()
        elif lines:
            yield "environment", "tool", "\n".join(lines).strip()
        name = match.group("agent")
        agent, lines = (name[:1].upper() + name[1:] if name else ""), []


_CHATDEV_TURN_END = re.compile(r", turn \d+$")
_CHATDEV_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO\]")


def _chatdev_speaker(line: str) -> str:
    """The speaker of a turn header ``[<time> INFO] <agent>: **<a><-><b> on : <phase>, turn
    <n>**``, or "" for any other record. Read by splitting, not by one pattern: a pattern with
    several lazy wildcards backtracks in time polynomial in the line's length."""
    _, sep, rest = line.partition("INFO] ")
    agent, sep2, tail = rest.partition(": **")
    tail = tail.rstrip()
    if not (sep and sep2 and agent and tail.endswith("**")):
        return ""
    inner = tail[:-2]
    pair = inner.find("<->")
    phase = inner.find(" on : ", pair + 3) if pair > 0 else -1
    if phase <= pair + 3 or not _CHATDEV_TURN_END.search(inner, phase + 7):
        return ""
    return agent


def _chatdev(raw: str) -> Pieces:
    agent, lines = "", list[str]()

    def finish() -> Pieces:
        body = "\n".join(lines).strip()
        # Each turn opens with the other role's system prompt in brackets: drop it.
        if body.startswith("["):
            end = next((i for i, line in enumerate(lines) if line.rstrip().endswith("]")), None)
            body = "\n".join(lines[end + 1 :]).strip() if end is not None else body
        yield agent, ASSISTANT, body

    for line in raw.splitlines():
        if _CHATDEV_RECORD.match(line):
            if agent:
                yield from finish()
            agent, lines = _chatdev_speaker(line), []
        elif agent:
            lines.append(line)
    if agent:
        yield from finish()


_HYPER_RECORD = re.compile(r"^HyperAgent_\S+ - \w+ - (.*)$", re.DOTALL)
_HYPER_RESPONSE = re.compile(r"^([\w\- ]+)'s Response: ?(.*)$", re.DOTALL)
_HYPER_HANDOFF = re.compile(r"^(\w+)->(\w+): ?(.*)$", re.DOTALL)


def _hyperagent(raw: str) -> Pieces:
    records: list[str] = []
    for line in parse_json(raw, "a MAST record")["trajectory"]:
        match = _HYPER_RECORD.match(line)
        if match:
            records.append(match.group(1))
        elif records:
            records[-1] += "\n" + line
    previous = None
    for raw_record in records:
        # The logger was attached several times: the same record comes 2-4 times in a row.
        record = raw_record.strip()
        if record == previous:
            continue
        previous = record
        if response := _HYPER_RESPONSE.match(record):
            yield response.group(1), ASSISTANT, response.group(2).strip()
        elif handoff := _HYPER_HANDOFF.match(record):
            yield handoff.group(1), "handoff", handoff.group(3).strip()
        else:
            yield "HyperAgent", "log", record


_MAGENTIC = re.compile(r"^-{10} (.+?) -{10}$")
_RUNNER = re.compile(r"^(?:SCENARIO\.PY|RUN\.SH) .*!#!#$")


def _magentic(raw: str) -> Pieces:
    agent, lines = "", list[str]()
    for line in [*raw.splitlines(), "---------- end ----------"]:
        match = _MAGENTIC.match(line)
        if match is None:
            if agent and not _RUNNER.match(line):
                lines.append(line)
            continue
        if agent:
            text = "\n".join(lines).strip()
            if agent == "user":
                yield agent, "user", text
            else:
                turn = magentic_turn(0, agent, text)
                yield turn.agent, turn.role, turn.text
        agent, lines = match.group(1), []


_LOGURU = re.compile(r"^\d{4}-\d\d-\d\d \S+ \| \w+\s*\| \S+ - (.*)$")
_METAGPT_ACT = re.compile(r"^\w+\((\w+)\): to do \w+")
_METAGPT_BLOCK = re.compile(r"^\[[^\]]+\] (FROM: (\S+)|NEW MESSAGES:)")
_METAGPT_SPEAKER = re.compile(r"^(\w+): ?(.*)$")


def _metagpt(raw: str) -> Pieces:
    try:
        record = parse_json(raw, "a MAST record")
    except ValueError:
        yield from _metagpt_messages(raw)
        return
    agent, lines = "", list[str]()
    for line in [*str(record.get("content") or "").splitlines(), "0000-00-00 0 | END | end - "]:
        logged = _LOGURU.match(line)
        if logged is None:
            lines.append(line)
            continue
        if agent:
            yield agent, ASSISTANT, "\n".join(lines).strip()
        act = _METAGPT_ACT.match(logged.group(1))
        agent, lines = (act.group(1) if act else ""), []


def _metagpt_messages(raw: str) -> Pieces:
    """The communication-log layout: blocks between dashed lines, ``FROM:`` or ``NEW MESSAGES:``."""
    for block in re.split(r"^-{20,}\s*$", raw, flags=re.MULTILINE):
        lines = block.strip().splitlines()
        at = next((i for i, line in enumerate(lines[:3]) if _METAGPT_BLOCK.match(line)), None)
        if at is None:
            continue
        header = _METAGPT_BLOCK.match(lines[at])
        assert header is not None
        body = lines[at + 1 :]
        if header.group(2):  # FROM: the requirement a human sent
            yield header.group(2), "user", "\n".join(body).strip()
            continue
        body = [line for line in body if line.strip()] or [""]
        speaker = _METAGPT_SPEAKER.match(body[0])
        if speaker:
            text = "\n".join([speaker.group(2), *body[1:]]).strip()
            yield speaker.group(1), ASSISTANT, text


_MANUS_THOUGHTS = re.compile(r"^✨ (.+?)'s thoughts: ?(.*)$")
_MANUS_CHOICE = re.compile(r"^(?:🛠️|🧰|🔧 Tool arguments)")


def _openmanus(raw: str) -> Pieces:
    agent, lines, in_step = "", list[str](), False
    for line in [*raw.splitlines(), "0000-00-00 0 | END | end - end"]:
        logged = _LOGURU.match(line)
        if logged is None:
            if in_step:
                lines.append(line)
            continue
        message = logged.group(1)
        if in_step and _MANUS_CHOICE.match(message):
            lines.append(message)  # the tool calls the model chose belong to its step
            continue
        if in_step:
            yield agent, ASSISTANT, "\n".join(lines).strip()
            in_step = False
        if thoughts := _MANUS_THOUGHTS.match(message):
            agent, lines, in_step = thoughts.group(1), [thoughts.group(2)], True


SPLITTERS: dict[str, Callable[[str], Pieces]] = {
    "AG2": _ag2,
    "AppWorld": _appworld,
    "ChatDev": _chatdev,
    "HyperAgent": _hyperagent,
    "Magentic": _magentic,
    "MetaGPT": _metagpt,
    "OpenManus": _openmanus,
}


def _framework(record: dict[str, Any]) -> str:
    # Some records have the framework and the benchmark swapped.
    for name in (record.get("mas_name"), record.get("benchmark_name")):
        if name in SPLITTERS:
            return str(name)
    raise TraceFormatError(f"trace {record.get('trace_id')}: unknown framework")


def _title(mode: str) -> str:
    """ "1.5 Step repetition\\n\\nUnnecessary ..." -> "step repetition" (codes were renumbered)."""
    first = mode.strip().splitlines()[0] if mode.strip() else ""
    return re.sub(r"^[\d.]+\s*", "", first).strip().lower()


def votes(record: dict[str, Any], title: str) -> int:
    """How many annotators marked the failure mode of that title (0 when it is not listed)."""
    for annotation in record.get("annotations") or []:
        if _title(str(annotation.get("failure mode", ""))) == title:
            return sum(annotation.get(f"annotator_{n}") is True for n in (1, 2, 3))
    return 0


def split_trace(record: dict[str, Any]) -> Trace:
    framework = _framework(record)
    task = f"mast/{record.get('trace_id')}-{framework}"
    turns = [
        Turn(step, agent, role, text)
        for step, (agent, role, text) in enumerate(SPLITTERS[framework](str(record["trace"])))
    ]
    labels = {
        "framework": framework,
        "trace_id": record.get("trace_id"),
        "round": record.get("round"),
        "step_repetition_votes": votes(record, "step repetition"),
        "unaware_of_termination_votes": max(
            votes(record, "unaware of termination conditions"),
            votes(record, "unaware of stopping conditions"),
        ),
    }
    return Trace(task, turns, "mast", labels)


def load_mast(path: Path) -> list[Trace]:
    records = parse_json(read_bounded(path), str(path))
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise TraceFormatError(f"{path}: expected a JSON array of MAST records")
    return [split_trace(record) for record in records]
