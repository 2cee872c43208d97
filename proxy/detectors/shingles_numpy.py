"""The numpy reference of the content detectors' words, shingles and sketches
(``proxy.detectors.shingles`` says what they are). The C extension computes the same values in
one pass; this runs where it was not built, and is what the extension is tested against.
Imported only then, or when a Python step needs an array: with the extension, the server never
loads numpy.

Numpy's cost is per call rather than per word (about half a microsecond each), so the work is
laid out as few whole-array operations as possible: a short text's words are split by Python
and copied by numpy as zero-padded 16-byte records, a long text's found by one scan and gathered
as raw records; one table look-up for stopwords; views instead of copies for the high halves of
hashes. Pure Python would pay about a microsecond a word for the same 64-bit arithmetic.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from proxy.detectors.bag import STOPWORDS
from proxy.detectors.bag_numpy import bag_sketch
from proxy.detectors.completion import SHINGLE_WORDS, Shingles, _encoded, sorted_unique
from proxy.detectors.normalise import WORD_FOLD

if TYPE_CHECKING:
    from proxy.detectors.completion import Hashes

_FEW_WORDS = 256  # below this, shingles are summed by a matrix product
Words = npt.NDArray[np.uint64]

_SHORT = 1024  # bytes: texts up to this long are split by Python, longer ones by numpy
_PAD = b" " * 17  # every word has 16 readable bytes after its start


def _low_bytes(count: int) -> int:
    return (1 << (8 * max(min(count, 8), 0))) - 1


# The masks of a word's first and second 8 bytes, by its length (16 and more: every byte).
_MASKS = np.array([[_low_bytes(n), _low_bytes(n - 8)] for n in range(17)], dtype=np.uint64)
# Constants are 0-d arrays: as operands they cost numpy half what its scalars do.
_WORD_MIX = np.array(0xD6E8FEB86659FD93, dtype=np.uint64)
_POSITION = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)
_P0, _P1, _P2 = (np.array(p, dtype=np.uint64) for p in _POSITION)
_M1 = np.array(0xBF58476D1CE4E5B9, dtype=np.uint64)
_M2 = np.array(0x94D049BB133111EB, dtype=np.uint64)
_S30, _S27, _S31 = (np.array(n, dtype=np.uint64) for n in (30, 27, 31))
_SENTENCE_END = re.compile(rb"[.!?\n]")
# The high 32 bits of a little-endian uint64 are its second uint32.
_HIGH = 1 if sys.byteorder == "little" else 0


def _mix(values: Words) -> Words:
    """splitmix64's finalizer, in place: every input bit reaches every output bit."""
    values ^= values >> _S30
    values *= _M1
    values ^= values >> _S27
    values *= _M2
    values ^= values >> _S31
    return values


def _high(values: Words) -> Hashes:
    """The high 32 bits of each value: a view, no copy."""
    return values.view(np.uint32)[_HIGH::2]


@dataclass(frozen=True, slots=True)
class _Words:
    hashes: Words  # 64 bits each, in order
    first: bytes  # each one's first byte
    folded: bytes  # the text they were read from, folded: words are its runs of non-spaces
    raw: bytes  # the same, before folding (cut at 64 KiB)


def _words(raw: bytes) -> _Words:
    folded = raw.translate(WORD_FOLD)
    if len(folded) <= _SHORT:
        # Each word's first 16 bytes, zero-padded: a short text has few words, and numpy
        # converts a list of them faster than it finds them.
        gathered = np.array(folded.split(), dtype="S16").view(np.uint8)
        pairs = gathered.view("<u8").reshape(-1, 2)
        return _Words(_hash_words(pairs), gathered[::16].tobytes(), folded, raw)
    # A space before and 16 after, so every word has a start edge and 16 readable bytes.
    buffer = b" " + folded + _PAD
    spaces = np.frombuffer(buffer, dtype=np.uint8) == 32
    # Edge i: byte i + 1 of the buffer starts or ends a word.
    edges = np.flatnonzero(spaces[1:] != spaces[:-1])
    starts = edges[0::2]
    # Each word's first 16 bytes, gathered from a view with a one-byte stride (no copy); as
    # raw bytes, which numpy copies faster than unaligned numbers.
    at = np.ndarray((len(buffer) - 16,), dtype="V16", buffer=buffer, offset=1, strides=(1,))
    gathered = at[starts].view(np.uint8)
    first = gathered[::16].tobytes()
    pairs = gathered.view("<u8").reshape(-1, 2)
    pairs &= _MASKS.take(edges[1::2] - starts, axis=0, mode="clip")
    return _Words(_hash_words(pairs), first, folded, raw)


