"""Bag sketches: rewordings of the same content are alike, changed numbers are not."""

from __future__ import annotations

import random

import pytest

from proxy.detectors.bag import BAG_BYTES, STOPWORDS
from proxy.detectors.shingles import shingle, similarities
from tests.detectors.helpers import prose

FACTS = [
    "The parser rejects empty input.",
    "The cache layer returns stale rows after a deploy.",
    "The deploy job times out after 40 seconds.",
    "The billing API sends duplicate events.",
]


def alike(a: str, b: str) -> float:
    return float(similarities(shingle(a).sketch, [shingle(b).sketch])[0])


def test_the_same_facts_in_another_order_with_another_opener_are_alike() -> None:
    a = "Hi Bob,\n" + " ".join(FACTS) + "\nOver to you, Carol."
    b = "Quick update:\n- " + "\n- ".join(reversed(FACTS)) + "\nThanks, talk soon!"
    assert alike(a, b) > 0.9
    assert alike(a, "Hi Bob,\n" + " ".join(prose(n, 8) + "." for n in range(4))) < 0.2


def test_a_status_report_with_new_counts_is_another_report() -> None:
    before = "Processed 120 of 2400 files (5%). 3 errors so far."
    after = "Processed 310 of 2400 files (12%). 4 errors so far."
    assert alike(before, after) < 0.6
    assert alike(before, "Processed 120 of 2400 files (5%); 3 errors so far!") > 0.9


def test_a_counter_on_a_long_message_keeps_it_alike() -> None:
    body = " ".join(FACTS * 2)
    assert alike(f"Attempt 3: {body}", f"Attempt 4: {body}") > 0.8


def test_openers_and_sign_offs_count_little() -> None:
    body = " ".join(FACTS)
    a = f"Dear reviewers of the migration plan. {body} Sincerely waiting for comments tomorrow."
    b = f"Morning planners, database owners. {body} Ping the release channel afterwards."
    assert alike(a, b) > 0.75


def test_texts_without_content_words_are_not_alike() -> None:
    assert alike("Thanks!", "Thanks!") == 0.0
    assert len(shingle("Thanks!").sketch) == BAG_BYTES


@pytest.mark.parametrize("seed", range(5))
def test_long_texts_are_estimated_close_to_the_exact_index(seed: int) -> None:
    """Long prose, one sentence (every word weighs the same): the sketch's estimate against the
    Jaccard index of the content-word sets."""
    rng = random.Random(seed)
    words = prose(seed, 3000).split()
    a = " ".join(words[:2000])
    b = " ".join(rng.sample(words, 2000))
    stop = set(STOPWORDS)
    x, y = set(a.split()) - stop, set(b.split()) - stop
    assert abs(alike(a, b) - len(x & y) / len(x | y)) < 0.15


def test_many_sketches_compare_at_once() -> None:
    # More outputs than any state keeps still compare one by one.
    texts = [prose(n, 40) for n in range(3)]
    sketches = [shingle(text).sketch for text in texts] * 100
    found = similarities(shingle(texts[1]).sketch, sketches)
    assert len(found) == 300 and found[1::3] == [1.0] * 100
    assert max(found[0::3] + found[2::3]) < 1.0
