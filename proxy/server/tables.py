"""The tokenizer and the price tables: the two big read-only tables a call may need (about
22 and 4 MiB of RSS once loaded; see ``proxy.tokens`` and ``proxy.pricing``). Neither is
loaded at start-up, whatever the policy: the first call loads the prices, for its cost, and
the first call a token or dollar budget applies to the tokenizer, for its prompt estimate.

The prices load on the event loop's thread (~20 ms from their cache). The tokenizer loads in
a worker thread (0.1-0.3 s), so that calls no budget applies to keep flowing meanwhile (the
loop is held only while tiktoken builds its native tables, ~60 ms, under the GIL); the calls
that need it wait for that one load, and are refused in their provider's format
(``TokenizerUnavailable``, 503) if it fails. Loaded in a thread, the tokenizer leaves the
process about 2 MiB larger than on the loop's thread (that thread's malloc arena).
"""

from __future__ import annotations

import asyncio
import time

from proxy.errors import TokenizerUnavailable
from proxy.heap import release_free_heap
from proxy.pricing import PriceBook
from proxy.telemetry.logs import event
from proxy.tokens import loaded as tokenizer_loaded
from proxy.tokens import preload as load_tokenizer


class Tables:
    def __init__(self, prices: PriceBook) -> None:
        self.prices = prices

    def load_prices(self) -> None:
        """The prices alone: every call with a model needs them for its cost, the tokenizer
        only a call a budget applies to (``TokenizerLoader``)."""
        self.prices.load()
        release_free_heap()  # the index's decoding scratch


def _timed_load() -> float:
    started = time.perf_counter()
    load_tokenizer()
    return time.perf_counter() - started


class TokenizerLoader:
    """Loads the tokenizer once, for the first call that needs it, off the event loop.

    Calls that arrive during the load wait for the same load. A failed load fails each of
    them; the next call that needs the tokenizer starts a new one.
    """

    __slots__ = ("_loading",)

    def __init__(self) -> None:
        self._loading: asyncio.Future[float] | None = None

    async def ready(self) -> None:
        if tokenizer_loaded():
            return
        loading = self._loading
        first = loading is None
        if loading is None:
            loading = asyncio.get_running_loop().run_in_executor(None, _timed_load)
            self._loading = loading
        try:
            # Shielded: a caller that goes away does not cancel the others' load.
            seconds = await asyncio.shield(loading)
        except Exception as exc:
            if self._loading is loading:
                self._loading = None
            if isinstance(exc, TokenizerUnavailable):
                raise
            raise TokenizerUnavailable(
                f"Tripwire could not load its tokenizer ({type(exc).__name__}: {exc}); the "
                "call is refused rather than forwarded without a bound"
            ) from exc
        if first:
            event("tokenizer_loaded", load_ms=round(seconds * 1000, 1))
