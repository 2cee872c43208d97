"""Repeated-output and repeated-request loops: one fingerprint seen too often in a window."""

from __future__ import annotations

from collections import deque
from typing import Any

from proxy.detectors.base import Trip, TripReason
from proxy.detectors.spec import Detector, Figure


def observe_repeat(
    window: deque[str],
    fingerprint: str,
    threshold: int,
    reason: TripReason,
    agent: str,
) -> Trip | None:
    """Append ``fingerprint`` to the bounded ``window`` (a deque with a ``maxlen``: the caller
    keeps memory per task bounded); trip at ``threshold`` occurrences."""
    window.append(fingerprint)
    spec = REPEAT_OUTPUT if reason is TripReason.REPEAT_OUTPUT else REPEAT_REQUEST
    size = window.maxlen if window.maxlen is not None else len(window)
    return window_trip(
        spec, window.count(fingerprint), threshold, size, len(window), agent, fingerprint
    )


def window_trip(
    spec: Detector,
    seen: int,
    threshold: int,
    size: int,
    length: int,
    agent: str,
    fingerprint: str,
) -> Trip | None:
    """A settle-phase detector's verdict on a fingerprint seen ``seen`` times among the
    ``length`` entries its window holds so far (at most ``size``, the configured window)."""
    if seen < threshold:
        return None
    return spec.trip(
        agent=agent,
        repeats=seen,
        threshold=threshold,
        window=size,
        seen=length,
        fingerprint=fingerprint,
    )


def _bounds(policy: Any) -> tuple[int, int]:
    return policy.repeat.threshold, policy.repeat.window


_FIGURES = (
    Figure("agent"),
    Figure("repeats"),
    Figure("threshold"),
    Figure("window"),  # the configured window
    Figure("seen"),  # how many entries the window held when it tripped
    Figure("fingerprint"),
)
REPEAT_OUTPUT = Detector(
    TripReason.REPEAT_OUTPUT,
    "settle",
    "agent {agent} repeated the same output {repeats} times among the task's last {seen} "
    "outputs (window: {window})",
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
    "agent {agent} repeated the same request {repeats} times among its last {seen} requests "
    "(window: {window})",
    _FIGURES,
    settings=("repeat.threshold", "repeat.window"),
    state=("each agent's last request fingerprints",),
    fingerprint="request_fingerprint",
    window="agent",
    bounds=_bounds,
)
