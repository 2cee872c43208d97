"""Words and word shingles of a completion, hashed once and shared by the content detectors.

A completion's words are hashed once (vectorised, 64 bits each). Two things are built from them:

* a **bag sketch** (``proxy.detectors.bag``): the completion's content words as a weighted set,
  function words and greetings left out and the opening and closing sentences counting little,
  so two rewordings of the same content in another order, with another opener and sign-off,
  read as alike. The cycle and near-duplicate detectors compare these;
* the 32-bit hashes of its word 3-shingles (three consecutive words), from which ``progress``
  keeps a consistent sample per task to tell new content from old. Only the shingles below the
  sample's threshold are ever sorted (``Shingles.below``): on a long task, a few of them.

Normalisation (``proxy.detectors.normalise.WORD_FOLD``): ASCII letters are lower-cased (other
scripts through ``str.lower``), digits are kept (a changing count is progress), anything but
letters, digits and non-ASCII characters separates words. A word is hashed on its first 16
bytes, and a completion on its first 64 KiB, which bounds the cost (the measurements are in
``bench/detection``).

Where the install could build it (``setup.py``, with a C compiler), the extension
``proxy.detectors._native`` does all of ``shingle`` in one call and one pass over the text, and
the similarities (``bag``, ``recent``) and each detector's step too: the same values, for about a
tenth of the cost of a short completion. The numpy code (``shingles_numpy.py``,
``bag_numpy.py``) is the reference, and what runs without it; it is imported only then, so a
server with the extension never loads numpy (about 19 MiB).

Hashes are fixed functions of the text, never Python's per-process ``hash``: state written by
one replica is read by another.
"""

from __future__ import annotations

import functools
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

from proxy.detectors.bag import STOPWORDS, native
from proxy.detectors.completion import MAX_BYTES, SHINGLE_WORDS, Shingles, _encoded
from proxy.detectors.normalise import WORD_FOLD

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MAX_BYTES", "SHINGLE_WORDS", "Shingles", "agent_key", "shingle", "similarities"]
_M64 = (1 << 64) - 1
# What ``shingles_numpy`` holds, read from there when first asked for (the numpy reference).
_NUMPY_NAMES = frozenset({"words", "shingle_hashes", "shingles_of", "edge_words"})


def __getattr__(name: str) -> Any:
    if name in _NUMPY_NAMES:
        from proxy.detectors import shingles_numpy

        return getattr(shingles_numpy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _mix(value: int) -> int:
    """splitmix64's finalizer on one 64-bit value (``shingles_numpy._mix``, an array's)."""
    value ^= value >> 30
    value = (value * 0xBF58476D1CE4E5B9) & _M64
    value ^= value >> 27
    value = (value * 0x94D049BB133111EB) & _M64
    return value ^ (value >> 31)


def _content_bits() -> bytes:
    """Stopwords by the top 20 bits of their hash, a bit per entry (set: a content word), bit k
    of the table being bit ``k % 8`` of byte ``k // 8``: one look-up a word, 128 KiB of cache.
    A content word shares a stopword's 20 bits, and is left out, once in about 5,000. Built
    word by word as ``shingles_numpy`` hashes words: each one's first 16 folded bytes, zero
    padded, as two little-endian uint64 (``tests/detectors/test_native.py`` checks it against
    the numpy table)."""
    table = bytearray(b"\xff" * ((1 << 20) // 8))
    for word in _encoded(" ".join(STOPWORDS)).translate(WORD_FOLD).split():
        padded = word[:16].ljust(16, b"\0")
        low, high = int.from_bytes(padded[:8], "little"), int.from_bytes(padded[8:], "little")
        entry = (_mix((low * 0xD6E8FEB86659FD93 + high) & _M64) >> 32) >> 12
        table[entry >> 3] &= ~(1 << (entry & 7)) & 0xFF
    return bytes(table)


_CONTENT_BITS = _content_bits()


def numpy_shingle(text: str) -> Shingles:
    """Words, shingles and the bag sketch by the numpy code (``shingles_numpy``)."""
    from proxy.detectors.shingles_numpy import numpy_shingle as shingled

    return shingled(text)


def native_shingle(text: str) -> Shingles:
    """``numpy_shingle`` in one call of the extension (when built): the same values."""
    shingles, sketch = native.shingle(text, WORD_FOLD, _CONTENT_BITS, MAX_BYTES)
    return Shingles(memoryview(shingles).cast("I"), sketch)


def _numpy_similarities(sketch: bytes, others: Sequence[bytes]) -> list[float]:
    from proxy.detectors.bag_numpy import numpy_similarities

    return numpy_similarities(sketch, others)


shingle = numpy_shingle if native is None else native_shingle
# The extension's takes ``sketch`` as a shingling makes it (sorted), as every caller has it.
similarities = _numpy_similarities if native is None else native.similarities


@functools.lru_cache(maxsize=1024)
def agent_key(agent: str) -> int:
    """A stable 32-bit name for an agent: state keeps this, not the (unbounded) name. A task's
    agents are few and name every completion: the last ones' keys are remembered."""
    return int.from_bytes(blake2b(agent.encode("utf-8", "replace"), digest_size=4).digest())
