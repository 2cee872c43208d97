"""Soak and fault runs (tests/reliability/soak.py): the short version here, in CI; with
``SOAK_SECONDS=300`` the long one, whose report lands in soak/results/."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import MockProviderThread
from tests.reliability.soak import BillingProvider, markdown, run_soak, short_plan, violations

LONG = float(os.environ.get("SOAK_SECONDS", "0") or 0)
SHORT = {1: 7.0, 3: 14.0}


def write_report(report: dict[str, Any]) -> None:
    """Into soak/results/latest.*, replacing the run of the same set-up, so the file holds the
    last long run of each (as ``python -m tests.reliability.soak`` writes it)."""
    out = Path(__file__).resolve().parents[2] / "soak" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "latest.json"
    reports = json.loads(path.read_text()) if path.exists() else []
    replicas = report["plan"]["replicas"]
    reports = [r for r in reports if r["plan"]["replicas"] != replicas] + [report]
    reports.sort(key=lambda r: r["plan"]["replicas"])
    path.write_text(json.dumps(reports, indent=2) + "\n")
    (out / "latest.md").write_text(markdown(reports) + "\n")


@pytest.fixture(scope="module")
def billing_mock() -> Iterator[MockProviderThread]:
    with MockProviderThread(provider=BillingProvider()) as mock:
        yield mock


@pytest.mark.timeout(LONG * 1.5 + 240 if LONG else 60)
@pytest.mark.parametrize("replicas", [1, 3], ids=["one-replica-memory", "three-replicas-redis"])
def test_soak_under_faults_keeps_every_invariant(
    tmp_path: Path, billing_mock: MockProviderThread, replicas: int
) -> None:
    plan = short_plan(replicas, LONG or SHORT[replicas])
    report = run_soak(plan, tmp_path, billing_mock)
    print(json.dumps(report, indent=2))
    if LONG:
        write_report(report)
    assert not violations(report, strict_memory=bool(LONG)), violations(
        report, strict_memory=bool(LONG)
    )
    assert report["calls"] > 100 * plan.seconds / 7
    assert report["faults"]["injected_by_chaos"] and report["faults"]["scripted_by_mock"]
    assert report["kills"]["killed_tasks"] > 0 and report["kills"]["probes"] > 0
    assert report["budget"]["tasks"] > 0 and report["accounting"]["exact_tasks"] > 0
    if replicas == 3:
        assert len(report["faults"]["process_events"]) == 6
