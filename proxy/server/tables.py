"""The tokenizer and the price tables: the two big read-only tables a call may need (about
40 and 30 MB). Neither is loaded at start-up unless the policy sets a token or dollar budget;
then both load in a worker thread while the server starts. Otherwise the first call that needs
them starts that one load, off the event loop, and every call waits for it to finish.
"""

from __future__ import annotations

import asyncio

from proxy.config import Limits, Policy
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
        self._loading: asyncio.Future[None] | None = None

    @property
    def loaded(self) -> bool:
        return self.prices.loaded and tokenizer_loaded()

    def start(self) -> None:
        """Begin the load in a worker thread, once."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(self._load))

    async def ready(self) -> None:
        """Return once both tables are loaded; the first call to get here starts the load."""
        if self.loaded:
            return
        self.start()
        assert self._loading is not None
        await asyncio.shield(self._loading)

    def _load(self) -> None:
        load_tokenizer()
        self.prices.load()