def _hash_words(pairs: Words) -> Words:
    """A word's hash, from its first and second eight bytes (zero past its end)."""
    hashed = pairs[:, 0] * _WORD_MIX
    hashed += pairs[:, 1]
    return _mix(hashed)


def words(text: str) -> Words:
    """The 64-bit hashes of the text's words, in order."""
    return _words(_encoded(text)).hashes


def _shingles_of(hashed: Words) -> Hashes:
    """The 32-bit hashes of the word 3-shingles, in order (fewer words: one), not deduplicated."""
    count = len(hashed)
    if count >= _FEW_WORDS:
        shingles = hashed[:-2] * _P0
        shingles += hashed[1:-1] * _P1
        shingles += hashed[2:] * _P2
    elif count >= SHINGLE_WORDS:
        # The same sums, as one product of a sliding view: fewer calls, slower per word.
        shingles = np.ndarray((count - 2, 3), np.uint64, hashed, 0, (8, 8)) @ _POSITION
    elif count:
        shingles = np.bitwise_xor.reduce(hashed * _POSITION[:count], keepdims=True)
    else:
        return np.empty(0, dtype=np.uint32)
    return _high(_mix(shingles))


def shingles_of(hashed: Words) -> Hashes:
    """The sorted, distinct 32-bit hashes of word 3-shingles (fewer words: one)."""
    return sorted_unique(_shingles_of(hashed))


def shingle_hashes(text: str) -> Hashes:
    """The sorted, distinct 32-bit hashes of the text's word 3-shingles (fewer words: one)."""
    return shingles_of(words(text))


def edge_words(found: _Words) -> tuple[int, int]:
    """How many words open and close the text: its first and last sentence, each at most a
    quarter of the words (a one-sentence text has neither)."""
    count = len(found.hashes)
    if count < 8:
        return 0, 0
    quarter = count // 4
    raw, folded = found.raw, found.folded
    first = _SENTENCE_END.search(raw)
    if first is None:
        return 0, 0
    # Sentence ends separate words: the words before one are the words of the text before it.
    opening = min(len(folded[: first.start()].split()), quarter)
    # The last sentence starts after the last end that has a word after it.
    last_start = folded.rstrip(b" ").rfind(b" ") + 1
    before_last = max(
        raw.rfind(b".", 0, last_start),
        raw.rfind(b"!", 0, last_start),
        raw.rfind(b"?", 0, last_start),
        raw.rfind(b"\n", 0, last_start),
    )
    closing = len(folded[before_last:].split()) if before_last >= 0 else 0
    return opening, min(closing, quarter)


_STOP_SHIFT = np.array(32 - 20, dtype=np.uint32)
_CONTENT = np.ones(1 << 20, dtype=bool)
_CONTENT[_high(words(" ".join(STOPWORDS))) >> _STOP_SHIFT] = False


def numpy_shingle(text: str) -> Shingles:
    found = _words(_encoded(text))
    hashed = found.hashes
    opening, closing = edge_words(found)
    features = _high(hashed)
    content = _CONTENT.take(features >> _STOP_SHIFT)
    sketch = bag_sketch(features, content, found.first, opening, closing)
    return Shingles(_shingles_of(hashed), sketch)
