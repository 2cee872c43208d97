"""One model's dollar prices per token, and the arithmetic of a call's cost under them.

The prices come from ``proxy.pricing``'s book; the token convention is in its docstring.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

PER_MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per single token for one model.

    `tiers` holds (start, prices) pairs in ascending order: the prices that apply to every
    token of a request whose total input exceeds `start`. The prices of a tier have no
    tiers themselves. `cache_write_1h_per_token` None means the same as
    `cache_write_per_token`.
    """

    input_per_token: float
    output_per_token: float
    cached_input_per_token: float
    cache_write_per_token: float
    model_id: str
    cache_write_1h_per_token: float | None = None
    tiers: tuple[tuple[int, Price], ...] = ()

    def for_input(self, input_tokens: int) -> Price:
        """The flat prices for a request whose input, cached and written included, totals this."""
        for start, price in reversed(self.tiers):
            if input_tokens > start:
                return price
        return self


def cost_usd(
    price: Price,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
) -> float:
    """Dollar cost of one call.

    `prompt_tokens` excludes `cached_tokens` (cache reads) and both kinds of cache writes:
    each token is passed in exactly one argument. `cache_write_tokens` are 5-minute cache
    writes, or all cache writes when the provider does not tell them apart;
    `cache_write_1h_tokens` are Anthropic's 1-hour cache writes.
    """
    p = price
    if price.tiers:
        p = price.for_input(
            prompt_tokens + cached_tokens + cache_write_tokens + cache_write_1h_tokens
        )
    return (
        prompt_tokens * p.input_per_token
        + completion_tokens * p.output_per_token
        + cached_tokens * p.cached_input_per_token
        + cache_write_tokens * p.cache_write_per_token
        + cache_write_1h_tokens * write_1h(p)
    )


def max_output_for(price: Price, budget_left_usd: float, prompt_tokens: int) -> int:
    """How many output tokens fit in `budget_left_usd` once `prompt_tokens` are paid for.

    All of `prompt_tokens` are priced as uncached input. Returns 0 when the prompt alone
    does not fit, and `sys.maxsize` when output is free and the prompt fits.
    """
    p = price.for_input(prompt_tokens)
    left = budget_left_usd - prompt_tokens * p.input_per_token
    if left < 0:
        return 0
    if p.output_per_token <= 0:
        return sys.maxsize
    n = int(left / p.output_per_token)
    # Float rounding can put the quotient a token above what cost_usd then charges. Bounded:
    # at tiny prices one token may not move the float total at all.
    for _ in range(3):
        if n == 0 or cost_usd(price, prompt_tokens, n) <= budget_left_usd:
            break
        n -= 1
    return n


def encode_price(price: Price) -> tuple[Any, ...]:
    return (
        price.input_per_token,
        price.output_per_token,
        price.cached_input_per_token,
        price.cache_write_per_token,
        price.model_id,
        price.cache_write_1h_per_token,
        tuple((start, encode_price(tier)) for start, tier in price.tiers),
    )


def write_1h(price: Price) -> float:
    if price.cache_write_1h_per_token is None:
        return price.cache_write_per_token
    return price.cache_write_1h_per_token
