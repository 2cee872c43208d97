"""Near-duplicate outputs: one agent saying nearly the same thing again, not word for word.

The exact-repeat detector misses an agent that rephrases, renumbers or adds a line to the same
answer each time. This one compares the MinHash sketch of every output with the sketches of the
same agent's outputs among the task's last ``window``; the state is those sketches (128 bytes
each) and the agents' 32-bit keys, never the texts.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from proxy.detectors.base import Trip, TripReason
from proxy.detectors.settings import NearDuplicateSettings
from proxy.detectors.shingles import (
    Compare,
    Entry,
    Shingles,
    agent_key,
    pack_entries,
    shingle,
    similarities,
    unpack_entries,
)
from proxy.detectors.spec import Detector, Figure

_VERSION = 2
_HEADER = struct.Struct("<BB")


class NearDuplicateState(NamedTuple):
    # A NamedTuple: it turns into a plain tuple and back for free (see ContentState.plain).
    # The task's last outputs long enough to compare, oldest first, at most ``window``.
    recent: tuple[Entry, ...] = ()

    def to_bytes(self) -> bytes:
        return _HEADER.pack(_VERSION, len(self.recent)) + pack_entries(self.recent)

    @classmethod
    def from_bytes(cls, data: bytes) -> NearDuplicateState:
        if not data:
            return cls()
        if len(data) < _HEADER.size or data[0] != _VERSION:
            raise ValueError("not a near-duplicate detector state")
        _, count = _HEADER.unpack_from(data)
        recent, _ = unpack_entries(data, _HEADER.size, count)
        return cls(recent)


def observe_shingles(
    state: NearDuplicateState,
    agent: str,
    shingles: Shingles,
    settings: NearDuplicateSettings,
    compare: Compare = similarities,
) -> tuple[NearDuplicateState, Trip | None]:
    if shingles.count < settings.min_shingles:
        return state, None
    key = agent_key(agent)
    # The window counts this output, as the exact-repeat detector's does.
    earlier = state.recent[max(len(state.recent) - settings.window + 1, 0) :]
    mine = [sketch for owner, sketch in earlier if owner == key]
    trip = None
    if len(mine) + 1 >= settings.repeats:
        scores = compare(shingles.sketch, mine)
        alike = scores >= settings.similarity
        repeats = int(alike.sum()) + 1
        if repeats >= settings.repeats:
            trip = NEAR_DUPLICATE.trip(
                agent=agent,
                repeats=repeats,
                max_similarity=float(scores.max()),
                similarity=settings.similarity,
                window=settings.window,
            )
    return NearDuplicateState((*earlier, (key, shingles.sketch))), trip


def observe(
    state: NearDuplicateState, agent: str, text: str, settings: NearDuplicateSettings
) -> tuple[NearDuplicateState, Trip | None]:
    return observe_shingles(state, agent, shingle(text), settings)


NEAR_DUPLICATE = Detector(
    TripReason.NEAR_DUPLICATE,
    "content",
    "agent {agent} gave {repeats} nearly identical outputs (similarity up to "
    "{max_similarity:.0%}, threshold {similarity:.0%}) within the task's last {window} outputs",
    (
        Figure("agent"),
        Figure("repeats"),
        Figure("max_similarity", decimals=3),
        Figure("similarity"),
        Figure("window"),
    ),
    settings=("near_duplicate",),
    state=("content: the window's sketches and agents",),
)
