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
from tests.processes import stop


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
        stop(process)


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
    assert '"event":"trip"' in logs and '"reason":"max_calls"' in logs
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


# -- errors that tell the fix -------------------------------------------------------------


def test_a_port_in_use_is_one_line_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tripwire("serve", "--port", str(port))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in line
    assert "--port" in line and "TRIPWIRE_SERVER__PORT" in line


def test_an_address_of_no_interface_names_the_host_setting() -> None:
    result = tripwire("serve", "--host", "host.invalid", "--port", str(free_port()))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--host or TRIPWIRE_SERVER__HOST" in result.stderr


def test_an_invalid_port_is_refused_by_argument_parsing() -> None:
    result = tripwire("serve", "--port", "http")
    assert result.returncode == 2 and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_environment_override_error_names_the_variable() -> None:
    result = tripwire("check-config", env={"TRIPWIRE_SERVER__PORT": "99999"})
    assert result.returncode == 2
    assert "TRIPWIRE_SERVER__PORT" in result.stderr
    assert "defaults" not in result.stderr


def test_a_policy_file_given_as_config_says_where_it_belongs(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  max_calls: 5\nrules: []\n", encoding="utf-8")
    result = tripwire("check-config", "--config", str(policy))
    assert result.returncode == 2
    assert "is a policy file" in result.stderr and "policy_file:" in result.stderr


def test_policy_file_is_read_next_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "deploy"
    folder.mkdir()
    (folder / "limits.yaml").write_text("defaults:\n  max_calls: 7\n", encoding="utf-8")
    (folder / "tripwire.yaml").write_text("policy_file: limits.yaml\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    from proxy.config import load_config

    result = tripwire("check-config", "--config", str(folder / "tripwire.yaml"), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        assert load_config(folder / "tripwire.yaml").policy.defaults.max_calls == 7
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize(
    "config",
    [
        "upstreams:\n  openai:\n    base_url: https://api.openai.com\n    api_key_env: TW_UNSET\n",
        "auth:\n  mode: jwt\n  hs256_secret_env: TW_UNSET\n",
        "escalation:\n  secret_env: TW_UNSET\n",
        "tenants:\n  acme:\n    upstream_keys:\n      openai: {api_key_env: TW_UNSET}\n",
    ],
)
def test_an_unset_variable_named_by_an_env_setting_fails_check_and_start(
    tmp_path: Path, config: str
) -> None:
    file = tmp_path / "tripwire.yaml"
    file.write_text(config, encoding="utf-8")
    env = {"TW_UNSET": ""}
    for command in ("check-config", "serve"):
        result = tripwire(command, "--config", str(file), env=env)
        assert result.returncode == 2, result.stderr
        assert "TW_UNSET is not set" in result.stderr


def test_a_short_hs256_secret_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "tripwire.yaml"
    file.write_text("auth:\n  mode: jwt\n  hs256_secret: too-short\n", encoding="utf-8")
    result = tripwire("check-config", "--config", str(file))
    assert result.returncode == 2 and "at least 32 bytes" in result.stderr
    file.write_text("auth:\n  mode: jwt\n  hs256_secret_env: TW_SHORT\n", encoding="utf-8")
    result = tripwire("check-config", "--config", str(file), env={"TW_SHORT": "x" * 31})
    assert result.returncode == 2 and "at least 32 bytes" in result.stderr
    result = tripwire("token", "--secret", "too-short", "--role", "admin")
    assert result.returncode == 2 and "at least 32 bytes" in result.stderr


def test_every_command_and_option_has_a_help_line() -> None:
    import argparse

    from proxy.cli import build_parser

    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name}")
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {action.option_strings or action.dest}")

    walk(build_parser(), "tripwire")
    assert not missing
    assert "TRIPWIRE_SERVER__PORT" in tripwire("serve", "--help").stdout
