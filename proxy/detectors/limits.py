"""Counting limits checked before a call is forwarded: the deadline, calls and hops."""

from __future__ import annotations

from proxy.detectors.base import Trip, TripReason
from proxy.detectors.spec import NO_BOUND, Allowance, Detector, Figure, Reservation


def hops_after(last_agent: str | None, agent: str, hops: int) -> int:
    """A hop is a call whose agent differs from the previous call's agent in the same task."""
    return hops + 1 if last_agent is not None and last_agent != agent else hops


def check_deadline(started: float, now: float, max_duration: float | None) -> Trip | None:
    if max_duration is None or now - started <= max_duration:
        return None
    return DEADLINE.trip(elapsed_s=now - started, max_duration_s=max_duration)


def check_calls(calls_so_far: int, max_calls: int | None) -> Trip | None:
    if max_calls is None or calls_so_far + 1 <= max_calls:
        return None
    return MAX_CALLS.trip(calls=calls_so_far, max_calls=max_calls)


def check_hops(last_agent: str | None, agent: str, hops: int, max_hops: int | None) -> Trip | None:
    after = hops_after(last_agent, agent, hops)
    if max_hops is None or after <= max_hops:
        return None
    return MAX_HOPS.trip(hops=after, max_hops=max_hops, from_agent=last_agent, to_agent=agent)


# The reserve-phase forms the ledgers iterate (see registry.py).


def _deadline(r: Reservation) -> Allowance:
    trip = check_deadline(r.started, r.now, r.max_duration)
    return NO_BOUND if trip is None else Allowance(None, trip)


def _calls(r: Reservation) -> Allowance:
    trip = check_calls(r.calls, r.limits.max_calls)
    return NO_BOUND if trip is None else Allowance(None, trip)


def _hops(r: Reservation) -> Allowance:
    trip = check_hops(r.last_agent, r.agent, r.hops, r.limits.max_hops)
    return NO_BOUND if trip is None else Allowance(None, trip)


DEADLINE = Detector(
    TripReason.DEADLINE,
    "reserve",
    "the task ran {elapsed_s:.0f}s, past its deadline of {max_duration_s:.0f}s",
    (Figure("elapsed_s", decimals=3), Figure("max_duration_s", decimals=3)),
    settings=("limits.max_duration",),
    state=("started", "extra_duration"),
    check=_deadline,
    lua="""
if max_duration and now - started > max_duration then
  add(trip_deadline(now - started, max_duration))
end
""",
)

MAX_CALLS = Detector(
    TripReason.MAX_CALLS,
    "reserve",
    "the task reached its limit of {max_calls} calls",
    (Figure("calls"), Figure("max_calls")),
    settings=("limits.max_calls",),
    state=("calls",),
    check=_calls,
    lua="""
if max_calls and calls + 1 > max_calls then add(trip_max_calls(calls, max_calls)) end
""",
)

MAX_HOPS = Detector(
    TripReason.MAX_HOPS,
    "reserve",
    "handing off from {from_agent} to {to_agent} would be hop {hops}, over the limit of {max_hops}",
    # A task whose hop limit was lowered below its hops trips before any previous agent is
    # known only in theory; the figure is then left out, never written as "None".
    (Figure("hops"), Figure("max_hops"), Figure("from_agent", optional=True), Figure("to_agent")),
    settings=("limits.max_hops",),
    state=("hops", "last_agent"),
    absent={"from_agent": "no previous agent"},
    check=_hops,
    lua="""
if max_hops and new_hops > max_hops then
  add(trip_max_hops(new_hops, max_hops, last_agent, caller))
end
""",
)
