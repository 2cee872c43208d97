"""The compact price index, built from the genai-prices dataset (``proxy.pricing``).

Run as ``python -m proxy.price_build``: it writes the index to standard output as JSON
(nested arrays of strings and numbers) and exits. The server runs it in a
child process, so that it never holds the dataset itself: imported, the dataset costs the
process about 10 MB of objects and, with its import's scratch memory, up to 60 MB of heap.

What is kept is what ``PriceBook.lookup`` reads: each provider's id, its provider and model
match clauses and fallback providers, and each model's id, match clause and prices, each
price already converted to per-token rates (``Price``), with the date and time-of-day
constraints that choose between them. The rules by which the dataset's prices are read are
in ``proxy.pricing``'s docstring.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from decimal import Decimal
from typing import Any

from genai_prices.types import (
    ClauseAnd,
    ClauseContains,
    ClauseEndsWith,
    ClauseEquals,
    ClauseOr,
    ClauseRegex,
    ClauseStartsWith,
    ModelInfo,
    ModelPrice,
    Provider,
    StartDateConstraint,
    TieredPrices,
    TimeOfDateConstraint,
)

from proxy.price import PER_MTOK, Price, encode_price

__all__ = ["build", "convert", "encode_clause"]


def encode_clause(clause: Any) -> tuple[Any, ...]:
    """A match clause as a tuple; literals lower-cased, as genai-prices compares them."""
    if isinstance(clause, ClauseEquals):
        return ("=", clause.equals.lower())
    if isinstance(clause, ClauseStartsWith):
        return ("^", clause.starts_with.lower())
    if isinstance(clause, ClauseEndsWith):
        return ("$", clause.ends_with.lower())
    if isinstance(clause, ClauseContains):
        return ("in", clause.contains.lower())
    if isinstance(clause, ClauseRegex):
        return ("re", clause.regex)
    if isinstance(clause, ClauseOr):
        return ("or", tuple(encode_clause(each) for each in clause.or_))
    if isinstance(clause, ClauseAnd):
        return ("and", tuple(encode_clause(each) for each in clause.and_))
    raise TypeError(f"unknown match clause {clause!r}")


def _optional_clause(clause: Any) -> tuple[Any, ...] | None:
    return None if clause is None else encode_clause(clause)


def _encode_prices(info: ModelInfo) -> tuple[Any, ...]:
    """("flat", price) or ("when", ((kind, a, b, price), ...)); a price None is not per token."""
    if isinstance(info.prices, ModelPrice):
        return ("flat", _encoded(convert(info.id, info.prices)))
    conditions: list[tuple[Any, ...]] = []
    for conditional in info.prices:
        constraint = conditional.constraint
        price = _encoded(convert(info.id, conditional.prices))
        if constraint is None:
            conditions.append(("always", None, None, price))
        elif isinstance(constraint, StartDateConstraint):
            conditions.append(("date", constraint.start_date.isoformat(), None, price))
        elif isinstance(constraint, TimeOfDateConstraint):
            conditions.append(
                (
                    "daily",
                    constraint.start_time.isoformat(),
                    constraint.end_time.isoformat(),
                    price,
                )
            )
        else:
            raise TypeError(f"unknown price constraint {constraint!r}")
    return ("when", tuple(conditions))


def _encoded(price: Price | None) -> tuple[Any, ...] | None:
    return None if price is None else encode_price(price)


def convert(model_id: str, model_price: ModelPrice) -> Price | None:
    """Per-token rates of one set of prices; None when it prices no input or output tokens."""
    values: dict[str, Decimal | TieredPrices] = {
        key: value
        for key, value in vars(model_price).items()
        if not key.startswith("_") and value is not None
    }
    if "input_mtok" not in values and "output_mtok" not in values:
        if values:
            return None
        return Price(0.0, 0.0, 0.0, 0.0, model_id)

    starts = sorted(
        {tier.start for v in values.values() if isinstance(v, TieredPrices) for tier in v.tiers}
    )

    def flat(input_tokens: int) -> Price:
        def rate(key: str) -> float | None:
            value = values.get(key)
            if value is None:
                return None
            return _per_token(value, input_tokens)

        input_rate = rate("input_mtok") or 0.0
        cache_write = rate("cache_write_mtok")
        if cache_write is None:
            cache_write = input_rate
        cache_read = rate("cache_read_mtok")
        cache_write_1h = rate("cache_write_1h_mtok")
        return Price(
            input_per_token=input_rate,
            output_per_token=rate("output_mtok") or 0.0,
            cached_input_per_token=input_rate if cache_read is None else cache_read,
            cache_write_per_token=cache_write,
            model_id=model_id,
            cache_write_1h_per_token=cache_write if cache_write_1h is None else cache_write_1h,
        )

    return replace(flat(0), tiers=tuple((start, flat(start + 1)) for start in starts))


def _per_token(value: Decimal | TieredPrices, input_tokens: int) -> float:
    if isinstance(value, TieredPrices):
        applicable = value.base
        for tier in reversed(value.tiers):
            if input_tokens > tier.start:
                applicable = tier.price
                break
        return float(applicable) / PER_MTOK
    return float(value) / PER_MTOK


def _encode_provider(provider: Provider) -> tuple[Any, ...]:
    return (
        provider.id,
        _optional_clause(provider.provider_match),
        _optional_clause(provider.model_match),
        tuple(provider.fallback_model_providers or ()),
        tuple((m.id, encode_clause(m.match), _encode_prices(m)) for m in provider.models),
    )


def build(providers: list[Provider]) -> bytes:
    index = [_encode_provider(p) for p in providers]
    return json.dumps(index, separators=(",", ":")).encode()


def main() -> None:
    from genai_prices.data import providers

    sys.stdout.buffer.write(build(providers))


if __name__ == "__main__":
    main()
