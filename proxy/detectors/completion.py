"""One completion as the content detectors read it: its word 3-shingles and its bag sketch
(``Shingles``), made by ``proxy.detectors.shingles``. The shingles are a buffer of native uint32,
the extension's or a numpy array; the numpy code alone asks for an array, and only then is numpy
loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Hashes = npt.NDArray[np.uint32]

SHINGLE_WORDS = 3
MAX_BYTES = 64 * 1024
_ALL = 1 << 32


def _encoded(text: str) -> bytes:
    if not text.isascii():
        text = text.lower()
    return text.encode("utf-8", "replace")[:MAX_BYTES]


def sorted_unique(values: Hashes) -> Hashes:
    """Sorted and distinct: np.unique is several times slower on arrays of this size, as it
    hashes instead of sorting."""
    import numpy as np

    ordered = values.copy()
    ordered.sort()
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


class Shingles:
    """What the content detectors need from one completion, computed once.

    ``raw`` holds its word 3-shingles, in order, with repeats, as a 1-d buffer of native uint32:
    the extension's, or a numpy array. The extension's steps read it as it is; ``shingles``
    is it as a numpy array, for the numpy code, which loads numpy."""

    __slots__ = ("_array", "_hashes", "empty", "raw", "sketch")

    def __init__(self, shingles: Hashes | memoryview, sketch: bytes) -> None:
        self.raw = shingles
        self.sketch = sketch  # the bag sketch of its content words
        self.empty = len(shingles) == 0  # no word at all
        self._array: Hashes | None = None if isinstance(shingles, memoryview) else shingles
        self._hashes: Hashes | None = None

    @property
    def shingles(self) -> Hashes:
        """The word 3-shingles, in order, with repeats."""
        if self._array is None:
            import numpy as np

            self._array = np.frombuffer(self.raw, dtype=np.uint32)
        return self._array

    @property
    def hashes(self) -> Hashes:
        """The word 3-shingles, sorted and distinct."""
        if self._hashes is None:
            self._hashes = sorted_unique(self.shingles)
        return self._hashes

    @property
    def count(self) -> int:
        """How many distinct shingles."""
        return len(self.hashes)

    def at_least(self, count: int) -> bool:
        """Whether there are at least ``count`` distinct shingles, without sorting them all
        when the first few already show it."""
        if len(self.raw) < count:
            return False
        if len(set(self.shingles[: 2 * count].tolist())) >= count:
            return True
        return self.count >= count

    def below(self, threshold: int) -> Hashes:
        """The shingles below ``threshold``, in order, with repeats."""
        if threshold >= _ALL:
            return self.shingles
        import numpy as np

        return self.shingles[self.shingles < np.array(threshold, dtype=np.uint32)]
