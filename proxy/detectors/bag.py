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

BAG_FEATURES = 48
BAG_BYTES = BAG_FEATURES * 4
LIGHT, HEAVY, NUMBER = 1, 4, 8
_WEIGHTS = np.array([LIGHT, HEAVY, NUMBER, HEAVY], dtype=np.int64)
_CLASS = np.uint32(3)
_EMPTY = np.uint32(0xFFFFFFFF)
_NO_FEATURE = np.uint32(0x3FFFFFFF)  # _EMPTY's feature; real features stay below it
_EMPTY_SKETCH = b"\xff" * BAG_BYTES

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
    hashed: npt.NDArray[np.uint64],
    stop: npt.NDArray[np.bool_],
    numeric: npt.NDArray[np.bool_],
    opening: int,
    closing: int,
) -> bytes:
    """The sketch of a completion's words (64-bit hashes in order; ``stop`` marks the ones left
    out, ``numeric`` the numbers); the first ``opening`` and last ``closing`` words weigh
    ``LIGHT``, unless they are numbers."""
    count = len(hashed)
    # The feature is the hash's top 30 bits, the weight class in the two bits below.
    word_class = np.ones(count, dtype=np.uint32)
    word_class[:opening] = 0
    word_class[count - closing :] = 0
    word_class[numeric] = 2  # wherever it stands
    values = ((hashed >> np.uint64(32)).astype(np.uint32) & ~_CLASS) | word_class
    keep = ~stop
    kept = int(np.count_nonzero(keep))
    if kept == 0:
        return _EMPTY_SKETCH
    chosen = None
    if kept > 4 * BAG_FEATURES:
        # Only the smallest features matter: sort about 16 * BAG_FEATURES of them, not all
        # (features are uniform); all of them when that was too few.
        cutoff = np.uint32(min((2**32 * 16 * BAG_FEATURES) // kept, 2**32 - 1))
        chosen = _distinct_heaviest(values[keep & (values < cutoff)])
    if chosen is None or len(chosen) < BAG_FEATURES:
        chosen = _distinct_heaviest(np.minimum(values[keep], np.uint32(0xFFFFFFFB)))
    padded = np.full(BAG_FEATURES, _EMPTY, dtype=np.uint32)
    padded[: min(len(chosen), BAG_FEATURES)] = chosen[:BAG_FEATURES]
    return padded.astype("<u4").tobytes()


def _distinct_heaviest(values: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Sorted, one value a feature: the heaviest (the largest class) of its occurrences."""
    if len(values) == 0:
        return values
    ordered = np.sort(values)
    last = np.empty(len(ordered), dtype=bool)
    last[-1] = True
    np.not_equal(ordered[1:] >> np.uint32(2), ordered[:-1] >> np.uint32(2), out=last[:-1])
    return ordered[last]


def bag_similarities(sketch: bytes, others: Sequence[bytes]) -> npt.NDArray[np.float64]:
    """Estimated weighted Jaccard similarity of one sketch to each of ``others``; two texts
    without content words are not alike.

    Each pair is compared on the features up to the smaller of the two sketches' largest: every
    feature of either text in that range is in its sketch, so they are a uniform sample of the
    union (all of it when a sketch is not full: an empty slot's feature is the largest).
    """
    if not others:
        return np.empty(0, dtype=np.float64)
    mine = np.frombuffer(sketch, dtype="<u4").astype(np.int64)
    rows = np.frombuffer(b"".join(others), dtype="<u4").astype(np.int64)
    rows = rows.reshape(len(others), BAG_FEATURES)
    mine_f, rows_f = mine >> 2, rows >> 2
    # The bound stays below an empty slot's feature, so empty slots never count.
    bound = np.minimum(np.minimum(rows_f[:, -1:], mine_f[-1]), _NO_FEATURE - 1)
    mine_in = _WEIGHTS[mine & 3] * (mine_f <= bound)
    rows_in = _WEIGHTS[rows & 3] * (rows_f <= bound)
    at = np.minimum(np.searchsorted(mine_f, rows_f), BAG_FEATURES - 1)
    both = (
        np.minimum(rows_in, np.take_along_axis(mine_in, at, axis=1)) * (mine_f[at] == rows_f)
    ).sum(axis=1)
    either = mine_in.sum(axis=1) + rows_in.sum(axis=1) - both
    result: npt.NDArray[np.float64] = both / np.maximum(either, 1)
    return result
