"""The benchmark harness: `python -m bench` (quick, about 2 minutes on 2 cores) or `--full`.

One run measures, side by side and against the same mock provider: the mock directly, a
minimal aiohttp pass-through (the floor for a Python proxy), Tripwire embedded, Tripwire with
the Redis backend (when the config accepts it) and LiteLLM's proxy (when bench/.litellm holds
it). Then the budget overshoot under concurrency, memory per tracked task, and what the loop
detectors cost per completion. The report goes to stdout and bench/results/latest.md (+ .json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import pstats
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench import load, overshoot, procs, report, targets
from bench.targets import Context

RESULTS = targets.ROOT / "bench" / "results"
_TASK_IN_KEY = re.compile(r"bench-keys-\d+")


@dataclass(frozen=True)
class Plan:
    mode: str
    warmup_s: float
    json_s: float
    stream_s: float
    json_runs: tuple[tuple[str, int], ...]
    stream_runs: tuple[tuple[str, int], ...]
    long_calls: int  # calls of one task per long-task run
    long_runs: tuple[tuple[str, int], ...]
    budget_levels: tuple[int, ...]
    budget_time_limit_s: float
    memory_tasks: int
    traced_tasks: int
    http_tasks: int  # 0: no HTTP-driven memory run
    redis_key_tasks: int
    profile_s: float
    # Each run is repeated this many times, the targets taking turns (in a new order every
    # round), and the median round is reported: the machine's other work moves a minute's
    # figures by 10-30 %, and would move one target's and not the next one's.
    rounds: int = 3


# The long task: each shape at 1 concurrent call (latency, time to first byte) and 64 (calls/s,
# CPU per call), each run one new task of `long_calls` calls.
LONG_RUNS = tuple(
    (s, c)
    for s in ("openai-json", "openai-sse", "anthropic-json", "anthropic-sse")
    for c in (1, 64)
)
# Long-task streams come without pauses between deltas, so a run of hundreds of streams stays
# short and measures the relay's cost, not the mock's sleeps.
LONG_STREAM_HEADERS = {"x-mock-chunk-delay": "0"}
# Counters a proxy may expose for content-detector runs; the first found is used.
DETECTOR_RUN_COUNTERS = (
    "tripwire_detector_runs_total",
    "tripwire_content_detector_runs_total",
)

QUICK = Plan(
    mode="quick",
    warmup_s=1.0,
    json_s=1.0,
    stream_s=1.0,
    json_runs=(("openai-json", 1), ("openai-json", 8), ("openai-json", 64), ("anthropic-json", 8)),
    stream_runs=(("openai-sse", 8), ("openai-sse", 64), ("anthropic-sse", 8)),
    long_calls=300,
    long_runs=LONG_RUNS,
    budget_levels=(1, 8, 32, 128),
    budget_time_limit_s=20.0,
    memory_tasks=100_000,
    traced_tasks=20_000,
    http_tasks=20_000,
    redis_key_tasks=1_000,
    profile_s=4.0,
)
FULL = Plan(
    mode="full",
    warmup_s=3.0,
    json_s=10.0,
    stream_s=8.0,
    json_runs=tuple((s, c) for s in ("openai-json", "anthropic-json") for c in (1, 8, 64)),
    stream_runs=tuple((s, c) for s in ("openai-sse", "anthropic-sse") for c in (1, 8, 64)),
    long_calls=2_000,
    long_runs=LONG_RUNS,
    budget_levels=(1, 8, 32, 128),
    budget_time_limit_s=60.0,
    memory_tasks=100_000,
    traced_tasks=100_000,
    http_tasks=100_000,
    redis_key_tasks=10_000,
    profile_s=10.0,
)

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cores_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "aiohttp": aiohttp.__version__,
        "wrk": shutil.which("wrk"),
        "tripwire_revision": revision(),
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> str:
    # Other work on the machine during a run shows up here, and in noisier figures.
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def revision() -> str:
    """The commit measured, and whether proxy/ had uncommitted changes at the time."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=targets.ROOT,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "proxy"],
            capture_output=True,
            text=True,
            cwd=targets.ROOT,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (uncommitted changes in proxy/)" if dirty else head


