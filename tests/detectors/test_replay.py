"""`tripwire replay` on a small JSONL recording of our own format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.replay import main
from proxy.replay.runner import DetectorPolicy, replay_trace
from proxy.replay.traces import load_jsonl
from tests.detectors.helpers import prose, reword


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    lines = [{"task": "calm", "agent": "writer", "role": "user", "text": "Write a story."}]
    lines += [{"task": "calm", "agent": "writer", "text": prose(n)} for n in range(8)]
    ask, answer = prose(100), prose(200)
    for n in range(5):
        lines.append(
            {"task": "stuck", "agent": "planner", "role": "assistant", "text": reword(ask, n)}
        )
        lines.append({"task": "stuck", "agent": "tool", "role": "tool", "text": "exit code 1"})
        lines.append(
            {"task": "stuck", "agent": "critic", "role": "assistant", "text": reword(answer, n)}
        )
    lines.append({"task": "verbatim", "agent": "bot", "text": "I cannot help with that."})
    lines += [{"task": "verbatim", "agent": "bot", "text": "I cannot help with that."}] * 3
    path = tmp_path / "recording.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def test_replay_prints_the_first_trip_of_each_detector(
    recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(recording), "--format", "jsonl"]) == 0
    out = capsys.readouterr().out
    calm, stuck, verbatim = out.split("\n\n") if "\n\n" in out else _blocks(out)
    assert "calm (jsonl): 8 completions" in calm and "nothing fired" in calm
    # The shipped policy: every content detector kills (bench/detection/results.md).
    assert "cycle           kill    step 5 (completion 4) agent critic" in stuck
    assert "near_duplicate  kill    step 6 (completion 5) agent planner" in stuck
    assert "no_progress     kill    step 8 (completion 6) agent critic" in stuck
    assert "with this policy: stopped at step 5 (cycle, completion 4): 6 of 10" in stuck
    assert "repeat_output   kill    step 2 (completion 3) agent bot" in verbatim
    assert "with this policy: stopped at step 2 (repeat_output, completion 3): 1 of 4" in verbatim
    assert out.rstrip().endswith("3 tasks replayed (jsonl); a detector fired in 2")


def _blocks(out: str) -> list[str]:
    blocks: list[str] = []
    for line in out.splitlines():
        if not line.startswith(" ") and " tasks replayed " not in line:
            blocks.append("")
        if blocks:
            blocks[-1] += line + "\n"
    return blocks


def test_policy_file_sets_actions_and_thresholds(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "defaults: {max_calls: 10}\n"
        "repeat: {threshold: 5, window: 20}\n"
        "near_duplicate: {action: kill, similarity: 0.8, repeats: 3}\n"
        "cycle: {enabled: false}\n",
        encoding="utf-8",
    )
    assert main([str(recording), "--policy", str(policy), "--task", "stuck"]) == 0
    out = capsys.readouterr().out
    assert "cycle           disabled" in out
    assert "near_duplicate  kill    step 6 (completion 5) agent planner" in out
    assert "with this policy: stopped at step 6 (near_duplicate, completion 5)" in out
    assert "1 task replayed" in out


def test_json_output(recording: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(recording), "--json", "--task", "verbatim"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["task"] == "verbatim" and record["completions"] == 4
    assert record["firings"]["repeat_output"]["reason"] == "repeat_output"


def test_savings_count_the_completions_after_the_trip(recording: Path) -> None:
    trace = {t.task: t for t in load_jsonl(recording)}["stuck"]
    report = replay_trace(trace, DetectorPolicy())
    savings = report.savings(["near_duplicate"])
    assert savings is not None
    assert savings.completions == report.completions - savings.firing.completion
    assert savings.tokens == sum(report.tokens[savings.firing.completion :])


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"task": "t", "text": "fine"}\nnot json\n', encoding="utf-8")
    assert main([str(broken)]) == 2
    assert "broken.jsonl:2: not JSON" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.jsonl"), "--format", "jsonl"]) == 2
    bad_policy = tmp_path / "policy.yaml"
    bad_policy.write_text("near_duplicate: {similarity: 2}\n", encoding="utf-8")
    assert main([str(broken), "--policy", str(bad_policy)]) == 2
    assert "near_duplicate.similarity" in capsys.readouterr().err


@pytest.mark.timeout(20)
def test_a_hostile_chatdev_line_is_read_in_linear_time(tmp_path: Path) -> None:
    """A turn header read with several lazy wildcards took time polynomial in the line's
    length (14 s for 7.8 KB); this one, 40 KB, would take hours that way."""
    hostile = "[2024-01-01 00:00:00 INFO] a: **" + "<-> on : " * 4500 + "x"
    real = "[2024-01-01 00:00:01 INFO] Programmer: **CTO<->Programmer on : Coding, turn 3**"
    record = {
        "trace_id": 1,
        "mas_name": "ChatDev",
        "trace": "\n".join([hostile, "text", real, "def f(): pass"]),
    }
    path = tmp_path / "mast.json"
    path.write_text(json.dumps([record]), encoding="utf-8")
    assert main([str(path), "--format", "mast"]) == 0
    from proxy.replay.mast import load_mast

    (trace,) = load_mast(path)
    assert [(turn.agent, turn.text) for turn in trace.turns] == [("Programmer", "def f(): pass")]


def test_a_file_without_end_is_refused_not_read_into_memory(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.replay import traces

    # The real bounds are hundreds of MiB; the same code path with smaller ones.
    monkeypatch.setattr(traces, "MAX_TRACE_BYTES", 4 * 2**20)
    monkeypatch.setattr(traces, "MAX_LINE_CHARS", 2**20)
    for fmt in ("jsonl", "mast", "who_and_when"):
        assert main(["/dev/zero", "--format", fmt]) == 2
        err = capsys.readouterr().err
        assert "is not a" in err and ("larger than" in err or "longer than" in err)
        assert "Traceback" not in err


def test_deeply_nested_json_is_a_format_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    for fmt, text in (
        ("jsonl", nested + "\n"),
        ("who_and_when", nested + "\n"),
        ("mast", nested),
        ("mast", json.dumps([{"trace_id": 1, "mas_name": "AG2", "trace": nested}])),
    ):
        path = tmp_path / f"{fmt}.txt"
        path.write_text(text, encoding="utf-8")
        assert main([str(path), "--format", fmt]) == 2
        err = capsys.readouterr().err
        assert "nested too deeply" in err and "Traceback" not in err
