"""The tokenizer and the price tables: the two big read-only tables a call may need (about
18 and 3 MB once loaded; see ``proxy.tokens`` and ``proxy.pricing``). Neither is loaded at
start-up unless the policy sets a token or dollar budget; otherwise the first call loads the
prices, and the first call a budget applies to the tokenizer, once.

The load runs on the event loop's thread, holding the loop for its few tenths of a second
once: loaded from a worker thread the same tables leave the process about 27 MB larger (the
allocator keeps that thread's freed scratch memory).
"""

from __future__ import annotations

from proxy.config import Limits, Policy
from proxy.heap import release_free_heap
from proxy.pricing import PriceBook
from proxy.tokens import loaded as tokenizer_loaded
from proxy.tokens import preload as load_tokenizer

BUDGETS = ("max_tokens", "max_tokens_per_agent", "max_cost_usd")


def has_budget(policy: Policy) -> bool:
    """Whether the policy's defaults or any rule set a token or dollar budget."""
    limits: list[Limits] = [policy.defaults, *(rule.limits for rule in policy.rules)]
    return any(getattr(each, name) is not None for each in limits for name in BUDGETS)


class Tables:
    def __init__(self, prices: PriceBook) -> None:
        self.prices = prices

    @property
    def loaded(self) -> bool:
        return self.prices.loaded and tokenizer_loaded()

    def load_prices(self) -> None:
        """The prices alone: every call with a model needs them for its cost, the tokenizer
        only a call a budget applies to (it loads with that call's estimate)."""
        self.prices.load()
        release_free_heap()  # the index's decoding scratch

    def load(self) -> None:
        # The price index builds in a child process while the tokenizer loads here.
        prices_loaded = self.prices.start_load()
        load_tokenizer()
        prices_loaded()
        release_free_heap()  # the index's decoding scratch
