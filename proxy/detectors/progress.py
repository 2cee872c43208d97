"""No progress: the task's recent outputs hardly say anything it has not said before.

Agents stuck in a loop rarely repeat themselves verbatim; they recombine what was already said
(the same plan, the same page, the same apology). This detector measures, over the task's last
``completions`` outputs, the share of word 3-shingles never seen earlier in the task.

Remembering every shingle of a long task is unbounded, so the task keeps a consistent sample:
the shingles whose hash is below a threshold, at most ``sample_size`` of them. When the sample
is full the threshold drops to keep the smallest hashes only (adaptive threshold sampling), and
a new output is sampled with the same threshold, so "seen before" is decided exactly for every
sampled shingle. The share is thus an unbiased estimate whatever the task's length, from about
``sample_size * len(output) / len(task)`` shingles per output; ``min_sampled`` guards the
verdict against too small a sample.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from proxy.detectors.base import Trip, TripReason
from proxy.detectors.settings import NoProgressSettings
from proxy.detectors.shingles import Hashes, Shingles, shingle, sorted_unique
from proxy.detectors.spec import Detector, Figure

_ALL = 1 << 32  # the threshold before the sample first fills: every hash is kept
_VERSION = 2
_HEADER = struct.Struct("<BQHB")
_PAIR = struct.Struct("<HH")


class NoProgressState(NamedTuple):
    # A NamedTuple: it turns into a plain tuple and back for free (see ContentState.plain).
    threshold: int = _ALL
    sample: bytes = b""  # sorted little-endian uint32 hashes below ``threshold``
    # (new, sampled) shingles of the task's last outputs, oldest first.
    recent: tuple[tuple[int, int], ...] = ()

    def to_bytes(self) -> bytes:
        head = _HEADER.pack(_VERSION, self.threshold, len(self.sample) // 4, len(self.recent))
        pairs = b"".join(_PAIR.pack(min(n, 0xFFFF), min(s, 0xFFFF)) for n, s in self.recent)
        return head + pairs + self.sample

    @classmethod
    def from_bytes(cls, data: bytes) -> NoProgressState:
        if not data:
            return cls()
        if len(data) < _HEADER.size or data[0] != _VERSION:
            raise ValueError("not a no-progress detector state")
        _, threshold, size, count = _HEADER.unpack_from(data)
        start = _HEADER.size + count * _PAIR.size
        if len(data) != start + size * 4 or threshold > _ALL:
            raise ValueError("corrupt no-progress detector state")
        recent = tuple(_PAIR.unpack_from(data, at) for at in range(_HEADER.size, start, _PAIR.size))
        return cls(threshold, data[start:], recent)


def observe_shingles(
    state: NoProgressState, agent: str, shingles: Shingles, settings: NoProgressSettings
) -> tuple[NoProgressState, Trip | None]:
    if shingles.count == 0:
        return state, None
    seen: Hashes = np.frombuffer(state.sample, dtype="<u4")
    threshold = state.threshold
    if len(seen) > settings.sample_size:  # a rule lowered the sample size for this agent
        threshold = int(seen[settings.sample_size])
        seen = seen[: settings.sample_size]
    sampled = shingles.hashes
    if threshold < _ALL:
        sampled = sampled[: np.searchsorted(sampled, np.uint32(threshold))]
    at = np.minimum(np.searchsorted(seen, sampled), max(len(seen) - 1, 0))
    known = int((seen[at] == sampled).sum()) if len(seen) else 0
    recent = (*state.recent, (len(sampled) - known, len(sampled)))[-settings.completions :]
    merged = sorted_unique(np.concatenate((seen, sampled)))
    if len(merged) > settings.sample_size:
        threshold = int(merged[settings.sample_size])
        merged = merged[: settings.sample_size]
    new_state = NoProgressState(threshold, merged.astype("<u4").tobytes(), recent)
    return new_state, _verdict(recent, agent, settings)


def _verdict(
    recent: tuple[tuple[int, int], ...], agent: str, settings: NoProgressSettings
) -> Trip | None:
    if len(recent) < settings.completions:
        return None
    new = sum(n for n, _ in recent)
    sampled = sum(s for _, s in recent)
    if sampled < settings.min_sampled or new >= settings.min_new_share * sampled:
        return None
    return NO_PROGRESS.trip(
        agent=agent,
        completions=settings.completions,
        new_share=new / sampled,
        min_new_share=settings.min_new_share,
        sampled=sampled,
    )


def observe(
    state: NoProgressState, agent: str, text: str, settings: NoProgressSettings
) -> tuple[NoProgressState, Trip | None]:
    return observe_shingles(state, agent, shingle(text), settings)


NO_PROGRESS = Detector(
    TripReason.NO_PROGRESS,
    "content",
    "the task's last {completions} outputs added {new_share:.1%} new content, below the "
    "minimum of {min_new_share:.0%}",
    (
        Figure("agent"),
        Figure("completions"),
        Figure("new_share", decimals=4),
        Figure("min_new_share"),
        Figure("sampled"),
    ),
    settings=("no_progress",),
    state=("content: a sample of the task's shingle hashes, new shares of the last outputs",),
)
