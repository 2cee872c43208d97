"""The task's recent outputs as the cycle and near-duplicate detectors keep them.

Each output is an entry of its agent's 32-bit key and its bag sketch, 196 bytes, and a
detector's entries are packed one after another in one ``bytes`` value, oldest first: the very
bytes its serialized state holds. So a task's recent outputs are one object each, not a tuple
per output, reading and writing the state copies them once, and the similarity of a new output
to all of them is worked out on a view of those bytes, without unpacking them.
"""

from __future__ import annotations

import struct

from proxy.detectors.bag import BAG_BYTES, native

_KEY = struct.Struct("<I")
ENTRY_BYTES = _KEY.size + BAG_BYTES
_KEYS = struct.Struct(f"<I{BAG_BYTES}x")  # one entry's key, its sketch skipped


def entry(key: int, sketch: bytes) -> bytes:
    return _KEY.pack(key) + sketch


def count(entries: bytes) -> int:
    return len(entries) // ENTRY_BYTES


def keys(entries: bytes) -> list[int]:
    """Each entry's agent key, oldest first."""
    return [key for (key,) in _KEYS.iter_unpack(entries)]


def sketch(entries: bytes, index: int) -> bytes:
    start = index * ENTRY_BYTES + _KEY.size
    return entries[start : start + BAG_BYTES]


def last(entries: bytes, number: int) -> bytes:
    """The last ``number`` entries."""
    return entries[max(len(entries) - number * ENTRY_BYTES, 0) :] if number > 0 else b""


def read(data: bytes, offset: int, number: int) -> tuple[bytes, int]:
    """``number`` entries from ``data`` at ``offset``; the offset after them."""
    end = offset + number * ENTRY_BYTES
    if number < 0 or end > len(data):
        raise ValueError("truncated detector state")
    return data[offset:end], end


def numpy_scores(
    sketch_: bytes, entries: bytes, key: int, owners: list[int] | None = None
) -> list[float]:
    """The similarity of ``sketch_`` to each of the agent's entries' sketches; 0 for others'
    (the detectors only compare an agent's outputs with its own). ``owners``: ``keys(entries)``
    when the caller has them already."""
    from proxy.detectors.bag_numpy import numpy_similarities

    owners = keys(entries) if owners is None else owners
    if owners.count(key) == len(owners):  # one agent's task: all of them
        starts = range(_KEY.size, len(entries), ENTRY_BYTES)
        return numpy_similarities(sketch_, [entries[at : at + BAG_BYTES] for at in starts])
    mine = [index for index, owner in enumerate(owners) if owner == key]
    found = [0.0] * len(owners)
    if mine:
        picked = [entries[i * ENTRY_BYTES + _KEY.size : (i + 1) * ENTRY_BYTES] for i in mine]
        for index, score in zip(mine, numpy_similarities(sketch_, picked), strict=True):
            found[index] = score
    return found


# The extension's reads each entry's key where it compares: ``owners`` saves it nothing.
scores = numpy_scores if native is None else native.scores
