"""The scripted corpus and the shipped policy on it: the figures the README promises, on a small
generation (the full one is `python -m bench.detection.synthetic`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.detection.corpus import HEALTHY, LOOPING, generate, write_jsonl
from bench.detection.synthetic import done, load, outcome, shipped, split
from bench.detection.vocabulary import TUNING, UNSEEN
from proxy.replay import main
from proxy.replay.runner import DetectorPolicy


def test_generation_is_fixed_by_the_seed_and_covers_every_kind() -> None:
    first, again = generate("tuning", 5, 2), generate("tuning", 5, 2)
    assert [c.records for c in first] == [c.records for c in again]
    assert [c.records for c in generate("tuning", 6, 2)] != [c.records for c in first]
    assert {c.kind for c in first} == {*LOOPING, *HEALTHY}
    assert all(10 <= c.completions <= 18 for c in first if c.looping)
    words = [set(v.agents) | set(v.search_tools) | set(v.openers) for v in (TUNING, UNSEEN)]
    assert not words[0] & words[1]


def test_the_shipped_policy_meets_its_figures_on_held_out_and_unseen_conversations() -> None:
    started = time.perf_counter()
    policy = DetectorPolicy.load(None)
    stopping = shipped(policy)
    _, held_out = split(load(generate("tuning", 11, 8)))  # seeds the thresholds never saw
    unseen = load(generate("unseen", 12, 5))
    for cases in (held_out, unseen):
        result = outcome(cases, policy, stopping)
        assert result.false_positives == 0
        assert result.recall >= 0.8 and result.median_stop <= 8
        assert done(result)
    assert time.perf_counter() - started < 30


def test_replay_reads_the_generated_jsonl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "corpus.jsonl"
    write_jsonl(generate("unseen", 3, 1), path)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("8 tasks replayed (jsonl); a detector fired in 4")
    assert "unseen-3-tool_repeat-000 (jsonl)" in out
