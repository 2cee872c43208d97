"""What the core reads from a provider's JSON answer, what a call cost, and the answers
Tripwire writes itself (a refusal or a broken-off notice in a stream, a blocked answer), each
in the call's wire format through its adapter."""

from __future__ import annotations

import logging
from typing import Any

from proxy import jsonio
from proxy.detectors.base import Trip
from proxy.errors import TokenizerUnavailable, UpstreamError, refused_by
from proxy.pipeline.call import Call, Intervention
from proxy.pricing import Price, cost_usd
from proxy.providers.base import Output, Usage
from proxy.server.intake import SHAPE_ERRORS
from proxy.telemetry.logs import event
from proxy.tokens import estimate_prompt


def read_answer(
    call: Call, ok: bool, content_type: str, data: bytes
) -> tuple[Usage | None, Output | None]:
    """Usage and output from a copy of a JSON answer. The body still reaches the client as
    sent, accounted by what could be read. No usage (None): a successful answer that reported
    none, booked by ``unreported_usage`` once the tokenizer is ready."""
    usage: Usage | None = None
    output: Output | None = None
    modelled = call.info.modelled
    if ok or not modelled:
        parsed = _json_copy(data, content_type)
        if isinstance(parsed, dict):
            try:
                usage = call.adapter.usage_from_body(call.info, parsed)
                if ok and modelled:
                    output = call.adapter.output_from_body(call.info, parsed)
            except SHAPE_ERRORS as exc:
                output = None
                event("unreadable_response", logging.WARNING, error=type(exc).__name__)
    answered = ok and modelled
    if usage is None or (answered and not usage.total):
        # A usage block of nulls or strings reads as none at all; an error answer costs
        # nothing.
        return (None if answered else Usage()), output
    return usage, output


def unreported_usage(call: Call, reserved_tokens: int) -> Usage:
    """A successful answer without usage (a Responses ``background`` call answered
    ``queued``, a batch accepted) may still cost everything the call was allowed: its whole
    reservation (``reserved_tokens``, the prompt estimate plus the cap for every choice) is
    booked as used. No later report of that call reaches Tripwire, so it is never released."""
    # The output the call reserved is what its reservation holds past the prompt.
    reserved_output = max(reserved_tokens - call.prompt_tokens, 0)
    return Usage(input_tokens=prompt_estimate(call), output_tokens=reserved_output)


def prompt_estimate(call: Call) -> int:
    """The prompt's estimate, to book an answer that came without usage: the one the call was
    reserved with, or, for a call no budget needed it for, made now (from the body as it was
    sent, so with whatever an addon added to it)."""
    if not call.estimated:
        try:
            estimate = estimate_prompt(
                call.info.prompt, call.adapter.tokenizer_family(call.info.model)
            )
        except (*SHAPE_ERRORS, TokenizerUnavailable):
            estimate = len(call.raw)  # every token is at least one byte of the body
        # What an addon added to the estimate (an envelope's schema) is in the body now.
        call.prompt_tokens = max(call.prompt_tokens, estimate)
        call.estimated = True
    return call.prompt_tokens


def cost_of(price: Price | None, usage: Usage) -> float:
    if price is None:
        return 0.0
    uncached = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
    return cost_usd(
        price, max(uncached, 0), usage.output_tokens, usage.cached_tokens, usage.cache_write_tokens
    )


def refusal_event(call: Call, trip: Trip, status: int) -> bytes:
    """The event that ends a stream of a task this trip killed."""
    refused = refused_by(trip, call.task, call.agent, status)
    adapter = call.adapter
    return adapter.error_event(
        refused.message, adapter.error_types[refused.kind], f"tripwire_{trip.reason}", call.info
    )


def broken_event(call: Call) -> bytes:
    """The event that ends a stream the provider broke off: a silently truncated stream would
    look complete to the client's SDK."""
    adapter = call.adapter
    return adapter.error_event(
        "the provider's stream broke off before its end",
        adapter.error_types[UpstreamError.kind],
        "upstream_stream_broken",
        call.info,
    )


def blocked_body(call: Call, verdict: Intervention) -> bytes:
    adapter = call.adapter
    error_type, code = adapter.error_types["blocked"], f"tripwire_{verdict.reason}"
    return adapter.error_body(verdict.message, error_type, code)


def blocked_event(call: Call, verdict: Intervention) -> bytes:
    adapter = call.adapter
    error_type, code = adapter.error_types["blocked"], f"tripwire_{verdict.reason}"
    return adapter.error_event(verdict.message, error_type, code, call.info)


def _json_copy(data: bytes, content_type: str) -> Any:
    if "json" not in content_type or not data:
        return None
    try:
        return jsonio.loads(data)
    except (ValueError, RecursionError):
        return None
