"""The no-progress detector: recent outputs that only recombine what the task already said."""

from __future__ import annotations

import pytest

from proxy.detectors import progress
from proxy.detectors.base import Trip, TripReason
from proxy.detectors.settings import NoProgressSettings
from tests.detectors.helpers import prose

SETTINGS = NoProgressSettings(completions=4, min_new_share=0.2, sample_size=512, min_sampled=32)


def feed(texts: list[str], settings: NoProgressSettings = SETTINGS) -> list[Trip | None]:
    state, trips = progress.NoProgressState(), []
    for n, text in enumerate(texts):
        state, trip = progress.observe(state, f"agent-{n % 2}", text, settings)
        trips.append(trip)
    return trips


def test_recombining_old_content_trips() -> None:
    early = [prose(n, 150) for n in range(6)]
    # Halves of earlier outputs glued together: nothing new but the seams.
    stuck = [
        early[n][: len(early[n]) // 2] + " " + early[n + 1][len(early[n + 1]) // 2 :]
        for n in range(5)
    ]
    trips = feed(early + stuck)
    assert trips[:9] == [None] * 9
    trip = trips[9]
    assert trip is not None and trip.reason is TripReason.NO_PROGRESS
    assert trip.figures["new_share"] < 0.2 and trip.figures["completions"] == 4
    assert "last 4 outputs added" in trip.detail


def test_a_progressing_task_never_trips() -> None:
    assert feed([prose(n, 150) for n in range(200)]) == [None] * 200


def test_too_small_a_sample_gives_no_verdict() -> None:
    assert feed(["OK, done."] * 20) == [None] * 20


def test_state_stays_bounded_and_round_trips() -> None:
    state = progress.NoProgressState()
    for n in range(2000):
        state, _ = progress.observe(state, "a", prose(n, 60), SETTINGS)
    data = state.to_bytes()
    assert len(state.sample) == 4 * SETTINGS.sample_size and state.outputs == 4
    assert len(data) < 4 * SETTINGS.sample_size + 64
    assert progress.NoProgressState.from_bytes(data) == state
    with pytest.raises(ValueError):
        progress.NoProgressState.from_bytes(data + b"\x00")


def test_a_smaller_sample_size_applies_to_an_existing_task() -> None:
    state = progress.NoProgressState()
    for n in range(50):
        state, _ = progress.observe(state, "a", prose(n, 60), SETTINGS)
    smaller = SETTINGS.model_copy(update={"sample_size": 64})
    state, _ = progress.observe(state, "a", prose(999, 60), smaller)
    assert len(state.sample) == 4 * 64
