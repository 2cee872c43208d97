"""The Markdown report of one harness run."""

from __future__ import annotations

from typing import Any

from bench import headline

ORDER = ("direct", "floor", "tripwire", "tripwire-redis", "litellm")


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _mib(kib: int | None) -> str:
    return "-" if not kib else f"{kib / 1024:,.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _runs(results: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    found = {}
    for name, target in results.get("targets", {}).items():
        for run in target.get("runs", []):
            if run.get("task", "many") != "many":
                continue  # the long task has its own section (bench/headline.py)
            found[(name, run["shape"], run["concurrency"])] = run
    return found


def _names(results: dict[str, Any]) -> list[str]:
    present = results.get("targets", {})
    return [n for n in ORDER if n in present] + [n for n in present if n not in ORDER]


def _pct(run: dict[str, Any] | None, field: str, key: str) -> float | None:
    if run is None:
        return None
    value = run.get(field, {}).get(key)
    return float(value) if value is not None else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def render(results: dict[str, Any]) -> str:
    out: list[str] = [f"# Tripwire benchmark ({results.get('mode', '?')} mode)", ""]
    out += _setup(results)
    out += _errors(results)
    out += headline.headline(results)
    out += headline.long_task(results)
    out += headline.redis_vs_embedded(results)
    out += _summary(results)
    out += _json_detail(results)
    out += _streams(results)
    out += _memory_rows(results)
    out += _overshoot(results)
    out += _per_task(results)
    out += _detectors(results)
    out += _profile(results)
    skipped = results.get("skipped", {})
    notes = results.get("notes", [])
    if skipped or notes:
        out += ["## Skipped and notes", ""]
        out += [f"- **{name}**: {why}" for name, why in skipped.items()]
        out += [f"- {note}" for note in notes]
        out.append("")
    return "\n".join(out)


