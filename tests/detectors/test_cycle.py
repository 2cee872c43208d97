"""The cycle detector: A B A B and A B C A B C loops, worded a little differently each round."""

from __future__ import annotations

import pytest

from proxy.detectors import cycle
from proxy.detectors.base import Trip, TripReason
from proxy.detectors.settings import CycleSettings
from tests.detectors.helpers import prose, reword

SETTINGS = CycleSettings(similarity=0.7, rounds=3)


def feed(outputs: list[tuple[str, str]], settings: CycleSettings = SETTINGS) -> list[Trip | None]:
    state, trips = cycle.CycleState(), []
    for agent, text in outputs:
        state, trip = cycle.observe(state, agent, text, settings)
        trips.append(trip)
    return trips


def test_two_agents_handing_back_and_forth_trip_after_three_rounds() -> None:
    ask, answer = prose(1), prose(2)
    outputs = []
    for round_ in range(4):
        outputs += [("planner", reword(ask, round_)), ("critic", reword(answer, 10 + round_))]
    trips = feed(outputs)
    assert trips[:5] == [None] * 5
    trip = trips[5]
    assert trip is not None and trip.reason is TripReason.CYCLE
    assert trip.figures["period"] == 2 and trip.figures["cycle"] == "planner -> critic"
    assert "cycle of 2 outputs (planner -> critic) 3 times" in trip.detail


def test_three_step_cycle() -> None:
    texts = {"a": prose(1), "b": prose(2), "c": prose(3)}
    outputs = [(agent, reword(texts[agent], n)) for n in range(3) for agent in "abc"]
    trips = feed(outputs)
    assert trips[:8] == [None] * 8
    assert trips[8] is not None and trips[8].figures["period"] == 3


def test_a_progressing_conversation_never_trips() -> None:
    outputs = [("planner" if n % 2 else "critic", prose(100 + n)) for n in range(60)]
    assert feed(outputs) == [None] * 60


def test_same_texts_from_other_agents_are_not_a_cycle() -> None:
    ask, answer = prose(1), prose(2)
    outputs = [(f"agent-{n}", ask if n % 2 else answer) for n in range(12)]
    assert feed(outputs) == [None] * 12


def test_one_agent_repeating_itself_is_left_to_the_repeat_detectors() -> None:
    assert feed([("a", prose(1))] * 10) == [None] * 10


def test_rounds_setting() -> None:
    ask, answer = prose(1), prose(2)
    outputs = [("p", ask), ("c", answer)] * 2
    trips = feed(outputs, CycleSettings(rounds=2))
    assert trips[:3] == [None] * 3 and trips[3] is not None


def test_state_round_trips_and_stays_bounded() -> None:
    state = cycle.CycleState()
    for n in range(500):
        state, _ = cycle.observe(state, f"agent\n{n % 7}", prose(n % 9, 30), SETTINGS)
    data = state.to_bytes()
    assert cycle.CycleState.from_bytes(data) == state
    assert state.outputs == cycle.MAX_PERIOD and len(data) < 1400
    assert cycle.CycleState.from_bytes(b"") == cycle.CycleState()
    with pytest.raises(ValueError):
        cycle.CycleState.from_bytes(b"\x09garbage")
