"""Per-task envelope counts, on every state backend: they must behave the same."""

from __future__ import annotations

import uuid

from proxy.session.base import Ledger
from tests.integration.test_ledgers import clock, effective, ledger, outcome, plan

__all__ = ["clock", "ledger"]  # the fixtures that run every test on both backends


async def test_envelopes_are_counted_per_task_by_status(ledger: Ledger) -> None:
    task = "env-" + uuid.uuid4().hex[:8]
    grant = await ledger.reserve(plan(task, effective()))
    await ledger.settle(grant, outcome(10, "fp"))
    for status in ("success", "partial", "failed", "partial", "invalid"):
        await ledger.count_envelope(task, status)
    view = await ledger.get(task)
    assert view is not None
    assert view.envelopes == {"success": 1, "partial": 2, "failed": 1, "invalid": 1}
    listed = [v for v in await ledger.list() if v.task == task]
    assert listed[0].envelopes == view.envelopes
