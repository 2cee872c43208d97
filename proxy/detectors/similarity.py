"""Near-duplicate outputs: one agent saying nearly the same thing again, not word for word.

The exact-repeat detector misses an agent that rephrases, renumbers or adds a line to the same
answer each time. This one compares the bag sketch of every output with the sketches of the
same agent's outputs among the task's last ``window``; the state is those sketches (192 bytes
each) and the agents' 32-bit keys, never the texts.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from proxy.detectors import recent as entries
from proxy.detectors.bag import native
from proxy.detectors.base import Trip, TripReason
from proxy.detectors.settings import NearDuplicateSettings
from proxy.detectors.shingles import Shingles, agent_key, shingle
from proxy.detectors.spec import Detector, Figure

_VERSION = 2
_HEADER = struct.Struct("<BB")


class NearDuplicateState(NamedTuple):
    # A NamedTuple: it turns into a plain tuple and back for free (see ContentState.plain).
    # The task's last outputs long enough to compare, oldest first, at most ``window``
    # (``proxy.detectors.recent``).
    recent: bytes = b""

    @property
    def outputs(self) -> int:
        return entries.count(self.recent)

    def to_bytes(self) -> bytes:
        return _HEADER.pack(_VERSION, self.outputs) + self.recent

    @classmethod
    def from_bytes(cls, data: bytes) -> NearDuplicateState:
        if not data:
            return cls()
        if len(data) < _HEADER.size or data[0] != _VERSION:
            raise ValueError("not a near-duplicate detector state")
        _, count = _HEADER.unpack_from(data)
        recent, _ = entries.read(data, _HEADER.size, count)
        return cls(recent)


def observe_shingles(
    state: NearDuplicateState,
    agent: str,
    shingles: Shingles,
    settings: NearDuplicateSettings,
    scores: Sequence[float] | None = None,
    key: int | None = None,
    owners: Sequence[int] | None = None,
) -> tuple[NearDuplicateState, Trip | None]:
    """One output; ``scores``: its similarity to each of ``state.recent`` when the caller has
    them already, ``key``: the agent's ``agent_key``, ``owners``: ``recent.keys(state.recent)``
    when the caller has them."""
    key = agent_key(agent) if key is None else key
    if native is not None and scores is None:
        stepped = native.near_step(
            state.recent,
            key,
            shingles.sketch,
            shingles.raw,
            settings.window,
            settings.similarity,
            settings.min_shingles,
        )
        if stepped is None:  # too few shingles to compare
            return state, None
        recent, repeats, highest = stepped
        trip = _trip(agent, repeats, highest, settings) if repeats >= settings.repeats else None
        return NearDuplicateState(recent), trip
    if not shingles.at_least(settings.min_shingles):
        return state, None
    owners = entries.keys(state.recent) if owners is None else owners
    # The window counts this output, as the exact-repeat detector's does.
    outputs = len(owners)
    dropped = max(outputs - settings.window + 1, 0)
    earlier = entries.last(state.recent, outputs - dropped)
    compared = owners[dropped:]
    mine = compared.count(key)
    trip = None
    if mine + 1 >= settings.repeats:
        if scores is None:
            scores = entries.scores(shingles.sketch, state.recent, key)
        if mine == len(compared):  # one agent's window
            alike = list(scores[dropped:])
        else:
            alike = [scores[dropped + at] for at, owner in enumerate(compared) if owner == key]
        similarity = settings.similarity
        repeats = len([score for score in alike if score >= similarity]) + 1
        if repeats >= settings.repeats:
            trip = _trip(agent, repeats, max(alike), settings)
    return NearDuplicateState(earlier + entries.entry(key, shingles.sketch)), trip


def _trip(agent: str, repeats: int, highest: float, settings: NearDuplicateSettings) -> Trip:
    return NEAR_DUPLICATE.trip(
        agent=agent,
        repeats=repeats,
        max_similarity=highest,
        similarity=settings.similarity,
        window=settings.window,
    )


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
