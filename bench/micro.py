"""In-process measurements: memory per tracked task, and what the detectors cost per completion.

Run by the harness in a fresh interpreter each (`python -m bench.micro memory|detectors`), so
one measurement's allocations do not blur the next one's RSS. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import sys
import time
import timeit
import tracemalloc
from pathlib import Path
from typing import Any

from proxy.config import Policy, StateSettings
from proxy.policy.rules import PolicyBook
from proxy.providers import ADAPTERS, CallInfo
from proxy.providers.base import Output
from proxy.server.sse import SSEDecoder
from proxy.session.base import CallPlan, Grant, Outcome
from proxy.session.memory import MemoryLedger
from proxy.tokens import count_text, preload

SIZES = (200, 1000, 2000, 4000, 8000)

# Common English words, so the text tokenizes and normalizes like a real completion.
_VOCABULARY = (
    "the plan is to add a retry loop around the upload call and back off between attempts "
    "so that transient errors from the storage service do not fail the whole job we also "
    "need tests that simulate a timeout then a success and check the delay grows each time "
    "while the final error still reaches the caller when every attempt fails Step one write "
    "the helper Step two wire it into the client Step three document the new setting"
)
_WORDS = _VOCABULARY.split()


def _vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# About 180 tokens, the answer the memory runs settle for each task.
_ANSWER = (
    "The plan has three steps. First collect the quarterly figures from the finance export "
    "and check them against the ledger totals. Second compare every region with the same "
    "quarter last year and mark the ones that moved by more than five percent. Third write a "
    "one page summary for the board with the three largest risks, what caused them, who owns "
    "each one, and the date by which we expect an answer. I will start with the export and "
    "report back when the figures reconcile, or earlier if a region is missing data."
)


def _fp(value: str) -> str:
    return hashlib.blake2b(value.encode(), digest_size=8).hexdigest()


async def _fill(ledger: MemoryLedger, book: PolicyBook, tasks: int, offset: int = 0) -> float:
    started = time.perf_counter()
    for index in range(offset, offset + tasks):
        task = f"bench-task-{index:07d}"
        plan = CallPlan(task, "planner", book.resolve(task, "planner"), 310, 256, 1, None, 0.0)
        plan.now = time.time()
        grant = await ledger.reserve(plan)
        outcome = Outcome(310 + 180, 0.0, _fp(f"out{index}"), _fp(f"req{index}"), True)
        await ledger.settle(grant, outcome)
        # The content detectors are on by default (in shadow mode): their state counts too.
        await ledger.observe_content(task, "planner", f"{_ANSWER} {index}", plan.policy)
    return time.perf_counter() - started


def memory(tasks: int, traced: bool) -> dict[str, Any]:
    """Each task: one reserve and one settle with an output and a request fingerprint, and
    the content detectors' look at its answer, as a single completed call leaves it.
    `max_tasks` is raised so nothing is evicted."""
    settings = StateSettings(max_tasks=max(tasks, 1) * 2)
    book = PolicyBook(Policy())
    # Warm the policy cache and the allocator's pools so the first tasks do not carry them.
    asyncio.run(_fill(MemoryLedger(settings), book, 1000, offset=10_000_000))
    ledger = MemoryLedger(settings)
    gc.collect()
    if traced:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    rss_before = _vm_rss_kib()
    elapsed = asyncio.run(_fill(ledger, book, tasks))
    gc.collect()
    rss_after = _vm_rss_kib()
    result: dict[str, Any] = {
        "tasks": tasks,
        "tracked": len(ledger._tasks),
        "rss_growth_kib": rss_after - rss_before,
        "rss_bytes_per_task": (rss_after - rss_before) * 1024 / tasks,
        "us_per_reserve_settle": elapsed / tasks * 1e6,
    }
    if traced:
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        result["traced_bytes"] = after - before
        result["traced_bytes_per_task"] = (after - before) / tasks
    else:
        result.update(_gc_pause())
    return result


def _gc_pause() -> dict[str, Any]:
    """What one full collection costs with this many tasks tracked: the event loop stands
    still that long, and CPython runs one whenever long-lived objects grew by a quarter."""
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        gc.collect()
        timings.append(time.perf_counter() - started)
    return {"gc_objects": len(gc.get_objects()), "full_gc_ms": min(timings) * 1000}


def _text_of(tokens: int) -> str:
    words: list[str] = []
    index = 0
    # About one token per word for this vocabulary; trimmed to the exact count below.
    while len(words) < tokens * 2:
        words.append(_WORDS[index % len(_WORDS)])
        index += 1
    low, high = 1, len(words)
    while low < high:
        middle = (low + high) // 2
        if count_text(" ".join(words[:middle])) < tokens:
            low = middle + 1
        else:
            high = middle
    return " ".join(words[:low])


def _per_call_us(statement: Any, round_s: float = 0.05) -> float:
    """Best of three rounds of about `round_s` each: the least disturbed figure."""
    timer = timeit.Timer(statement)
    once = max(timer.timeit(1), 1e-7)
    number = max(1, int(round_s / once))
    best = min(timer.repeat(repeat=3, number=number))
    return best / number * 1e6


def _chat_stream(text: str) -> bytes:
    """The completion as OpenAI streams it: about one token per chunk."""
    envelope = '{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m",'
    parts = []
    for word in text.split(" "):
        delta = json.dumps({"content": " " + word})
        parts.append(
            f'data: {envelope}"choices":[{{"index":0,"delta":{delta},"finish_reason":null}}]}}\n\n'
        )
    usage = '"usage":{"prompt_tokens":10,"completion_tokens":10,"total_tokens":20}'
    parts.append(f'data: {envelope}"choices":[],{usage}}}\n\n')
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def _relay_cost(stream: bytes, events: int) -> float:
    """SSE decoding and the tally's parse of every event, fed in one chunk per event as a
    provider's stream arrives, then the fingerprint of what was gathered."""
    adapter = ADAPTERS["openai"]
    info = CallInfo(kind="chat", stream=True, wants_stream_usage=True)
    pieces = stream.split(b"\n\n")
    chunks = [piece + b"\n\n" for piece in pieces if piece]

    def run() -> None:
        decoder = SSEDecoder()
        tally = adapter.stream_tally(info)
        for chunk in chunks:
            for event in decoder.feed(chunk):
                tally.feed(event)
        tally.output().fingerprint()

    return _per_call_us(run)


def detectors() -> dict[str, Any]:
    preload()
    book = PolicyBook(Policy())
    rows = []
    for size in SIZES:
        text = _text_of(size)
        output = Output(text)
        fingerprint_us = _per_call_us(output.fingerprint)
        settle_us = asyncio.run(_settle_cost(book, output.fingerprint()))
        stream = _chat_stream(text)
        events = stream.count(b"\n\n")
        relay_us = _relay_cost(stream, events)
        rows.append(
            {
                "tokens": size,
                "chars": len(text),
                "fingerprint_us": fingerprint_us,
                "settle_us": settle_us,
                "total_us": fingerprint_us + settle_us,
                "stream_events": events,
                "stream_parse_us": relay_us,
                "stream_parse_us_per_event": relay_us / events,
            }
        )
    return {"rows": rows}


async def _settle_cost(book: PolicyBook, fingerprint: str | None, calls: int = 2000) -> float:
    """Settle of one completed call with an output fingerprint, into tasks with full windows
    (the detector's worst case: `window.count` scans the whole window)."""
    ledger = MemoryLedger(StateSettings())
    grants: list[Grant] = []
    for index in range(calls):
        task = f"bench-settle-{index % 50}"
        plan = CallPlan(task, "planner", book.resolve(task, "planner"), 300, 256, 1, None, 0.0)
        plan.now = time.time()
        grants.append(await ledger.reserve(plan))
    for grant in grants[: calls // 2]:
        await ledger.settle(grant, Outcome(400, 0.0, _fp(str(id(grant))), None, True))
    timed = grants[calls // 2 :]
    started = time.perf_counter()
    for grant in timed:
        await ledger.settle(grant, Outcome(400, 0.0, fingerprint, _fp(str(id(grant))), True))
    return (time.perf_counter() - started) / len(timed) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro")
    parser.add_argument("what", choices=("memory", "detectors"))
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--traced", action="store_true", help="count bytes with tracemalloc")
    args = parser.parse_args(argv)
    result = memory(args.tasks, args.traced) if args.what == "memory" else detectors()
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
