"""Instructions per call, counted by callgrind: `python -m bench.instructions`.

CPU seconds per call move with whatever else the machine runs (caches, frequency, the other
core's load); the number of instructions a process executes for a call does not. This runs
each target under `valgrind --tool=callgrind` with counting off during start-up, sends a few
unrecorded calls, then counts the instructions of the next `--calls` calls of one task (the
long-task workload, one call at a time) and divides. Slow (each target runs about 50 times
slower than native), so it is not part of `make bench`; it needs Debian's `valgrind`.

Instructions are not time: a cache miss costs no instruction and a syscall's kernel work is not
counted. Compare targets within one run, as the ratios in `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import load, procs, targets

SHAPES = ("openai-json", "openai-sse")


def _counted(out_prefix: Path) -> int:
    """The instructions of the dump made while counting (the final dump at exit holds none)."""
    counted = 0
    for path in out_prefix.parent.glob(out_prefix.name + "*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                counted = max(counted, int(line.split()[1]))
    return counted


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, timeout=60)


def _argv(name: str, ctx: targets.Context, port: int, redis: bool) -> list[str]:
    if name == "floor":
        upstream = ctx.mock_url
        return [sys.executable, "-m", "bench.floor", "--port", str(port), "--upstream", upstream]
    config = targets.tripwire_config(ctx, port, redis=redis)
    path = targets.write_yaml(ctx.work / f"{name}.yaml", config)
    return [sys.executable, "-m", "proxy", "serve", "--config", str(path)]


def measure(
    name: str, ctx: targets.Context, shape: load.Shape, calls: int, redis: bool = False
) -> dict[str, Any]:
    port = procs.free_port()
    out = ctx.work / f"callgrind-{name}-{shape.name}.out"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *_argv(name, ctx, port, redis),
    ]
    proc = targets.start_proxy(ctx, f"{name}-{shape.name}", argv, port, timeout=300)
    try:
        task = f"bench-instructions-{name}-{shape.name}-"
        # Connections open and every lazy table loads before counting starts.
        asyncio.run(load.run_client(proc.url, shape, 1, 60, task + "warm", calls=30))
        _control(proc.pid, "-i", "on")
        result = asyncio.run(load.run_client(proc.url, shape, 1, 600, task, calls=calls))
        _control(proc.pid, "-i", "off")
        _control(proc.pid, "-d")
        time.sleep(1.0)
        counted = _counted(out)
    finally:
        proc.stop(timeout=60)
    # The client's unrecorded opening round was counted too: divide by every call it sent.
    return {
        "target": name,
        "shape": shape.name,
        "calls": result.sent,
        "errors": result.errors,
        "instructions_per_call": counted / result.sent if result.sent else 0.0,
    }


def render(rows: list[dict[str, Any]]) -> str:
    floors = {r["shape"]: r["instructions_per_call"] for r in rows if r["target"] == "floor"}
    lines = [
        "| workload (long task, 1 call at a time) | target | instructions per call (M) "
        "| vs floor | calls | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        floor = floors.get(r["shape"])
        ratio = f"{r['instructions_per_call'] / floor:.2f}" if floor else "-"
        lines.append(
            f"| {r['shape']} | {r['target']} | {r['instructions_per_call'] / 1e6:.3f} | {ratio} "
            f"| {r['calls']} | {r['errors']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--calls", type=int, default=300, help="counted calls per target")
    parser.add_argument("--redis", action="store_true", help="also Tripwire on Redis")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control") if not shutil.which(tool)]
    if missing:
        print(f"not found: {', '.join(missing)} (apt-get install valgrind)", file=sys.stderr)
        return 2
    load_cores, proxy_cores, _ = procs.cpu_plan()
    procs.pin_self(load_cores)
    with tempfile.TemporaryDirectory(prefix="tripwire-instructions-") as scratch:
        work = Path(scratch)
        mock_port = procs.free_port()
        mock = procs.start(
            "mock",
            [sys.executable, "-m", "bench.mock", "--port", str(mock_port), "--chunk-delay", "0"],
            url=f"http://127.0.0.1:{mock_port}",
            health="/_bench/stats",
            log_dir=work,
            cores=load_cores,
            env={"PYTHONPATH": str(targets.ROOT)},
            cwd=targets.ROOT,
        )
        ctx = targets.Context(sys.executable, mock.url, work, load_cores, proxy_cores)
        redis_server = None
        rows = []
        try:
            names = ["floor", "tripwire"]
            if args.redis:
                redis_server = targets.start_redis(ctx)
                names.append("tripwire-redis")
            for shape_name in SHAPES:
                for name in names:
                    row = measure(
                        name, ctx, load.SHAPES[shape_name], args.calls, name == "tripwire-redis"
                    )
                    print(
                        f"{row['target']} {row['shape']}: "
                        f"{row['instructions_per_call'] / 1e6:.3f} M instructions per call",
                        file=sys.stderr,
                        flush=True,
                    )
                    rows.append(row)
        finally:
            if redis_server is not None:
                redis_server.stop()
            mock.stop()
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
