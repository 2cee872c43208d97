"""Reloading a running `tripwire serve`: SIGHUP and `tripwire reload` re-read the policy, keep
every task's state, say what changed, and leave the running policy alone when the file is bad.
A real process, a real signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.harness import MockProviderThread
from tests.processes import stop as stop_process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    def __init__(self, tmp_path: Path, mock: MockProviderThread) -> None:
        self.config = tmp_path / "tripwire.yaml"
        self.mock = mock
        self.write(max_calls=2)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--config", str(self.config)],
                env={**os.environ, "TRIPWIRE_SERVER__PORT": str(self.port)},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("tripwire serve did not start: " + self.log.read_text())

    def write(self, max_calls: int, extra: str = "") -> None:
        self.config.write_text(
            f"upstreams:\n  openai:\n    base_url: {self.mock.base_url}\n"
            f"policy:\n  defaults:\n    max_calls: {max_calls}\n{extra}",
            encoding="utf-8",
        )

    def call(self, task: str) -> int:
        with openai.OpenAI(base_url=self.url + "/v1", api_key="sk", max_retries=0) as client:
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"hello {time.monotonic()}"}],
                    extra_headers={"X-Task-Id": task},
                )
            except openai.APIStatusError as error:
                return error.status_code
        return 200

    def wait_for_log(self, text: str, count: int = 1) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            log = self.log.read_text()
            if log.count(text) >= count:
                return log
            time.sleep(0.05)
        pytest.fail(f"no {text!r} in the log: {self.log.read_text()}")

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def served(tmp_path: Path, mock: MockProviderThread) -> Iterator[Served]:
    server = Served(tmp_path, mock)
    yield server
    server.stop()


def tripwire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=20
    )


def test_sighup_reloads_the_policy_and_keeps_task_state(served: Served) -> None:
    assert [served.call("job-1") for _ in range(3)] == [200, 200, 403]
    served.write(max_calls=4)
    served.process.send_signal(signal.SIGHUP)
    log = served.wait_for_log("reloaded")
    assert "policy.defaults.max_calls: 2 -> 4" in log
    # The kill and the count are the task's state: they stay. A new task gets the new limit.
    assert served.call("job-1") == 403
    assert [served.call("job-2") for _ in range(5)] == [200, 200, 200, 200, 403]


def test_a_bad_file_leaves_the_running_policy_in_place(served: Served) -> None:
    assert served.call("job-3") == 200
    served.config.write_text(served.config.read_text() + "    max_cals: 9\n", encoding="utf-8")
    served.process.send_signal(signal.SIGHUP)
    log = served.wait_for_log("reload_failed")
    assert "max_cals" in log
    result = tripwire("reload", "--url", served.url)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "max_cals" in line and "The running policy stays in place" in line
    assert [served.call("job-3") for _ in range(2)] == [200, 403]  # still max_calls 2
    assert served.process.poll() is None


def test_tripwire_reload_prints_what_changed(served: Served) -> None:
    served.write(max_calls=2, extra="server:\n  max_headers: 64\n")
    result = tripwire("reload", "--url", served.url)
    assert result.returncode == 0, result.stderr
    assert "no changes" in result.stdout
    assert "not applied, needs a restart: server" in result.stdout
    served.write(max_calls=7)
    result = tripwire("reload", "--url", served.url)
    assert result.returncode == 0, result.stderr
    assert "changed policy.defaults.max_calls: 2 -> 7" in result.stdout
    assert [served.call("job-4") for _ in range(8)] == [200] * 7 + [403]
