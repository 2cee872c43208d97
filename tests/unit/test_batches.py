"""One run in flight per key, later submissions batched in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from proxy.session.batches import KeyedBatches


async def test_work_arriving_during_a_run_is_taken_in_order_as_one_batch() -> None:
    batches: list[tuple[str, list[int]]] = []
    gate = asyncio.Event()

    async def run(key: str, items: Sequence[int]) -> list[int]:
        batches.append((key, list(items)))
        await gate.wait()
        return [item * 10 for item in items]

    keyed: KeyedBatches[int, int] = KeyedBatches(run)
    first = asyncio.ensure_future(keyed.submit("a", 1))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(keyed.submit("a", n)) for n in (2, 3, 4)]
    other = asyncio.ensure_future(keyed.submit("b", 9))
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *rest, other) == [10, 20, 30, 40, 90]
    assert batches == [("a", [1]), ("b", [9]), ("a", [2, 3, 4])]
    assert keyed.busy() == 0


async def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs() -> None:
    async def run(key: str, items: Sequence[int]) -> list[int]:
        await asyncio.sleep(0)
        if 0 in items:
            raise ValueError("broken")
        return list(items)

    keyed: KeyedBatches[int, int] = KeyedBatches(run)
    broken = asyncio.ensure_future(keyed.submit("a", 0))
    await asyncio.sleep(0)
    fine = asyncio.ensure_future(keyed.submit("a", 5))
    with pytest.raises(ValueError):
        await broken
    assert await fine == 5
    assert keyed.busy() == 0


async def test_a_caller_giving_up_does_not_cancel_its_neighbours() -> None:
    gate = asyncio.Event()

    async def run(key: str, items: Sequence[int]) -> list[int]:
        await gate.wait()
        return list(items)

    keyed: KeyedBatches[int, int] = KeyedBatches(run)
    leaving = asyncio.ensure_future(keyed.submit("a", 1))
    await asyncio.sleep(0)
    staying = asyncio.ensure_future(keyed.submit("a", 2))
    await asyncio.sleep(0)
    leaving.cancel()
    gate.set()
    assert await staying == 2
