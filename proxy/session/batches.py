"""One run in flight per key: work submitted for a key while its run is busy waits and is
taken, in order, by the next run as one batch.

The Redis ledger runs a task's content detectors this way. Updating the detectors' state is
a read, a computation and a conditional write; calls of one task settling at once through one
replica would otherwise each read the same state, and all but one would find it changed and
compute again. Serialised per task, a replica computes each completion once and writes once
per batch; only another replica's write in between makes it compute again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Per batch: the items in submission order, their results in the same order.
Runner = Callable[[str, Sequence[Item]], Awaitable[Sequence[Result]]]


class KeyedBatches(Generic[Item, Result]):
    def __init__(self, run: Runner[Item, Result]) -> None:
        self._run = run
        # Waiting work per key with a run in flight; a key leaves when its queue is drained,
        # so the table holds at most the keys with calls in flight.
        self._waiting: dict[str, list[tuple[Item, asyncio.Future[Result]]]] = {}
        self._runs: set[asyncio.Task[None]] = set()

    async def submit(self, key: str, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        queue = self._waiting.get(key)
        if queue is not None:
            queue.append((item, future))
        else:
            self._waiting[key] = [(item, future)]
            drain = asyncio.create_task(self._drain(key))
            self._runs.add(drain)
            drain.add_done_callback(self._runs.discard)
        # Shielded: a caller that gives up must not cancel the batch its neighbours are in.
        return await asyncio.shield(future)

    def busy(self) -> int:
        """Keys with a run in flight."""
        return len(self._waiting)

    async def _drain(self, key: str) -> None:
        queue = self._waiting[key]
        try:
            while queue:
                batch = queue[:]
                queue.clear()
                try:
                    results = await self._run(key, [item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            # No await between the last emptiness check and here: nothing can join the queue.
            del self._waiting[key]
            for _, future in queue:
                if not future.done():
                    future.cancel()
