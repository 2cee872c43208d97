"""``tripwire demo``: each runaway is stopped where the default policy says, and it shows."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.demo import ECHO_TASK, PINGPONG_TASK, PLANNER_BUDGET, PLANNER_TASK, collect, run_demo
from proxy.telemetry.logs import LOGGER_NAME

ROOT = Path(__file__).resolve().parents[2]

_ROW = re.compile(r"^ +(without Tripwire|with Tripwire|saved) +(\d+) +([\d,]+) +([\d.]+)", re.M)


def _sections(report: str) -> dict[str, str]:
    """The report's paragraph for each task, found by the ``[task]`` tag of its title."""
    found = {}
    for paragraph in report.split("\n\n"):
        tag = re.search(r"\[(demo-[a-z]+)\]", paragraph.splitlines()[0])
        if tag:
            found[tag.group(1)] = paragraph
    return found


def _rows(section: str) -> dict[str, tuple[int, int]]:
    """``label -> (calls, tokens)`` from a section's table."""
    return {
        label: (int(calls), int(tokens.replace(",", "")))
        for label, calls, tokens, _ in _ROW.findall(section)
    }


def check_report(report: str) -> None:
    sections = _sections(report)
    assert set(sections) == {PINGPONG_TASK, ECHO_TASK, PLANNER_TASK}, report

    pingpong = sections[PINGPONG_TASK]
    assert "call 14 of 40 refused at hop 13 (HTTP 403, max_hops)" in pingpong
    assert "would be hop 13, over the limit of 12" in pingpong
    assert "reason=max_hops action=kill" in pingpong

    echo = sections[ECHO_TASK]
    assert "call 4 of 58 refused after 3 identical completions (HTTP 403, repeat_output)" in echo
    assert "reason=repeat_output action=kill" in echo

    planner = sections[PLANNER_TASK]
    assert re.search(r"call 4 of 30 refused .*\(HTTP 403, budget_tokens\)", planner)
    assert re.search(r"call 3: output cut to [\d,]+ tokens", planner)
    assert "reason=budget_tokens action=kill" in planner

    for task, section in sections.items():
        rows = _rows(section)
        without, protected, saved = rows["without Tripwire"], rows["with Tripwire"], rows["saved"]
        assert saved == (without[0] - protected[0], without[1] - protected[1]), task
        assert saved[0] > 0 and saved[1] > 0, task
        assert "what the provider billed" in section, task
    assert _rows(sections[PINGPONG_TASK])["with Tripwire"][0] == 13
    assert _rows(sections[ECHO_TASK])["with Tripwire"][0] == 3
    assert _rows(sections[PLANNER_TASK])["with Tripwire"][1] <= PLANNER_BUDGET

    total = report.rstrip().splitlines()[-1]
    assert re.match(r"Total: 3 of 3 runaways stopped; saved \d+ calls, [\d,]+ of", total)
    for line in report.splitlines():
        assert len(line) <= 100, line


def test_run_demo_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate

    assert run_demo() == 0

    captured = capsys.readouterr()
    check_report(captured.out)
    assert "\033[" not in captured.out  # not a terminal: no colours
    assert captured.err == ""
    assert (logger.handlers, logger.level, logger.propagate) == (handlers, level, propagate)


def test_figures_agree_with_the_provider_and_the_ledger() -> None:
    _, results = collect()
    by_task = {result.scenario.task: result for result in results}
    for task, result in by_task.items():
        without, protected = result.without, result.with_tripwire
        assert without.refusal is None and without.calls == result.scenario.calls, task
        assert without.billed_calls == without.answered == without.calls, task
        assert without.billed_tokens == without.tokens, task
        assert protected.refusal is not None and protected.refusal.status == 403, task
        assert protected.calls == protected.answered + 1 == protected.refusal.call, task
        assert protected.billed_calls == protected.answered, task
        assert protected.ledger_tokens == protected.billed_tokens == protected.tokens, task
        assert result.trip is not None and result.trip["action"] == "kill", task
        assert result.trip["reason"] == protected.refusal.reason, task

    planner = by_task[PLANNER_TASK].with_tripwire
    assert [call for call, _ in planner.capped] == [3]
    assert 0 < planner.capped[0][1] < 3000
    assert planner.tokens <= PLANNER_BUDGET


def test_cli_demo_runs_offline_whatever_the_environment() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRIPWIRE_")}
    # Neither may reach the demo: its calls stay on the mock, its limits stay the defaults.
    env["TRIPWIRE_UPSTREAMS__OPENAI__BASE_URL"] = "http://127.0.0.1:9"
    env["TRIPWIRE_POLICY__DEFAULTS__MAX_HOPS"] = "2"
    env.pop("NO_COLOR", None)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    check_report(done.stdout)
    assert done.stderr == ""
