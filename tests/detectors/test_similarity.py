"""The near-duplicate detector: one agent re-wording the same output."""

from __future__ import annotations

import pytest

from proxy.detectors import similarity
from proxy.detectors.base import Trip, TripReason
from proxy.detectors.settings import NearDuplicateSettings
from tests.detectors.helpers import prose, reword

SETTINGS = NearDuplicateSettings(similarity=0.8, repeats=3, window=10)


def feed(
    outputs: list[tuple[str, str]], settings: NearDuplicateSettings = SETTINGS
) -> list[Trip | None]:
    state, trips = similarity.NearDuplicateState(), []
    for agent, text in outputs:
        state, trip = similarity.observe(state, agent, text, settings)
        trips.append(trip)
    return trips


def test_reworded_repeats_trip_at_the_threshold() -> None:
    answer = prose(1, 120)
    trips = feed([("writer", reword(answer, n)) for n in range(4)])
    assert trips[:2] == [None, None]
    trip = trips[2]
    assert trip is not None and trip.reason is TripReason.NEAR_DUPLICATE
    assert trip.figures["repeats"] == 3 and trip.figures["agent"] == "writer"
    assert trip.figures["max_similarity"] >= 0.8
    assert "agent writer gave 3 nearly identical outputs" in trip.detail


def test_the_exact_repeat_detector_would_miss_these() -> None:
    texts = [reword(prose(1, 120), n) for n in range(3)]
    assert len(set(texts)) == 3


def test_distinct_outputs_never_trip() -> None:
    assert feed([("writer", prose(n, 120)) for n in range(100)]) == [None] * 100


def test_only_the_same_agents_outputs_count() -> None:
    answer = prose(1, 120)
    outputs = [(f"agent-{n}", reword(answer, n)) for n in range(6)]
    assert feed(outputs) == [None] * 6


def test_outputs_that_left_the_window_are_forgotten() -> None:
    answer = prose(1, 120)
    outputs = []
    for n in range(5):
        outputs += [("writer", reword(answer, n))] + [
            ("other", prose(100 + 10 * n + k)) for k in range(9)
        ]
    assert feed(outputs) == [None] * len(outputs)


def test_short_outputs_are_not_compared() -> None:
    assert feed([("critic", "Looks good to me.")] * 5) == [None] * 5


def test_state_round_trips_and_stays_bounded() -> None:
    state = similarity.NearDuplicateState()
    for n in range(1000):
        state, _ = similarity.observe(state, f"agent-{n % 5}", prose(n, 40), SETTINGS)
    data = state.to_bytes()
    assert similarity.NearDuplicateState.from_bytes(data) == state
    assert state.outputs == SETTINGS.window and len(data) < 2100
    with pytest.raises(ValueError):
        similarity.NearDuplicateState.from_bytes(data[:-5])
