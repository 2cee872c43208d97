"""The task's deadline, on a stream: when the task's time runs out mid-stream, the stream is
cut and the task killed, rather than waiting for the stream's end to find out.

The deadline is the task's, read from the ledger: its own ``max_duration`` (set when it was
created or resumed) over the policy's, plus every ``extend``. The timer starts from the one the
call's reservation read (the grant's view), and reads it again whenever it would fire (and at
least every ``RECHECK_S``), so an operator who extends or resumes a task moves the deadline of
the stream already running.

A JSON call needs no timer: the ledger checks the deadline when the call is reserved and
settled. Only a policy that kills arms the timer; in shadow mode the stream runs on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from proxy.detectors import limits
from proxy.detectors.base import Trip
from proxy.pipeline.bus import TripBus
from proxy.pipeline.call import Call
from proxy.session.base import Grant, Ledger, allowed_seconds
from proxy.telemetry.logs import event

_KEY = "deadline"
# A deadline far off is read again this often: an operator may also have shortened it.
RECHECK_S = 5.0


class Deadline:
    name = "deadline"

    def __init__(self, ledger: Ledger, bus: TripBus) -> None:
        self.ledger = ledger
        self.bus = bus
        self._kills: set[asyncio.Future[bool]] = set()

    def stream_started(self, call: Call, grant: Grant, cut: Callable[[Trip], None]) -> None:
        if grant.policy.on_trip != "kill":
            return
        view = grant.view
        allowed_s = allowed_seconds(
            view.overrides, view.extra_duration, grant.policy.limits.max_duration
        )
        left = None if allowed_s is None else view.started + allowed_s - time.time()
        # Most streams end long before their deadline: a timer until one is due, not a task.
        loop = asyncio.get_running_loop()
        call.notes[_KEY] = loop.call_later(_wait(left), self._due, call, grant, cut)

    def stream_ended(self, call: Call, cut: Trip | None) -> None:
        timer = call.notes.pop(_KEY, None)
        if timer is not None:
            timer.cancel()

    def _due(self, call: Call, grant: Grant, cut: Callable[[Trip], None]) -> None:
        call.notes[_KEY] = asyncio.ensure_future(self._watch(call, grant, cut))

    async def _read(self, call: Call, grant: Grant) -> tuple[float, float] | None:
        policy_limit = grant.policy.limits.max_duration
        try:
            return await self.ledger.deadline(call.task, policy_limit)
        except Exception as exc:  # the state store is away: the deadline the call was given
            event("deadline_unread", logging.WARNING, task=call.task, error=type(exc).__name__)
            return (grant.view.started, policy_limit) if policy_limit else None

    async def _watch(self, call: Call, grant: Grant, cut: Callable[[Trip], None]) -> None:
        """The deadline as the ledger has it now, until it passes (an operator may have moved
        it since the call was reserved)."""
        while True:
            deadline = await self._read(call, grant)
            if deadline is None:
                await asyncio.sleep(RECHECK_S)  # a resume may give the task a limit
                continue
            started, allowed = deadline
            left = started + allowed - time.time()
            if left > 0:
                await asyncio.sleep(_wait(left))
                continue
            trip = limits.check_deadline(
                started, max(time.time(), started + allowed + 1e-3), allowed
            )
            assert trip is not None
            cut(trip)
            # The kill outlives the stream: the stream's end cancels this watch, not the kill.
            kill = asyncio.ensure_future(self.ledger.kill(call.task, trip))
            self._kills.add(kill)
            kill.add_done_callback(functools.partial(self._killed, call, trip))
            return

    def _killed(self, call: Call, trip: Trip, done: asyncio.Future[bool]) -> None:
        self._kills.discard(done)
        if not done.cancelled() and done.exception() is None and done.result():
            self.bus.trip(call.task, call.agent, trip, "kill", call.tenant)


def _wait(left: float | None) -> float:
    """How long to wait before reading the deadline again: until just after it, at most
    ``RECHECK_S``; without one, ``RECHECK_S``."""
    return RECHECK_S if left is None else max(min(left + 1e-3, RECHECK_S), 0)
