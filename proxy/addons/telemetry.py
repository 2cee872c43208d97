"""Call telemetry: the metrics and the ``call`` log line of every call, the task's figures,
refusals and cut streams. Trips reach metrics and logs through the trip bus
(``Telemetry.on_trip``), not through here."""

from __future__ import annotations

import time

from proxy.detectors.base import Trip
from proxy.errors import Refused, TripwireError, refusal_reason
from proxy.pipeline.call import Call, Settlement
from proxy.telemetry.record import CallRecord, Telemetry


class CallTelemetry:
    name = "telemetry"

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def settled(self, call: Call, settlement: Settlement) -> None:
        view = settlement.ledger.view
        self.telemetry.task(call.task, view.tokens_used, view.calls, view.hops, view.cost_usd)
        usage = settlement.usage
        now = time.perf_counter()
        received = settlement.received or now
        self.telemetry.call(
            CallRecord(
                call.task,
                call.agent,
                call.upstream_name,
                call.info.model,
                settlement.outcome,
                settlement.status,
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_tokens,
                settlement.cost_usd,
                received - call.sent,  # latency
                (call.headers_at or now) - call.sent,  # time to first byte
                (call.sent - call.started) + (now - received),  # overhead
            )
        )

    def refused(self, call: Call, error: TripwireError) -> None:
        reason = refusal_reason(error)
        outcome = "refused" if isinstance(error, Refused) else reason
        self.telemetry.refused(reason)
        self.telemetry.call(
            CallRecord(
                call.task,
                call.agent,
                call.upstream_name,
                call.info.model,
                outcome,
                error.status,
                overhead_s=time.perf_counter() - call.started,
                forwarded=False,
            )
        )

    def stream_ended(self, call: Call, cut: Trip | None) -> None:
        if cut is not None:
            self.telemetry.stream_cut(str(cut.reason))
