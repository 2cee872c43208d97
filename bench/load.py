"""Load generators: wrk for JSON calls when it is installed, an asyncio client otherwise and for
streams (wrk cannot time the chunks of a response). Every run is closed-loop at a fixed
concurrency and bounded in time.

Two workloads. Many tasks: every request carries its own task id. Long task: every request of
a run carries the same task id, as an agent team's hundreds of calls on one job do, so the
proxy's per-task state (windows, content detectors, Redis keys) is read and written by every
call. Either way every body and every answer is distinct, so a proxy's loop detectors and
per-task limits never trip on benchmark traffic: the harness measures the cost of watching
calls, not of refusing them.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

WRK_INSTALL_HINT = "apt-get install -y wrk (Debian/Ubuntu; then `which wrk`)"

SYSTEM_PROMPT = (
    "You are the planning agent of a small software team. Break the user's request into "
    "concrete steps, name the files each step touches, and say which teammate should take it. "
    "Prefer small, reviewable changes; never invent APIs that the codebase does not have; "
    "when something is ambiguous, list the question instead of guessing. Answer in plain "
    "prose with a numbered list of steps, then one line on risks and one on how to test. "
    "Keep the answer under three hundred words unless the request is unusually large."
)
USER_PROMPT = "Step {n}: add retry with backoff to the upload client and cover it with tests."

_X_SENT = re.compile(rb'"x_sent":([0-9.]+)')


@dataclass(frozen=True, slots=True)
class Shape:
    """One kind of call: the path, and a body with `{n}` where the call number goes."""

    name: str
    path: str
    body: str
    stream: bool

    def render(self, n: str) -> bytes:
        return self.body.replace("{n}", n).encode()


def _chat_body(stream: bool) -> str:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT},
        ],
        "max_completion_tokens": 256,
    }
    if stream:
        # Asked by the client itself, so no proxy has to rewrite the body to get usage.
        body.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(body)


def _messages_body(stream: bool) -> str:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": USER_PROMPT}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body)


SHAPES = {
    "openai-json": Shape("openai-json", "/v1/chat/completions", _chat_body(False), False),
    "anthropic-json": Shape("anthropic-json", "/v1/messages", _messages_body(False), False),
    "openai-sse": Shape("openai-sse", "/v1/chat/completions", _chat_body(True), True),
    "anthropic-sse": Shape("anthropic-sse", "/v1/messages", _messages_body(True), True),
}

BASE_HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Bearer sk-bench",
    "x-api-key": "sk-bench",
    "anthropic-version": "2023-06-01",
}


@dataclass
class LoadResult:
    shape: str
    concurrency: int
    tool: str
    seconds: float
    requests: int
    rps: float
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 p90 p99 mean max
    ttfb_ms: dict[str, float] = field(default_factory=dict)
    chunk_delay_ms: dict[str, float] = field(default_factory=dict)
    chunks: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    sent: int = 0  # calls sent in all, unrecorded warm-up calls included (for CPU per call)
    task: str = "many"  # "many": a task id per call; "long": one task id for the whole run

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.errors <= max(1, self.requests // 1000)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
        return ordered[index]

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "mean": sum(ordered) / len(ordered),
        "max": ordered[-1],
    }


# -- wrk ------------------------------------------------------------------------------------


def wrk_path() -> str | None:
    return shutil.which("wrk")


_WRK_SCRIPT = """
local prefix = {prefix}
local path = {path}
local head, tail = {head}, {tail}
local counter = 0
local threads = 0
local headers = {{}}
{headers}

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function request()
  counter = counter + 1
  local n = tostring(tid) .. "-" .. tostring(counter)
  headers["X-Task-Id"] = {task}
  return wrk.format("POST", path, headers, head .. n .. tail)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests":%d,"duration_us":%d,"p50":%d,"p90":%d,"p99":%d,' ..
    '"mean":%f,"max":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status,
    e.timeout))
