"""Work that does not decide an answer (a call's metrics and log line), done once the answer
is out: queued where the call ends, and run by the event loop right after the handler that
queued it has written its response, all that is waiting in one go.

The queue is bounded: under a load the loop cannot keep up with, what does not fit is dropped
and counted (``tripwire_telemetry_dropped_total``) rather than held.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from proxy.telemetry.logs import event

# A loop turn runs every handler that was ready; their calls' telemetry waits at most that long.
MAX_WAITING = 10_000


class Backlog:
    __slots__ = ("_drain_scheduled", "_dropped", "_waiting", "limit")

    def __init__(self, dropped: Callable[[], None], limit: int = MAX_WAITING) -> None:
        self.limit = limit
        self._dropped = dropped
        self._waiting: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._drain_scheduled = False

    def later(self, work: Callable[..., None], *args: Any) -> None:
        """``work(*args)`` once the running handler has written its answer; at once outside an
        event loop."""
        if not self._drain_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._run(work, args)
                return
            loop.call_soon(self.drain)
            self._drain_scheduled = True
        if len(self._waiting) >= self.limit:
            self._dropped()
            return
        self._waiting.append((work, args))

    def drain(self) -> None:
        """Everything waiting, in the order it was queued."""
        self._drain_scheduled = False
        waiting = self._waiting
        while waiting:
            work, args = waiting.popleft()
            self._run(work, args)

    def __len__(self) -> int:
        return len(self._waiting)

    @staticmethod
    def _run(work: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            work(*args)
        except Exception as exc:  # telemetry must never break traffic
            event("telemetry_failed", logging.ERROR, error=repr(exc))
