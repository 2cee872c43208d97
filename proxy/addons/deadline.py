"""The task's deadline, on a stream: when ``max_duration`` runs out mid-stream, the stream is
cut and the task killed, rather than waiting for the stream's end to find out.

A JSON call needs no timer: the ledger checks the deadline when the call is reserved and
settled. Only a policy that kills arms the timer; in shadow mode the stream runs on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from proxy.detectors import limits
from proxy.detectors.base import Trip
from proxy.pipeline.bus import TripBus
from proxy.pipeline.call import Call
from proxy.session.base import Grant, Ledger

_KEY = "deadline"


class Deadline:
    name = "deadline"

    def __init__(self, ledger: Ledger, bus: TripBus) -> None:
        self.ledger = ledger
        self.bus = bus
        self._kills: set[asyncio.Future[bool]] = set()

    def stream_started(self, call: Call, grant: Grant, cut: Callable[[Trip], None]) -> None:
        limit = grant.policy.limits.max_duration
        if limit is None or grant.policy.on_trip != "kill":
            return
        started = grant.view.started

        def expire() -> None:
            trip = limits.check_deadline(started, max(time.time(), started + limit + 1e-3), limit)
            assert trip is not None
            cut(trip)
            kill = asyncio.ensure_future(self.ledger.kill(call.task, trip))
            self._kills.add(kill)
            kill.add_done_callback(lambda done: self._killed(call, trip, done))

        delay = max(started + limit - time.time(), 0.0)
        call.notes[_KEY] = asyncio.get_running_loop().call_later(delay, expire)

    def stream_ended(self, call: Call, cut: Trip | None) -> None:
        timer = call.notes.pop(_KEY, None)
        if timer is not None:
            timer.cancel()

    def _killed(self, call: Call, trip: Trip, done: asyncio.Future[bool]) -> None:
        self._kills.discard(done)
        if not done.cancelled() and done.exception() is None and done.result():
            self.bus.trip(call.task, call.agent, trip, "kill", call.tenant)
