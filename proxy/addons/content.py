"""Content detection: the loop detectors that read what agents write (cycles, near
duplicates, no progress), run on each completed answer, off the response's path.

They are heuristics over a window, so a kill they decide refuses the task's next call like
any other, and a faulty detector is logged, never breaks traffic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from proxy.pipeline.bus import TripBus
from proxy.pipeline.call import Call, Settlement
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
        if settlement.outcome != "ok" or output is None or not output.text:
            return
        if not call.policy.content_detection:
            return
        detection = asyncio.ensure_future(self._observe(call, output.text))
        self._running.add(detection)
        detection.add_done_callback(self._running.discard)

    async def _observe(self, call: Call, text: str) -> None:
        try:
            reported = await self.ledger.observe_content(call.task, call.agent, text, call.policy)
        except Exception as exc:  # a faulty detector is logged, never breaks traffic
            event("detector_failed", logging.ERROR, task=call.task, error=repr(exc))
            return
        for trip, action in reported:
            self.bus.trip(call.task, call.agent, trip, action, call.tenant)
