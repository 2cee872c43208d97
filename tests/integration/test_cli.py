"""`tripwire` as a user runs it: a real process, a config file, the environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.harness import MockProviderThread


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tripwire(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.fixture
def served(tmp_path: Path, mock: MockProviderThread) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    config = tmp_path / "tripwire.yaml"
    config.write_text(
        f"upstreams:\n  openai:\n    base_url: {mock.base_url}\n"
        "policy:\n  rules:\n    - match: {task: 'small-*'}\n      limits: {max_calls: 2}\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
        env={**os.environ, "TRIPWIRE_SERVER__PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("tripwire serve did not start: " + process.communicate()[1])
    try:
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_uses_config_file_and_environment(
    served: tuple[str, subprocess.Popen[str]], mock: MockProviderThread
) -> None:
    url, process = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-secret-key", max_retries=2)
    for _ in range(2):
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Task-Id": "small-1"},
        )
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "again"}],
            extra_headers={"X-Task-Id": "small-1"},
        )
    assert "small-1" in refused.value.message and "max_calls" in refused.value.message
    assert mock.provider.total_hits == 2
    process.terminate()
    _, logs = process.communicate(timeout=10)
    assert '"event": "trip"' in logs and '"reason": "max_calls"' in logs
    assert "sk-secret-key" not in logs
    # The human start-up summary: where to point agents and what the policy does.
    assert f"OPENAI_BASE_URL={url}/v1" in logs and f"ANTHROPIC_BASE_URL={url}\n" in logs
    assert "Policy: the policy: section of" in logs
    assert "limits per task: calls 200, hops 12, duration 30m" in logs
    assert "detectors that stop a task: repeat" in logs


def test_a_typo_in_a_budget_key_fails_start_up_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("policy:\n  defaults:\n    max_tokenz: 1000\n", encoding="utf-8")
    result = tripwire("serve", "--config", str(config))
    assert result.returncode == 2
    assert "policy.defaults.max_tokenz" in result.stderr
    assert "Extra inputs are not permitted" in result.stderr


def test_a_bad_value_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("policy:\n  defaults:\n    max_duration: soon\n", encoding="utf-8")
    result = tripwire("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "policy.defaults.max_duration" in result.stderr


def test_check_config_reads_the_default_policy_file(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "policy.yaml").write_text(
        "rules:\n  - match: {task: 'a-*'}\n    limits: {max_tokens: 10}\n", encoding="utf-8"
    )
    result = tripwire("check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 policy rules" in result.stdout


def test_the_shipped_policy_file_is_valid() -> None:
    result = tripwire("check-config", cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
