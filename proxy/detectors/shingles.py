"""Words and word shingles of a completion, hashed once and shared by the content detectors.

A completion's words are hashed once (vectorised, 64 bits each). Two things are built from them:

* a **bag sketch** (``proxy.detectors.bag``): the completion's content words as a weighted set,
  function words and greetings left out and the opening and closing sentences counting little,
  so two rewordings of the same content in another order, with another opener and sign-off,
  read as alike. The cycle and near-duplicate detectors compare these;
* the sorted set of 32-bit hashes of its word 3-shingles (three consecutive words), from which
  ``progress`` keeps a consistent sample per task to tell new content from old.

Normalisation (``proxy.detectors.normalise.WORD_FOLD``): ASCII letters are lower-cased (other
scripts through ``str.lower``), digits are kept (a changing count is progress), anything but
letters, digits and non-ASCII characters separates words. A word is hashed on its first 16
bytes, and a completion on its first 64 KiB, which bounds the cost (the measurements are in
``bench/detection``).

Hashes are fixed functions of the text, never Python's per-process ``hash``: state written by
one replica is read by another.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b

import numpy as np
import numpy.typing as npt

from proxy.detectors.bag import BAG_BYTES, STOPWORDS, bag_similarities, bag_sketch
from proxy.detectors.normalise import WORD_FOLD

SHINGLE_WORDS = 3
MAX_BYTES = 64 * 1024

Hashes = npt.NDArray[np.uint32]
Words = npt.NDArray[np.uint64]

# Little-endian byte order of the words' first 16 bytes, so hashes match on every platform.
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2**64 - 1], dtype=np.uint64)
_WORD_MIX = np.array([0xD6E8FEB86659FD93], dtype=np.uint64)
_POSITION = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SENTENCE_END = re.compile(rb"[.!?\n]")


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


def words(text: str) -> tuple[Words, npt.NDArray[np.intp], bytes]:
    """The 64-bit hashes of the text's words in order, the byte offset where each starts, and
    the raw bytes they were read from (cut at 64 KiB)."""
    if not text.isascii():
        text = text.lower()
    raw = text.encode("utf-8", "replace")[:MAX_BYTES]
    # A space before and 16 after, so every word has a start edge and 16 readable bytes.
    buffer = b" " + raw.translate(WORD_FOLD) + b" " * 17
    spaces = np.frombuffer(buffer, dtype=np.uint8) == 32
    edges = np.flatnonzero(spaces[1:] != spaces[:-1]) + 1
    if len(edges) == 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.intp), raw
    starts, lengths = edges[0::2], edges[1::2] - edges[0::2]
    # Eight bytes at every offset: a view with a one-byte stride, no copy.
    at = np.ndarray(shape=(len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))
    head = at[starts] & _LOW_BYTES[np.minimum(lengths, 8)]
    tail = at[starts + 8] & _LOW_BYTES[np.clip(lengths - 8, 0, 8)]
    return _mix(head * _WORD_MIX + tail), starts - 1, raw


def shingles_of(hashed: Words) -> Hashes:
    """The sorted, distinct 32-bit hashes of word 3-shingles (fewer words: one)."""
    if len(hashed) == 0:
        return np.empty(0, dtype=np.uint32)
    if len(hashed) >= SHINGLE_WORDS:
        shingles = (
            hashed[:-2] * _POSITION[0] + hashed[1:-1] * _POSITION[1] + hashed[2:] * _POSITION[2]
        )
    else:
        shingles = np.bitwise_xor.reduce(hashed * _POSITION[: len(hashed)], keepdims=True)
    return sorted_unique((_mix(shingles) >> np.uint64(32)).astype(np.uint32))


def shingle_hashes(text: str) -> Hashes:
    """The sorted, distinct 32-bit hashes of the text's word 3-shingles (fewer words: one)."""
    return shingles_of(words(text)[0])


def edge_words(starts: npt.NDArray[np.intp], raw: bytes) -> tuple[int, int]:
    """How many words open and close the text: its first and last sentence, each at most a
    quarter of the words (a one-sentence text has neither)."""
    count = len(starts)
    if count < 8:
        return 0, 0
    quarter = count // 4
    first = _SENTENCE_END.search(raw)
    if first is None:
        return 0, 0
    opening = min(int(np.searchsorted(starts, first.start())), quarter)
    # The last sentence starts after the last end that has a word after it.
    last_start = int(starts[-1])
    before_last = max(raw.rfind(end, 0, last_start) for end in (b".", b"!", b"?", b"\n"))
    closing = count - int(np.searchsorted(starts, before_last)) if before_last >= 0 else 0
    return opening, min(closing, quarter)


@dataclass(frozen=True, slots=True)
class Shingles:
    """What the content detectors need from one completion, computed once."""

    hashes: Hashes  # word 3-shingles, sorted and distinct
    sketch: bytes  # the bag sketch of its content words

    @property
    def count(self) -> int:
        return len(self.hashes)


def shingle(text: str) -> Shingles:
    hashed, starts, raw = words(text)
    opening, closing = edge_words(starts, raw)
    stop = _STOP_TABLE[hashed >> _STOP_SHIFT]
    numeric = (np.frombuffer(raw, dtype=np.uint8)[starts] - np.uint8(48)) < 10
    return Shingles(shingles_of(hashed), bag_sketch(hashed, stop, numeric, opening, closing))


similarities = bag_similarities
Compare = Callable[[bytes, Sequence[bytes]], npt.NDArray[np.float64]]
SKETCH_BYTES = BAG_BYTES
# Stopwords by the top 20 bits of their hash: one lookup a word; a content word shares a
# stopword's 20 bits, and is left out, once in about 5,000.
_STOP_SHIFT = np.uint64(64 - 20)
_STOP_TABLE = np.zeros(1 << 20, dtype=bool)
_STOP_TABLE[words(" ".join(STOPWORDS))[0] >> _STOP_SHIFT] = True


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
