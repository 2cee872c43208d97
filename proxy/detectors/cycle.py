"""Cycles: the task's outputs go round the same short loop, A B A B ... or A B C A B C ...

Two agents handing a task back and forth each say something a little different every time, so
no single output repeats often enough for the exact-repeat detector, yet the conversation is
going round in circles. Output ``i`` continues a cycle of period ``p`` when it comes from the
same agent as output ``i - p`` and their sketches are at least ``similarity`` alike. The state
keeps, for every period from 1 to 6, how many outputs in a row have continued it, and the
sketches of the last six outputs: a cycle of period ``p`` has run ``rounds`` times once
``p * (rounds - 1)`` outputs in a row continued it.

A period whose outputs all continue period 1 as well (one agent saying the same thing over and
over) is left to the repeat and near-duplicate detectors.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from proxy.detectors import recent as entries
from proxy.detectors.bag import native
from proxy.detectors.base import Trip, TripReason
from proxy.detectors.settings import CycleSettings
from proxy.detectors.shingles import Shingles, agent_key, shingle
from proxy.detectors.spec import Detector, Figure

MAX_PERIOD = 6
_NAME_CHARS = 40  # agent names kept for the trip's sentence, cut to bound the state
_VERSION = 2
_HEADER = struct.Struct(f"<BB{MAX_PERIOD}H")


_NO_RUNS = (0,) * MAX_PERIOD  # shared by every state that continues no period


class CycleState(NamedTuple):
    # A NamedTuple: it turns into a plain tuple and back for free (see ContentState.plain).
    recent: bytes = b""  # the last MAX_PERIOD outputs, oldest first (``proxy.detectors.recent``)
    names: tuple[str, ...] = ()  # their agents' names
    runs: tuple[int, ...] = _NO_RUNS  # runs[p - 1]: outputs in a row continuing p

    @property
    def outputs(self) -> int:
        return entries.count(self.recent)

    def to_bytes(self) -> bytes:
        names = "\n".join(self.names).encode()
        runs = (min(r, 0xFFFF) for r in self.runs)
        return _HEADER.pack(_VERSION, self.outputs, *runs) + self.recent + names

    @classmethod
    def from_bytes(cls, data: bytes) -> CycleState:
        if not data:
            return cls()
        if len(data) < _HEADER.size or data[0] != _VERSION:
            raise ValueError("not a cycle detector state")
        _, count, *runs = _HEADER.unpack_from(data)
        recent, end = entries.read(data, _HEADER.size, count)
        names = tuple(data[end:].decode().split("\n")) if count else ()
        if len(names) != count:
            raise ValueError("corrupt cycle detector state")
        return cls(recent, names, tuple(runs))


def observe_shingles(
    state: CycleState,
    agent: str,
    shingles: Shingles,
    settings: CycleSettings,
    scores: Sequence[float] | None = None,
    key: int | None = None,
    owners: Sequence[int] | None = None,
) -> tuple[CycleState, Trip | None]:
    """One output; ``scores``: its similarity to each of ``state.recent`` when the caller has
    them already, ``key``: the agent's ``agent_key``, ``owners``: ``recent.keys(state.recent)``
    when the caller has them."""
    if shingles.empty:
        return state, None
    key = agent_key(agent) if key is None else key
    if native is not None and scores is None:
        recent, counted = native.cycle_step(
            state.recent, state.runs, key, shingles.sketch, settings.similarity
        )
        runs = _NO_RUNS if counted is None else counted
    else:
        recent, runs = _step(state, key, shingles, settings, scores, owners)
    names = (*state.names, agent[:_NAME_CHARS].replace("\n", " "))[-MAX_PERIOD:]
    if not any(runs):  # no period continues: no cycle (``rounds`` is at least 2)
        return CycleState(recent, names, _NO_RUNS), None
    new_state = CycleState(recent, names, runs)
    rounds = settings.rounds - 1
    for period in range(2, settings.max_period + 1):
        if runs[period - 1] >= period * rounds and runs[0] < period - 1:
            return new_state, _trip(names[-period:], period, agent, settings)
    return new_state, None


def _step(
    state: CycleState,
    key: int,
    shingles: Shingles,
    settings: CycleSettings,
    scores: Sequence[float] | None,
    owners: Sequence[int] | None,
) -> tuple[bytes, tuple[int, ...]]:
    """The outputs kept and the runs per period after this output (the extension's
    ``cycle_step`` computes the same)."""
    owners = entries.keys(state.recent) if owners is None else owners
    if scores is None:
        scores = entries.scores(shingles.sketch, state.recent, key) if key in owners else []
    runs = list(state.runs)
    similarity, count = settings.similarity, len(owners)
    for period in range(1, MAX_PERIOD + 1):
        back = count - period
        continues = back >= 0 and owners[back] == key and scores[back] >= similarity
        runs[period - 1] = runs[period - 1] + 1 if continues else 0
    recent = entries.last(state.recent, MAX_PERIOD - 1) + entries.entry(key, shingles.sketch)
    return recent, tuple(runs)


def _trip(names: tuple[str, ...], period: int, agent: str, settings: CycleSettings) -> Trip:
    return CYCLE.trip(
        agent=agent,
        period=period,
        rounds=settings.rounds,
        cycle=" -> ".join(names),
        similarity=settings.similarity,
    )


def observe(
    state: CycleState, agent: str, text: str, settings: CycleSettings
) -> tuple[CycleState, Trip | None]:
    return observe_shingles(state, agent, shingle(text), settings)


CYCLE = Detector(
    TripReason.CYCLE,
    "content",
    "the task went round the same cycle of {period} outputs ({cycle}) {rounds} times in a "
    "row; each output at least {similarity:.0%} like the one a cycle earlier",
    (
        Figure("agent"),
        Figure("period"),
        Figure("rounds"),
        Figure("cycle"),
        Figure("similarity"),
    ),
    settings=("cycle",),
    state=("content: the last outputs' sketches and agents, runs per period",),
)
