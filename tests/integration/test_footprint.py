"""What `tripwire serve` holds once it answers, before its first call: no module that only
another command or another backend needs, no tokenizer even when the policy sets a token
budget, and an idle RSS well under the 80 MB the README states (#19). Each case starts a real
server process, with the shipped policy or a config that sets a budget."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.processes import stop
from tests.replicas import ReplicaSet, redis_config

ROOT = Path(__file__).resolve().parents[2]

# Loaded by another command (replay, demo, dashboards), another backend (the Redis client,
# and the OpenTelemetry SDK its client loads when installed), a setting the shipped policy
# leaves off (token keys: PyJWT and cryptography; an envelope schema: jsonschema) or
# tracing: none of them may load before the first call. Nor may the tokenizer (tiktoken), which
# only the first call a token or dollar budget applies to loads.
NOT_AT_START_UP = (
    "tiktoken",
    "tiktoken_ext",
    "redis",
    "proxy.session.redis",
    "opentelemetry",
    "jwt",
    "cryptography",
    "jsonschema",
    "grafana_client",
    "proxy.demo",
    "proxy.dashboards",
    "proxy.replay.cli",
    "proxy.replay.runner",
    "proxy.replay.traces",
    "proxy.replay.mast",
    "proxy.replay.who_and_when",
)

# Runs `tripwire serve` as the CLI does, and once /healthz answers prints the modules loaded.
SERVE_AND_LIST = """
import json, os, signal, sys, threading, time, urllib.request
port = sys.argv[1]

def listed() -> None:
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.5)  # anything loaded in the background at start-up has loaded by now
    print("MODULES " + json.dumps(sorted(sys.modules)), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=listed, daemon=True).start()
from proxy.cli import main
sys.exit(main(["serve", "--port", port, *sys.argv[2:]]))
"""

# A token budget for some tasks, as the benchmark's config sets.
BUDGET_POLICY = {"policy": {"rules": [{"match": {"task": "b-*"}, "limits": {"max_tokens": 9}}]}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loaded(name: str, modules: list[str]) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def _detectors_need_numpy() -> bool:
    """Whether the content detectors themselves import numpy: then it loads with them, and
    only then."""
    probe = "import sys, proxy.detectors.registry, proxy.detectors.content\n"
    probe += "print('numpy' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("budget", [False, True], ids=["shipped policy", "token budget"])
def test_the_server_loads_nothing_it_does_not_need_before_its_first_call(
    budget: bool, tmp_path: Path
) -> None:
    extra = []
    if budget:
        config = tmp_path / "tripwire.yaml"
        config.write_text(json.dumps(BUDGET_POLICY))
        extra = ["--config", str(config)]
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_LIST, str(_free_port()), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,  # the shipped policy, rules/policy.yaml, unless the config sets one
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("MODULES ")]
    assert lines, done.stderr[-3000:]
    modules: list[str] = json.loads(lines[0][len("MODULES ") :])
    assert "proxy.app" in modules  # the probe saw a running server
    assert [name for name in NOT_AT_START_UP if _loaded(name, modules)] == []
    if not _detectors_need_numpy():
        assert not _loaded("numpy", modules)


def _vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def _idle_rss(tmp_path: Path, *extra: str) -> int:
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--port", str(port), *extra],
            cwd=ROOT,  # the shipped policy, rules/policy.yaml, unless a config names another
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    try:
        deadline = time.monotonic() + 45
        while not _answers(f"http://127.0.0.1:{port}/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("tripwire serve did not start: " + log.read_text()[-3000:])
            time.sleep(0.05)
        time.sleep(0.5)
        return _vm_rss_bytes(process.pid)
    finally:
        stop(process)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("budget", [False, True], ids=["shipped policy", "token budget"])
def test_an_idle_server_stays_under_80_mb(budget: bool, tmp_path: Path) -> None:
    # Neither the tokenizer nor the price tables load before the first call, budget or not.
    extra: list[str] = []
    if budget:
        config = tmp_path / "tripwire.yaml"
        config.write_text(json.dumps(BUDGET_POLICY))
        extra = ["--config", str(config)]
    rss = _idle_rss(tmp_path, *extra)
    assert rss < 80_000_000, f"idle RSS {rss / 1e6:.1f} MB"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")
@pytest.mark.timeout(120)
def test_calls_without_a_budget_never_load_the_tokenizer_on_redis(
    tmp_path: Path, mock: Any, redis_server: Any
) -> None:
    """On the shared ledger too, the provider's usage books a call no budget applies to: no
    prompt estimate, so no tokenizer, for tagged and untagged calls alike; a task that gets a
    budget of its own through the admin API has its next prompt estimated, and refused."""
    config = redis_config(mock.base_url, redis_server.url, state={"key_prefix": "footprint"})
    replicas = ReplicaSet(tmp_path / "replicas", config, count=1)
    try:
        replica = replicas[0]
        client = openai.OpenAI(base_url=replica.openai_url, api_key="sk", max_retries=0)
        for number in range(3):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"question {number}"}],
                extra_headers={"X-Task-Id": "footprint-task"} if number else {},
            )
        maps = Path(f"/proc/{replica.process.pid}/maps").read_text()
        assert "tiktoken" not in maps
        assert not [line for line in replica.logs() if line.get("event") == "tokenizer_loaded"]
        with (tmp_path / "replicas" / "replica0.admin-token").open() as token_file:
            token = token_file.read().strip()
        resumed = httpx.post(
            f"{replica.base_url}/tripwire/v1/tasks/footprint-task/resume",
            json={"limits": {"max_tokens": 50}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert resumed.status_code == 200, resumed.text
        hits = mock.provider.total_hits
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "the quarterly figures again " * 40}],
                extra_headers={"X-Task-Id": "footprint-task"},
            )
        assert "budget_tokens" in refused.value.message
        assert mock.provider.total_hits == hits
        assert "tiktoken" in Path(f"/proc/{replica.process.pid}/maps").read_text()
    finally:
        replicas.stop()
