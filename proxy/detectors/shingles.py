"""Word shingles of a completion, hashed once and shared by the content detectors.

A completion becomes the sorted set of 32-bit hashes of its word 3-shingles (three consecutive
words). Two things are derived from that set:

* a **sketch**: one-permutation MinHash (Li, Owen and Zhang, 2012) with 64 bins, each keeping
  the low 16 bits of the smallest hash that falls in it, so 128 bytes estimate the Jaccard
  similarity of two completions' shingle sets to within about +-0.06 (one standard error);
* a **hash sample**: the hashes below a threshold, a consistent sample of the content that
  ``progress`` keeps per task to tell new content from old.

Normalization: ASCII letters are lower-cased (other scripts through ``str.lower``), every digit
counts as ``0`` (so counters, timestamps and ids do not make a loop look new), and anything but
letters, digits, ``_`` and non-ASCII characters separates words. A word is hashed on its first
16 bytes, and a completion on its first 64 KiB, which bounds the cost: about 60 us for a
2,000-token completion (the measurements are in ``bench/detection``).

Hashes are fixed functions of the text, never Python's per-process ``hash``: state written by
one replica is read by another.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b

import numpy as np
import numpy.typing as npt

SHINGLE_WORDS = 3
MAX_BYTES = 64 * 1024
SKETCH_BINS = 64
SKETCH_BYTES = SKETCH_BINS * 2
_BIN_SHIFT = 32 - 6  # the top 6 bits of a hash choose its bin
_EMPTY = 0xFFFF

Hashes = npt.NDArray[np.uint32]


def _fold_table() -> bytes:
    table = bytearray(b" " * 256)
    for code in range(256):
        char = chr(code)
        if code >= 128 or char == "_":
            table[code] = code
        elif char.isdigit():
            table[code] = ord("0")
        elif char.isalpha():
            table[code] = ord(char.lower())
    return bytes(table)


_FOLD = _fold_table()
# Little-endian byte order of the words' first 16 bytes, so hashes match on every platform.
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2**64 - 1], dtype=np.uint64)
_WORD_MIX = np.array([0xD6E8FEB86659FD93], dtype=np.uint64)
_POSITION = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_BIN_EDGES = (np.arange(SKETCH_BINS, dtype=np.uint64) << np.uint64(_BIN_SHIFT)).astype(np.uint32)
_BIN_IDS = np.arange(SKETCH_BINS, dtype=np.uint32)
_EMPTY_SKETCH = bytes([0xFF]) * SKETCH_BYTES


def _mix(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finalizer, in place: every input bit reaches every output bit."""
    values ^= values >> np.uint64(30)
    values *= _M1
    values ^= values >> np.uint64(27)
    values *= _M2
    values ^= values >> np.uint64(31)
    return values


def sorted_unique(values: Hashes) -> Hashes:
    # np.unique is several times slower on arrays of this size: it hashes instead of sorting.
    if len(values) < 2:
        return values
    ordered = np.sort(values)
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def shingle_hashes(text: str) -> Hashes:
    """The sorted, distinct 32-bit hashes of the text's word 3-shingles (fewer words: one)."""
    if not text.isascii():
        text = text.lower()
    folded = text.encode("utf-8", "replace")[:MAX_BYTES].translate(_FOLD)
    # A space before and 16 after, so every word has a start edge and 16 readable bytes.
    buffer = b" " + folded + b" " * 17
    spaces = np.frombuffer(buffer, dtype=np.uint8) == 32
    edges = np.flatnonzero(spaces[1:] != spaces[:-1]) + 1
    if len(edges) == 0:
        return np.empty(0, dtype=np.uint32)
    starts, lengths = edges[0::2], edges[1::2] - edges[0::2]
    # Eight bytes at every offset: a view with a one-byte stride, no copy.
    at = np.ndarray(shape=(len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))
    head = at[starts] & _LOW_BYTES[np.minimum(lengths, 8)]
    tail = at[starts + 8] & _LOW_BYTES[np.clip(lengths - 8, 0, 8)]
    words = _mix(head * _WORD_MIX + tail)
    if len(words) >= SHINGLE_WORDS:
        shingles = words[:-2] * _POSITION[0] + words[1:-1] * _POSITION[1] + words[2:] * _POSITION[2]
    else:
        shingles = np.bitwise_xor.reduce(words * _POSITION[: len(words)], keepdims=True)
    return sorted_unique((_mix(shingles) >> np.uint64(32)).astype(np.uint32))


def sketch(hashes: Hashes) -> bytes:
    """One-permutation MinHash of sorted distinct hashes: 64 bins of 16 bits, 128 bytes."""
    if len(hashes) == 0:
        return _EMPTY_SKETCH
    first = np.searchsorted(hashes, _BIN_EDGES)
    values = hashes[np.minimum(first, len(hashes) - 1)]
    filled = (first < len(hashes)) & ((values >> np.uint32(_BIN_SHIFT)) == _BIN_IDS)
    return np.where(filled, values & np.uint32(0xFFFF), _EMPTY).astype("<u2").tobytes()


def similarities(sketch_: bytes, others: Sequence[bytes]) -> npt.NDArray[np.float64]:
    """Estimated Jaccard similarity of one sketch to each of ``others``.

    Bins empty in both sketches do not count (short texts leave bins empty); two empty texts
    are not similar.
    """
    if not others:
        return np.empty(0, dtype=np.float64)
    mine = np.frombuffer(sketch_, dtype="<u2")
    rows = np.frombuffer(b"".join(others), dtype="<u2").reshape(len(others), SKETCH_BINS)
    filled = mine != _EMPTY
    equal = ((rows == mine) & filled).sum(axis=1)
    either = ((rows != _EMPTY) | filled).sum(axis=1)
    result: npt.NDArray[np.float64] = equal / np.maximum(either, 1)
    return result


@dataclass(frozen=True, slots=True)
class Shingles:
    """What the content detectors need from one completion, computed once."""

    hashes: Hashes
    sketch: bytes

    @property
    def count(self) -> int:
        return len(self.hashes)


def shingle(text: str) -> Shingles:
    hashes = shingle_hashes(text)
    return Shingles(hashes, sketch(hashes))


def agent_key(agent: str) -> int:
    """A stable 32-bit name for an agent: state keeps this, not the (unbounded) name."""
    return int.from_bytes(blake2b(agent.encode("utf-8", "replace"), digest_size=4).digest())


# -- compact storage of (agent, sketch) entries, shared by the cycle and near-duplicate state --

_ENTRY = struct.Struct("<I")
ENTRY_BYTES = _ENTRY.size + SKETCH_BYTES

Entry = tuple[int, bytes]  # (agent_key, sketch)


def pack_entries(entries: Sequence[Entry]) -> bytes:
    return b"".join(_ENTRY.pack(agent) + sketch_ for agent, sketch_ in entries)


def unpack_entries(data: bytes, offset: int, count: int) -> tuple[tuple[Entry, ...], int]:
    """``count`` entries from ``data`` at ``offset``; the offset after them."""
    end = offset + count * ENTRY_BYTES
    if count < 0 or end > len(data):
        raise ValueError("truncated detector state")
    entries = tuple(
        (_ENTRY.unpack_from(data, at)[0], data[at + _ENTRY.size : at + ENTRY_BYTES])
        for at in range(offset, end, ENTRY_BYTES)
    )
    return entries, end
