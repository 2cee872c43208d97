"""Budget overshoot: N concurrent streaming calls of one task with a token budget.

Each worker behaves like an agent loop on an official SDK: it streams one call after another;
a 429 is retried after its Retry-After, at most `max_retries` times as the SDKs do by default
(then the agent sees a rate-limit error and tries its next call); a 403 ends the agent. What
the provider billed is read from the mock, so a stream cut short counts what it really cost.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.load import BASE_HEADERS, SYSTEM_PROMPT, client_session

SDK_MAX_RETRIES = 2  # openai-python and anthropic-sdk-python default
_TOKENS_USED = re.compile(rb"tokens_used=(\d+)")


@dataclass
class BudgetResult:
    concurrency: int
    replicas: int
    budget: int
    billed_tokens: int = 0  # what the provider billed: the mock's counters
    reported_tokens: int = 0  # usage the provider reported in the streams the client read
    proxy_tokens_used: int | None = None  # the proxy's own settled figure, from its refusal
    calls_ok: int = 0
    calls_cut: int = 0
    retries_429: int = 0
    gave_up_429: int = 0
    refused_403: int = 0
    other: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def overshoot(self) -> int:
        return max(self.billed_tokens - self.budget, 0)

    @property
    def share_used(self) -> float:
        return self.billed_tokens / self.budget if self.budget else 0.0


async def _stats(session: aiohttp.ClientSession, mock_url: str) -> dict[str, int]:
    async with session.get(mock_url + "/_bench/stats") as answer:
        data: dict[str, int] = await answer.json()
        return data


def _usage_in(data: bytes) -> int:
    """Prompt plus completion tokens of the final usage chunk, when the stream carried it."""
    for block in reversed(data.split(b"\n\n")):
        line = block.strip()
        if not line.startswith(b"data: {") or b'"usage":{' not in line:
            continue
        usage = json.loads(line[6:]).get("usage") or {}
        return int(usage.get("total_tokens", 0))
    return 0


class _Agents:
    """The agents of one overshoot run, sharing one task and one result."""

    def __init__(
        self,
        result: BudgetResult,
        task: str,
        deadline: float,
        reply_tokens: int,
        client_cap: int,
        chunks: int,
        chunk_delay: float,
    ) -> None:
        self.result = result
        self.deadline = deadline
        self.client_cap = client_cap
        self.counter = 0
        self.refusal_figures: list[int] = []
        self.headers = {
            **BASE_HEADERS,
            "X-Task-Id": task,
            "x-mock-reply-tokens": str(reply_tokens),
            "x-mock-chunks": str(chunks),
            "x-mock-chunk-delay": str(chunk_delay),
        }

    def body(self, n: int) -> bytes:
        payload: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Call {n}: continue the plan where you left it."},
            ],
            "max_completion_tokens": self.client_cap,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return json.dumps(payload).encode()

    async def call(self, session: aiohttp.ClientSession, url: str) -> str:
        """One SDK call with its retries: 'ok', 'gave_up', 'refused' or another status."""
        self.counter += 1
        body = self.body(self.counter)
        for attempt in range(SDK_MAX_RETRIES + 1):
            async with session.post(
                url + "/v1/chat/completions", data=body, headers=self.headers
            ) as answer:
                data = await answer.read()
                status = answer.status
                retry_after = float(answer.headers.get("Retry-After", "1"))
            if status == 200:
                self.completed(data)
                return "ok"
            if status == 403:
                found = _TOKENS_USED.search(data)
                if found:
                    self.refusal_figures.append(int(found.group(1)))
                return "refused"
            if status != 429:
                return str(status)
            if attempt == SDK_MAX_RETRIES:
                break
            self.result.retries_429 += 1
            await asyncio.sleep(min(retry_after, max(self.deadline - time.monotonic(), 0)))
        return "gave_up"

    def completed(self, data: bytes) -> None:
        tokens = _usage_in(data)
        self.result.reported_tokens += tokens
        if tokens == 0:
            self.result.calls_cut += 1
        else:
            self.result.calls_ok += 1

    async def agent(self, session: aiohttp.ClientSession, url: str) -> None:
        while time.monotonic() < self.deadline:
            outcome = await self.call(session, url)
            if outcome == "refused":
                self.result.refused_403 += 1
                return
            if outcome == "gave_up":
                self.result.gave_up_429 += 1
            elif outcome != "ok":
                self.result.other[outcome] += 1
                return


async def run_budget(
    proxy_urls: list[str],
    mock_url: str,
    concurrency: int,
    budget: int,
    *,
    run_id: str,
    time_limit: float,
    reply_tokens: int = 800,
    client_cap: int = 1024,
    chunks: int = 16,
    chunk_delay: float = 0.005,
) -> BudgetResult:
    result = BudgetResult(concurrency, len(proxy_urls), budget)
    task = f"budget-{run_id}-c{concurrency}"
    deadline = time.monotonic() + time_limit
    agents = _Agents(result, task, deadline, reply_tokens, client_cap, chunks, chunk_delay)
    async with client_session() as session:
        before = await _stats(session, mock_url)
        started = time.monotonic()
        await asyncio.gather(
            *(agents.agent(session, proxy_urls[i % len(proxy_urls)]) for i in range(concurrency))
        )
        result.seconds = time.monotonic() - started
        result.timed_out = time.monotonic() >= deadline
        after = await _stats(session, mock_url)
    result.billed_tokens = (after["prompt_tokens"] - before["prompt_tokens"]) + (
        after["completion_tokens"] - before["completion_tokens"]
    )
    if agents.refusal_figures:
        result.proxy_tokens_used = max(agents.refusal_figures)
    return result
