"""Content detection: the loop detectors that read what agents write (cycles, near
duplicates, no progress, tool-call loops), run on each completed answer, off the response's
path. The tool results the request carries are evidence of change for them.

They are heuristics over a window, so a kill they decide refuses the task's next call like
any other, and a faulty detector is logged, never breaks traffic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from proxy.detectors.toolresults import tool_results
from proxy.pipeline.bus import TripBus
from proxy.pipeline.call import Call, Settlement
from proxy.providers.base import Output
from proxy.session.base import Ledger
from proxy.telemetry.logs import event


class ContentDetection:
    name = "content_detection"

    def __init__(self, ledger: Ledger, bus: TripBus) -> None:
        self.ledger = ledger
        self.bus = bus
        self._running: set[asyncio.Future[Any]] = set()

    def settled(self, call: Call, settlement: Settlement) -> None:
        output = settlement.output
        if settlement.outcome != "ok" or output is None:
            return
        if not (output.text or output.tool_calls) or not call.policy.content_detection:
            return
        detection = asyncio.ensure_future(self._observe(call, output))
        self._running.add(detection)
        detection.add_done_callback(self._running.discard)

    async def _observe(self, call: Call, output: Output) -> None:
        try:
            results = tool_results(call.body) if call.body is not None else []
            reported = await self.ledger.observe_content(
                call.task, call.agent, output.text, call.policy, output.tool_calls, results
            )
        except Exception as exc:  # a faulty detector is logged, never breaks traffic
            event("detector_failed", logging.ERROR, task=call.task, error=repr(exc))
            return
        for trip, action in reported:
            self.bus.trip(call.task, call.agent, trip, action, call.tenant)