def _load_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextlib.contextmanager
def cpu_meter(pids: dict[str, int]) -> Iterator[tuple[dict[str, float], dict[str, float]]]:
    """CPU share (% of one core) of each process and of the load side while a run lasts, and
    the CPU seconds each process used."""
    shares: dict[str, float] = {}
    used: dict[str, float] = {}
    before = {name: procs.cpu_seconds(pid) for name, pid in pids.items()}
    load_before = _load_cpu()
    started = time.monotonic()
    yield shares, used
    wall = max(time.monotonic() - started, 1e-9)
    for name, pid in pids.items():
        used[name] = procs.cpu_seconds(pid) - before[name]
        shares[name] = 100 * used[name] / wall
    used["load"] = _load_cpu() - load_before
    shares["load"] = 100 * used["load"] / wall


class Bench:
    def __init__(self, plan: Plan, args: argparse.Namespace) -> None:
        self.plan = plan
        self.args = args
        self.use_wrk = bool(shutil.which("wrk")) and not args.no_wrk
        self.running: list[procs.Proc] = []
        self.redis: procs.Proc | None = None
        self.results: dict[str, Any] = {"mode": plan.mode, "targets": {}, "skipped": {}}
        self.notes: list[str] = []

    # -- processes ------------------------------------------------------------------------

    def keep(self, proc: procs.Proc) -> procs.Proc:
        self.running.append(proc)
        return proc

    def stop(self, proc: procs.Proc) -> None:
        proc.stop()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)

    # -- the run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.results["machine"] = machine()
        load_cores, proxy_cores, pin_note = procs.cpu_plan()
        procs.pin_self(load_cores)
        work = Path(tempfile.mkdtemp(prefix="tripwire-bench-"))
        self.ctx = Context(sys.executable, "", work, load_cores, proxy_cores)
        if self.args.tripwire_src is not None:
            self.ctx.tripwire_src = self.args.tripwire_src.resolve()
            self.results["machine"]["tripwire_revision"] = f"source tree {self.ctx.tripwire_src}"
        self.results["pinning"] = pin_note
        self.results["load_generator"] = (
            "wrk (1 thread) for JSON calls, asyncio aiohttp client for streams"
            if self.use_wrk
            else f"asyncio aiohttp client for everything (wrk not found: {load.WRK_INSTALL_HINT})"
        )
        self.results["plan"] = asdict(self.plan)
        mock_settings = {
            "delay_s": self.args.mock_delay,
            "chunks": self.args.chunks,
            "chunk_delay_s": self.args.chunk_delay,
            "reply_tokens": self.args.reply_tokens,
        }
        self.results["mock"] = mock_settings
        say(f"work dir {work}; {pin_note}")
        if not self.use_wrk and not self.args.no_wrk:
            say(f"wrk not found, using the slower asyncio client; install: {load.WRK_INSTALL_HINT}")
        try:
            self.mock = self.keep(self.start_mock())
            self.ctx.mock_url = self.mock.url
            self.results["mock"]["rss_start_kib"] = self.mock.rss_kib()
            self.stage("targets", self.measure_targets)
            self.stage("overshoot", self.measure_overshoot)
            self.stage("memory per task", self.measure_memory)
            self.stage("detector cost", self.measure_detectors)
            if self.args.profile:
                self.stage("profile", self.measure_profile)
            self.results["mock"]["rss_end_kib"] = self.mock.rss_kib()
        finally:
            self.stop_all()
        self.results["notes"] = self.notes
        self.results["machine"]["loadavg_end"] = _loadavg()
        self.results["elapsed_s"] = round(time.monotonic() - _T0, 1)
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
        return self.results

    def stage(self, name: str, step: Callable[[], None]) -> None:
        """One part of the run; a failure is reported and the other parts still run (the
        project moves under the harness, and half a report beats none)."""
        try:
            step()
        except Exception as exc:
            self.notes.append(f"{name} failed: {type(exc).__name__}: {str(exc)[-800:]}")
            say(f"{name} failed: {type(exc).__name__}: {exc}")

    def start_mock(self) -> procs.Proc:
        port = procs.free_port()
        argv = [
            sys.executable,
            "-m",
            "bench.mock",
            "--port",
            str(port),
            "--delay",
            str(self.args.mock_delay),
            "--chunks",
            str(self.args.chunks),
            "--chunk-delay",
            str(self.args.chunk_delay),
            "--reply-tokens",
            str(self.args.reply_tokens),
        ]
        return procs.start(
            "mock",
            argv,
            url=f"http://127.0.0.1:{port}",
            health="/_bench/stats",
            log_dir=self.ctx.work,
            cores=self.ctx.load_cores,
            env={"PYTHONPATH": str(targets.ROOT)},
            cwd=targets.ROOT,
        )

    def wanted(self, name: str) -> bool:
        return self.args.targets is None or name in self.args.targets

    def skip(self, name: str, why: str) -> None:
        self.results["skipped"][name] = why
        say(f"skip {name}: {why}")

    def measure_targets(self) -> None:
        """Every target started at once, warmed up, then each run measured on every target in
        turn, ``plan.rounds`` times; the targets not being measured sit idle."""
        started = self.start_targets()
        measured: dict[str, dict[str, Any]] = {}
        for name, proc in started.items():
            try:
                measured[name] = self.warm_up(name, proc)
            except Exception as exc:
                self.give_up(name, proc, exc)
        for spec in self.run_specs():
            for round_ in range(self.plan.rounds):
                names = list(measured)
                turn = round_ % len(names) if names else 0
                for name in names[turn:] + names[:turn]:
                    proc = started[name]
                    try:
                        row = self.measure_run(name, proc, spec, round_)
                    except Exception as exc:
                        self.give_up(name, proc, exc)
                        del measured[name]
                        continue
                    measured[name]["rounds"].setdefault(spec, []).append(row)
        for name, out in measured.items():
            proc = started[name]
            try:
                self.results["targets"][name] = self.finish(name, proc, out)
            except Exception as exc:
                self.give_up(name, proc, exc)
        for proc in started.values():
            if proc is not None:
                self.stop(proc)

    def start_targets(self) -> dict[str, procs.Proc | None]:
        """The targets wanted, started (None: the mock itself, measured directly)."""
        starters: list[tuple[str, Callable[[], procs.Proc | None]]] = [
            ("floor", lambda: targets.start_floor(self.ctx)),
            ("tripwire", lambda: targets.start_tripwire(self.ctx, "tripwire")),
            ("tripwire-redis", self.start_redis_target),
            ("litellm", self.start_litellm_target),
        ]
        started: dict[str, procs.Proc | None] = {}
        if self.wanted("direct"):
            started["direct"] = None
        for name, starter in starters:
            if not self.wanted(name):
                continue
            try:
                proc = starter()
            except procs.StartError as exc:
                self.skip(name, f"did not start: {exc}")
                continue
            if proc is not None:
                started[name] = self.keep(proc)
        return started

    def give_up(self, name: str, proc: procs.Proc | None, exc: Exception) -> None:
        self.skip(name, f"failed while measured: {type(exc).__name__}: {exc}")
        if proc is not None:
            self.stop(proc)

    def redis_available(self) -> bool:
        """Starts redis-server once when the config accepts the backend; False otherwise."""
        if self.ctx.redis_url is not None:
            return True
        if "redis" in self.results["skipped"]:
            return False
        if not shutil.which("redis-server"):
            self.results["skipped"]["redis"] = "redis-server not found (apt-get install redis)"
            return False
        accepted, why = targets.redis_accepted(self.ctx)
        if not accepted:
            self.results["skipped"]["redis"] = f"the config rejects the Redis backend: {why}"
            return False
        self.redis = self.keep(targets.start_redis(self.ctx))
        return True

    def start_redis_target(self) -> procs.Proc | None:
        if not self.redis_available():
            self.skip("tripwire-redis", self.results["skipped"]["redis"])
            return None
        self.flush_redis()
        return targets.start_tripwire(self.ctx, "tripwire-redis", redis=True)

    def flush_redis(self) -> None:
        assert self.ctx.redis_url is not None
        client = redis.Redis.from_url(self.ctx.redis_url)
        try:
            client.flushall()
        finally:
            client.close()

    def start_litellm_target(self) -> procs.Proc | None:
        if targets.litellm_binary() is None:
            self.skip("litellm", f"not installed; to include it: {targets.LITELLM_INSTALL}")
            return None
        return targets.start_litellm(self.ctx)

    def url_of(self, proc: procs.Proc | None) -> str:
        return self.mock.url if proc is None else proc.url

    def pids_of(self, name: str, proc: procs.Proc | None) -> dict[str, int]:
        pids = {"mock": self.mock.pid}
        if proc is not None:
            pids["proxy"] = proc.pid
        if name == "tripwire-redis" and self.redis is not None:
            pids["redis"] = self.redis.pid
        return pids

    def warm_up(self, name: str, proc: procs.Proc | None) -> dict[str, Any]:
        plan = self.plan
        url = self.url_of(proc)
        out: dict[str, Any] = {"runs": [], "rounds": {}}
        if proc is not None:
            # Right after start-up, before any traffic.
            out["rss_idle_kib"] = proc.rss_kib()
            out["metrics_names"] = metric_names(proc.url)
        say(f"{name}: warm-up")
        self.one_run(url, "openai-json", 8, plan.warmup_s, f"bench-{name}-warm-")
        self.one_run(url, "openai-sse", 8, min(plan.warmup_s, 1.0), f"bench-{name}-warmsse-")
        if proc is not None:
            out["rss_warm_kib"] = proc.rss_kib()
        return out

    def run_specs(self) -> list[tuple[str, int, int | None]]:
        """(shape, concurrency, calls of one task or None for a task per call)."""
        plan = self.plan
        runs: list[tuple[str, int, int | None]] = [
            (shape, c, None) for shape, c in plan.json_runs + plan.stream_runs
        ]
        return runs + [(shape, c, plan.long_calls) for shape, c in plan.long_runs]

    def measure_run(
        self,
        name: str,
        proc: procs.Proc | None,
        spec: tuple[str, int, int | None],
        round_: int,
    ) -> dict[str, Any]:
        shape, concurrency, calls = spec
        stream = load.SHAPES[shape].stream
        seconds = self.plan.stream_s if stream else self.plan.json_s
        tag = f"bench-{name}-{shape}-c{concurrency}-r{round_}-"
        watch = name == "tripwire-redis" and calls is not None and shape == "openai-json"
        before = self.detector_counts(proc) if watch and proc is not None else None
        with cpu_meter(self.pids_of(name, proc)) as (cpu, cpu_s):
            result = self.one_run(
                self.url_of(proc),
                shape,
                concurrency,
                seconds,
                tag,
                extra_headers=LONG_STREAM_HEADERS if calls is not None and stream else None,
                calls=calls,
            )
        row = asdict(result)
        row["cpu_pct"] = cpu
        row["cpu_s"] = cpu_s
        if "proxy" in cpu_s and result.sent:
            row["proxy_cpu_ms_per_call"] = 1000 * cpu_s["proxy"] / result.sent
        if before is not None and proc is not None:
            after = self.detector_counts(proc)
            row["detector_counts"] = {key: _grown(before[key], after.get(key)) for key in before}
        say(
            f"{name}: {shape} c={concurrency} {result.task} task(s) round {round_ + 1}: "
            f"{result.rps:,.0f}/s p50 {result.latency_ms.get('p50', 0):.2f} ms "
            f"p99 {result.latency_ms.get('p99', 0):.2f} ms, errors {result.errors}, "
            f"cpu {', '.join(f'{k} {v:.0f}%' for k, v in cpu.items())}"
        )
        return row

    def finish(self, name: str, proc: procs.Proc | None, out: dict[str, Any]) -> dict[str, Any]:
        """The median round of every run, and what is measured once the runs are over."""
        rounds = out.pop("rounds")
        out["runs"] = [median_row(rows) for rows in rounds.values()]
        if proc is not None:
            out["rss_end_kib"] = proc.rss_kib()
            out["hwm_kib"] = proc.hwm_kib()
            if name == "tripwire" and self.plan.http_tasks:
                out["http_memory"] = self.http_memory(proc)
            if name == "tripwire-redis":
                self.results["redis_keys"] = self.measure_redis_keys(proc)
        out["calls"] = sum(r["requests"] for r in out["runs"])
        return out

    def one_run(
        self,
        url: str,
        shape: str,
        concurrency: int,
        seconds: float,
        prefix: str,
        *,
        extra_headers: dict[str, str] | None = None,
        calls: int | None = None,
    ) -> load.LoadResult:
        return load.run_load(
            url,
            load.SHAPES[shape],
            concurrency,
            seconds,
            prefix,
            use_wrk=self.use_wrk,
            extra_headers=extra_headers,
            calls=calls,
        )

    def detector_counts(self, proc: procs.Proc) -> dict[str, float | None]:
        """What outside the proxy tells how often the content detectors ran: a counter on
        /metrics when the proxy exposes one, and Redis' count of HMGET commands (the Redis
        ledger reads the detector state with one HMGET before each run of the detectors; its
        scripts' own HMGETs are the same for every call, see headline.detector_runs). With
        them, Redis' count of reads: one per write a client makes, its round trips; and the
        calls the proxy served by its own count (wrk leaves the calls in flight when it stops
        out of what it sent, though the proxy completes them)."""
        counts: dict[str, float | None] = {
            "metric": None,
            "redis_hmget": None,
            "redis_reads": None,
            "calls": None,
        }
        found = scrape_counter(proc.url, DETECTOR_RUN_COUNTERS)
        # The detectors run after each response: let the last completions' runs finish.
        for _ in range(20):
            if found is None:
                break
            time.sleep(0.25)
            again = scrape_counter(proc.url, DETECTOR_RUN_COUNTERS)
            if again == found:
                break
            found = again
        if found is not None:
            counts["metric"] = found
        counts["calls"] = scrape_counter(proc.url, ("tripwire_calls_total",))
        # The time the proxy waited on each Redis step, summed, and the steps counted.
        for operation, (seconds, steps) in scrape_state_steps(proc.url).items():
            counts[f"{operation}_s"], counts[f"{operation}_steps"] = seconds, steps
        if self.ctx.redis_url is not None:
            client = redis.Redis.from_url(self.ctx.redis_url)
            try:
                stats = client.info("commandstats")
                reads = client.info("stats").get("total_reads_processed")
            finally:
                client.close()
            counts["redis_hmget"] = float(stats.get("cmdstat_hmget", {}).get("calls", 0))
            counts["redis_reads"] = None if reads is None else float(reads)
        return counts

    def http_memory(self, proc: procs.Proc) -> dict[str, Any]:
        """RSS growth over `http_tasks` calls with distinct task ids, sent through HTTP."""
        tasks = self.plan.http_tasks
        say(f"tripwire: {tasks:,} calls with distinct task ids (memory per task over HTTP)")
        before = proc.rss_kib() or 0
        started = time.monotonic()
        statuses = asyncio.run(
            load.send_calls(proc.url, load.SHAPES["openai-json"], tasks, 32, "bench-mem-")
        )
        after = proc.rss_kib() or 0
        return {
            "tasks": tasks,
            "statuses": dict(statuses),
            "seconds": round(time.monotonic() - started, 1),
            "rss_before_kib": before,
            "rss_after_kib": after,
            "bytes_per_task": (after - before) * 1024 / tasks,
        }

    def measure_redis_keys(self, proc: procs.Proc) -> dict[str, Any]:
        assert self.ctx.redis_url is not None
        tasks = self.plan.redis_key_tasks
        self.flush_redis()
        client = redis.Redis.from_url(self.ctx.redis_url)
        try:
            used_before = int(client.info("memory")["used_memory"])
            statuses = asyncio.run(
                load.send_calls(proc.url, load.SHAPES["openai-json"], tasks, 16, "bench-keys-")
            )
            keys = list(client.scan_iter(count=1000))
            kinds: dict[str, dict[str, int]] = {}
            total = 0
            for key in keys:
                size = int(client.memory_usage(key, samples=0) or 0)
                total += size
                pattern = _TASK_IN_KEY.sub("<task>", key.decode(errors="replace"))
                entry = kinds.setdefault(pattern, {"keys": 0, "bytes": 0})
                entry["keys"] += 1
                entry["bytes"] += size
            used_after = int(client.info("memory")["used_memory"])
        finally:
            client.close()
        ok = int(statuses.get("200", 0))
        return {
            "tasks": tasks,
            "statuses": dict(statuses),
            "keys": len(keys),
            "keys_per_task": len(keys) / ok if ok else None,
            "bytes": total,
            "bytes_per_task": total / ok if ok else None,
            "used_memory_growth_per_task": (used_after - used_before) / ok if ok else None,
            "by_pattern": dict(sorted(kinds.items(), key=lambda kv: -kv[1]["bytes"])[:12]),
        }

    # -- budget overshoot -------------------------------------------------------------------

    def measure_overshoot(self) -> None:
        rows: list[dict[str, Any]] = []
        self.results["overshoot"] = rows
        if self.wanted("tripwire"):
            proc = self.keep(targets.start_tripwire(self.ctx, "tripwire-budget"))
            try:
                rows.extend(self.budget_levels("tripwire", [proc.url]))
            finally:
                self.stop(proc)
        if not self.wanted("tripwire-redis"):
            return
        if not self.redis_available():
            self.skip("overshoot tripwire-redis x3", self.results["skipped"]["redis"])
            return
        self.flush_redis()
        replicas: list[procs.Proc] = []
        try:
            for index in range(3):
                name = f"tripwire-redis-{index + 1}"
                replicas.append(self.keep(targets.start_tripwire(self.ctx, name, redis=True)))
            rows.extend(self.budget_levels("tripwire-redis x3", [p.url for p in replicas]))
        except procs.StartError as exc:
            self.skip("overshoot tripwire-redis x3", f"did not start: {exc}")
        finally:
            for proc in replicas:
                self.stop(proc)

    def budget_levels(self, name: str, urls: list[str]) -> list[dict[str, Any]]:
        rows = []
        run_id = str(int(time.time()))
        for concurrency in self.plan.budget_levels:
            result = asyncio.run(
                overshoot.run_budget(
                    urls,
                    self.mock.url,
                    concurrency,
                    targets.BUDGET_TOKENS,
                    run_id=run_id,
                    time_limit=self.plan.budget_time_limit_s,
                )
            )
            row = asdict(result)
            row.update(target=name, overshoot=result.overshoot, share_used=result.share_used)
            row["other"] = dict(result.other)
            rows.append(row)
            say(
                f"overshoot {name} c={concurrency}: billed {result.billed_tokens:,} of "
                f"{result.budget:,} ({result.share_used:.1%}), 429 retries {result.retries_429}, "
                f"403 {result.refused_403}, {result.seconds:.1f}s"
            )
        return rows

    # -- in-process ---------------------------------------------------------------------------

    def micro(self, *argv: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "bench.micro", *argv],
            capture_output=True,
            text=True,
            timeout=600,
            # Not the repository root: the current directory comes first on sys.path, and
            # --tripwire-src must win over the working tree's proxy/.
            cwd=self.ctx.work,
            env={**os.environ, **self.ctx.tripwire_env()},
        )
        if done.returncode != 0:
            raise RuntimeError(f"bench.micro {' '.join(argv)} failed: {done.stderr[-2000:]}")
        data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return data

    def measure_memory(self) -> None:
        say(f"memory: {self.plan.memory_tasks:,} tasks in a MemoryLedger")
        self.results["memory"] = {
            "rss": self.micro("memory", "--tasks", str(self.plan.memory_tasks)),
            "traced": self.micro("memory", "--tasks", str(self.plan.traced_tasks), "--traced"),
        }

    def measure_detectors(self) -> None:
        say("detectors: fingerprint and settle per completion size")
        self.results["detectors"] = self.micro("detectors")

    def measure_profile(self) -> None:
        say("profile: tripwire under cProfile")
        out = self.ctx.work / "tripwire.prof"
        proc = self.keep(targets.start_profiled_tripwire(self.ctx, out))
        try:
            self.one_run(proc.url, "openai-json", 8, self.plan.profile_s, "bench-prof-")
            self.one_run(proc.url, "openai-sse", 8, self.plan.profile_s, "bench-profsse-")
        finally:
            self.stop(proc)
        if not out.exists():
            self.notes.append("the profiled tripwire wrote no stats")
            return
        self.results["profile"] = profile_rows(out)
        gc_stats = Path(str(out) + ".gc.json")
        if gc_stats.exists():
            self.results["profile"]["gc"] = json.loads(gc_stats.read_text())


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's rounds as one row: the round of median proxy CPU per call (of median calls/s
    where there is no proxy), so every figure of the row comes from one measured round, its
    latencies, calls/s and CPU together; every round's own figures are kept in ``rounds``. The
    detector counts are summed over the rounds."""
    key = "proxy_cpu_ms_per_call" if all("proxy_cpu_ms_per_call" in r for r in rows) else "rps"
    ordered = sorted(rows, key=lambda r: float(r[key]))
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["rounds"] = [
        {
            "rps": r["rps"],
            "p50_ms": r["latency_ms"].get("p50"),
            "ttfb_p50_ms": (r.get("ttfb_ms") or {}).get("p50"),
            "proxy_cpu_ms_per_call": r.get("proxy_cpu_ms_per_call"),
        }
        for r in rows
    ]
    counted = [r["detector_counts"] for r in rows if "detector_counts" in r]
    if counted:
        row["detector_counts"] = {
            name: None
            if any(c.get(name) is None for c in counted)
            else sum(float(c[name]) for c in counted)
            for name in counted[0]
        }
    return row


def _grown(first: float | None, last: float | None) -> float | None:
    return None if first is None or last is None else last - first


def metric_names(url: str) -> list[str]:
    """The metric families a target exposes on /metrics (empty when it has none)."""
    text = _get_text(url + "/metrics")
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return sorted(names)


def scrape_counter(url: str, names: tuple[str, ...]) -> float | None:
    """The sum over all label sets of the first of `names` found on /metrics."""
    text = _get_text(url + "/metrics")
    for name in names:
        base = name.removesuffix("_total")
        samples = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((base + "_total", base + "{", base + " "))
            and not line.startswith("#")
        ]
        if samples:
            return sum(samples)
    return None


_STATE_STEP = re.compile(
    r'^tripwire_state_backend_seconds_(sum|count)\{[^}]*operation="(\w+)"[^}]*\} (\S+)$',
    re.MULTILINE,
)


def scrape_state_steps(url: str) -> dict[str, tuple[float, float]]:
    """Per state backend operation on /metrics (``tripwire_state_backend_seconds``): the
    seconds the proxy waited on its steps, and how many steps; only those of the reserve and
    the settle, the steps on a call's path."""
    found: dict[str, dict[str, float]] = {}
    for kind, operation, value in _STATE_STEP.findall(_get_text(url + "/metrics")):
        if operation in ("reserve", "settle"):
            found.setdefault(operation, {})[kind] = float(value)
    return {
        operation: (figures["sum"], figures["count"])
        for operation, figures in found.items()
        if "sum" in figures and "count" in figures
    }


