"""Proxy replicas as separate `tripwire serve` processes, sharing one Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.processes import stop as stop_process
from tests.redis_server import free_port


class Replica:
    def __init__(self, config_file: Path, log_file: Path) -> None:
        self.port = free_port()
        self.log_file = log_file
        self._log = log_file.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--config",
                str(config_file),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")},
                # The local admin token stays beside the replica's log, not in the real home.
                "TRIPWIRE_AUTH__LOCAL_ADMIN_FILE": str(log_file.with_suffix(".admin-token")),
            },
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return self.base_url + "/v1"

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("replica exited: " + self.log_file.read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("replica did not start: " + self.log_file.read_text())

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


class ReplicaSet:
    def __init__(self, workdir: Path, config: dict[str, Any], count: int = 3) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config_file = workdir / "tripwire.yaml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.replicas = [Replica(config_file, workdir / f"replica{i}.log") for i in range(count)]
        try:
            for replica in self.replicas:
                replica.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    def __len__(self) -> int:
        return len(self.replicas)

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


def redis_config(mock_url: str, redis_url: str, **extra: Any) -> dict[str, Any]:
    state = {"backend": "redis", "redis_url": redis_url, **extra.pop("state", {})}
    return {
        "upstreams": {
            "openai": {"base_url": mock_url, "format": "openai"},
            "anthropic": {"base_url": mock_url, "format": "anthropic"},
        },
        "state": state,
        **extra,
    }
