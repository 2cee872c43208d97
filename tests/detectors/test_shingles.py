"""Shingling and sketches: stable across processes, and a fair estimate of similarity."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from proxy.detectors.bag import STOPWORDS
from proxy.detectors.shingles import shingle, shingle_hashes, similarities
from tests.detectors.helpers import prose, reword


def _jaccard(a: str, b: str) -> float:
    """Jaccard index of the two texts' content words (no sentence ends: every word weighs
    the same)."""
    stop = set(STOPWORDS)
    x = {w for w in a.lower().split() if w not in stop}
    y = {w for w in b.lower().split() if w not in stop}
    return len(x & y) / len(x | y)


def test_hashes_do_not_depend_on_the_process() -> None:
    # Redis state written by one replica is read by another: Python's str hash must not leak in.
    code = (
        "from proxy.detectors.shingles import shingle; "
        "print(shingle('Hello there, general Kenobi').sketch.hex())"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert runs == {shingle("Hello there, general Kenobi").sketch.hex() + "\n"}


def test_case_and_punctuation_do_not_make_text_new_but_numbers_do() -> None:
    a = shingle_hashes("Retry 3 of 5: the upload failed, backing off.")
    b = shingle_hashes("retry 3 of 5 -- THE **UPLOAD** _failed_; backing off")
    c = shingle_hashes("Retry 4 of 5: the upload failed, backing off.")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_short_and_empty_texts() -> None:
    assert shingle("").count == 0
    assert shingle("   ...  ").count == 0
    assert shingle("OK").count == 1
    assert shingle("two words").count == 1
    assert shingle("Continue.").hashes.tolist() != shingle("Stop.").hashes.tolist()


def test_sketch_estimates_jaccard() -> None:
    base = prose(1, 300)
    pairs = [(base, base), (base, reword(base, 2, edits=10)), (base, prose(3, 300))]
    for a, b in pairs:
        estimate = float(similarities(shingle(a).sketch, [shingle(b).sketch])[0])
        assert abs(estimate - _jaccard(a, b)) < 0.15


def test_non_ascii_text_is_shingled() -> None:
    a, b = shingle("Ärger über die Straße"), shingle("ärger ÜBER die straße")
    assert a.count == 2 and np.array_equal(a.hashes, b.hashes)
