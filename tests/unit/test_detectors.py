"""The detectors alone: no server, no ledger."""

from collections import deque

from proxy.detectors import budget, limits, repeat
from proxy.detectors.base import TripReason
from proxy.pricing import Price


def test_hops_count_only_changes_of_agent() -> None:
    assert limits.hops_after(None, "a", 0) == 0
    assert limits.hops_after("a", "a", 3) == 3
    assert limits.hops_after("a", "b", 3) == 4


def test_hop_thirteen_is_refused_with_twelve_allowed() -> None:
    assert limits.check_hops("a", "b", 11, 12) is None
    trip = limits.check_hops("b", "a", 12, 12)
    assert trip is not None and trip.reason is TripReason.MAX_HOPS
    assert trip.figures["hops"] == 13
    assert "hop 13" in trip.detail


def test_calls_limit_allows_exactly_max_calls() -> None:
    assert limits.check_calls(199, 200) is None
    trip = limits.check_calls(200, 200)
    assert trip is not None and trip.reason is TripReason.MAX_CALLS
    assert limits.check_calls(10_000, None) is None


def test_deadline() -> None:
    assert limits.check_deadline(100.0, 150.0, 60) is None
    trip = limits.check_deadline(100.0, 161.0, 60)
    assert trip is not None and trip.reason is TripReason.DEADLINE


def test_repeat_trips_at_threshold_within_window() -> None:
    window: deque[str] = deque(maxlen=20)
    assert repeat.observe_repeat(window, "x", 3, TripReason.REPEAT_OUTPUT, "a") is None
    assert repeat.observe_repeat(window, "y", 3, TripReason.REPEAT_OUTPUT, "a") is None
    assert repeat.observe_repeat(window, "x", 3, TripReason.REPEAT_OUTPUT, "a") is None
    trip = repeat.observe_repeat(window, "x", 3, TripReason.REPEAT_OUTPUT, "a")
    assert trip is not None and trip.figures["repeats"] == 3


def test_repeat_forgets_what_left_the_window() -> None:
    window: deque[str] = deque(maxlen=3)
    for fingerprint in ["x", "a", "b", "x", "c", "d", "x"]:
        assert repeat.observe_repeat(window, fingerprint, 2, TripReason.REPEAT_OUTPUT, "a") is None


def test_token_allowance_leaves_room_for_the_prompt() -> None:
    allowance = budget.token_allowance(TripReason.BUDGET_TOKENS, 1000, 300, 200, 100, "task t")
    assert allowance.trip is None and allowance.output == 400


def test_token_allowance_trips_when_prompt_does_not_fit() -> None:
    allowance = budget.token_allowance(TripReason.BUDGET_TOKENS, 1000, 900, 0, 100, "task t")
    assert allowance.trip is not None
    assert allowance.trip.reason is TripReason.BUDGET_TOKENS
    assert "100 of 1000 tokens left" in allowance.trip.detail


def test_no_limit_no_bound() -> None:
    assert budget.token_allowance(TripReason.BUDGET_TOKENS, None, 5, 5, 5, "t").output is None
    assert budget.output_cap(50, 1, [budget.Allowance(None)]) == 50


def test_output_cap_takes_the_smallest_and_shares_it_among_choices() -> None:
    allowances = [budget.Allowance(300), budget.Allowance(120), budget.Allowance(None)]
    assert budget.output_cap(None, 1, allowances) == 120
    assert budget.output_cap(50, 1, allowances) == 50
    assert budget.output_cap(None, 4, allowances) == 30


def test_cost_allowance() -> None:
    price = Price(
        model_id="m",
        input_per_token=1e-6,
        output_per_token=4e-6,
        cached_input_per_token=0.5e-6,
        cache_write_per_token=1.25e-6,
    )
    allowance = budget.cost_allowance(0.01, 0.0, 0.0, 1000, price)
    assert allowance.trip is None and allowance.output == 2250
    spent = budget.cost_allowance(0.01, 0.0099, 0.0, 1000, price)
    assert spent.trip is not None and spent.trip.reason is TripReason.BUDGET_COST
    assert budget.cost_allowance(0.01, 5.0, 0.0, 1000, None).output is None


def test_a_trip_reads_the_same_after_a_round_trip_through_json() -> None:
    from proxy.detectors.base import Trip

    trip = limits.check_hops("planner", "critic", 12, 12)
    assert trip is not None
    again = Trip.from_json(trip.to_json())
    assert again == trip
    assert (
        again.detail == "handing off from planner to critic would be hop 13, over the limit of 12"
    )


def test_a_repeat_trip_states_the_configured_window_and_what_it_held() -> None:
    window: deque[str] = deque(maxlen=20)
    trip = None
    for _ in range(3):
        trip = repeat.observe_repeat(window, "x", 3, TripReason.REPEAT_OUTPUT, "planner")
    assert trip is not None
    assert trip.figures["window"] == 20 and trip.figures["seen"] == 3
    assert trip.detail == (
        "agent planner repeated the same output 3 times among the task's last 3 outputs "
        "(window: 20)"
    )
