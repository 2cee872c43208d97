"""Bag sketches: a completion's content words as a weighted set, compared by weighted Jaccard.

A loop that rewords itself keeps its content words and changes the rest: the order of its
sentences, the opener ("Hi team,", "Quick update:"), the sign-off. So the similarity
detectors compare bags of words, not word sequences:

* function words and the vocabulary of greetings and sign-offs are left out (``STOPWORDS``);
* words of the opening and the closing sentence weigh ``LIGHT``, the others ``HEAVY``, and
  numbers ``NUMBER`` wherever they stand: a status report whose counts change ("12 failing
  (was 13)", then "11 failing (was 12)") is another report. A counter ("Attempt 4:") changes
  one number of many words, so a long message repeated with a new counter stays alike.

Similarity is the weighted Jaccard index, sum of minimum weights over sum of maximum weights.
The sketch keeps the ``BAG_FEATURES`` smallest feature hashes (a bottom-k sample: consistent
across completions, so the union's k smallest are a uniform sample of the union, on which the
index is estimated; exact for texts of fewer content words). Each is a 32-bit value, the
feature's 30-bit hash above two bits of weight class: 192 bytes a completion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

try:
    # The C extension (_native.c), where the install could build it: the same values as the
    # numpy code of this module and of shingles.py and recent.py, for a fraction of the cost.
    from proxy.detectors import _native
except ImportError:  # built without a C compiler: the numpy code, the reference
    _native = None  # type: ignore[assignment]
native = _native  # the one switch: shingles.py and recent.py read it here

BAG_FEATURES = 48
BAG_BYTES = BAG_FEATURES * 4
LIGHT, HEAVY, NUMBER = 1, 4, 8
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

# Words that say nothing about what a message is about: English function words, and the
# vocabulary agents wrap the same content in (greetings, thanks, hand-offs, sign-offs).
_STOPWORDS_TEXT = """
a about above after again all also am an and any are as at be been before being below between
both but by can could did do does doing done down during each few for from further had has have
having he her here hers him his how i if in into is it its itself just me more most my no nor not
now of off on once only or other our ours out over own same she should so some such than that the
their theirs them then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself let lets us
hi hello hey dear greetings morning afternoon evening good great thanks thank cheers regards best
kind warm sincerely please team everyone folks all everybody colleagues quick note update recap
summary here again ok okay sure right alright well so anyway hope helps know back over handing
hand off passing pass along forward onto next turn follow following up touching base checking
in per as promised below above noted understood got it sounds see attached fyi btw
"""
STOPWORDS = tuple(_STOPWORDS_TEXT.split())


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


# The extension's takes ``sketch`` as bag_sketch makes it (sorted), as every caller has it.
bag_similarities = numpy_similarities if native is None else native.similarities
