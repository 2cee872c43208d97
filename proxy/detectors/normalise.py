"""Text normalisation that keeps meaning, shared by the fingerprints and the content detectors.

Two foldings of a completion's bytes:

* ``exact_text``: for the exact-repeat fingerprint. Case, punctuation, whitespace and markdown
  decoration (``**bold**``, ``# headings``, ``- bullets``, backticks, ``> quotes``) do not change
  what a message says, so they do not make a repeat look new. Digits are kept: "attempt 3" and
  "attempt 4" are two outputs for this fingerprint (the similarity detectors judge them alike).
* ``WORD_FOLD``: the byte table the content detectors split words with. ASCII letters are
  lower-cased, digits are kept (a changing count is the one sign of progress in a status
  report), and anything else but non-ASCII bytes separates words; ``_`` too, so markdown's
  ``_emphasis_`` reads as the word.
"""

from __future__ import annotations

import json


def _word_fold() -> bytes:
    table = bytearray(b" " * 256)
    for code in range(256):
        char = chr(code)
        if code >= 128 or char.isdigit():
            table[code] = code
        elif char.isalpha():
            table[code] = ord(char.lower())
    return bytes(table)


WORD_FOLD = _word_fold()


def exact_text(text: str) -> str:
    """The words of ``text``, lower-cased, separated by one space: two texts that differ only in
    case, punctuation, spacing or markdown decoration give the same string."""
    if not text.isascii():
        text = text.lower()
    folded = text.encode("utf-8", "replace").translate(WORD_FOLD)
    return " ".join(folded.decode("utf-8", "replace").split())


def canonical_arguments(arguments: str) -> bytes:
    """JSON arguments with sorted keys and no spacing; other text with its spacing folded."""
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        return " ".join(arguments.split()).encode()