end
"""


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def run_wrk(
    base_url: str,
    shape: Shape,
    concurrency: int,
    seconds: float,
    task_prefix: str,
    extra_headers: dict[str, str] | None = None,
    calls: int | None = None,
) -> LoadResult:
    head, _, tail = shape.body.partition("{n}")
    headers = "\n".join(
        f"headers[{_lua_string(k)}] = {_lua_string(v)}"
        for k, v in {**BASE_HEADERS, **(extra_headers or {})}.items()
    )
    script = _WRK_SCRIPT.format(
        prefix=_lua_string(task_prefix),
        path=_lua_string(shape.path),
        head=_lua_string(head),
        tail=_lua_string(tail),
        headers=headers,
        task="prefix .. n" if calls is None else _lua_string(task_prefix + "long"),
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        script_path = handle.name
    try:
        argv = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            # wrk cannot stop at a count (a stopped thread still waits out -d): a long task
            # is one second of calls of one task instead, a thousand calls or more.
            f"-d{max(1, round(seconds)) if calls is None else 1}s",
            "--timeout",
            "10s",
            "-s",
            script_path,
            base_url,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    finally:
        Path(script_path).unlink(missing_ok=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = json.loads(line.removeprefix("BENCHJSON "))
    duration = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return LoadResult(
        shape=shape.name,
        concurrency=concurrency,
        tool="wrk",
        seconds=duration,
        requests=raw["requests"],
        rps=raw["requests"] / duration if duration else 0.0,
        latency_ms={k: raw[k] / 1000 for k in ("p50", "p90", "p99", "mean", "max")},
        statuses={"non-2xx": raw["status"]} if raw["status"] else {},
        errors=errors,
        sent=raw["requests"],
        task="many" if calls is None else "long",
    )


# -- asyncio client ---------------------------------------------------------------------------


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60),
        auto_decompress=False,
    )


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    chunk_delays: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0


async def _one_call(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    tally: _Tally,
    record: bool,
) -> None:
    started = time.monotonic()
    first: float | None = None
    delays: list[float] = []
    carry = b""
    async with session.post(url, data=body, headers=headers) as answer:
        async for piece in answer.content.iter_any():
            now = time.monotonic()
            if first is None:
                first = now
            data = carry + piece
            cut = data.rfind(b"\n\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 2 :]
            delays.extend(now - float(m) for m in _X_SENT.findall(data, 0, cut))
        status = answer.status
    if not record:
        return
    tally.latencies.append(time.monotonic() - started)
    tally.statuses[str(status)] += 1
    if status >= 300:
        tally.errors += 1
        return
    if first is not None:
        tally.ttfb.append(first - started)
    tally.chunk_delays.extend(delays)


async def run_client(
    base_url: str,
    shape: Shape,
    concurrency: int,
    seconds: float,
    task_prefix: str,
    extra_headers: dict[str, str] | None = None,
    *,
    calls: int | None = None,
) -> LoadResult:
    """Closed loop for `seconds`; with `calls`, one task id for every call of the run (the
    long-task workload), stopped after `calls` recorded calls instead."""
    tally = _Tally()
    url = base_url + shape.path
    counter = 0
    recorded = 0
    recording = False

    async def worker(session: aiohttp.ClientSession, deadline: float) -> None:
        nonlocal counter, recorded
        while time.monotonic() < deadline:
            if recording and calls is not None:
                if recorded >= calls:
                    return
                recorded += 1
            counter += 1
            n = f"c-{counter}"
            task = task_prefix + ("long" if calls is not None else n)
            headers = {**BASE_HEADERS, **(extra_headers or {}), "X-Task-Id": task}
            try:
                await _one_call(session, url, shape.render(n), headers, tally, recording)
            except (aiohttp.ClientError, TimeoutError):
                tally.errors += 1
                await asyncio.sleep(0.01)

    async with client_session() as session:
        # One short unrecorded round opens the connections, so the clock does not time them.
        await asyncio.gather(*(worker(session, time.monotonic() + 0.2) for _ in range(concurrency)))
        warm = counter
        recording = True
        started = time.monotonic()
        # A long task stops at its count; the time limit only bounds a stalled target.
        deadline = started + (seconds if calls is None else 120.0)
        await asyncio.gather(*(worker(session, deadline) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    ms = [x * 1000 for x in tally.latencies]
    return LoadResult(
        shape=shape.name,
        concurrency=concurrency,
        tool="asyncio",
        seconds=elapsed,
        requests=len(tally.latencies),
        rps=len(tally.latencies) / elapsed if elapsed else 0.0,
        latency_ms=percentiles(ms),
        ttfb_ms=percentiles([x * 1000 for x in tally.ttfb]),
        chunk_delay_ms=percentiles([x * 1000 for x in tally.chunk_delays]),
        chunks=len(tally.chunk_delays),
        statuses=dict(tally.statuses),
        errors=tally.errors,
        sent=warm + len(tally.latencies),
        task="many" if calls is None else "long",
    )


def run_load(
    base_url: str,
    shape: Shape,
    concurrency: int,
    seconds: float,
    task_prefix: str,
    *,
    use_wrk: bool,
    extra_headers: dict[str, str] | None = None,
    calls: int | None = None,
) -> LoadResult:
    if use_wrk and not shape.stream:
        return run_wrk(base_url, shape, concurrency, seconds, task_prefix, extra_headers, calls)
    return asyncio.run(
        run_client(base_url, shape, concurrency, seconds, task_prefix, extra_headers, calls=calls)
    )


async def send_calls(
    base_url: str, shape: Shape, calls: int, concurrency: int, task_prefix: str
) -> Counter[str]:
    """Exactly `calls` calls, each of its own task; returns the statuses."""
    statuses: Counter[str] = Counter()
    numbers = iter(range(calls))

    async def worker(session: aiohttp.ClientSession) -> None:
        for n in numbers:
            headers = {**BASE_HEADERS, "X-Task-Id": f"{task_prefix}{n}"}
            body = shape.render(str(n))
            async with session.post(base_url + shape.path, data=body, headers=headers) as answer:
                await answer.read()
                statuses[str(answer.status)] += 1

    async with client_session() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses
