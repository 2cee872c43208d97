"""Processes under test: start pinned, wait until they answer, read their memory, stop by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_plan() -> tuple[set[int] | None, set[int] | None, str]:
    """(cores for the mock and the load, cores for the proxy, how it was decided).

    With two cores or more, the proxy gets one to itself: what it can do then is not shared
    with the load it is measured by.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None, "not pinned: this platform has no sched_setaffinity"
    if len(allowed) < 2:
        return None, None, f"not pinned: only {len(allowed)} core available"
    load, proxy = {allowed[0]}, {allowed[1]}
    note = (
        f"mock provider, load generator, harness and redis-server on core {allowed[0]}; "
        f"the proxy under test on core {allowed[1]}"
    )
    if len(allowed) > 2:
        note += f" ({len(allowed) - 2} more cores left idle)"
    return load, proxy, note


def pin_self(cores: set[int] | None) -> None:
    if cores:
        os.sched_setaffinity(0, cores)


def _status_kib(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found.extend(children)
                pending.extend(children)
    return found


def rss_kib(pid: int, *, tree: bool = True) -> int | None:
    """VmRSS of the process, plus its descendants (LiteLLM may fork a worker)."""
    own = _status_kib(pid, "VmRSS")
    if own is None or not tree:
        return own
    return own + sum(_status_kib(child, "VmRSS") or 0 for child in descendants(pid))


def hwm_kib(pid: int) -> int | None:
    return _status_kib(pid, "VmHWM")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return bool(200 <= answer.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log: Path
    cores: set[int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid)

    def hwm_kib(self) -> int | None:
        return hwm_kib(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group this harness created for it, then SIGKILL."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(5)


class StartError(RuntimeError):
    pass


def start(
    name: str,
    argv: Sequence[str],
    *,
    url: str,
    health: str | None,
    log_dir: Path,
    cores: set[int] | None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> Proc:
    """Start `argv` in its own process group pinned to `cores`, and wait until `health`
    answers 2xx (or, without one, until the port accepts connections)."""
    log = log_dir / f"{name}.log"
    handle = log.open("wb")

    def pin() -> None:
        if cores:
            os.sched_setaffinity(0, cores)

    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=str(cwd) if cwd else None,
        preexec_fn=pin,
        process_group=0,
    )
    handle.close()
    proc = Proc(name, popen, url, log, cores)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise StartError(f"{name} exited with {popen.returncode}:\n{proc.log_tail()}")
        if health is not None and http_ok(url + health):
            return proc
        if health is None and _port_open(url):
            return proc
        time.sleep(0.1)
    proc.stop()
    raise StartError(f"{name} did not answer within {timeout:.0f} s:\n{proc.log_tail()}")


def _port_open(url: str) -> bool:
    host, _, port = url.split("//", 1)[1].partition(":")
    try:
        with socket.create_connection((host, int(port.split("/")[0])), timeout=0.5):
            return True
    except OSError:
        return False


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User plus system CPU time of the process (and its descendants) so far."""

    def own(one: int) -> float:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _TICKS

    total = own(pid)
    if tree:
        total += sum(own(child) for child in descendants(pid))
    return total
