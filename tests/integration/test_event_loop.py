"""`tripwire serve` runs on uvloop when the `uvloop` extra is installed, as in the image."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import openai
import pytest

from tests.harness import MockProviderThread
from tests.replicas import Replica


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_serve_runs_on_uvloop_and_forwards(mock: MockProviderThread, tmp_path: Path) -> None:
    config = {
        "upstreams": {
            "openai": {"base_url": mock.base_url, "format": "openai"},
            "anthropic": {"base_url": mock.base_url, "format": "anthropic"},
        },
        "logging": {"format": "json"},
    }
    config_file = tmp_path / "tripwire.yaml"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    replica = Replica(config_file, tmp_path / "replica.log")
    try:
        replica.wait_ready()
        client = openai.OpenAI(base_url=replica.openai_url, api_key="sk", max_retries=0)
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
        assert answer.choices[0].message.content
        deadline = time.monotonic() + 5
        # Read as text: the start-up summary on the same stream may share the log line's line.
        listening = ""
        while '"event":"listening"' not in listening and time.monotonic() < deadline:
            listening = replica.log_file.read_text(encoding="utf-8")
            time.sleep(0.05)
    finally:
        replica.stop()
    assert '"event":"listening"' in listening
    assert '"event_loop":"uvloop"' in listening
