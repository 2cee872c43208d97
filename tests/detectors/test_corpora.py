"""The loaders on the real corpora in ../shared/data (skipped where the data is not there)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from proxy.replay.mast import load_mast
from proxy.replay.runner import DetectorPolicy, replay_trace
from proxy.replay.who_and_when import load_who_and_when

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HAND_CRAFTED = DATA / "who_and_when" / "hand_crafted.jsonl"
ALGORITHM = DATA / "who_and_when" / "algorithm_generated.jsonl"
MAST = DATA / "mast" / "MAD_human_labelled_19.json"

needs_data = pytest.mark.skipif(
    not (HAND_CRAFTED.exists() and MAST.exists()),
    reason=f"the public corpora are not in {DATA} (see ../shared/README.md)",
)


@needs_data
def test_who_and_when_labels_and_what_is_replayed() -> None:
    traces = load_who_and_when(HAND_CRAFTED)
    assert len(traces) == 58
    assert sum(bool(t.labels["loop_steps"]) for t in traces) == 36  # as the corpus README says
    for trace in traces:
        for turn in trace.completions:
            # The orchestrator's own judgments are the label: never fed to a detector.
            assert "is_in_loop" not in turn.text and "is_progress_being_made" not in turn.text
            assert turn.agent not in ("ComputerTerminal", "FileSurfer", "human")
            if turn.agent == "WebSurfer":
                assert "Here is a screenshot" not in turn.text
        assert all(trace.turns[s].role == "label" for s in trace.labels["loop_steps"])
        assert [t.step for t in trace.turns] == list(range(len(trace.turns)))


@needs_data
def test_who_and_when_algorithm_generated() -> None:
    traces = load_who_and_when(ALGORITHM)
    assert len(traces) == 126
    assert all(t.turns[0].role == "user" for t in traces)
    assert all(t.agent != "Computer_terminal" for tr in traces for t in tr.completions)


@needs_data
def test_mast_turn_splitting_per_framework() -> None:
    records = json.loads(MAST.read_text(encoding="utf-8"))
    traces = load_mast(MAST)
    assert len(traces) == 19
    frameworks = {t.labels["framework"] for t in traces}
    assert frameworks == {
        "AG2",
        "AppWorld",
        "ChatDev",
        "HyperAgent",
        "Magentic",
        "MetaGPT",
        "OpenManus",
    }
    assert sorted(
        t.labels["trace_id"] for t in traces if t.labels["step_repetition_votes"] >= 2
    ) == [3, 4]
    for record, trace in zip(records, traces, strict=True):
        completions = trace.completions
        assert completions, trace.task
        notes = record["trace"] and _note(record["trace"])
        for turn in completions:
            assert not (notes and notes in turn.text), "annotators' notes leak the label"
            assert not turn.text.startswith("[ChatDev is a software company")
        if trace.labels["framework"] == "HyperAgent":
            # (A handoff relays the last response: same text, another record.)
            turns = [(t.agent, t.role, t.text) for t in trace.turns]
            assert all(a != b for a, b in itertools.pairwise(turns)), (
                "repeated log records collapsed"
            )
        if trace.labels["framework"] == "AG2":
            assert {t.agent for t in completions} == {"assistant"}


def _note(raw: str) -> str:
    try:
        note = json.loads(raw).get("note")
    except ValueError:
        return ""
    text = note.get("text") if isinstance(note, dict) else note
    return (" ".join(text) if isinstance(text, list) else str(text or ""))[:60]


@needs_data
def test_every_trace_replays() -> None:
    policy = DetectorPolicy()
    for trace in [*load_mast(MAST), *load_who_and_when(HAND_CRAFTED)]:
        report = replay_trace(trace, policy)
        assert report.completions == len(trace.completions)
        for firing in report.firings.values():
            assert firing.trip.detail and not firing.trip.detail.startswith(str(firing.trip.reason))
