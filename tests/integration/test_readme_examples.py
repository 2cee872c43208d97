"""The README's examples run as written, from a fresh clone: the quickstart agent and the
envelope example against `tripwire serve --mock`, and `tripwire replay` on the shipped sample
trace."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.processes import stop

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def block_after(marker: str, language: str) -> str:
    """The first ``language`` code block after ``marker`` in the README."""
    start = README.index(marker) + len(marker)
    match = re.compile(rf"```{re.escape(language)}\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no {language} block after {marker!r}"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_mock(tmp_path: Path, *args: str) -> Iterator[int]:
    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--mock", "--port", str(port), *args],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        stop(process)


def run_snippet(code: str, port: int, tmp_path: Path) -> str:
    script = tmp_path / "example.py"
    script.write_text(code.replace("127.0.0.1:8787", f"127.0.0.1:{port}"), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_quickstart_agent_is_stopped_on_its_fourth_call(tmp_path: Path) -> None:
    code = block_after("an agent that keeps getting the same answer", "python")
    with serve_mock(tmp_path) as port:
        out = run_snippet(code, port, tmp_path).splitlines()
    assert [line.split(" ", 1)[1] for line in out[:3]] == ["Answer to: Is the plan done?"] * 3
    assert out[3].startswith("4 refused: Error code: 403 - Tripwire stopped task 'quickstart'")


def test_the_envelope_example_runs_against_the_mock(tmp_path: Path) -> None:
    rules = block_after("## Workers: typed status envelopes", "yaml")
    config = tmp_path / "workers.yaml"
    config.write_text(
        "policy:\n" + "".join(f"  {line}\n" for line in rules.splitlines()), encoding="utf-8"
    )
    code = block_after("To try it without a provider", "python")
    expected = block_after('print("held back:", error.message)\n```\n', "")
    with serve_mock(tmp_path, "--config", str(config)) as port:
        out = run_snippet(code, port, tmp_path)
    assert out.strip() == expected.strip()


def test_replay_runs_on_the_shipped_sample(tmp_path: Path) -> None:
    command = block_after("`bench/detection/sample.jsonl` holds", "sh").split("#")[0].split()
    assert command[:2] == [".venv/bin/tripwire", "replay"]
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert "3 tasks replayed (jsonl); a detector fired in 2" in result.stdout
