"""Budgets checked before forwarding: does the prompt fit, and how much output is left.

Every budget answers the same question: given what is used and reserved, how many output
tokens may this call still produce? The smallest answer becomes the call's output cap.
"""

from __future__ import annotations

import sys

from proxy.detectors.base import Trip, TripReason
from proxy.detectors.spec import NO_BOUND, Allowance, Detector, Figure, Reservation
from proxy.pricing import Price, max_output_for

__all__ = ["Allowance", "cost_allowance", "output_cap", "token_allowance", "too_many_choices"]


def token_allowance(
    reason: TripReason, limit: int | None, used: int, reserved: int, prompt: int, scope: str
) -> Allowance:
    if limit is None:
        return NO_BOUND
    left = limit - used - reserved
    if prompt + 1 <= left:
        return Allowance(left - prompt)
    if prompt + 1 <= limit - used:
        return Allowance(0, busy=True)
    spec = BUDGET_AGENT_TOKENS if reason is TripReason.BUDGET_AGENT_TOKENS else BUDGET_TOKENS
    trip = spec.trip(
        scope=scope,
        max_tokens=limit,
        tokens_used=used,
        tokens_reserved=reserved,
        tokens_left=max(left, 0),
        prompt_tokens_estimate=prompt,
    )
    return Allowance(0, trip)


def check_task_tokens(r: Reservation) -> Allowance:
    if r.limits.max_tokens is None:
        return NO_BOUND  # before the scope's text is built
    return token_allowance(
        TripReason.BUDGET_TOKENS,
        r.limits.max_tokens,
        r.used,
        r.reserved,
        r.prompt,
        f"task {r.task}",
    )


def check_agent_tokens(r: Reservation) -> Allowance:
    if r.limits.max_tokens_per_agent is None:
        return NO_BOUND
    return token_allowance(
        TripReason.BUDGET_AGENT_TOKENS,
        r.limits.max_tokens_per_agent,
        r.agent_used,
        r.agent_reserved,
        r.prompt,
        f"agent {r.agent}",
    )


def cost_allowance(
    limit: float | None, used: float, reserved: float, prompt: int, price: Price | None
) -> Allowance:
    if limit is None or price is None:
        return NO_BOUND
    left = limit - used - reserved
    output = max_output_for(price, left, prompt)
    if output >= sys.maxsize:  # free output: this budget does not bound it
        return NO_BOUND
    if output >= 1:
        return Allowance(output)
    if reserved > 0 and max_output_for(price, limit - used, prompt) >= 1:
        return Allowance(0, busy=True)
    trip = BUDGET_COST.trip(
        max_cost_usd=limit,
        cost_usd=used,
        cost_reserved_usd=reserved,
        cost_left_usd=max(left, 0.0),
        prompt_tokens_estimate=prompt,
        model=price.model_id,
    )
    return Allowance(0, trip)


def check_cost(r: Reservation) -> Allowance:
    return cost_allowance(r.limits.max_cost_usd, r.cost, r.cost_reserved, r.prompt, r.price)


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
    """Every budget fits one completion, not one per choice: only when no budget tripped."""
    return BUDGET_TOKENS.trip(choices=choices, scope="the task")


_TOKEN_FIGURES = (
    Figure("scope"),
    Figure("max_tokens", optional=True),
    Figure("tokens_used", optional=True),
    Figure("tokens_reserved", optional=True),
    Figure("tokens_left", optional=True),
    Figure("prompt_tokens_estimate", optional=True),
    Figure("choices", optional=True),  # the too-many-choices form has only these two
)
_TOKEN_MESSAGE = (
    "{scope} has {tokens_left} of {max_tokens} tokens left (in use: {tokens_used}, "
    "reserved by calls in flight: {tokens_reserved}), not enough for this call's prompt "
    "of about {prompt_tokens_estimate} tokens"
)
# The token checks in Lua: ``tokens_allowance`` (redis_scripts.py) is their shared body.
BUDGET_TOKENS = Detector(
    TripReason.BUDGET_TOKENS,
    "reserve",
    _TOKEN_MESSAGE,
    _TOKEN_FIGURES,
    settings=("limits.max_tokens",),
    state=("tokens_used", "tokens_reserved"),
    check=check_task_tokens,
    lua="""
tighter(tokens_allowance(trip_budget_tokens, max_tokens, used, reserved, 'task ' .. task))
""",
)
BUDGET_AGENT_TOKENS = Detector(
    TripReason.BUDGET_AGENT_TOKENS,
    "reserve",
    _TOKEN_MESSAGE,
    _TOKEN_FIGURES,
    settings=("limits.max_tokens_per_agent",),
    state=("agent tokens_used", "agent tokens_reserved"),
    check=check_agent_tokens,
    lua="""
tighter(tokens_allowance(trip_budget_agent_tokens, max_agent, a_used, a_reserved,
  'agent ' .. caller))
""",
)
BUDGET_COST = Detector(
    TripReason.BUDGET_COST,
    "reserve",
    "the task has ${cost_left_usd:.4f} of ${max_cost_usd:.2f} left, not enough for this "
    "call's prompt of about {prompt_tokens_estimate} tokens on {model}",
    (
        Figure("max_cost_usd", decimals=6),
        Figure("cost_usd", decimals=6),
        Figure("cost_reserved_usd", decimals=6),
        Figure("cost_left_usd", decimals=6),
        Figure("prompt_tokens_estimate"),
        Figure("model"),
    ),
    settings=("limits.max_cost_usd",),
    state=("cost_usd", "cost_reserved_usd"),
    check=check_cost,
    lua="""
if max_cost and prompt_cost >= 0 then
  local left = max_cost - cost - cost_reserved
  local out = max_output_for(left)
  if out == math.huge then
    -- free output: this budget does not bound it
  elseif out >= 1 then
    tighter(out)
  elseif cost_reserved > 0 and max_output_for(max_cost - cost) >= 1 then
    busy = true
    tighter(0)
  else
    add(trip_budget_cost(max_cost, cost, cost_reserved, math.max(left, 0), prompt, model))
    tighter(0)
  end
end
""",
)
