"""Tool-call loops: an agent issuing the same tool call, or the same round of calls, again and
again while the tools answer nothing new.

The text around a call changes every time ("Let me check again", "One more try"), so the
output fingerprint, which hashes text and calls together, never repeats. This detector looks at
the calls alone: each completion's calls (names and canonical JSON arguments, in order) become
one 32-bit fingerprint, kept per agent apart from the text. It trips when an agent's calls since
the last new tool result end in

* the same fingerprint ``repeats`` times in a row, or
* a cycle of period 2 to ``max_period`` (A B A B, A B C A B C) run ``rounds`` times.

Tool results are the evidence of change: a result the task has not seen before (normalised as
the exact fingerprint is, digits kept: "12 failing" then "11 failing" are two results) clears
the agent's run, so polling a job until it finishes or re-running the tests after each fix is
not a loop. Without results (a trace or a proxy that does not pass them), a run only ends when
the calls change.

The same evidence serves the text detectors: ``fed`` says an agent got a new tool result with
this completion's request or the one before, so what it writes now may look like what it wrote
before (the same report template, the same "running the tests" line) while its work moves on.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from hashlib import blake2b
from typing import NamedTuple

from proxy.detectors.base import Trip, TripReason
from proxy.detectors.normalise import canonical_arguments, exact_bytes
from proxy.detectors.settings import ToolLoopSettings
from proxy.detectors.shingles import agent_key
from proxy.detectors.spec import Detector, Figure

MAX_RUN = 24  # calls kept per agent since its last new result: enough for 6 laps of period 4
MAX_AGENTS = 16  # agents tracked per task, the least recently active forgotten first
MAX_RESULTS = 64  # recent distinct tool results remembered per task
_NAME_CHARS = 40
_VERSION = 1
_HEADER = struct.Struct("<BBB")
_RUN_HEAD = struct.Struct("<IBB")
NEVER = 255  # completions since an agent's last new tool result, for one that never had one
FED_WITHIN = 1

ToolCall = tuple[str, str]  # (name, arguments as sent: JSON text, or anything)


def calls_fingerprint(calls: Sequence[ToolCall]) -> int:
    """One completion's tool calls, in order, as a 32-bit number; 0 for none."""
    if not calls:
        return 0
    digest = blake2b(digest_size=4)
    for name, arguments in calls:
        digest.update(b"\x00" + name.encode() + b"\x00" + canonical_arguments(arguments))
    return int.from_bytes(digest.digest()) or 1


def result_fingerprint(result: str) -> int:
    return int.from_bytes(blake2b(exact_bytes(result), digest_size=4).digest())


class ToolLoopState(NamedTuple):
    # A NamedTuple: it turns into a plain tuple and back for free (see ContentState.plain).
    # Per agent, least recently active first: (agent key, its completions since its last new
    # tool result, its call fingerprints since then, oldest first).
    runs: tuple[tuple[int, int, tuple[int, ...]], ...] = ()
    results: tuple[int, ...] = ()  # the task's recent distinct tool results, oldest first
    names: tuple[str, ...] = ()  # the last call's tool names, for the trip's sentence

    def to_bytes(self) -> bytes:
        parts = [_HEADER.pack(_VERSION, len(self.runs), len(self.results))]
        for key, since, calls in self.runs:
            head = _RUN_HEAD.pack(key, since, len(calls))
            parts.append(head + struct.pack(f"<{len(calls)}I", *calls))
        parts.append(struct.pack(f"<{len(self.results)}I", *self.results))
        parts.append("\n".join(self.names).encode())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ToolLoopState:
        if not data:
            return cls()
        if len(data) < _HEADER.size or data[0] != _VERSION:
            raise ValueError("not a tool-loop detector state")
        try:
            _, agents, results = _HEADER.unpack_from(data)
            at = _HEADER.size
            runs = []
            for _ in range(agents):
                key, since, count = _RUN_HEAD.unpack_from(data, at)
                at += _RUN_HEAD.size
                runs.append((key, since, struct.unpack_from(f"<{count}I", data, at)))
                at += 4 * count
            seen = struct.unpack_from(f"<{results}I", data, at)
            at += 4 * results
        except struct.error as exc:
            raise ValueError("corrupt tool-loop detector state") from exc
        rest = data[at:].decode()
        return cls(tuple(runs), seen, tuple(rest.split("\n")) if rest else ())


def observe(
    state: ToolLoopState,
    agent: str,
    calls: Sequence[ToolCall],
    results: Sequence[str],
    settings: ToolLoopSettings,
    key: int | None = None,
) -> tuple[ToolLoopState, Trip | None]:
    """One completion of ``agent`` (``key``: its ``agent_key``): the tool calls it made and
    the tool results its request carried (the answers to its previous calls)."""
    if not calls and not results:
        return state, None
    key = agent_key(agent) if key is None else key
    runs = {owner: (since, run) for owner, since, run in state.runs}
    since, run = runs.pop(key, (NEVER, ()))
    since = since if since == NEVER else min(since + 1, NEVER - 1)
    seen = list(state.results)
    for result in results:
        fingerprint = result_fingerprint(result)
        if fingerprint not in seen:
            run, since = (), 0  # the tools said something new: what came before was no loop
            seen.append(fingerprint)
    names = state.names
    trip = None
    if calls:
        run = (*run, calls_fingerprint(calls))[-MAX_RUN:]
        names = tuple([name[:_NAME_CHARS].replace("\n", " ") for name, _ in calls[:4]])
        trip = _verdict(run, agent, names, settings)
    runs[key] = (since, run)
    kept = tuple([(owner, *entry) for owner, entry in runs.items()][-MAX_AGENTS:])
    return ToolLoopState(kept, tuple(seen[-MAX_RESULTS:]), names), trip


def fed(state: ToolLoopState, agent: str, key: int | None = None) -> bool:
    """Whether ``agent`` got a new tool result with its last completion or the one before."""
    key = agent_key(agent) if key is None else key
    return any([owner == key and since <= FED_WITHIN for owner, since, _ in state.runs])


def _verdict(
    run: tuple[int, ...], agent: str, names: tuple[str, ...], settings: ToolLoopSettings
) -> Trip | None:
    calls = ", ".join(names)
    if len(run) >= settings.repeats and len(set(run[-settings.repeats :])) == 1:
        pattern = f"made the same tool call ({calls}) {settings.repeats} times in a row"
        return _trip(agent, pattern, 1, settings.repeats)
    for period in range(2, settings.max_period + 1):
        span = period * settings.rounds
        if len(run) < span:
            break
        tail = run[-span:]
        if len(set(tail[:period])) > 1 and all(
            tail[i] == tail[i - period] for i in range(period, span)
        ):
            pattern = (
                f"went round the same {period} tool calls {settings.rounds} times (the last: "
                f"{calls})"
            )
            return _trip(agent, pattern, period, settings.rounds)
    return None


def _trip(agent: str, pattern: str, period: int, repeats: int) -> Trip:
    return TOOL_LOOP.trip(agent=agent, pattern=pattern, period=period, repeats=repeats)


TOOL_LOOP = Detector(
    TripReason.TOOL_LOOP,
    "content",
    "agent {agent} {pattern} with no new tool result in between",
    (Figure("agent"), Figure("pattern"), Figure("period"), Figure("repeats")),
    settings=("tool_loop",),
    state=("content: each agent's recent tool-call fingerprints and tool results",),
)
