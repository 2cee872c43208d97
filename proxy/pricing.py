"""Dollar prices per token, from the price dataset bundled with the genai-prices package.

The dataset is read from `genai_prices.data` directly. genai-prices fetches newer prices
only when its `UpdatePrices` is started, which this module never does; and reading the
bundled data rather than genai-prices' current snapshot means that nothing else in the
process can swap prices under a running proxy. Updating prices means upgrading the package.

How the dataset is read:

* Standard prices. Request-dependent variants (OpenAI's priority and flex tiers, batch
  processing) are ignored: priority-tier calls are under-counted, batch and flex calls
  over-counted.
* Prices that change with the time of day (DeepSeek's off-peak hours) take the highest
  price of the day, since a reservation may be settled at another hour. Prices announced
  with a future start date take effect when the model is next looked up after the date
  (lookups are cached, so usually after a restart).
* Tiered prices (Anthropic's and Google's long-context rates) are kept as tiers and applied
  as the providers bill them: once a request's total input, cache reads and writes
  included, exceeds a tier's start, all of its tokens are billed at that tier's rates.
* A missing cache-read or cache-write price means those tokens bill as plain input; a
  missing 1-hour cache-write price falls back to the 5-minute one.
* Per-request, web-search and audio prices are not modelled. Models priced only in such
  units are unknown here (`lookup` returns None); models with no prices at all (free tiers,
  subscriptions) cost nothing.

Token convention for `cost_usd`: `prompt_tokens` is the uncached part of the input only.
OpenAI reports cached tokens inside `prompt_tokens`, so its adapter subtracts
`cached_tokens` first; Anthropic reports them apart already.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

from genai_prices.types import (
    ModelInfo,
    ModelPrice,
    Provider,
    TieredPrices,
    TimeOfDateConstraint,
)

__all__ = ["Price", "PriceBook", "cost_usd", "max_output_for"]

_PER_MTOK = 1_000_000


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
        + cache_write_1h_tokens * _write_1h(p)
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


class PriceBook:
    """Model name to `Price`, from the bundled dataset; build one at start-up.

    Building it imports the dataset (~0.2 s). Each distinct (model, provider) pair is
    searched once, misses included; the results are kept in an LRU of `cache_size`
    entries, so a client inventing model names cannot grow memory without bound.
    """

    def __init__(self, cache_size: int = 1024) -> None:
        # The dataset (~30 MB in memory) is read on the first lookup or ``load``, not here:
        # the server builds its book at start-up and loads it only when a call needs it.
        self._loaded: list[Provider] | None = None
        self._load_lock = threading.Lock()
        self._lookup: Callable[[str, str | None], Price | None] = lru_cache(maxsize=cache_size)(
            self._search
        )
        self._warned: OrderedDict[str, None] = OrderedDict()
        self._warned_cap = cache_size
        self._warned_lock = threading.Lock()

    def load(self) -> None:
        """Read the dataset now (once; safe from a worker thread while calls wait on it)."""
        _ = self._providers

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def _providers(self) -> list[Provider]:
        if self._loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    from genai_prices.data import providers

                    self._loaded = providers
        return self._loaded

    def lookup(self, model: str, provider: str | None = None) -> Price | None:
        """The price of `model`, or None when the dataset does not price it per token.

        `provider` is a genai-prices provider id ("openai", "anthropic", ...). When the
        model is not found there, as with OpenAI-compatible hosts serving other models, the
        model is searched across all providers; if several list it, the highest prices are
        taken.
        """
        return self._lookup(model, provider)

    def should_warn_unknown(self, model: str) -> bool:
        """True the first time it is asked about `model`, False afterwards.

        Lets the caller log one warning per unknown model. Remembers as many models as the
        lookup cache holds; a model forgotten since may be warned about again.
        """
        with self._warned_lock:
            if model in self._warned:
                return False
            self._warned[model] = None
            if len(self._warned) > self._warned_cap:
                self._warned.popitem(last=False)
            return True

    def _search(self, model: str, provider: str | None) -> Price | None:
        ref = model.strip().lower()
        if not ref:
            return None
        found: Price | None = None
        for info in self._find(ref, provider):
            price = _price_of(info)
            if price is not None:
                found = price if found is None else _max_price(found, price)
        return found

    def _find(self, ref: str, provider: str | None) -> list[ModelInfo]:
        if provider:
            named = self._provider(provider.strip().lower())
            if named is not None:
                info = named.find_model(ref, all_providers=self._providers)
                if info is not None:
                    return [info]
        for candidate in self._providers:
            # The provider whose naming scheme the model follows, as genai-prices guesses it.
            if candidate.model_match is not None and candidate.model_match.is_match(ref):
                info = candidate.find_model(ref, all_providers=self._providers)
                if info is not None:
                    return [info]
                break
        return [info for p in self._providers if (info := p.find_model(ref)) is not None]

    def _provider(self, provider_id: str) -> Provider | None:
        for p in self._providers:
            if p.id == provider_id:
                return p
        for p in self._providers:
            if p.provider_match is not None and p.provider_match.is_match(provider_id):
                return p
        return None


def _price_of(info: ModelInfo) -> Price | None:
    now = datetime.now(UTC)
    instants = [now]
    if isinstance(info.prices, list):
        for conditional in info.prices:
            constraint = conditional.constraint
            if isinstance(constraint, TimeOfDateConstraint):
                # Both ends: the end is the first instant outside the interval.
                for t in (constraint.start_time, constraint.end_time):
                    instants.append(datetime.combine(now.date(), t).replace(tzinfo=t.tzinfo or UTC))
    found: Price | None = None
    for instant in instants:
        price = _convert(info.id, info.get_prices(instant))
        if price is None:
            return None
        found = price if found is None else _max_price(found, price)
    return found


def _convert(model_id: str, model_price: ModelPrice) -> Price | None:
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
        return float(applicable) / _PER_MTOK
    return float(value) / _PER_MTOK


def _max_price(a: Price, b: Price) -> Price:
    """Field by field, tier by tier, the higher of two prices."""

    def flat(input_tokens: int) -> Price:
        x = a.for_input(input_tokens)
        y = b.for_input(input_tokens)
        return Price(
            input_per_token=max(x.input_per_token, y.input_per_token),
            output_per_token=max(x.output_per_token, y.output_per_token),
            cached_input_per_token=max(x.cached_input_per_token, y.cached_input_per_token),
            cache_write_per_token=max(x.cache_write_per_token, y.cache_write_per_token),
            model_id=a.model_id,
            cache_write_1h_per_token=max(_write_1h(x), _write_1h(y)),
        )

    starts = sorted({start for start, _ in a.tiers} | {start for start, _ in b.tiers})
    return replace(flat(0), tiers=tuple((start, flat(start + 1)) for start in starts))


def _write_1h(price: Price) -> float:
    if price.cache_write_1h_per_token is None:
        return price.cache_write_per_token
    return price.cache_write_1h_per_token
