"""Repeated-output and repeated-request loops: one fingerprint seen too often in a window."""

from __future__ import annotations

from collections.abc import MutableSequence

from proxy.detectors.base import Trip, TripReason


def repeat_trip(
    seen: int, threshold: int, window: int, reason: TripReason, agent: str, fingerprint: str
) -> Trip | None:
    """The verdict on a fingerprint seen ``seen`` times among the last ``window`` entries."""
    if seen < threshold:
        return None
    return Trip(
        reason,
        {
            "agent": agent,
            "repeats": seen,
            "threshold": threshold,
            "window": window,
            "fingerprint": fingerprint,
        },
    )


def observe_repeat(
    window: MutableSequence[str],
    fingerprint: str,
    threshold: int,
    reason: TripReason,
    agent: str,
) -> Trip | None:
    """Append ``fingerprint`` to the bounded ``window``; trip at ``threshold`` occurrences.

    The window is the caller's, which the caller keeps bounded, so memory per task stays
    bounded.
    """
    window.append(fingerprint)
    return repeat_trip(
        window.count(fingerprint), threshold, len(window), reason, agent, fingerprint
    )
