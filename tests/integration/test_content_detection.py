"""The content detectors wired into the proxy: a paraphrasing agent is caught on either backend."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from proxy.config import Limits, RepeatSettings, StateSettings
from proxy.detectors.settings import CycleSettings, NearDuplicateSettings, NoProgressSettings
from proxy.policy.rules import Effective
from proxy.session.base import CallPlan, Outcome
from proxy.session.redis import RedisLedger
from tests.harness import MockProviderThread
from tests.redis_server import PATIENT_REDIS_TIMEOUT_S

ANSWERS = [
    "The plan is to collect the quarterly figures, compare them with last year and write a "
    "short summary for the board with the three main risks and what we do next about them.",
    "The plan is to collect the quarterly figures, compare them with last year and write a "
    "short summary for the board with the three main risks and what we will do next about them.",
]


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return {
        "backend": "redis",
        "redis_url": request.getfixturevalue("redis_server").url,
        "redis_timeout": PATIENT_REDIS_TIMEOUT_S,
    }


def assert_third_plan_refused(client: openai.OpenAI, task: str, mock: MockProviderThread) -> None:
    """The task's third call is refused for a near duplicate, unforwarded."""
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "plan 3"}],
            extra_headers={"X-Task-Id": task},
        )
    assert "near_duplicate" in refused.value.message
    assert mock.provider.total_hits == 2


def test_a_paraphrasing_agent_is_killed_when_the_detector_says_kill(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = make_proxy(
        state=state,
        policy={"near_duplicate": {"action": "kill", "repeats": 2}, "cycle": {"enabled": False}},
    )
    task = "para-" + uuid.uuid4().hex[:6]
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk", max_retries=0)
    for number, answer in enumerate(ANSWERS):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"plan {number}"}],
            extra_headers={"X-Task-Id": task, "x-mock-reply": answer},
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the detectors run just after the response
        view = proxy.task(task)
        if view is not None and view.killed is not None:
            break
        time.sleep(0.05)
    assert_third_plan_refused(client, task, mock)


def test_shadow_mode_only_reports(
    make_proxy: Any,
    mock: MockProviderThread,
    state: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Shadow mode: the shipped policy kills on near_duplicate, this one only observes.
    proxy = make_proxy(state=state, policy={"near_duplicate": {"action": "observe"}})
    task = "shadow-" + uuid.uuid4().hex[:6]
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk", max_retries=0)
    for number in range(4):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"plan {number}"}],
            extra_headers={"X-Task-Id": task, "x-mock-reply": ANSWERS[number % 2]},
        )

    def observed() -> list[str]:
        return [
            r.fields["reason"]  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "trip" and r.fields.get("task") == task  # type: ignore[attr-defined]
        ]

    deadline = time.monotonic() + 5
    while "near_duplicate" not in observed() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "near_duplicate" in observed()
    view = proxy.task(task)
    assert view is not None and view.killed is None
    assert mock.provider.total_hits == 4


async def test_two_replicas_observing_one_task_at_once_miss_nothing(redis_server: Any) -> None:
    """Each replica reads the task's detector state before either writes it back: the one that
    writes second must redo its update on the other's state, not overwrite it."""
    settings = StateSettings(backend="redis", redis_url=redis_server.url)
    replicas = [RedisLedger(settings), RedisLedger(settings)]
    policy = Effective(
        Limits(),
        RepeatSettings(),
        "kill",
        (),
        cycle=CycleSettings(enabled=False),
        near_duplicate=NearDuplicateSettings(repeats=2),
        no_progress=NoProgressSettings(enabled=False),
    )
    task = "race-" + uuid.uuid4().hex[:6]
    for replica in replicas:
        await replica.start()
    try:
        reported = await asyncio.gather(
            *(
                replica.observe_content(task, "writer", answer, policy)
                for replica, answer in zip(replicas, ANSWERS, strict=True)
            )
        )
    finally:
        for replica in replicas:
            await replica.close()
    trips = [trip for found in reported for trip, _ in found]
    assert [trip.reason for trip in trips] == ["near_duplicate"]


