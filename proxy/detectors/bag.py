"""Bag sketches: a completion's content words as a weighted set, compared by weighted Jaccard.

A loop that rewords itself keeps its content words and changes the rest: the order of its
sentences, the opener ("Hi team,", "Quick update:"), the sign-off, a counter. So the similarity
detectors compare bags of words, not word sequences:

* function words and the vocabulary of greetings and sign-offs are left out (``STOPWORDS``);
* words of the opening and the closing sentence weigh ``LIGHT``, the others ``HEAVY``;
* numbers are words like any other, so "12 failing (was 13)" and "11 failing (was 12)" differ.

Similarity is the weighted Jaccard index, sum of minimum weights over sum of maximum weights.
The sketch keeps the ``BAG_FEATURES`` smallest feature hashes (a bottom-k sample: consistent
across completions, so the union's k smallest are a uniform sample of the union, on which the
index is estimated; exact for texts of fewer content words). Each is a 32-bit value, the
feature's 31-bit hash above one weight bit: 192 bytes a completion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

BAG_FEATURES = 48
BAG_BYTES = BAG_FEATURES * 4
HEAVY, LIGHT = 4, 1
_EMPTY = np.uint32(0xFFFFFFFF)
_NO_FEATURE = np.uint32(0x7FFFFFFF)  # _EMPTY's feature; real features stay below it
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
    hashed: npt.NDArray[np.uint64], stop: npt.NDArray[np.bool_], opening: int, closing: int
) -> bytes:
    """The sketch of a completion's words (64-bit hashes in order; ``stop`` marks the ones left
    out); the first ``opening`` and last ``closing`` words weigh ``LIGHT``."""
    count = len(hashed)
    heavy = np.ones(count, dtype=np.uint32)
    heavy[:opening] = 0
    heavy[count - closing :] = 0
    keep = ~stop
    if not keep.any():
        return _EMPTY_SKETCH
    features = np.minimum((hashed[keep] >> np.uint64(33)).astype(np.uint32), _NO_FEATURE - 1)
    values = np.sort((features << np.uint32(1)) | heavy[keep])
    # One value a feature, the heavier (the larger, its weight bit set) when it occurs twice.
    last = np.empty(len(values), dtype=bool)
    last[-1] = True
    np.not_equal(values[1:] >> np.uint32(1), values[:-1] >> np.uint32(1), out=last[:-1])
    chosen = values[last][:BAG_FEATURES]
    padded = np.full(BAG_FEATURES, _EMPTY, dtype=np.uint32)
    padded[: len(chosen)] = chosen
    return padded.astype("<u4").tobytes()


def bag_similarities(sketch: bytes, others: Sequence[bytes]) -> npt.NDArray[np.float64]:
    """Estimated weighted Jaccard similarity of one sketch to each of ``others``; two texts
    without content words are not alike."""
    if not others:
        return np.empty(0, dtype=np.float64)
    mine = np.frombuffer(sketch, dtype="<u4").astype(np.uint32)
    rows = np.frombuffer(b"".join(others), dtype="<u4").reshape(len(others), BAG_FEATURES)
    mine_f, rows_f = mine >> np.uint32(1), rows >> np.uint32(1)
    mine_w = np.where(mine == _EMPTY, 0, np.where(mine & 1, HEAVY, LIGHT))
    rows_w = np.where(rows == _EMPTY, 0, np.where(rows & 1, HEAVY, LIGHT))
    # The k-th smallest distinct feature of each union: the sample's upper bound.
    union = np.sort(np.concatenate([rows_f, np.broadcast_to(mine_f, rows_f.shape)], axis=1))
    distinct = np.ones(union.shape, dtype=bool)
    np.not_equal(union[:, 1:], union[:, :-1], out=distinct[:, 1:])
    distinct &= union != _NO_FEATURE
    reached = np.cumsum(distinct, axis=1) >= BAG_FEATURES
    full = reached[:, -1]
    bound = np.where(
        full, union[np.arange(len(rows)), np.argmax(reached, axis=1)], _NO_FEATURE - 1
    )[:, None]
    mine_in = np.where(mine_f[None, :] <= bound, mine_w[None, :], 0)
    rows_in = np.where(rows_f <= bound, rows_w, 0)
    equal = rows_f[:, :, None] == mine_f[None, None, :]
    low = np.minimum(rows_in[:, :, None], mine_in[:, None, :])
    both = (equal * low).sum(axis=(1, 2))
    either = mine_in.sum(axis=1) + rows_in.sum(axis=1) - both
    result: npt.NDArray[np.float64] = np.where(either > 0, both / np.maximum(either, 1), 0.0)
    return result
