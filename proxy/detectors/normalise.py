"""Text normalisation that keeps meaning, shared by the fingerprints and the content detectors.

Two foldings of a completion's bytes:

* ``exact_bytes`` (``exact_text``): for the exact-repeat fingerprint. Case, punctuation,
  whitespace and markdown decoration (``**bold**``, ``# headings``, ``- bullets``, backticks,
  ``> quotes``) do not change what a message says, so they do not make a repeat look new.
  Digits are kept: "attempt 3" and "attempt 4" are two outputs for this fingerprint (the
  similarity detectors judge them alike).
* ``WORD_FOLD``: the byte table the content detectors split words with. ASCII letters are
  lower-cased, digits are kept (a changing count is the one sign of progress in a status
  report), and anything else but non-ASCII bytes separates words; ``_`` too, so markdown's
  ``_emphasis_`` reads as the word.
"""

from __future__ import annotations

import functools
import json
import re


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
_SPACES = re.compile(rb"  +")
_SHORT = 2048  # bytes: folded text up to this long is collapsed by re, longer by bytes.split
# json.dumps with these options builds an encoder on every call: one, built once.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_REMEMBERED = 1024  # characters: arguments up to this long are remembered, 256 at most


def exact_bytes(text: str) -> bytes:
    """The words of ``text``, lower-cased, separated by one space, as UTF-8: two texts that
    differ only in case, punctuation, spacing or markdown decoration give the same bytes."""
    if text.isascii():
        # Folding leaves only spaces between words: runs of them become one, no word is cut.
        folded = text.encode().translate(WORD_FOLD)
        if len(folded) <= _SHORT:
            return _SPACES.sub(b" ", folded).strip(b" ")
        return _collapse_long(folded).strip(b" ")
    folded = text.lower().encode("utf-8", "replace").translate(WORD_FOLD)
    # Other scripts have their own spaces (U+00A0, U+3000, ...): str.split knows them.
    return " ".join(folded.decode("utf-8", "replace").split()).encode()


def _collapse_long(folded: bytes) -> bytes:
    """``folded`` with its runs of spaces made one, and none at either end: folding leaves only
    spaces between words, and ``bytes.split`` finds the words of a long text faster than ``re``
    rewrites it."""
    return b" ".join(folded.split())


def exact_text(text: str) -> str:
    """``exact_bytes`` as text."""
    return exact_bytes(text).decode()


def canonical_arguments(arguments: str) -> bytes:
    """JSON arguments with sorted keys and no spacing; other text with its spacing folded."""
    if len(arguments) <= _REMEMBERED:
        return _canonical_remembered(arguments)
    return _canonical(arguments)


def _canonical(arguments: str) -> bytes:
    try:
        return _CANONICAL.encode(json.loads(arguments)).encode()
    except (ValueError, RecursionError):
        return " ".join(arguments.split()).encode()


# An agent stuck in a loop, or polling, sends the very same arguments again and again.
_canonical_remembered = functools.lru_cache(maxsize=256)(_canonical)
