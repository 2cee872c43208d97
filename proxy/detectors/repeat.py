"""Repeated-output and repeated-request loops: one fingerprint seen too often in a window."""

from __future__ import annotations

from collections import deque

from proxy.detectors.base import Trip, TripReason


def observe_repeat(
    window: deque[str], fingerprint: str, threshold: int, reason: TripReason, agent: str
) -> Trip | None:
    """Append ``fingerprint`` to the bounded ``window``; trip at ``threshold`` occurrences.

    The window is the caller's (a ``deque`` with ``maxlen``), so memory per task stays bounded.
    """
    window.append(fingerprint)
    seen = window.count(fingerprint)
    if seen < threshold:
        return None
    what = "output" if reason is TripReason.REPEAT_OUTPUT else "request"
    scope = "the task's" if reason is TripReason.REPEAT_OUTPUT else "its"
    return Trip(
        reason,
        f"agent {agent} repeated the same {what} {seen} times within {scope} last "
        f"{len(window)} {what}s",
        {
            "repeats": seen,
            "threshold": threshold,
            "window": len(window),
            "fingerprint": fingerprint,
        },
    )
