"""Counting limits checked before a call is forwarded: calls, hops and the deadline."""

from __future__ import annotations

from proxy.detectors.base import Trip, TripReason


def check_calls(calls_so_far: int, max_calls: int | None) -> Trip | None:
    if max_calls is None or calls_so_far + 1 <= max_calls:
        return None
    return Trip(TripReason.MAX_CALLS, {"calls": calls_so_far, "max_calls": max_calls})


def hops_after(last_agent: str | None, agent: str, hops: int) -> int:
    """A hop is a call whose agent differs from the previous call's agent in the same task."""
    return hops + 1 if last_agent is not None and last_agent != agent else hops


def check_hops(last_agent: str | None, agent: str, hops: int, max_hops: int | None) -> Trip | None:
    after = hops_after(last_agent, agent, hops)
    if max_hops is None or after <= max_hops:
        return None
    return Trip(
        TripReason.MAX_HOPS,
        {"hops": after, "max_hops": max_hops, "from_agent": str(last_agent), "to_agent": agent},
    )


def check_deadline(started: float, now: float, max_duration: float | None) -> Trip | None:
    if max_duration is None or now - started <= max_duration:
        return None
    return Trip(
        TripReason.DEADLINE,
        {"elapsed_s": round(now - started, 3), "max_duration_s": max_duration},
    )