def _get_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode(errors="replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return ""


def profile_rows(path: Path, top: int = 25) -> dict[str, Any]:
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1e-9
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        rows.append(
            {
                "function": f"{_short(file)}:{line}({func})",
                "calls": calls,
                "tottime_s": tottime,
                "cumtime_s": cumtime,
                "self_pct": 100 * tottime / total,
            }
        )
    by_self = sorted(rows, key=lambda r: -r["tottime_s"])[:top]
    ours = sorted(
        (r for r in rows if r["function"].startswith("proxy/")), key=lambda r: -r["cumtime_s"]
    )[:top]
    return {"total_s": total, "by_self": by_self, "proxy_by_cumulative": ours}


def _short(file: str) -> str:
    if "/proxy/" in file and "site-packages" not in file:
        return "proxy/" + file.rsplit("/proxy/", 1)[1]
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    if str(targets.ROOT) in file:
        return file.split(str(targets.ROOT) + "/", 1)[1]
    return file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Tripwire's benchmark harness (see bench/README.md).",
    )
    parser.add_argument("--full", action="store_true", help="longer runs, both formats at 1/8/64")
    parser.add_argument(
        "--targets",
        type=lambda v: set(v.split(",")),
        help="comma-separated subset of direct,floor,tripwire,tripwire-redis,litellm",
    )
    parser.add_argument("--profile", action="store_true", help="also profile tripwire (cProfile)")
    parser.add_argument("--no-wrk", action="store_true", help="use the asyncio client only")
    parser.add_argument(
        "--tripwire-src",
        type=Path,
        help="run Tripwire from this source tree (a directory holding proxy/), e.g. an export "
        "of another commit, to compare two versions on the same machine",
    )
    parser.add_argument("--mock-delay", type=float, default=0.0, help="seconds before answers")
    parser.add_argument("--chunks", type=int, default=16, help="content deltas per stream")
    parser.add_argument(
        "--chunk-delay", type=float, default=0.002, help="seconds between stream deltas"
    )
    parser.add_argument("--reply-tokens", type=int, default=64, help="completion length")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.md/json go")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = FULL if args.full else QUICK
    bench = Bench(plan, args)
    results = bench.run()
    markdown = report.render(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(markdown)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown)
    say(f"wrote {args.out / 'latest.md'} and latest.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
