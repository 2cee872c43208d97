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
import sys
from array import array
from bisect import bisect_left
from typing import TYPE_CHECKING, NamedTuple

from proxy.detectors.bag import native
from proxy.detectors.base import Trip, TripReason
from proxy.detectors.settings import NoProgressSettings
from proxy.detectors.shingles import Shingles, shingle
from proxy.detectors.spec import Detector, Figure

if TYPE_CHECKING:
    from proxy.detectors.completion import Hashes

_ALL = 1 << 32  # the threshold before the sample first fills: every hash is kept
_VERSION = 2
_HEADER = struct.Struct("<BQHB")
_PAIR = struct.Struct("<HH")
_HASH = struct.Struct("<I")
_FEW = 16  # shingles merged into the sample one by one below this many, with numpy above
_SET = 256  # shingles counted by a set below this many, by sorting above
_ARRAY_IS_LE_U4 = sys.byteorder == "little" and array("I").itemsize == 4  # array("I") is "<u4"


class NoProgressState(NamedTuple):
    # A NamedTuple: it turns into a plain tuple and back for free (see ContentState.plain).
    threshold: int = _ALL
    sample: bytes = b""  # sorted little-endian uint32 hashes below ``threshold``
    # (new, sampled) shingles of the task's last outputs, oldest first, as little-endian
    # uint16 pairs (a completion, 64 KiB at most, has fewer than 2**16 shingles).
    recent: bytes = b""

    @property
    def outputs(self) -> int:
        return len(self.recent) // _PAIR.size

    def to_bytes(self) -> bytes:
        head = _HEADER.pack(_VERSION, self.threshold, len(self.sample) // 4, self.outputs)
        return head + self.recent + self.sample

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
        return cls(threshold, data[start:], data[_HEADER.size : start])


def observe_shingles(
    state: NoProgressState, agent: str, shingles: Shingles, settings: NoProgressSettings
) -> tuple[NoProgressState, Trip | None]:
    if shingles.empty:
        return state, None
    if native is not None:
        stepped = native.progress_step(
            state.threshold,
            state.sample,
            state.recent,
            shingles.raw,
            settings.sample_size,
            settings.completions,
        )
        if stepped is not None:  # None: not a state it reads, the code below decides
            threshold, sample, recent, new, sampled = stepped
            verdict = _judged(len(recent) // _PAIR.size, new, sampled, agent, settings)
            return NoProgressState(threshold, sample, recent), verdict
    sample, threshold, size = state.sample, state.threshold, settings.sample_size
    if len(sample) > 4 * size:  # a rule lowered the sample size for this agent
        threshold = _HASH.unpack_from(sample, 4 * size)[0]
        sample = sample[: 4 * size]
    below = shingles.below(threshold)
    new = distinct = 0  # on a long task, often: none of the output's shingles is sampled
    if len(below):
        merged, distinct = _merge(sample, below)
        new = len(merged) // 4 - len(sample) // 4  # both are distinct: what the union gained
        if new:
            if len(merged) > 4 * size:
                threshold = _HASH.unpack_from(merged, 4 * size)[0]
                merged = merged[: 4 * size]
            sample = merged
    pair = _PAIR.pack(min(new, 0xFFFF), min(distinct, 0xFFFF))
    recent = (state.recent + pair)[-_PAIR.size * settings.completions :]
    new_state = NoProgressState(threshold, sample, recent)
    return new_state, _verdict(recent, agent, settings)


def _merge_few(sample: bytes, hashes: Hashes) -> tuple[bytes, int]:
    """The sorted, distinct union of the sample and ``hashes``, and how many distinct hashes
    those were: a long task's steady state, a few hashes looked up in the sample one by one."""
    distinct = sorted(set(hashes.tolist()))
    merged = array("I", sample)
    for value in distinct:
        at = bisect_left(merged, value)
        if at == len(merged) or merged[at] != value:
            merged.insert(at, value)
    return merged.tobytes(), len(distinct)


def _merge_many(sample: bytes, hashes: Hashes) -> tuple[bytes, int]:
    """``_merge_few`` for many hashes, a few array operations instead of a loop."""
    import numpy as np  # the reference's, and a corrupt state's: loaded only for them

    from proxy.detectors.completion import sorted_unique

    merged = sorted_unique(np.concatenate((np.frombuffer(sample, dtype="<u4"), hashes)))
    distinct = len(set(hashes.tolist())) if len(hashes) <= _SET else len(sorted_unique(hashes))
    return merged.astype("<u4", copy=False).tobytes(), distinct


def _merge_numpy(sample: bytes, hashes: Hashes) -> tuple[bytes, int]:
    merge = _merge_few if len(hashes) <= _FEW and _ARRAY_IS_LE_U4 else _merge_many
    return merge(sample, hashes)


def _merge_native(sample: bytes, hashes: Hashes) -> tuple[bytes, int]:
    """The extension's merge: ``_merge_many``'s values at any size. A sample that is not sorted
    and distinct (a corrupt state) is left to ``_merge_many``."""
    merged = native.merge(sample, hashes)
    return _merge_many(sample, hashes) if merged is None else merged


_merge = _merge_numpy if native is None else _merge_native


def _verdict(recent: bytes, agent: str, settings: NoProgressSettings) -> Trip | None:
    count = len(recent) // _PAIR.size
    if count < settings.completions:
        return None
    figures = struct.unpack(f"<{2 * count}H", recent)
    return _judged(count, sum(figures[0::2]), sum(figures[1::2]), agent, settings)


def _judged(
    count: int, new: int, sampled: int, agent: str, settings: NoProgressSettings
) -> Trip | None:
    """The verdict on the last ``count`` outputs, which added ``new`` of ``sampled``."""
    if count < settings.completions:
        return None
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
