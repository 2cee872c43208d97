"""Repeated-output and repeated-request loops: one fingerprint seen too often in a window."""

from __future__ import annotations

from collections.abc import MutableSequence
from typing import Any

from proxy.detectors.base import Trip, TripReason
from proxy.detectors.spec import Detector, Figure


def repeat_trip(
    seen: int, threshold: int, window: int, reason: TripReason, agent: str, fingerprint: str
) -> Trip | None:
    """The verdict on a fingerprint seen ``seen`` times among the last ``window`` entries."""
    if seen < threshold:
        return None
    spec = REPEAT_OUTPUT if reason is TripReason.REPEAT_OUTPUT else REPEAT_REQUEST
    return spec.trip(
        agent=agent, repeats=seen, threshold=threshold, window=window, fingerprint=fingerprint
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


def window_trip(
    spec: Detector, seen: int, threshold: int, window: int, agent: str, fingerprint: str
) -> Trip | None:
    """A settle-phase detector's verdict on a fingerprint seen ``seen`` times in its window."""
    if seen < threshold:
        return None
    return spec.trip(
        agent=agent, repeats=seen, threshold=threshold, window=window, fingerprint=fingerprint
    )


def _bounds(policy: Any) -> tuple[int, int]:
    return policy.repeat.threshold, policy.repeat.window


_FIGURES = (
    Figure("agent"),
    Figure("repeats"),
    Figure("threshold"),
    Figure("window"),
    Figure("fingerprint"),
)
REPEAT_OUTPUT = Detector(
    TripReason.REPEAT_OUTPUT,
    "settle",
    "agent {agent} repeated the same output {repeats} times within the task's last "
    "{window} outputs",
    _FIGURES,
    settings=("repeat.threshold", "repeat.window"),
    state=("the task's last output fingerprints",),
    fingerprint="output_fingerprint",
    window="task",
    bounds=_bounds,
)
REPEAT_REQUEST = Detector(
    TripReason.REPEAT_REQUEST,
    "settle",
    "agent {agent} repeated the same request {repeats} times within its last {window} requests",
    _FIGURES,
    settings=("repeat.threshold", "repeat.window"),
    state=("each agent's last request fingerprints",),
    fingerprint="request_fingerprint",
    window="agent",
    bounds=_bounds,
)
