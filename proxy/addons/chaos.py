"""Fault injection: Tripwire answers a share of a rule's calls with a provider failure of its own
making, so a team can watch its orchestrator retry, re-plan or give up, in Grafana.

An injected call never reaches the provider, is not charged to its task and is invisible to the
detectors: only ``tripwire_faults_injected_total`` and the call's log line (``fault_injected``)
know it happened. Each fault looks like what the agent's SDK would get through Tripwire from a
failing provider: the provider's error format, its statuses and ``retry-after``, a stream that
starts and then breaks off with an error event. A killed task is never masked: its calls get
their refusal, not a fault.

Chaos is off unless the config sets ``allow_chaos: true`` and a policy rule has a ``chaos:``
section; with either missing, the pipeline holds no ``Chaos`` addon at all.

An addon with one hook: ``request``, which may answer instead of the provider. The bodies and
events of each fault come from the call's adapter, in its wire format.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp
from aiohttp import web

from proxy.config import ChaosSettings, Config, FaultName
from proxy.pipeline.call import Call
from proxy.session.base import Ledger
from proxy.telemetry.logs import event
from proxy.telemetry.record import Telemetry

CHAOS_HEADER = "x-tripwire-chaos"
FAULT_HEADER = "X-Tripwire-Fault"
OUTCOME = "fault_injected"

_STREAM_ONLY: frozenset[str] = frozenset({"stream_stall", "stream_break"})
_YES = frozenset({"1", "true", "yes", "on"})
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
_NOTE = "(fault injected by Tripwire chaos)"
_PARTIAL_TEXT = "Partial answer, "

# fault -> status, the problem as the adapters name it (ERROR_KINDS), code, message
_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "rate_limit": (429, "rate_limited", "rate_limit_exceeded", "Rate limit reached for requests."),
    "server_error": (
        500,
        "internal",
        "server_error",
        "The server had an error while processing your request.",
    ),
    "overloaded": (
        503,
        "overloaded",
        "service_unavailable",
        "The server is overloaded or not ready yet.",
    ),
    "timeout": (504, "timeout", "upstream_timeout", "The provider did not answer in time."),
    "broken": (
        200,
        "upstream",
        "upstream_stream_broken",
        "The provider's stream broke off before its end.",
    ),
}


def wanted_faults(header: str | None, faults: tuple[FaultName, ...]) -> tuple[FaultName, ...]:
    """The faults a request's ``X-Tripwire-Chaos`` header asks for: all of the rule's for a
    yes, the ones it names otherwise (``rate_limit,timeout``), none for anything else."""
    if header is None:
        return ()
    value = header.strip().lower()
    if value in _YES:
        return faults
    named = {name.strip() for name in value.split(",")}
    return tuple(fault for fault in faults if fault in named)


class Chaos:
    name = "chaos"

    def __init__(
        self,
        ledger: Ledger,
        telemetry: Telemetry,
        rng: random.Random | None = None,
    ) -> None:
        self.ledger = ledger
        self.telemetry = telemetry
        self.rng = rng or random.Random()

    @classmethod
    def from_config(cls, config: Config, ledger: Ledger, telemetry: Telemetry) -> Chaos | None:
        if not config.allow_chaos or all(rule.chaos is None for rule in config.policy.rules):
            return None
        return cls(ledger, telemetry)

    async def request(self, call: Call) -> web.StreamResponse | None:
        """The injected answer to this call, or None to let it through untouched."""
        info = call.info
        if not info.modelled:
            return None
        settings = call.policy.chaos
        if settings is None or settings.probability <= 0:
            return None
        faults = settings.faults
        if settings.header_opt_in:
            # Only a rule that asks for the header lets a request choose: elsewhere the rule
            # applies whatever the client sends, so a client cannot opt out of a drill.
            faults = wanted_faults(call.request.headers.get(CHAOS_HEADER), faults)
        if not info.stream:
            faults = tuple(fault for fault in faults if fault not in _STREAM_ONLY)
        if not faults or self.rng.random() >= settings.probability:
            return None
        try:
            view = await self.ledger.get(call.task)
        except Exception:
            return None  # the state store decides: the call takes its normal path
        if view is not None and view.killed is not None:
            return None
        fault = self.rng.choice(faults)
        return await self._answer(call, settings, fault)

    async def _answer(
        self, call: Call, settings: ChaosSettings, fault: FaultName
    ) -> web.StreamResponse:
        headers = {
            FAULT_HEADER: fault,
            "X-Tripwire-Task": call.task,
            "X-Tripwire-Agent": call.agent,
        }
        streamed = fault in _STREAM_ONLY or (fault == "malformed" and call.info.stream)
        self._record(call, fault, 200 if streamed or fault == "malformed" else _ERRORS[fault][0])
        if fault == "malformed" and not call.info.stream:
            return web.Response(
                body=call.adapter.malformed_body(call.info),
                headers={**headers, "Content-Type": "application/json"},
            )
        if streamed:
            return await self._stream(call, settings, fault, headers)
        if fault == "timeout":
            await asyncio.sleep(settings.stall)
        status, kind, code, message = _ERRORS[fault]
        if status in (429, 503):
            headers["retry-after"] = str(settings.retry_after)
        headers["Content-Type"] = "application/json"
        adapter = call.adapter
        return web.Response(
            status=status,
            body=adapter.error_body(f"{message} {_NOTE}", adapter.error_types[kind], code),
            headers=headers,
        )

    async def _stream(
        self, call: Call, settings: ChaosSettings, fault: FaultName, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                **headers,
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        try:
            adapter, info = call.adapter, call.info
            await response.prepare(call.request)
            await response.write(adapter.partial_stream(info, _PARTIAL_TEXT))
            if fault == "malformed":
                await response.write(adapter.malformed_event(info))
            else:
                if fault == "stream_stall":
                    await asyncio.sleep(settings.stall)
                _, kind, code, message = _ERRORS["broken"]
                await response.write(
                    adapter.error_event(f"{message} {_NOTE}", adapter.error_types[kind], code, info)
                )
            await response.write_eof()
        except _CLIENT_GONE:
            pass  # the client gave up on the stream first, as clients of a stalled one do
        return response

    def _record(self, call: Call, fault: str, status: int) -> None:
        metrics = self.telemetry.metrics
        metrics.faults_injected.labels(fault).inc()
        metrics.call(call.upstream_name, call.info.model, call.agent, OUTCOME)
        # Logged even with logging.calls off: an injected fault must be traceable.
        event(
            "call",
            logging.INFO,
            task=call.task,
            agent=call.agent,
            upstream=call.upstream_name,
            model=call.info.model,
            outcome=OUTCOME,
            status=status,
            fault_injected=fault,
            input_tokens=0,
            output_tokens=0,
            cached_tokens=0,
            cost_usd=0.0,
            latency_ms=0.0,
            overhead_ms=round((time.perf_counter() - call.started) * 1000, 3),
        )
