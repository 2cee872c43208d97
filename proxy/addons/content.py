"""Content detection: the loop detectors that read what agents write (cycles, near
duplicates, no progress, tool-call loops), run on each completed answer, off the response's
path. The tool results the request carries are evidence of change for them.

They are heuristics over a window, so a kill they decide refuses the task's next call like
any other, and a faulty detector is logged, never breaks traffic. A detection that may kill
is waited for: a call of its task that arrives while it still runs (the client answered at
once, or the detectors run behind a round trip to Redis) is reserved only after its verdict.

With the embedded ledger the detectors need no I/O, so they run as plain callbacks: every
completion settled in one turn of the event loop is observed in the next, once the answers
are out, in order. A call of a task with a may-kill detection still queued runs the queue at
once instead of waiting for it. On Redis, each detection is a task of its own that awaits the
state store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from typing import Any

from aiohttp import web

from proxy.detectors.base import Trip
from proxy.detectors.toolresults import tool_results
from proxy.pipeline.bus import TripBus
from proxy.pipeline.call import Call, Settlement
from proxy.policy.rules import Effective
from proxy.providers.base import Output
from proxy.session.base import Ledger, ObserveContentNow
from proxy.telemetry.logs import event

# How long a call waits for its task's detections at most: a stuck state store must not hold
# the task's calls for longer than its own timeouts would.
WAIT_S = 10.0


def may_kill(policy: Effective) -> bool:
    """Whether a content detector of this policy kills when it trips."""
    return policy.content_may_kill


class ContentDetection:
    name = "content_detection"

    def __init__(self, ledger: Ledger, bus: TripBus) -> None:
        self.ledger = ledger
        self.bus = bus
        self._running: set[asyncio.Future[Any]] = set()
        # Per task, its detections in flight that may kill it: bounded by the calls in flight.
        self._deciding: dict[str, set[asyncio.Future[Any]]] = {}
        # In-process detection: the completions settled since the last turn of the event loop,
        # and per task how many of them may kill it.
        self._queued: deque[tuple[Call, Output, ObserveContentNow]] = deque()
        self._undecided: dict[str, int] = {}
        self._drain_scheduled = False

    async def request(self, call: Call) -> web.StreamResponse | None:
        if call.task in self._undecided:
            self._drain()
        deciding = self._deciding.get(call.task)
        if deciding:
            await asyncio.wait(list(deciding), timeout=WAIT_S)
        return None

    def settled(self, call: Call, settlement: Settlement) -> None:
        output = settlement.output
        if settlement.outcome != "ok" or output is None:
            return
        if not (output.text or output.tool_calls) or not call.policy.content_detection:
            return
        observe = self.ledger.observe_content_now
        if observe is not None:
            self._queue(call, output, observe)
            return
        detection = asyncio.ensure_future(self._observe(call, output))
        self._running.add(detection)
        detection.add_done_callback(self._running.discard)
        if may_kill(call.policy):
            self._deciding.setdefault(call.task, set()).add(detection)
            detection.add_done_callback(functools.partial(self._decided, call.task))

    def _decided(self, task: str, detection: asyncio.Future[Any]) -> None:
        deciding = self._deciding.get(task)
        if deciding is not None:
            deciding.discard(detection)
            if not deciding:
                del self._deciding[task]

    def _queue(self, call: Call, output: Output, observe: ObserveContentNow) -> None:
        """Observed in the event loop's next turn: a task per completion would cost more than
        the detectors themselves."""
        if not self._drain_scheduled:
            asyncio.get_running_loop().call_soon(self._drain)
            self._drain_scheduled = True
        self._queued.append((call, output, observe))
        if may_kill(call.policy):
            self._undecided[call.task] = self._undecided.get(call.task, 0) + 1

    def _drain(self) -> None:
        self._drain_scheduled = False
        queued, undecided = self._queued, self._undecided
        while queued:
            call, output, observe = queued.popleft()
            if may_kill(call.policy):
                left = undecided[call.task] - 1
                if left:
                    undecided[call.task] = left
                else:
                    del undecided[call.task]
            try:
                results = tool_results(call.body) if call.body is not None else []
                reported = observe(
                    call.task, call.agent, output.text, call.policy, output.tool_calls, results
                )
            except Exception as exc:  # a faulty detector is logged, never breaks traffic
                event("detector_failed", logging.ERROR, task=call.task, error=repr(exc))
                continue
            self._report(call, reported)

    async def _observe(self, call: Call, output: Output) -> None:
        try:
            results = tool_results(call.body) if call.body is not None else []
            reported = await self.ledger.observe_content(
                call.task, call.agent, output.text, call.policy, output.tool_calls, results
            )
        except Exception as exc:  # a faulty detector is logged, never breaks traffic
            event("detector_failed", logging.ERROR, task=call.task, error=repr(exc))
            return
        self._report(call, reported)

    def _report(self, call: Call, reported: list[tuple[Trip, str]]) -> None:
        for trip, action in reported:
            self.bus.trip(call.task, call.agent, trip, action, call.tenant)
