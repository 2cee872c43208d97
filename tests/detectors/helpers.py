"""Texts for the detector tests: long enough to shingle, varied enough to tell apart."""

from __future__ import annotations

import random

_VOCABULARY = (
    "agent plan tool call result check goal note step fail retry input route review draft "
    "test list missing task budget token run deadline log decision person reason page search "
    "click open file write code answer question source table value error fix patch build "
    "deploy queue cache index schema query report summary metric alert owner webhook"
)
_WORDS = _VOCABULARY.split()


def prose(seed: int, words: int = 80) -> str:
    """Deterministic pseudo-English: a different seed gives a text with little in common."""
    rng = random.Random(seed)
    return " ".join(
        rng.choice(_WORDS) + rng.choice(["", "", "", "s", "ed", "ing"]) for _ in range(words)
    )


def reword(text: str, seed: int, edits: int = 1) -> str:
    """The same text with a few words changed and a sentence added: a re-worded repeat."""
    rng = random.Random(seed)
    words = text.split()
    for _ in range(edits):
        words[rng.randrange(len(words))] = rng.choice(["now", "again", "please", "first"])
    return " ".join(words) + f" Attempt {seed}: let me try once more."
