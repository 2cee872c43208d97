"""Tool-call loops: the same call, or the same round of calls, while the tools say nothing new."""

from __future__ import annotations

from proxy.detectors.base import Trip, TripReason
from proxy.detectors.settings import ToolLoopSettings
from proxy.detectors.toolcalls import (
    MAX_AGENTS,
    ToolLoopState,
    calls_fingerprint,
    fed,
    observe,
)

SETTINGS = ToolLoopSettings()  # repeats 4, rounds 3
SEARCH = ("search", '{"query": "refund policy", "limit": 10}')
OPEN = ("open_page", '{"url": "https://example.com/refunds"}')


def feed(
    steps: list[tuple[str, list[tuple[str, str]], list[str]]],
    settings: ToolLoopSettings = SETTINGS,
) -> tuple[ToolLoopState, list[Trip | None]]:
    state, trips = ToolLoopState(), []
    for agent, calls, results in steps:
        state, trip = observe(state, agent, calls, results, settings)
        trips.append(trip)
    return state, trips


def test_the_same_call_with_the_same_result_trips_at_the_threshold() -> None:
    steps = [("researcher", [SEARCH], [] if n == 0 else ["3 hits: refunds take 14 days"])
             for n in range(5)]  # fmt: skip
    _, trips = feed(steps)
    # The second call brings the first result, new: the run of four starts there.
    assert trips[:4] == [None] * 4
    trip = trips[4]
    assert trip is not None and trip.reason is TripReason.TOOL_LOOP
    assert trip.figures["repeats"] == 4 and trip.figures["period"] == 1
    assert trip.detail == (
        "agent researcher made the same tool call (search) 4 times in a row with no new tool "
        "result in between"
    )


def test_arguments_are_compared_canonically() -> None:
    a = calls_fingerprint([("search", '{"query": "x", "limit": 10}')])
    b = calls_fingerprint([("search", '{ "limit":10,"query":"x" }')])
    assert a == b != calls_fingerprint([("search", '{"query": "y", "limit": 10}')])
    assert calls_fingerprint([]) == 0


def test_a_round_of_two_calls_trips_after_three_rounds() -> None:
    results = {SEARCH: "3 hits", OPEN: "Refunds take 14 days."}
    steps = [("researcher", [call], [results[call]]) for call in [SEARCH, OPEN] * 3]
    _, trips = feed(steps)
    assert trips[:5] == [None] * 5  # the first two results are new: the run starts after them
    _, trips = feed(steps + steps[:2])
    trip = trips[-1]
    assert trip is not None and trip.figures["period"] == 2
    assert "went round the same 2 tool calls 3 times" in trip.detail


def test_new_results_are_progress() -> None:
    """Polling a job whose status changes, re-running tests after each fix: never a loop."""
    status = [("status", '{"job": 7}')]
    polling = [("poller", status, [f"running, {n * 10}% done"]) for n in range(9)]
    assert feed(polling)[1] == [None] * 9
    fixing = []
    for n in range(8):
        fixing.append(("coder", [("run_tests", "{}")], [f"Updated file_{n}.py"]))
        fixing.append(("coder", [("edit", f'{{"file": "f{n}.py"}}')], [f"{9 - n} failed"]))
    assert feed(fixing)[1] == [None] * 16


def test_without_results_only_the_calls_count() -> None:
    _, trips = feed([("a", [SEARCH], [])] * 4)
    assert trips[-1] is not None
    _, trips = feed([("a", [SEARCH], []), ("a", [OPEN], [])] * 3)
    assert trips[:5] == [None] * 5 and trips[5] is not None
    _, trips = feed([("a", [SEARCH], []), ("a", [OPEN], [])] * 3, ToolLoopSettings(rounds=4))
    assert trips == [None] * 6


def test_agents_are_judged_apart() -> None:
    steps = [(agent, [SEARCH], ["same"]) for agent in ("a", "b")] * 3
    assert feed(steps)[1] == [None] * 6


def test_fed_says_who_just_got_something_new() -> None:
    state, _ = feed([("a", [SEARCH], ["first"]), ("b", [SEARCH], [])])
    assert fed(state, "a") and not fed(state, "b")
    state, _ = feed([("a", [SEARCH], ["first"]), ("a", [SEARCH], ["first"])])
    assert fed(state, "a")  # one completion after the new result
    state, _ = observe(state, "a", [SEARCH], ["first"], SETTINGS)
    assert not fed(state, "a")


def test_state_round_trips_and_stays_bounded() -> None:
    steps = [(f"agent-{n}", [SEARCH], [f"result {n}"]) for n in range(100)]
    state, _ = feed(steps)
    assert len(state.runs) == MAX_AGENTS
    data = state.to_bytes()
    assert ToolLoopState.from_bytes(data) == state and len(data) < 2000
    assert ToolLoopState.from_bytes(b"") == ToolLoopState()