def _errors(results: dict[str, Any]) -> list[str]:
    """Runs with failed calls measure the error path, not the proxy: say so up front."""
    bad = [
        f"{name} {run['shape']} c={run['concurrency']} ({run.get('task', 'many')} task): "
        f"{run['errors']:,} of {run['requests']:,} calls failed "
        f"({', '.join(f'{k}: {v}' for k, v in run.get('statuses', {}).items()) or 'see log'})"
        for name, target in results.get("targets", {}).items()
        for run in target.get("runs", [])
        if run["errors"] > max(1, run["requests"] // 1000)
    ]
    if not bad:
        return []
    return [
        "**Warning: some runs had failed calls; their figures are not comparable.**",
        "",
        *[f"- {line}" for line in bad],
        "",
    ]


def _setup(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    mock = results.get("mock", {})
    plan = results.get("plan", {})
    return [
        "## Setup",
        "",
        f"- Machine: {m.get('cpu_model')}, nproc {m.get('nproc')} "
        f"({m.get('cores_allowed')} allowed), {m.get('memory_gib')} GiB, Linux {m.get('kernel')}",
        f"- Python {m.get('python')}, aiohttp {m.get('aiohttp')}; run on {m.get('date')}, "
        f"took {results.get('elapsed_s')} s",
        f"- Tripwire revision: {m.get('tripwire_revision')}",
        f"- Load average (1, 5, 15 min) at start {m.get('loadavg_start')}, at end "
        f"{m.get('loadavg_end')}: other work on the machine makes figures noisier",
        f"- Pinning: {results.get('pinning')}",
        f"- Load: {results.get('load_generator')}; closed loop at fixed concurrency, "
        f"{plan.get('json_s')} s per JSON run, {plan.get('stream_s')} s per stream run, "
        f"after {plan.get('warmup_s')} s of warm-up",
        f"- Rounds: every run measured {plan.get('rounds', 1)} times, the targets taking turns "
        "(all of them started at once, idle while another is measured), in a new order every "
        "round; each row is the round of median proxy CPU per call (calls/s for the mock "
        "itself), with all its figures from that round",
        f"- Mock provider (bench/mock.py): answer delay {mock.get('delay_s')} s, "
        f"{mock.get('reply_tokens')} completion tokens, streams of {mock.get('chunks')} deltas "
        f"{mock.get('chunk_delay_s')} s apart; RSS {_mib(mock.get('rss_end_kib'))} MiB at the end",
        "- Many tasks: every call has its own task id; long task: every call of a run has the "
        f"same one ({plan.get('long_calls')} calls per run; a JSON run on wrk is 1 s of calls "
        "instead, since wrk cannot stop at a count). Every body and answer is distinct "
        "(default policy; benchmark tasks get `max_calls` raised), so no limit or loop "
        "detector trips.",
        "",
    ]


def _summary(results: dict[str, Any]) -> list[str]:
    runs = _runs(results)
    names = _names(results)
    if not names:
        return []
    concurrencies = sorted({c for (_, s, c) in runs if s == "openai-json"})
    head = ["target", "added p50 ms", "added p90 ms", "added p99 ms"]
    head += [f"calls/s c={c}" for c in concurrencies]
    top = concurrencies[-1] if concurrencies else 0
    head += [f"vs floor (c={top})", f"vs LiteLLM (c={top})", "RSS warm MiB"]
    rows = []
    low = concurrencies[0] if concurrencies else 1
    direct = runs.get(("direct", "openai-json", low))
    for name in names:
        at_low = runs.get((name, "openai-json", low))
        row = [name]
        for key in ("p50", "p90", "p99"):
            own = _pct(at_low, "latency_ms", key)
            added = _minus(own, _pct(direct, "latency_ms", key))
            row.append("(baseline)" if name == "direct" else _f(added))
        for c in concurrencies:
            run = runs.get((name, "openai-json", c))
            row.append(_f(run["rps"], 0) if run else "-")
        mine = runs.get((name, "openai-json", top))
        floor = runs.get(("floor", "openai-json", top))
        litellm = runs.get(("litellm", "openai-json", top))
        rps = mine["rps"] if mine else None
        row.append(_ratio(rps, floor["rps"] if floor else None))
        row.append(_ratio(rps, litellm["rps"] if litellm else None))
        row.append(_mib(results["targets"][name].get("rss_warm_kib")))
        rows.append(row)
    return [
        "## Summary: OpenAI chat JSON",
        "",
        f"Added latency is the target's percentile minus the mock's own at concurrency {low}; "
        "ratios are calls/s of the row over calls/s of the floor (the minimal aiohttp "
        "pass-through) and of LiteLLM.",
        "",
        *_table(head, rows),
    ]


def _json_detail(results: dict[str, Any]) -> list[str]:
    runs = _runs(results)
    shapes = sorted({s for (_, s, _) in runs if s.endswith("-json")})
    rows = []
    for shape in shapes:
        for c in sorted({c for (_, s, c) in runs if s == shape}):
            direct = runs.get(("direct", shape, c))
            floor = runs.get(("floor", shape, c))
            litellm = runs.get(("litellm", shape, c))
            for name in _names(results):
                run = runs.get((name, shape, c))
                if run is None:
                    continue
                cpu = run.get("cpu_pct", {})
                rows.append(
                    [
                        name,
                        shape,
                        str(c),
                        _f(run["rps"], 0),
                        _f(_pct(run, "latency_ms", "p50")),
                        _f(_pct(run, "latency_ms", "p90")),
                        _f(_pct(run, "latency_ms", "p99")),
                        _f(
                            _minus(
                                _pct(run, "latency_ms", "p50"), _pct(direct, "latency_ms", "p50")
                            )
                        ),
                        _f(
                            _minus(
                                _pct(run, "latency_ms", "p99"), _pct(direct, "latency_ms", "p99")
                            )
                        ),
                        _ratio(run["rps"], floor["rps"] if floor else None),
                        _ratio(run["rps"], litellm["rps"] if litellm else None),
                        _f(cpu.get("proxy"), 0),
                        _f(cpu.get("mock"), 0),
                        str(run["errors"]),
                    ]
                )
    head = [
        "target",
        "shape",
        "c",
        "calls/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "added p50",
        "added p99",
        "vs floor",
        "vs LiteLLM",
        "proxy CPU %",
        "mock CPU %",
        "errors",
    ]
    return [
        "## JSON calls in detail",
        "",
        "CPU % is of one core over the run (100 = the proxy's core is saturated).",
        "",
        *_table(head, rows),
    ]


def _streams(results: dict[str, Any]) -> list[str]:
    runs = _runs(results)
    shapes = sorted({s for (_, s, _) in runs if s.endswith("-sse")})
    chunks = results.get("mock", {}).get("chunks") or 1
    rows = []
    for shape in shapes:
        for c in sorted({c for (_, s, c) in runs if s == shape}):
            direct = runs.get(("direct", shape, c))
            for name in _names(results):
                run = runs.get((name, shape, c))
                if run is None:
                    continue
                ttfb = _pct(run, "ttfb_ms", "p50")
                total = _pct(run, "latency_ms", "p50")
                # Chunks whose x_sent stamp did not survive (a proxy that re-serializes them)
                # are timed from the whole stream instead.
                spread = _minus(total, ttfb)
                direct_spread = _minus(
                    _pct(direct, "latency_ms", "p50"), _pct(direct, "ttfb_ms", "p50")
                )
                per_chunk_from_total = _minus(spread, direct_spread)
                rows.append(
                    [
                        name,
                        shape,
                        str(c),
                        _f(run["rps"], 0),
                        _f(ttfb),
                        _f(_pct(run, "ttfb_ms", "p99")),
                        _f(_minus(ttfb, _pct(direct, "ttfb_ms", "p50"))),
                        _f(_pct(run, "chunk_delay_ms", "p50"), 3),
                        _f(_pct(run, "chunk_delay_ms", "p99"), 3),
                        _f(
                            _minus(
                                _pct(run, "chunk_delay_ms", "p50"),
                                _pct(direct, "chunk_delay_ms", "p50"),
                            ),
                            3,
                        ),
                        _f(
                            None if per_chunk_from_total is None else per_chunk_from_total / chunks,
                            3,
                        ),
                        _f(total),
                        _f(run.get("cpu_pct", {}).get("proxy"), 0),
                        str(run["errors"]),
                    ]
                )
    head = [
        "target",
        "shape",
        "c",
        "streams/s",
        "TTFB p50 ms",
        "TTFB p99 ms",
        "added TTFB p50",
        "chunk delay p50 ms",
        "chunk delay p99 ms",
        "added per chunk p50",
        "added per chunk (from totals)",
        "stream p50 ms",
        "proxy CPU %",
        "errors",
    ]
    return [
        "## Streams",
        "",
        "Chunk delay: from the mock writing a content delta (its `x_sent` stamp) to the client "
        "reading it. The last-but-one column spreads the whole stream's extra time over its "
        "deltas, for proxies that drop the stamp.",
        "",
        *_table(head, rows),
    ]


def _memory_rows(results: dict[str, Any]) -> list[str]:
    rows = []
    for name in _names(results):
        target = results["targets"][name]
        if "rss_warm_kib" not in target:
            continue
        rows.append(
            [
                name,
                _mib(target.get("rss_idle_kib")),
                _mib(target.get("rss_warm_kib")),
                _mib(target.get("rss_end_kib")),
                _mib(target.get("hwm_kib")),
                f"{target.get('calls', 0):,}",
            ]
        )
    if not rows:
        return []
    head = [
        "target",
        "RSS idle MiB",
        "RSS after warm-up MiB",
        "RSS at end MiB",
        "peak MiB",
        "calls measured",
    ]
    out = ["## Memory of the proxy process", "", *_table(head, rows)]
    http = results.get("targets", {}).get("tripwire", {}).get("http_memory")
    if http:
        out += [
            f"Tripwire embedded, {http['tasks']:,} calls with distinct task ids over HTTP: RSS "
            f"{_mib(http['rss_before_kib'])} → {_mib(http['rss_after_kib'])} MiB, "
            f"{http['bytes_per_task']:,.0f} bytes per task ({http['seconds']} s).",
            "",
        ]
    return out


def _overshoot(results: dict[str, Any]) -> list[str]:
    rows = results.get("overshoot") or []
    if not rows:
        return []
    table = []
    for row in rows:
        table.append(
            [
                row["target"],
                str(row["concurrency"]),
                f"{row['budget']:,}",
                f"{row['billed_tokens']:,}",
                f"{row['overshoot']:,}",
                f"{row['share_used']:.1%}",
                "-" if row["proxy_tokens_used"] is None else f"{row['proxy_tokens_used']:,}",
                str(row["calls_ok"]),
                str(row["retries_429"]),
                str(row["gave_up_429"]),
                str(row["refused_403"]),
                _f(row["seconds"], 1) + (" (time limit)" if row["timed_out"] else ""),
            ]
        )
    head = [
        "target",
        "concurrent streams",
        "budget",
        "provider billed",
        "overshoot",
        "budget used",
        "Tripwire's figure at refusal",
        "calls ok",
        "429 retried",
        "429 gave up",
        "403",
        "seconds",
    ]
    return [
        "## Budget overshoot",
        "",
        "One task with `max_tokens` 20,000; every agent streams calls asking for up to 1,024 "
        "tokens (the mock answers 800), retries a 429 after its Retry-After at most twice as "
        "the SDKs do, and stops at its first 403. Provider billed = prompt + completion tokens "
        "the mock served.",
        "",
        *_table(head, table),
    ]


def _per_task(results: dict[str, Any]) -> list[str]:
    memory = results.get("memory")
    out: list[str] = []
    if memory:
        rss, traced = memory["rss"], memory["traced"]
        rows = [
            [
                "RSS growth (VmRSS)",
                f"{rss['tasks']:,}",
                _f(rss["rss_bytes_per_task"], 0),
                _f(rss["rss_growth_kib"] / 1024, 1),
                _f(rss["us_per_reserve_settle"], 1),
            ],
            [
                "tracemalloc",
                f"{traced['tasks']:,}",
                _f(traced["traced_bytes_per_task"], 0),
                _f(traced["traced_bytes"] / 1024 / 1024, 1),
                "(traced)",
            ],
        ]
        head = ["measured by", "tasks", "bytes per task", "MiB in all", "µs per task filled"]
        out += [
            "## Memory per tracked task (embedded ledger, in-process)",
            "",
            "A `MemoryLedger` with one reserved and settled call per task (one agent, output "
            "and request fingerprints in their windows, the content detectors' state of its "
            "answer), as one completed call leaves a task.",
            "",
            *_table(head, rows),
        ]
        if "full_gc_ms" in rss:
            out += [
                f"With {rss['tasks']:,} tasks tracked the interpreter holds "
                f"{rss['gc_objects']:,} GC-tracked objects, and one full collection takes "
                f"{rss['full_gc_ms']:,.0f} ms: the event loop, and every call in flight, stands "
                "still that long whenever CPython decides to run one.",
                "",
            ]
    keys = results.get("redis_keys")
    if keys:
        out += [
            "## Redis state per task",
            "",
            f"{keys['tasks']:,} calls of distinct tasks through Tripwire (Redis backend): "
            f"{keys['keys']:,} keys, {_f(keys['keys_per_task'])} keys and "
            f"{_f(keys['bytes_per_task'], 0)} bytes per task by `MEMORY USAGE` "
            f"(used_memory grew {_f(keys['used_memory_growth_per_task'], 0)} bytes per task).",
            "",
        ]
        rows = [
            [f"`{pattern}`", str(v["keys"]), f"{v['bytes']:,}"]
            for pattern, v in keys["by_pattern"].items()
        ]
        out += _table(["key pattern", "keys", "bytes"], rows)
    return out


def _detectors(results: dict[str, Any]) -> list[str]:
    detectors = results.get("detectors")
    if not detectors:
        return []
    rows = [
        [
            f"{r['tokens']:,}",
            f"{r['chars']:,}",
            _f(r["fingerprint_us"], 1),
            _f(r["settle_us"], 1),
            _f(r["total_us"], 1),
            f"{r['stream_events']:,}",
            _f(r["stream_parse_us"] / 1000, 2),
            _f(r["stream_parse_us_per_event"], 2),
        ]
        for r in detectors["rows"]
    ]
    head = [
        "completion tokens",
        "chars",
        "fingerprint µs",
        "settle µs",
        "fingerprint + settle µs",
        "stream events (1 token each)",
        "stream parse + fingerprint ms",
        "µs per event",
    ]
    return [
        "## Detector cost per completion (in-process, one core)",
        "",
        "`Output.fingerprint()` and `MemoryLedger.settle()` with that fingerprint into a task "
        "whose windows are full. The stream columns feed the same text as OpenAI streams it "
        "(one token per chunk) through `SSEDecoder` and the chat `StreamTally`, then "
        "fingerprint it: the per-stream CPU the relay spends besides moving bytes.",
        "",
        *_table(head, rows),
    ]


def _profile(results: dict[str, Any]) -> list[str]:
    profile = results.get("profile")
    if not profile:
        return []
    rows = [
        [f"`{r['function']}`", f"{r['calls']:,}", _f(r["tottime_s"], 3), _f(r["self_pct"], 1)]
        for r in profile["by_self"]
    ]
    ours = [
        [f"`{r['function']}`", f"{r['calls']:,}", _f(r["cumtime_s"], 3)]
        for r in profile["proxy_by_cumulative"]
    ]
    gc_lines = []
    for generation, figures in (profile.get("gc") or {}).items():
        gc_lines.append(
            f"- generation {generation}: {figures['count']:,} collections, "
            f"{figures['total_ms']:,.1f} ms in all, longest {figures['max_ms']:,.1f} ms"
        )
    if gc_lines:
        gc_lines = ["Garbage collector pauses during the profiled run:", "", *gc_lines, ""]
    return [
        "## Profile of tripwire (cProfile, JSON then SSE at c=8)",
        "",
        "cProfile slows every Python call, so read shares, not absolute times.",
        "",
        *gc_lines,
        *_table(["function (by self time)", "calls", "self s", "self %"], rows),
        *_table(["proxy function (by cumulative time)", "calls", "cumulative s"], ours),
    ]
