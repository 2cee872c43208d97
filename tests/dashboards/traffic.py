"""Traffic that makes every family the dashboards read carry samples: ordinary calls with
hand-offs, a provider error, a stream cut at its deadline, a shadow-mode trip, a budget trip,
a worker's status envelopes (one blocked), and a runaway agent that repeats itself until it is
killed and refused."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx

RUNAWAY = "runaway-1"
# The runaway's agent trips nowhere else, so the by-agent panels can single it out.
RUNAWAY_AGENT = "fixer"
STEADY = "steady-1"

POLICY: dict[str, Any] = {
    "rules": [
        {"match": {"task": "cut-*"}, "limits": {"max_duration": 0.3}},
        {"match": {"task": "shadow-*"}, "on_trip": "observe"},
        {"match": {"task": "budget-*"}, "limits": {"max_tokens": 120}},
        {
            "match": {"task": "workers-*", "agent": "worker"},
            "envelope": {"min_confidence": 0.7, "on_low_confidence": "block"},
        },
    ]
}


def envelope(status: str, confidence: float) -> dict[str, str]:
    reply = json.dumps({"status": status, "result": "rows", "confidence": confidence})
    return {"x-mock-reply": quote(reply)}


SLOW_STREAM = {"x-mock-reply-tokens": "120", "x-mock-chunks": "60", "x-mock-chunk-delay": "0.02"}


def chat(
    client: httpx.Client,
    task: str,
    prompt: str,
    agent: str = "worker",
    model: str = "gpt-4o-mini",
    headers: dict[str, str] | None = None,
) -> int:
    response = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": prompt}]},
        headers={
            "Authorization": "Bearer sk-test",
            "X-Task-Id": task,
            "X-Agent-Id": agent,
            **(headers or {}),
        },
    )
    return response.status_code


def stream(client: httpx.Client, task: str, prompt: str, headers: dict[str, str]) -> bytes:
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    head = {"Authorization": "Bearer sk-test", "X-Task-Id": task, **headers}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=head) as response:
        return b"".join(response.iter_bytes())


def fleet(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for number, agent in enumerate(("planner", "critic", "planner", "writer")):
            assert chat(client, STEADY, f"step {number}", agent=agent) == 200
        assert chat(client, "steady-2", "hello", model="gpt-4o") == 200
        assert chat(client, "flaky-1", "fail", headers={"x-mock-status": "500"}) == 500
        assert b"deadline" in stream(client, "cut-1", "write the long report", SLOW_STREAM)
        statuses = [chat(client, "shadow-1", "same again") for _ in range(4)]
        assert statuses == [200] * 4  # observed, never refused
        budget = [chat(client, "budget-1", f"question {n} " * 20) for n in range(6)]
        assert 403 in budget, budget
        # Workers' status envelopes: one of each status, and one held back for low confidence.
        assert chat(client, "workers-1", "a", headers=envelope("success", 0.9)) == 200
        assert chat(client, "workers-1", "b", headers=envelope("partial", 0.8)) == 200
        assert chat(client, "workers-1", "c", headers=envelope("failed", 0.95)) == 200
        assert chat(client, "workers-1", "d", headers={"x-mock-reply": "prose"}) == 200
        assert chat(client, "workers-1", "e", headers=envelope("partial", 0.2)) == 422


def runaway(base_url: str) -> list[int]:
    """The same question until Tripwire stops the task; then one more call, refused."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        statuses = [
            chat(client, RUNAWAY, "Is the plan done?", agent=RUNAWAY_AGENT) for _ in range(5)
        ]
    assert statuses[-1] == 403, statuses
    return statuses
