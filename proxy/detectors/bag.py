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

try:
    # The C extension (_native.c), where the install could build it: the same values as the
    # numpy code of bag_numpy.py and shingles_numpy.py, for a fraction of the cost.
    from proxy.detectors import _native
except ImportError:  # built without a C compiler: the numpy code, the reference
    _native = None  # type: ignore[assignment]
native = _native  # the one switch: shingles.py and recent.py read it here
# The numpy code (``bag_numpy.py``) is imported only where it runs: without the extension. With
# it, the server never loads numpy.

BAG_FEATURES = 48
BAG_BYTES = BAG_FEATURES * 4
LIGHT, HEAVY, NUMBER = 1, 4, 8

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
