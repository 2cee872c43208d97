"""The numpy reference of bag sketches and their similarities (``proxy.detectors.bag`` says
what they are). The C extension computes the same values; this runs where it was not built, and
is what the extension is tested against. Imported only then: with the extension, the server
never loads numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from proxy.detectors.bag import BAG_FEATURES, HEAVY, LIGHT, NUMBER

_WEIGHTS = np.array([LIGHT, HEAVY, NUMBER, HEAVY], dtype=np.int64)
# Constants are 0-d arrays: as operands they cost numpy half what its scalars do.
_CLASS = np.array(3, dtype=np.uint32)
_FEATURE = ~_CLASS
_S2 = np.array(2, dtype=np.uint32)
_LAST_VALUE = np.array(0xFFFFFFFB, dtype=np.uint32)  # below an empty slot's
_NO_FEATURE = 0x3FFFFFFF  # an empty slot's feature; real features stay below it
_TOP = _NO_FEATURE - 1
_NO_WEIGHT = np.zeros(1, dtype=np.int64)
_ROW_STARTS = np.arange(0, BAG_FEATURES * 256, BAG_FEATURES)  # more than a state ever keeps
_EMPTY_SLOT = b"\xff\xff\xff\xff"
_EMPTY_SKETCH = _EMPTY_SLOT * BAG_FEATURES
_NOTHING = np.empty(0, dtype=np.uint32)
# A word's weight class by its first byte: a number (2) wherever it stands, another word 1, or
# 0 in the opening or closing sentence.
_CLASS_INSIDE = bytes(2 if 48 <= byte < 58 else 1 for byte in range(256))
_CLASS_AT_EDGE = bytes(2 if 48 <= byte < 58 else 0 for byte in range(256))
_HEAD = 4 * BAG_FEATURES  # values sorted first: enough features unless words repeat a lot


def bag_sketch(
    features: npt.NDArray[np.uint32],
    content: npt.NDArray[np.bool_],
    first: bytes,
    opening: int,
    closing: int,
) -> bytes:
    """The sketch of a completion's words (the high 32 bits of their hashes, in order;
    ``content`` marks the ones kept, ``first`` holds each one's first byte: a digit makes it a
    number); the first ``opening`` and last ``closing`` words weigh ``LIGHT``, unless they are
    numbers."""
    count = len(features)
    # The feature is the hash's top 30 bits, the weight class in the two bits below: worked
    # out on bytes, which costs less than array operations.
    classes = bytearray(first.translate(_CLASS_INSIDE))
    classes[:opening] = first[:opening].translate(_CLASS_AT_EDGE)
    classes[count - closing :] = first[count - closing :].translate(_CLASS_AT_EDGE)
    values = features & _FEATURE
    values |= np.frombuffer(classes, dtype=np.uint8)
    kept = int(np.count_nonzero(content))
    if kept == 0:
        return _EMPTY_SKETCH
    chosen = _NOTHING
    if kept > 4 * BAG_FEATURES:
        # Only the smallest features matter: sort about 16 * BAG_FEATURES of them, not all
        # (features are uniform); all of them when that was too few.
        cutoff = np.array(min((2**32 * 16 * BAG_FEATURES) // kept, 2**32 - 1), dtype=np.uint32)
        chosen = _lightest(values[content & (values < cutoff)])
    if len(chosen) < BAG_FEATURES:
        chosen = _lightest(np.minimum(values[content], _LAST_VALUE))
    return chosen.astype("<u4", copy=False).tobytes() + _EMPTY_SLOT * (BAG_FEATURES - len(chosen))


def _lightest(values: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """The values of the ``BAG_FEATURES`` smallest features (all, if fewer), sorted, one a
    feature: the heaviest (the largest class) of its occurrences. Reorders ``values``."""
    if len(values) > 2 * _HEAD:
        # Sort only the smallest values: enough when they hold more features than are kept,
        # so that the kept ones' every occurrence is among them.
        values.partition(_HEAD)
        head = _distinct_heaviest(values[: _HEAD + 1])
        if len(head) > BAG_FEATURES:
            return head[:BAG_FEATURES]
    return _distinct_heaviest(values)[:BAG_FEATURES]


def _distinct_heaviest(values: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Sorted (in place), one value a feature: the heaviest (the largest class) of its
    occurrences."""
    values.sort()
    if len(values) < 2:
        return values
    features = values >> _S2
    last = np.empty(len(values), dtype=bool)
    last[-1] = True
    np.not_equal(features[1:], features[:-1], out=last[:-1])
    return values[last]


def numpy_similarities(sketch: bytes, others: Sequence[bytes]) -> list[float]:
    """Estimated weighted Jaccard similarity of one sketch to each of ``others``; two texts
    without content words are not alike. All of them in a few array operations.

    Each pair is compared on the features up to the smaller of the two sketches' largest: every
    feature of either text in that range is in its sketch, so they are a uniform sample of the
    union (all of it when a sketch is not full: an empty slot's feature is the largest).
    """
    if not others:
        return []
    # All sketches in one flat array, this one first: one operation serves both sides, and
    # flat arrays take numpy's fastest paths.
    values = np.frombuffer(b"".join([sketch, *others]), dtype="<u4")
    features, weights = values >> _S2, _WEIGHTS.take(values & _CLASS)
    mine_f, mine_w = features[:BAG_FEATURES], weights[:BAG_FEATURES]
    rows_f, rows_in = features[BAG_FEATURES:], weights[BAG_FEATURES:]
    # The bound stays below an empty slot's feature, so empty slots never count. A sketch's
    # features are sorted: the other's up to the bound are those up to this one's part of it.
    cap = min(int(mine_f[-1]), _TOP)
    bound = np.minimum(rows_f[BAG_FEATURES - 1 :: BAG_FEATURES], cap)
    rows_in *= rows_f <= cap
    mine_in = np.concatenate((_NO_WEIGHT, mine_w.cumsum())).take(
        mine_f.searchsorted(bound, side="right")
    )
    at = mine_f.searchsorted(rows_f)
    matched = np.minimum(rows_in, mine_w.take(at, mode="clip"))
    matched *= mine_f.take(at, mode="clip") == rows_f
    starts = _ROW_STARTS[: len(others)]
    if len(starts) < len(others):
        starts = np.arange(0, BAG_FEATURES * len(others), BAG_FEATURES)
    # A few pairs: the last steps cost less in Python than as array operations.
    both = np.add.reduceat(matched, starts).tolist()
    either = (mine_in + np.add.reduceat(rows_in, starts)).tolist()
    return [shared / max(total - shared, 1) for shared, total in zip(both, either, strict=True)]
