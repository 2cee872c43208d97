"""What the harness measures, each started the way an operator would start it.

direct           the mock provider itself: the baseline every "added" figure is taken against
floor            bench/floor.py, the least a Python aiohttp pass-through can cost
tripwire         `tripwire serve --config` with the embedded (in-memory) ledger
tripwire-redis   the same with `state: {backend: redis}`, when the config accepts it
litellm          LiteLLM's proxy with one worker, when bench/.litellm holds it
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import procs

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / "bench" / ".litellm"
LITELLM_INSTALL = (
    "python3 -m venv bench/.litellm && bench/.litellm/bin/pip install 'litellm[proxy]'"
)
BUDGET_TOKENS = 20_000


@dataclass
class Context:
    python: str
    mock_url: str
    work: Path  # configs and logs of this run
    load_cores: set[int] | None
    proxy_cores: set[int] | None
    redis_url: str | None = None
    tripwire_src: Path | None = None  # another source tree of the proxy package, to compare
    notes: list[str] = field(default_factory=list)

    def tripwire_env(self) -> dict[str, str]:
        # bench/ must stay importable for the profiled run, whichever tree Tripwire comes from.
        paths = [str(self.tripwire_src)] if self.tripwire_src else []
        return {"PYTHONPATH": os.pathsep.join([*paths, str(ROOT)])}


def tripwire_config(ctx: Context, port: int, *, redis: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "upstreams": {
            "openai": {"base_url": ctx.mock_url, "format": "openai"},
            "anthropic": {"base_url": ctx.mock_url, "format": "anthropic"},
        },
        # The default limits, plus two rules: benchmark tasks never run out of calls, and the
        # overshoot tasks get a token budget.
        "policy": {
            "rules": [
                {
                    "name": "benchmark traffic",
                    "match": {"task": "bench-*"},
                    "limits": {"max_calls": 1_000_000_000},
                },
                {
                    "name": "overshoot budget",
                    "match": {"task": "budget-*"},
                    "limits": {"max_tokens": BUDGET_TOKENS, "max_calls": 1_000_000},
                },
            ]
        },
    }
    if redis:
        config["state"] = {"backend": "redis", "redis_url": ctx.redis_url or "redis://127.0.0.1:1"}
    return config


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def redis_accepted(ctx: Context) -> tuple[bool, str]:
    """Whether this checkout's config accepts the Redis backend, asked the way an operator
    would: `tripwire check-config`."""
    path = write_yaml(ctx.work / "check-redis.yaml", tripwire_config(ctx, 0, redis=True))
    done = subprocess.run(
        [ctx.python, "-m", "proxy", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ctx.work,
        env={**os.environ, **ctx.tripwire_env()},
    )
    if done.returncode == 0:
        return True, ""
    lines = [x.strip() for x in (done.stderr or done.stdout).splitlines() if x.strip()]
    return False, " ".join(lines[:3])[:300]


def start_proxy(
    ctx: Context,
    name: str,
    argv: list[str],
    port: int,
    *,
    health: str = "/healthz",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> procs.Proc:
    """A proxy under test, on the proxy's cores, answering on ``port`` (Tripwire's environment
    and this run's folder unless told otherwise)."""
    return procs.start(
        name,
        argv,
        url=f"http://127.0.0.1:{port}",
        health=health,
        log_dir=ctx.work,
        cores=ctx.proxy_cores,
        env=ctx.tripwire_env() if env is None else env,
        cwd=ctx.work if cwd is None else cwd,
        timeout=timeout,
    )


def start_tripwire(
    ctx: Context, name: str, *, redis: bool = False, python: str | None = None
) -> procs.Proc:
    port = procs.free_port()
    path = write_yaml(ctx.work / f"{name}.yaml", tripwire_config(ctx, port, redis=redis))
    argv = [python or ctx.python, "-m", "proxy", "serve", "--config", str(path)]
    return start_proxy(ctx, name, argv, port)


def start_profiled_tripwire(ctx: Context, profile_out: Path) -> procs.Proc:
    port = procs.free_port()
    path = write_yaml(ctx.work / "tripwire-profiled.yaml", tripwire_config(ctx, port))
    argv = [ctx.python, "-m", "bench.profiled", str(profile_out), "serve", "--config", str(path)]
    return start_proxy(ctx, "tripwire-profiled", argv, port)


def start_floor(ctx: Context) -> procs.Proc:
    port = procs.free_port()
    argv = [ctx.python, "-m", "bench.floor", "--port", str(port), "--upstream", ctx.mock_url]
    return start_proxy(ctx, "floor", argv, port, env={"PYTHONPATH": str(ROOT)}, cwd=ROOT)


def litellm_binary() -> Path | None:
    binary = LITELLM_VENV / "bin" / "litellm"
    return binary if binary.exists() else None


def start_litellm(ctx: Context) -> procs.Proc:
    binary = litellm_binary()
    assert binary is not None
    port = procs.free_port()
    config = {
        "model_list": [
            {
                "model_name": "gpt-4o-mini",
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    "api_base": ctx.mock_url + "/v1",
                    "api_key": "sk-bench",
                },
            },
            {
                "model_name": "claude-sonnet-4-5",
                "litellm_params": {
                    "model": "anthropic/claude-sonnet-4-5",
                    "api_base": ctx.mock_url,
                    "api_key": "sk-bench",
                },
            },
        ],
        "litellm_settings": {"drop_params": True, "telemetry": False},
        # LiteLLM refuses to start without one; the clients already send this key.
        "general_settings": {"master_key": "sk-bench"},
    }
    path = write_yaml(ctx.work / "litellm.yaml", config)
    argv = [
        str(binary),
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {
        # Offline: the model price map ships with the package; no fetch at start-up.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    return start_proxy(
        ctx, "litellm", argv, port, health="/health/liveliness", env=env, timeout=120
    )


def start_redis(ctx: Context) -> procs.Proc:
    port = procs.free_port()
    argv = [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    proc = procs.start(
        "redis-server",
        argv,
        url=f"http://127.0.0.1:{port}",
        health=None,
        log_dir=ctx.work,
        cores=ctx.load_cores,
        cwd=ctx.work,
    )
    ctx.redis_url = f"redis://127.0.0.1:{port}/0"
    return proc


def python_for_bench() -> str:
    return sys.executable
