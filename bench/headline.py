"""The figures that decide whether the proxy is fast enough, with their ratios to the floor:
the long-task workload, the headline table (the one in the project README), and Redis mode
against embedded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The workloads of the headline, in order: (workload, shape). "many": a task id per call.
WORKLOADS = (
    ("many", "openai-json"),
    ("long", "openai-json"),
    ("long", "openai-sse"),
    ("long", "anthropic-json"),
    ("long", "anthropic-sse"),
)
PROXIES = ("floor", "tripwire", "tripwire-redis")
LABELS = {
    "floor": "floor (bare aiohttp)",
    "tripwire": "Tripwire embedded",
    "tripwire-redis": "Tripwire + Redis",
    "openai-json": "OpenAI JSON",
    "openai-sse": "OpenAI stream",
    "anthropic-json": "Anthropic JSON",
    "anthropic-sse": "Anthropic stream",
    "many": "many tasks",
    "long": "long task",
}
LOW, HIGH = 1, 64


def ratio(mine: float | None, base: float | None) -> float | None:
    """mine / base, or None when either is missing or not positive (an added latency at or
    under the mock's own has no meaningful ratio)."""
    if mine is None or base is None or mine <= 0 or base <= 0:
        return None
    return mine / base


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "" if value is None else f" ({value:.2f}x)"


def _run(results: dict[str, Any], target: str, task: str, shape: str, c: int) -> dict[str, Any]:
    for run in results.get("targets", {}).get(target, {}).get("runs", []):
        if run["shape"] == shape and run["concurrency"] == c and run.get("task", "many") == task:
            return dict(run)
    return {}


def _pct(run: dict[str, Any], field: str, key: str = "p50") -> float | None:
    value = run.get(field, {}).get(key) if run else None
    return None if value is None else float(value)


@dataclass(frozen=True)
class Figures:
    """One target on one workload."""

    added_ms: float | None  # p50 at 1 concurrent over the mock's; streams: time to first byte
    rps: float | None  # calls/s at 64 concurrent
    cpu_ms: float | None  # proxy CPU per call at 64 concurrent
    errors: int


def figures(results: dict[str, Any], target: str, task: str, shape: str) -> Figures:
    field = "ttfb_ms" if shape.endswith("-sse") else "latency_ms"
    low = _run(results, target, task, shape, LOW)
    direct = _run(results, "direct", task, shape, LOW)
    own, base = _pct(low, field), _pct(direct, field)
    high = _run(results, target, task, shape, HIGH)
    return Figures(
        added_ms=None if own is None or base is None else own - base,
        rps=high.get("rps"),
        cpu_ms=high.get("proxy_cpu_ms_per_call"),
        errors=int(low.get("errors", 0)) + int(high.get("errors", 0)),
    )


def long_task(results: dict[str, Any]) -> list[str]:
    """Every workload and target: the three figures and their ratios to the floor."""
    rows = []
    for task, shape in WORKLOADS:
        floor = figures(results, "floor", task, shape)
        for target in PROXIES:
            if target not in results.get("targets", {}):
                continue
            mine = figures(results, target, task, shape)
            rows.append(
                [
                    f"{LABELS[task]}, {LABELS[shape]}",
                    LABELS[target],
                    _fmt(mine.added_ms),
                    _fmt(ratio(mine.added_ms, floor.added_ms)),
                    _fmt(mine.rps, 0),
                    _fmt(ratio(mine.rps, floor.rps)),
                    _fmt(mine.cpu_ms, 3),
                    _fmt(ratio(mine.cpu_ms, floor.cpu_ms)),
                    str(mine.errors),
                ]
            )
    if not rows:
        return []
    head = [
        "workload",
        "target",
        f"added p50 ms at {LOW} (streams: TTFB)",
        "vs floor",
        f"calls/s at {HIGH}",
        "vs floor",
        f"proxy CPU ms per call at {HIGH}",
        "vs floor",
        "errors",
    ]
    return [
        "## Long task and many tasks, against the floor",
        "",
        "Long task: each run is one new task of hundreds of calls (every body and answer "
        "distinct, streams without pauses between deltas); many tasks: a task id per call. "
        f"Added p50 is over the mock's own at {LOW} concurrent call (for streams: time to first "
        f"byte); calls/s and CPU per call (the proxy's CPU seconds over the calls it served, "
        f"warm-up included) at {HIGH}. Ratios are of the row over the floor: under 1 is better "
        "for latency and CPU, over 1 for calls/s.",
        "",
        *_table(head, rows),
    ]


def redis_vs_embedded(results: dict[str, Any]) -> list[str]:
    targets = results.get("targets", {})
    if "tripwire" not in targets or "tripwire-redis" not in targets:
        return []
    rows = []
    for task, shape in WORKLOADS:
        embedded = figures(results, "tripwire", task, shape)
        shared = figures(results, "tripwire-redis", task, shape)
        over = (
            None
            if embedded.added_ms is None or shared.added_ms is None
            else shared.added_ms - embedded.added_ms
        )
        rows.append(
            [
                f"{LABELS[task]}, {LABELS[shape]}",
                _fmt(over),
                _fmt(ratio(shared.rps, embedded.rps)),
                _fmt(ratio(shared.cpu_ms, embedded.cpu_ms)),
            ]
        )
    out = [
        "## Redis mode against embedded",
        "",
        *_table(
            [
                "workload",
                f"added p50 ms over embedded at {LOW} (streams: TTFB)",
                f"calls/s vs embedded at {HIGH}",
                "CPU per call vs embedded",
            ],
            rows,
        ),
    ]
    for line in (detector_line(results), round_trips_line(results), state_steps_line(results)):
        if line:
            out += [line, ""]
    return out


def round_trips(results: dict[str, Any]) -> list[tuple[int, float | None]]:
    """Redis round trips per call of the Redis target's long-task OpenAI JSON runs: the reads
    Redis processed over the calls served (one read per write a client makes, a few for a
    write of tens of kilobytes)."""
    out: list[tuple[int, float | None]] = []
    for concurrency in (LOW, HIGH):
        run = _run(results, "tripwire-redis", "long", "openai-json", concurrency)
        counts = run.get("detector_counts") or {}
        reads, served = counts.get("redis_reads"), counts.get("calls") or run.get("sent")
        out.append((concurrency, reads / served if reads is not None and served else None))
    return out


def round_trips_line(results: dict[str, Any]) -> str:
    if "tripwire-redis" not in results.get("targets", {}):
        return ""
    figures = round_trips(results)
    if all(per_call is None for _, per_call in figures):
        return ""
    each = " and ".join(f"**{_fmt(per_call)}** at {c} concurrent" for c, per_call in figures)
    return (
        f"Redis round trips per call, long task, OpenAI JSON: {each} (the writes Redis read, "
        "from its `INFO stats`, over the calls served; calls made at once share theirs)."
    )


def state_steps(results: dict[str, Any]) -> dict[str, float]:
    """The mean time, in ms, the Redis target's long-task OpenAI JSON calls at 1 concurrent
    waited on their reserve and on their settle (``tripwire_state_backend_seconds``, its growth
    over the run's rounds)."""
    run = _run(results, "tripwire-redis", "long", "openai-json", LOW)
    counts = run.get("detector_counts") or {}
    out: dict[str, float] = {}
    for operation in ("reserve", "settle"):
        seconds, steps = counts.get(f"{operation}_s"), counts.get(f"{operation}_steps")
        if seconds is not None and steps:
            out[operation] = 1000 * seconds / steps
    return out


def state_steps_line(results: dict[str, Any]) -> str:
    steps = state_steps(results)
    if set(steps) != {"reserve", "settle"}:
        return ""
    embedded = figures(results, "tripwire", "long", "openai-json").added_ms
    shared = figures(results, "tripwire-redis", "long", "openai-json").added_ms
    over = None if embedded is None or shared is None else shared - embedded
    return (
        f"Redis steps on a call's path, long task, OpenAI JSON at {LOW} concurrent, as the "
        "proxy waited for them (`tripwire_state_backend_seconds`, mean): the reserve "
        f"**{_fmt(steps['reserve'])} ms** and the settle **{_fmt(steps['settle'])} ms**, "
        f"together **{_fmt(steps['reserve'] + steps['settle'])} ms**, of the "
        f"**{_fmt(over)} ms** Redis added to the p50 over embedded. Each is a round trip to "
        "Redis and its script's run."
    )


def runs_per_completion(low: dict[str, Any], high: dict[str, Any]) -> tuple[float | None, str]:
    """Content-detector runs per completion at high concurrency, and where the figure comes
    from. `low` and `high` are long-task runs at 1 and at 64 concurrent calls, each with the
    growth of the counters read around it (`detector_counts`) and the calls it sent.

    A /metrics counter of detector runs is divided by the completions. Without one, Redis'
    HMGET count is used: the Redis ledger reads a task's detector state with one HMGET before
    every run of the detectors, and its reserve and settle scripts add a fixed number of
    HMGETs per call. At 1 concurrent call no update contends, so the detectors run exactly
    once per completion there; the extra HMGETs per call at 64 are the extra runs."""
    high_counts, low_counts = high.get("detector_counts") or {}, low.get("detector_counts") or {}
    high_calls, low_calls = high.get("sent") or 0, low.get("sent") or 0
    if not high_calls:
        return None, "not measured"
    if high_counts.get("metric") is not None:
        # Over the calls the proxy served by its own count when it has one: wrk does not count
        # the calls in flight when it stops, which the proxy completes all the same.
        served = high_counts.get("calls") or high_calls
        return high_counts["metric"] / served, "/metrics counter"
    hmget_high, hmget_low = high_counts.get("redis_hmget"), low_counts.get("redis_hmget")
    if hmget_high is None or hmget_low is None or not low_calls:
        return None, "not exposed"
    estimate = 1 + hmget_high / high_calls - hmget_low / low_calls
    return estimate, "estimated from Redis HMGET counts"


def detector_runs(results: dict[str, Any]) -> tuple[float | None, str, int]:
    low = _run(results, "tripwire-redis", "long", "openai-json", LOW)
    high = _run(results, "tripwire-redis", "long", "openai-json", HIGH)
    per_call, source = runs_per_completion(low, high)
    return per_call, source, int(high.get("sent") or 0)


def detector_line(results: dict[str, Any]) -> str:
    if "tripwire-redis" not in results.get("targets", {}):
        return ""
    per_call, source, completions = detector_runs(results)
    start = (
        f"Content-detector runs per completion, Redis long task, OpenAI JSON at {HIGH} concurrent"
    )
    if per_call is None:
        return (
            f"{start}: {source} (a counter `tripwire_detector_runs_total` on /metrics would "
            "give it)."
        )
    if source == "/metrics counter":
        return f"{start}: **{per_call:.2f}** over {completions:,} completions ({source})."
    return (
        f"{start}: **about {per_call:.1f}** over {completions:,} completions, {source}: the "
        f"extra HMGETs per call at {HIGH} over those at {LOW} concurrent call (where the "
        "detectors run once per completion), plus one. The proxy exposes no counter of its "
        "own; `tripwire_detector_runs_total` on /metrics would give the figure directly."
    )


def headline(results: dict[str, Any]) -> list[str]:
    """The table the project README shows: one column per target, ratios to the floor."""
    present = [t for t in PROXIES if t in results.get("targets", {})]
    if "floor" not in present:
        return []
    rows: list[list[str]] = []
    for task, shape in WORKLOADS:
        floor = figures(results, "floor", task, shape)
        each = {t: figures(results, t, task, shape) for t in present}
        name = f"{LABELS[task]}, {LABELS[shape]}"
        latency = "time to first byte" if shape.endswith("-sse") else "p50"
        rows.append(
            [f"{name}: added {latency} at {LOW}, ms"]
            + [
                _fmt(f.added_ms) + ("" if t == "floor" else _x(ratio(f.added_ms, floor.added_ms)))
                for t, f in each.items()
            ]
        )
        rows.append(
            [f"{name}: calls/s at {HIGH}"]
            + [
                _fmt(f.rps, 0) + ("" if t == "floor" else _x(ratio(f.rps, floor.rps)))
                for t, f in each.items()
            ]
        )
        rows.append(
            [f"{name}: proxy CPU per call, ms"]
            + [
                _fmt(f.cpu_ms, 3) + ("" if t == "floor" else _x(ratio(f.cpu_ms, floor.cpu_ms)))
                for t, f in each.items()
            ]
        )
    targets = results.get("targets", {})
    rows.append(
        ["RSS idle (after start-up, before traffic), MiB"]
        + [_mib(targets[t].get("rss_idle_kib")) for t in present]
    )
    rows.append(["memory per tracked task", "-", *_per_task(results, present)])
    if "tripwire-redis" in present and "tripwire" in present:
        runs, source, _ = detector_runs(results)
        if runs is None:
            shown = source
        elif source == "/metrics counter":
            shown = f"{runs:.2f}"
        else:
            shown = f"not exposed (about {runs:.1f} from Redis commands)"
        rows.append(
            [f"content-detector runs per completion, long task at {HIGH}"]
            + ["-" for t in present if t != "tripwire-redis"]
            + [shown]
        )
    rows.append(
        ["budget overshoot at 1 / 8 / 32 / 128 streams, tokens", *_overshoot(results, present)]
    )
    head = ["", *[LABELS[t] for t in present]]
    return [
        "## Headline (the README's table)",
        "",
        "Ratios in brackets are to the floor (under 1 is better for latency and CPU, over 1 "
        "for calls/s).",
        "",
        *_table(head, rows),
    ]


def _per_task(results: dict[str, Any], present: list[str]) -> list[str]:
    memory = (results.get("memory") or {}).get("rss") or {}
    keys = results.get("redis_keys") or {}
    http = (results.get("targets") or {}).get("tripwire", {}).get("http_memory") or {}
    out = []
    for target in present[1:]:
        if target == "tripwire" and memory.get("rss_bytes_per_task") is not None:
            cell = f"{memory['rss_bytes_per_task'] / 1000:,.1f} KB (in-process ledger)"
            if http.get("bytes_per_task") is not None:
                # The whole process, after the runs: what a task adds once its caches are full.
                cell += (
                    f"; {http['bytes_per_task'] / 1000:,.1f} KB the whole process, "
                    f"{http['tasks']:,} more tasks over HTTP"
                )
            out.append(cell)
        elif target == "tripwire-redis" and keys.get("bytes_per_task") is not None:
            out.append(f"{keys['bytes_per_task'] / 1000:,.1f} KB in Redis")
        else:
            out.append("-")
    return out


def _overshoot(results: dict[str, Any], present: list[str]) -> list[str]:
    rows = results.get("overshoot") or []
    by_target = {"tripwire": "tripwire", "tripwire-redis": "tripwire-redis x3"}
    out = []
    for target in present:
        if target == "floor":
            out.append("-")
            continue
        levels = [r for r in rows if r["target"] == by_target.get(target)]
        if not levels:
            out.append("not run")
            continue
        figures_ = " / ".join(f"{r['overshoot']:,}" for r in levels)
        out.append(figures_ + (" (3 replicas)" if target == "tripwire-redis" else ""))
    return out


def _mib(kib: int | None) -> str:
    return "-" if not kib else f"{kib / 1024:,.0f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]
