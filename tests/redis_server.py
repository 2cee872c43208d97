"""Real redis-server processes for the tests, on free ports of 127.0.0.1, stopped by pid."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


# The state store's timeout for proxies whose tests are not about Redis failing: a test
# server shared by the whole suite on a busy 2-core machine can stall past the 1 s default,
# and a call then (rightly) fails closed with a 503 the test did not set out to cause.
PATIENT_REDIS_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, as Redis Cluster needs."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"redis-server on port {port} did not start")


class RedisServer:
    """One redis-server; ``stop()`` and ``start()`` again on the same port to simulate an outage."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class RedisClusterServers:
    """Three masters joined with ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path) -> None:
        if REDIS_CLI is None:
            pytest.fail("redis-cli is not installed")
        self.nodes: list[RedisServer] = []
        try:
            for i in range(3):
                self.nodes.append(
                    RedisServer(
                        workdir / f"node{i}",
                        free_cluster_port(),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    )
                )
            assert REDIS_CLI is not None
            subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ok(self) -> None:
        assert REDIS_CLI is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = subprocess.run(
                [REDIS_CLI, "-p", str(self.nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            if "cluster_state:ok" in info:
                return
            time.sleep(0.1)
        raise TimeoutError("the Redis cluster did not become ready")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """One ``redis-server --sentinel`` watching ``service`` on a primary, alone (quorum 1), with
    short timeouts so that a failover takes a second or two."""

    def __init__(
        self,
        workdir: Path,
        primary_port: int,
        service: str = "mymaster",
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
        self.port = free_port()
        self.service = service
        workdir.mkdir(parents=True, exist_ok=True)
        # Sentinel rewrites its configuration file as it learns the topology: it must be
        # writable, and this process's own.
        self.config = workdir / "sentinel.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {workdir}",
                    f"sentinel monitor {service} 127.0.0.1 {primary_port} 1",
                    f"sentinel down-after-milliseconds {service} {down_after_ms}",
                    f"sentinel failover-timeout {service} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {service} 1",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [REDIS_SERVER, str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port(self.port, self.process)
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