async def test_one_task_settling_at_once_runs_the_detectors_once_per_completion(
    redis_server: Any,
) -> None:
    """64 calls of one task completing together through one replica: each completion is looked
    at once (no read-compute-retry storm), in order, and none is missed."""
    settings = StateSettings(backend="redis", redis_url=redis_server.url)
    ledger = RedisLedger(settings)
    policy = Effective(
        Limits(),
        RepeatSettings(),
        "kill",
        (),
        cycle=CycleSettings(enabled=False),
        near_duplicate=NearDuplicateSettings(repeats=2),
        no_progress=NoProgressSettings(enabled=False),
    )
    words = [uuid.uuid4().hex[:7] for _ in range(64 * 30)]
    distinct = [" ".join(words[i * 30 : (i + 1) * 30]) for i in range(62)]
    task = "crowd-" + uuid.uuid4().hex[:6]
    await ledger.start()
    try:
        reported = await asyncio.gather(
            *(ledger.observe_content(task, "writer", text, policy) for text in distinct + ANSWERS)
        )
    finally:
        await ledger.close()
    assert ledger.detector_runs == 64
    trips = [(index, trip.reason) for index, found in enumerate(reported) for trip, _ in found]
    assert trips == [(63, "near_duplicate")]


async def test_replicas_taking_turns_on_one_task_run_the_detectors_once_per_completion(
    redis_server: Any,
) -> None:
    """A task's calls alternate between two replicas: each settle brings the detectors' state
    the other replica wrote, so every completion is looked at once, on the task's whole
    history, and a repeat that spans the replicas is caught."""
    settings = StateSettings(backend="redis", redis_url=redis_server.url)
    replicas = [RedisLedger(settings), RedisLedger(settings)]
    policy = Effective(
        Limits(),
        RepeatSettings(),
        "kill",
        (),
        cycle=CycleSettings(enabled=False),
        near_duplicate=NearDuplicateSettings(repeats=2),
        no_progress=NoProgressSettings(enabled=False),
    )
    words = [uuid.uuid4().hex[:7] for _ in range(10 * 30)]
    texts = [" ".join(words[i * 30 : (i + 1) * 30]) for i in range(10)] + ANSWERS
    task = "turns-" + uuid.uuid4().hex[:6]
    reported = []
    for replica in replicas:
        await replica.start()
    try:
        for index, text in enumerate(texts):
            replica = replicas[index % 2]
            plan = CallPlan(task, "writer", policy, 10, 100, 1, None, time.time())
            grant = await replica.reserve(plan)
            await replica.settle(grant, Outcome(20, 0.0, f"out-{index}", f"req-{index}", True))
            reported.append(await replica.observe_content(task, "writer", text, policy))
    finally:
        for replica in replicas:
            await replica.close()
    assert sum(replica.detector_runs for replica in replicas) == len(texts)
    trips = [(index, trip.reason) for index, found in enumerate(reported) for trip, _ in found]
    assert trips == [(len(texts) - 1, "near_duplicate")]


def test_metrics_count_content_detector_runs(
    make_proxy: Any, mock: MockProviderThread, state: dict[str, Any]
) -> None:
    proxy = make_proxy(state=state)
    task = "runs-" + uuid.uuid4().hex[:6]
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk", max_retries=0)
    for number in range(3):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"step {number}"}],
            extra_headers={"X-Task-Id": task, "x-mock-reply": f"answer number {number} here"},
        )
    deadline = time.monotonic() + 5
    runs = 0.0
    while time.monotonic() < deadline:  # the detectors run just after the response
        text = httpx.get(proxy.base_url + "/metrics").text
        runs = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("tripwire_detector_runs_total ")
        )
        if runs >= 3:
            break
        time.sleep(0.05)
    assert runs == 3


class _SlowDetection:
    """The ledger with its content detectors a while behind the answers, as when they run on
    a busy replica or across a round trip to Redis."""

    observe_content_now = None  # as on Redis: each detection awaits its state

    def __init__(self, ledger: Any, delay: float) -> None:
        self.ledger = ledger
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)

    async def observe_content(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.delay)
        return await self.ledger.observe_content(*args, **kwargs)


def test_a_kill_from_a_detection_still_running_refuses_the_next_call(
    make_proxy: Any, mock: MockProviderThread
) -> None:
    """The detectors run after the answer is out; a call of the task that arrives before they
    are done waits for their verdict, so a kill they decide stops it."""
    from proxy.addons.content import ContentDetection
    from proxy.app import HOOKS

    proxy = make_proxy(
        policy={"near_duplicate": {"action": "kill", "repeats": 2}, "cycle": {"enabled": False}}
    )
    assert proxy._app is not None
    detection = proxy._app[HOOKS].find(ContentDetection)
    detection.ledger = _SlowDetection(detection.ledger, 0.5)
    task = "waits-" + uuid.uuid4().hex[:6]
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk", max_retries=0)
    for number, answer in enumerate(ANSWERS):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"plan {number}"}],
            extra_headers={"X-Task-Id": task, "x-mock-reply": answer},
        )
    started = time.monotonic()
    assert_third_plan_refused(client, task, mock)
    assert time.monotonic() - started < 5
