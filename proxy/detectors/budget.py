"""Budgets checked before forwarding: does the prompt fit, and how much output is left.

Every budget answers the same question: given what is used and reserved, how many output
tokens may this call still produce? The smallest answer becomes the call's output cap.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from proxy.detectors.base import Trip, TripReason
from proxy.pricing import Price, max_output_for


@dataclass(frozen=True, slots=True)
class Allowance:
    """Output tokens a budget still allows this call (None: this budget sets no bound)."""

    output: int | None
    trip: Trip | None = None
    # The budget is not spent, only held by calls in flight: wait for them, do not kill.
    busy: bool = False


def token_allowance(
    reason: TripReason, limit: int | None, used: int, reserved: int, prompt: int, scope: str
) -> Allowance:
    if limit is None:
        return Allowance(None)
    left = limit - used - reserved
    if prompt + 1 <= left:
        return Allowance(left - prompt)
    if prompt + 1 <= limit - used:
        return Allowance(0, busy=True)
    figures = {
        "scope": scope,
        "max_tokens": limit,
        "tokens_used": used,
        "tokens_reserved": reserved,
        "tokens_left": max(left, 0),
        "prompt_tokens_estimate": prompt,
    }
    return Allowance(0, Trip(reason, figures))


def cost_allowance(
    limit: float | None, used: float, reserved: float, prompt: int, price: Price | None
) -> Allowance:
    if limit is None or price is None:
        return Allowance(None)
    left = limit - used - reserved
    output = max_output_for(price, left, prompt)
    if output >= sys.maxsize:  # free output: this budget does not bound it
        return Allowance(None)
    if output >= 1:
        return Allowance(output)
    if reserved > 0 and max_output_for(price, limit - used, prompt) >= 1:
        return Allowance(0, busy=True)
    figures = {
        "max_cost_usd": limit,
        "cost_usd": round(used, 6),
        "cost_reserved_usd": round(reserved, 6),
        "cost_left_usd": round(max(left, 0.0), 6),
        "prompt_tokens_estimate": prompt,
        "model": price.model_id,
    }
    return Allowance(0, Trip(TripReason.BUDGET_COST, figures))


def output_cap(requested: int | None, choices: int, allowances: list[Allowance]) -> int | None:
    """The per-choice cap: the client's own, lowered to what every budget allows.

    Each of ``choices`` completions (OpenAI's ``n``) may use the whole cap, so the budgets'
    allowance is shared among them. 0 means not even one token per choice fits.
    """
    bounds = [a.output for a in allowances if a.output is not None]
    if not bounds:
        return requested
    allowed = min(bounds) // max(choices, 1)
    return allowed if requested is None else min(requested, allowed)


def too_many_choices(choices: int) -> Trip:
    return Trip(TripReason.BUDGET_TOKENS, {"choices": choices, "scope": "the task"})
