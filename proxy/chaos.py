"""Fault injection: Tripwire answers a share of a rule's calls with a provider failure of its own
making, so a team can watch its orchestrator retry, re-plan or give up, in Grafana.

An injected call never reaches the provider, is not charged to its task and is invisible to the
detectors: only ``tripwire_faults_injected_total`` and the call's log line (``fault_injected``)
know it happened. Each fault looks like what the agent's SDK would get through Tripwire from a
failing provider: the provider's error format, its statuses and ``retry-after``, a stream that
starts and then breaks off with an error event. A killed task is never masked: its calls get
their refusal, not a fault.

Chaos is off unless the config sets ``allow_chaos: true`` and a policy rule has a ``chaos:``
section; with either missing, the forwarder holds no ``Chaos`` at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from proxy.config import ChaosSettings, Config, FaultName
from proxy.policy.rules import PolicyBook
from proxy.providers import Adapter, CallInfo
from proxy.session.base import Ledger
from proxy.telemetry.logs import event
from proxy.telemetry.record import Telemetry

if TYPE_CHECKING:
    from proxy.server.forward import Call

CHAOS_HEADER = "x-tripwire-chaos"
FAULT_HEADER = "X-Tripwire-Fault"
OUTCOME = "fault_injected"

_KINDS = frozenset({"chat", "responses", "messages"})
_STREAM_ONLY: frozenset[str] = frozenset({"stream_stall", "stream_break"})
_YES = frozenset({"1", "true", "yes", "on"})
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
_NOTE = "(fault injected by Tripwire chaos)"

# fault -> status, OpenAI error type and code, Anthropic error type, message
_ERRORS: dict[str, tuple[int, str, str, str, str]] = {
    "rate_limit": (
        429,
        "requests",
        "rate_limit_exceeded",
        "rate_limit_error",
        "Rate limit reached for requests.",
    ),
    "server_error": (
        500,
        "server_error",
        "server_error",
        "api_error",
        "The server had an error while processing your request.",
    ),
    "overloaded": (
        503,
        "server_error",
        "service_unavailable",
        "overloaded_error",
        "The server is overloaded or not ready yet.",
    ),
    "timeout": (
        504,
        "server_error",
        "upstream_timeout",
        "timeout_error",
        "The provider did not answer in time.",
    ),
    "broken": (
        200,
        "server_error",
        "upstream_stream_broken",
        "api_error",
        "The provider's stream broke off before its end.",
    ),
}

# A body cut inside a string: no JSON parser accepts it.
_MALFORMED_BODY = {
    "chat": b'{"id": "chatcmpl-chaos", "object": "chat.completion", "choices": [{"index": 0, '
    b'"message": {"role": "assistant", "content": "Partial',
    "responses": b'{"id": "resp_chaos", "object": "response", "status": "completed", '
    b'"output": [{"type": "message", "content": [{"type": "output_text", "text": "Partial',
    "messages": b'{"id": "msg_chaos", "type": "message", "role": "assistant", '
    b'"content": [{"type": "text", "text": "Partial',
}
_PARTIAL_TEXT = "Partial answer, "


def _sse(payload: dict[str, object], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


def _opening(info: CallInfo) -> bytes:
    """The first events of a stream in the call's format, up to some text: what a client has
    seen when a real stream breaks off mid-way."""
    model, now = info.model, int(time.time())
    if info.kind == "chat":
        chunk = {"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "created": now}
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        text = {"index": 0, "delta": {"content": _PARTIAL_TEXT}, "finish_reason": None}
        return _sse({**chunk, "model": model, "choices": [first]}) + _sse(
            {**chunk, "model": model, "choices": [text]}
        )
    if info.kind == "responses":
        response = {
            "id": "resp_chaos",
            "object": "response",
            "created_at": now,
            "status": "in_progress",
            "model": model,
            "output": [],
        }
        item = {
            "id": "msg_chaos",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        at = {"item_id": "msg_chaos", "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": []}
        events: list[tuple[str, dict[str, object]]] = [
            ("response.created", {"response": response}),
            ("response.output_item.added", {"output_index": 0, "item": item}),
            ("response.content_part.added", {**at, "part": part}),
            ("response.output_text.delta", {**at, "delta": _PARTIAL_TEXT}),
        ]
        return b"".join(
            _sse({"type": name, "sequence_number": number, **fields}, name)
            for number, (name, fields) in enumerate(events)
        )
    message: dict[str, object] = {
        "id": "msg_chaos",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": _PARTIAL_TEXT},
    }
    return (
        _sse({"type": "message_start", "message": message}, "message_start")
        + _sse(block, "content_block_start")
        + _sse(delta, "content_block_delta")
    )


def _malformed_event(info: CallInfo) -> bytes:
    if info.kind == "chat":
        return b'data: {"id": "chatcmpl-chaos", "choices": [{"delta": {"content": "Parti\n\n'
    if info.kind == "responses":
        return b'event: response.output_text.delta\ndata: {"type": "response.output_text.de\n\n'
    return b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n'


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
    def __init__(
        self,
        policy: PolicyBook,
        ledger: Ledger,
        telemetry: Telemetry,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.ledger = ledger
        self.telemetry = telemetry
        self.rng = rng or random.Random()

    @classmethod
    def from_config(
        cls, config: Config, policy: PolicyBook, ledger: Ledger, telemetry: Telemetry
    ) -> Chaos | None:
        if not config.allow_chaos or all(rule.chaos is None for rule in config.policy.rules):
            return None
        return cls(policy, ledger, telemetry)

    async def inject(self, call: Call) -> web.StreamResponse | None:
        """The injected answer to this call, or None to let it through untouched."""
        info = call.info
        if info.kind not in _KINDS:
            return None
        settings = self.policy.resolve(call.task, call.agent).chaos
        if settings is None or settings.probability <= 0:
            return None
        header = call.request.headers.get(CHAOS_HEADER)
        faults = settings.faults
        if header is not None:
            faults = wanted_faults(header, faults)
        elif settings.header_opt_in:
            return None
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
                body=_MALFORMED_BODY[call.info.kind],
                headers={**headers, "Content-Type": "application/json"},
            )
        if streamed:
            return await self._stream(call, settings, fault, headers)
        if fault == "timeout":
            await asyncio.sleep(settings.stall)
        status, openai_type, code, anthropic_type, message = _ERRORS[fault]
        if status in (429, 503):
            headers["retry-after"] = str(settings.retry_after)
        headers["Content-Type"] = "application/json"
        return web.Response(
            status=status,
            body=_error_body(call.adapter, message, openai_type, anthropic_type, code),
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
            await response.prepare(call.request)
            await response.write(_opening(call.info))
            if fault == "malformed":
                await response.write(_malformed_event(call.info))
            else:
                if fault == "stream_stall":
                    await asyncio.sleep(settings.stall)
                _, openai_type, code, anthropic_type, message = _ERRORS["broken"]
                kind = anthropic_type if call.adapter.name == "anthropic" else openai_type
                await response.write(
                    call.adapter.error_event(f"{message} {_NOTE}", kind, code, call.info)
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


def _error_body(
    adapter: Adapter, message: str, openai_type: str, anthropic_type: str, code: str
) -> bytes:
    kind = anthropic_type if adapter.name == "anthropic" else openai_type
    return adapter.error_body(f"{message} {_NOTE}", kind, code)
