"""The content detectors together: one shingling per completion, one state per task.

``observe_content`` hashes the completion once and runs the cycle, near-duplicate and
no-progress detectors on its text, and the tool-loop detector on its tool calls and the tool
results its request carried; ``ContentState`` is their states in one value that serializes to
a few kilobytes at most (one Redis hash field):

    state = ContentState.from_bytes(stored)      # b"" for a new task
    state, trips = observe_content(state, agent, text, cycle=..., near_duplicate=..., ...,
                                   tool_calls=output.tool_calls, tool_results=results)
    stored = state.to_bytes()

Version 2: bag sketches of content words (``proxy.detectors.bag``) in place of shingle
MinHash, digits kept, and the tool-loop state; a version-1 state reads as a new task's.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from proxy.detectors import recent
from proxy.detectors.bag import native
from proxy.detectors.base import Trip
from proxy.detectors.cycle import CycleState
from proxy.detectors.cycle import observe_shingles as observe_cycle
from proxy.detectors.progress import NoProgressState
from proxy.detectors.progress import observe_shingles as observe_progress
from proxy.detectors.settings import (
    CycleSettings,
    NearDuplicateSettings,
    NoProgressSettings,
    ToolLoopSettings,
)
from proxy.detectors.shingles import agent_key, shingle
from proxy.detectors.similarity import NearDuplicateState
from proxy.detectors.similarity import observe_shingles as observe_near_duplicate
from proxy.detectors.toolcalls import ToolCall, ToolLoopState, fed
from proxy.detectors.toolcalls import observe as observe_tool_loop

_VERSION = 2
Plain = tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]
_HEADER = struct.Struct("<BIIII")
_TOOL_LOOP_OFF = ToolLoopSettings(enabled=False)


class ContentState(NamedTuple):
    cycle: CycleState = CycleState()
    near_duplicate: NearDuplicateState = NearDuplicateState()
    no_progress: NoProgressState = NoProgressState()
    tool_loop: ToolLoopState = ToolLoopState()

    def plain(self) -> Plain:
        """The state as exact tuples of numbers, bytes and strings, which the garbage collector
        stops tracking (it never untracks a tuple subclass such as this one): the embedded
        ledger keeps this form, marshalled, for all but its busiest tasks, so 100k tasks'
        states add nothing to a full collection. The cycle detector's outputs are usually the
        near-duplicate window's last ones: then they are kept once, the cycle's part holding
        only how many they are."""
        cycle, near = self.cycle, self.near_duplicate
        if cycle.recent and near.recent.endswith(cycle.recent):
            return (
                (cycle.outputs, cycle.names, cycle.runs),
                tuple(near),
                tuple(self.no_progress),
                tuple(self.tool_loop),
            )
        return (tuple(cycle), tuple(near), tuple(self.no_progress), tuple(self.tool_loop))

    @classmethod
    def from_plain(cls, plain: Plain) -> ContentState:
        cycle, near_duplicate, no_progress, tool_loop = plain
        if isinstance(cycle[0], int):  # the window's last outputs (see ``plain``)
            cycle = (recent.last(near_duplicate[0], cycle[0]), *cycle[1:])
        return cls(
            CycleState._make(cycle),
            NearDuplicateState._make(near_duplicate),
            NoProgressState._make(no_progress),
            ToolLoopState._make(tool_loop),
        )

    def to_bytes(self) -> bytes:
        parts = (
            self.cycle.to_bytes(),
            self.near_duplicate.to_bytes(),
            self.no_progress.to_bytes(),
            self.tool_loop.to_bytes(),
        )
        return _HEADER.pack(_VERSION, *(len(part) for part in parts)) + b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ContentState:
        """The state written by ``to_bytes``; ``b""`` is a new task's. Raises ``ValueError`` on
        anything else (the caller starts the task's detection afresh)."""
        if not data:
            return cls()
        if len(data) < _HEADER.size or data[0] != _VERSION:
            raise ValueError("not a content detector state")
        _, *sizes = _HEADER.unpack_from(data)
        if _HEADER.size + sum(sizes) != len(data):
            raise ValueError("corrupt content detector state")
        start = _HEADER.size
        parts = []
        for size in sizes:
            parts.append(data[start : start + size])
            start += size
        return cls(
            CycleState.from_bytes(parts[0]),
            NearDuplicateState.from_bytes(parts[1]),
            NoProgressState.from_bytes(parts[2]),
            ToolLoopState.from_bytes(parts[3]),
        )


def _scores(
    sketch: bytes,
    key: int,
    cycle: CycleState,
    near_duplicate: NearDuplicateState,
    owners: tuple[list[int], list[int]],
) -> tuple[list[float], list[float]]:
    """The similarity of ``sketch`` to each output the cycle and the near-duplicate states
    keep (whose agents' keys are ``owners``), worked out at once. Both detectors only compare
    an output with the same agent's earlier ones, and the cycle's outputs are usually the
    window's last ones too."""
    cycle_owners, near_owners = owners
    if near_duplicate.recent.endswith(cycle.recent):
        if key not in near_owners:
            return [], []
        scores = recent.scores(sketch, near_duplicate.recent, key, near_owners)
        return scores[len(scores) - len(cycle_owners) :], scores
    if key not in cycle_owners and key not in near_owners:
        return [], []
    kept = cycle.recent + near_duplicate.recent
    scores = recent.scores(sketch, kept, key, cycle_owners + near_owners)
    return scores[: len(cycle_owners)], scores[len(cycle_owners) :]


def _owners(cycle: CycleState, near_duplicate: NearDuplicateState) -> tuple[list[int], list[int]]:
    """The agents' keys of the cycle's and the near-duplicate window's outputs, read once."""
    near = recent.keys(near_duplicate.recent)
    if near_duplicate.recent.endswith(cycle.recent):
        return near[len(near) - cycle.outputs :], near
    return recent.keys(cycle.recent), near


def observe_content(
    state: ContentState,
    agent: str,
    text: str,
    *,
    cycle: CycleSettings,
    near_duplicate: NearDuplicateSettings,
    no_progress: NoProgressSettings,
    tool_loop: ToolLoopSettings = _TOOL_LOOP_OFF,
    tool_calls: Sequence[ToolCall] = (),
    tool_results: Sequence[str] = (),
) -> tuple[ContentState, list[Trip]]:
    """Feed one completion to every enabled content detector: its text, its tool calls and the
    tool results its request carried. The trips, in the order cycle, near-duplicate,
    no-progress, tool loop. An empty text with no tool calls and no results changes nothing."""
    key = agent_key(agent)
    tool_state, tool_trip = state.tool_loop, None
    if tool_calls or tool_results:
        # Kept whether or not the tool-loop detector is on: its results are the text
        # detectors' evidence of change too.
        tool_state, tool_trip = observe_tool_loop(
            tool_state, agent, tool_calls, tool_results, tool_loop, key
        )
        tool_trip = tool_trip if tool_loop.enabled else None
    trips: list[Trip] = []
    cycle_state, near_state, progress_state = state.cycle, state.near_duplicate, state.no_progress
    shingles = shingle(text) if text else None
    if shingles is not None and not shingles.empty:
        owners: tuple[list[int] | None, list[int] | None] = (None, None)
        cycle_scores: list[float] | None = None
        near_scores: list[float] | None = None
        # With the extension each detector's step compares in C; without it, the outputs the
        # two detectors share are compared once here.
        if native is None and (cycle.enabled or near_duplicate.enabled):
            owners = _owners(cycle_state, near_state)
            cycle_scores, near_scores = _scores(
                shingles.sketch, key, cycle_state, near_state, owners
            )
        if cycle.enabled:
            cycle_state, trip = observe_cycle(
                cycle_state, agent, shingles, cycle, cycle_scores, key, owners[0]
            )
            trips.extend([trip] if trip else [])
        if near_duplicate.enabled:
            near_state, trip = observe_near_duplicate(
                near_state, agent, shingles, near_duplicate, near_scores, key, owners[1]
            )
            trips.extend([trip] if trip else [])
        if no_progress.enabled:
            progress_state, trip = observe_progress(progress_state, agent, shingles, no_progress)
            trips.extend([trip] if trip else [])
    elif tool_state is state.tool_loop:
        return state, []
    if near_state.recent == cycle_state.recent and near_state.recent is not cycle_state.recent:
        near_state = NearDuplicateState(cycle_state.recent)  # a task's first outputs: one copy
    if trips and fed(tool_state, agent, key):
        trips = []  # the agent is acting on something new its tools said: not a loop
    trips.extend([tool_trip] if tool_trip else [])
    return ContentState(cycle_state, near_state, progress_state, tool_state), trips
