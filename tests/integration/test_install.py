"""Installs decided by the lock, not by the day: uv.lock, a lean runtime, the image's build."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = str(Path(sys.executable).parent / "uv")
DEV_ONLY = {
    "pytest",
    "mypy",
    "ruff",
    "hypothesis",
    "openai",
    "anthropic",
    "schemathesis",
    "google-genai",
    "boto3",
    "strands-agents",
}


def _lock() -> dict[str, dict[str, object]]:
    with (ROOT / "uv.lock").open("rb") as file:
        return {package["name"]: package for package in tomllib.load(file)["package"]}


def _runtime_closure() -> set[str]:
    """Every package the runtime pulls in, following the lock's dependency edges (extras
    included), from the project itself without its dev group."""
    packages = _lock()
    seen: set[str] = set()
    todo = ["tripwire-proxy"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        package = packages[name]
        edges = list(package.get("dependencies", []))  # type: ignore[call-overload]
        for extra in (package.get("optional-dependencies") or {}).values():  # type: ignore[attr-defined]
            edges.extend(extra)
        todo.extend(edge["name"] for edge in edges)
    return seen


def test_the_lock_matches_pyproject() -> None:
    # A pyproject change without `make lock` fails here, not on some later day.
    result = subprocess.run(
        [UV, "lock", "--check", "--offline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_runtime_holds_no_test_or_dev_tool() -> None:
    runtime = _runtime_closure()
    assert {"aiohttp", "redis", "pydantic", "prometheus-client"} <= runtime
    assert not runtime & DEV_ONLY


def test_runtime_dependencies_are_bounded_below_the_next_major() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    unbounded = [spec for spec in dependencies if "<" not in spec]
    assert not unbounded


def test_the_makefile_and_the_image_bootstrap_the_uv_the_lock_tests_with() -> None:
    pinned = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned is not None
    locked = _lock()["uv"]["version"]
    assert pinned.group(1) == locked
    assert f"uv=={locked}" in (ROOT / "Dockerfile").read_text()


def _dockerfile_build_stage() -> list[str]:
    """The build stage's instructions, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text.split("FROM ")[1]
    return [line.strip() for line in stage.splitlines() if line.strip()]


def test_the_image_installs_the_runtime_from_the_lock() -> None:
    steps = _dockerfile_build_stage()
    runs = [step[4:] for step in steps if step.startswith("RUN ")]
    syncs = [run for run in runs if run.startswith("uv sync")]
    assert syncs and all("--locked" in run and "--no-dev" in run for run in syncs)
    assert all("--extra otel" in run for run in syncs)  # the chart can turn traces on
    assert not any("pip install ." in run or "pip install -e" in run for run in runs)
    copied = " ".join(step for step in steps if step.startswith("COPY"))
    assert "uv.lock" in copied
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!uv.lock" in ignore, "the build context must carry the lock"


@pytest.mark.timeout(180)
def test_the_image_build_steps_give_a_working_runtime(tmp_path: Path) -> None:
    """No container runtime exists here: run the build stage's own uv steps, as written in the
    Dockerfile, in a scratch folder, and start the result."""
    steps = _dockerfile_build_stage()
    env = {**os.environ}
    for step in steps:
        if step.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", step[4:]))
    target = tmp_path / "image-env"
    env["UV_PROJECT_ENVIRONMENT"] = str(target)
    env.pop("VIRTUAL_ENV", None)
    work = tmp_path / "src"
    work.mkdir()
    for step in steps:
        if step.startswith("COPY "):
            *sources, _ = step[5:].split()
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    shutil.copytree(
                        origin, work / source, ignore=shutil.ignore_patterns("__pycache__", "*.so")
                    )
                else:
                    shutil.copy(origin, work / source)
        elif step.startswith("RUN uv "):
            command = [UV, *step[len("RUN uv ") :].split()]
            result = subprocess.run(
                command, cwd=work, env=env, capture_output=True, text=True, timeout=150
            )
            assert result.returncode == 0, result.stderr
    installed = subprocess.run(
        [str(target / "bin" / "tripwire"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert installed.stdout.strip().startswith("tripwire ")
    site = subprocess.run(
        [
            str(target / "bin" / "python"),
            "-c",
            "import importlib.util as u; print([m for m in "
            f"{sorted(DEV_ONLY)!r} if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert site.stdout.strip() == "[]"
    # The build stage has a C compiler (as the image's does): the detectors' extension is in.
    if shutil.which("cc") or shutil.which("gcc"):
        native = subprocess.run(
            [str(target / "bin" / "python"), "-c", "import proxy.detectors._native"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert native.returncode == 0, native.stderr


def test_the_server_imports_nothing_only_one_command_needs() -> None:
    probe = (
        "import sys\n"
        "from proxy.config import load_config\n"
        "from proxy.app import build_app\n"
        "import proxy.cli, proxy.server.runner\n"
        "build_app(load_config())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grafana_client'"
        " or m.startswith(('proxy.replay', 'proxy.dashboards', 'proxy.demo'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, timeout=30
    )
    from proxy import __version__

    assert result.stdout.strip() == f"tripwire {__version__}"
