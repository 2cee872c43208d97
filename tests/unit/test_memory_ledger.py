"""What only the embedded ledger does: its clock, expiry and eviction; and policy rules.

The protocol both backends share is tested in tests/integration/test_ledgers.py."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import Limits, Policy, RepeatSettings, StateSettings
from proxy.detectors.base import TripReason
from proxy.policy.rules import Effective, PolicyBook
from proxy.session import memory
from proxy.session.base import Busy, CallPlan, Denied, Outcome
from proxy.session.memory import MemoryLedger


def effective(on_trip: str = "kill", **limits: object) -> Effective:
    return Effective(Limits(**limits), RepeatSettings(), on_trip, ())  # type: ignore[arg-type]


def plan(
    task: str,
    policy: Effective,
    *,
    agent: str = "a",
    prompt: int = 10,
    cap: int | None = None,
    choices: int = 1,
    now: float = 1000.0,
) -> CallPlan:
    return CallPlan(task, agent, policy, prompt, cap, choices, None, now)


def outcome(tokens: int, output: str | None = None, request: str | None = None) -> Outcome:
    return Outcome(tokens, 0.0, output, request, completed=True)


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger(StateSettings())


async def test_no_budget_no_rewrite(ledger: MemoryLedger) -> None:
    grant = await ledger.reserve(plan("t", effective(), prompt=100))
    assert grant.output_cap is None


async def test_twenty_concurrent_reservations_never_exceed_the_budget(
    ledger: MemoryLedger,
) -> None:
    policy = effective(max_tokens=1000)

    async def one() -> int:
        try:
            grant = await ledger.reserve(plan("t", policy, prompt=60))
        except (Busy, Denied):
            return 0
        await asyncio.sleep(0)
        await ledger.settle(grant, outcome(grant.reserved_tokens))
        return grant.reserved_tokens

    spent = await asyncio.gather(*(one() for _ in range(20)))
    assert 0 < sum(spent) <= 1000


async def test_deadline(ledger: MemoryLedger) -> None:
    policy = effective(max_duration=60)
    await ledger.reserve(plan("t", policy, now=1000.0))
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan("t", policy, now=1061.0))
    assert refused.value.trip.reason is TripReason.DEADLINE


async def test_idle_tasks_expire_and_task_count_is_bounded() -> None:
    ledger = MemoryLedger(StateSettings(task_ttl=60, max_tasks=3))
    policy = effective()
    for name, now in [("a", 0.0), ("b", 10.0), ("c", 100.0), ("d", 101.0)]:
        await ledger.reserve(plan(name, policy, now=now))
    assert await ledger.get("a") is None  # evicted: at most 3 tasks
    assert ledger.sweep(now=105.0) == 1  # "b" idle for more than 60 s
    assert [view.task for view in await ledger.list()] == ["c", "d"]


def test_rules_apply_in_order_and_override_only_what_they_set() -> None:
    book = PolicyBook(
        Policy.model_validate(
            {
                "defaults": {"max_calls": 200, "max_hops": 12},
                "rules": [
                    {"match": {"task": "research-*"}, "limits": {"max_tokens": 5000}},
                    {
                        "match": {"agent": "planner"},
                        "limits": {"max_hops": 3},
                        "on_trip": "observe",
                    },
                ],
            }
        )
    )
    planner = book.resolve("research-1", "planner")
    assert planner.limits.max_tokens == 5000
    assert planner.limits.max_hops == 3
    assert planner.limits.max_calls == 200
    assert planner.on_trip == "observe"
    other = book.resolve("chat-1", "writer")
    assert other.limits.max_tokens is None and other.on_trip == "kill"


async def test_a_fingerprint_spanning_two_window_entries_is_not_a_repeat() -> None:
    """Windows hold 8-byte digests back to back: the bytes of two neighbours may contain a
    third digest, which must not count as seen."""
    ledger = MemoryLedger(StateSettings())
    policy = Effective(Limits(), RepeatSettings(threshold=2, window=10), "kill", ())
    outputs = ["0011223344556677", "8899aabbccddeeff", "445566778899aabb"]
    trips = []
    for output in outputs:
        grant = await ledger.reserve(plan("t", policy))
        trips += (await ledger.settle(grant, outcome(5, output=output))).trips
    assert trips == []
    grant = await ledger.reserve(plan("t", policy))
    repeated = await ledger.settle(grant, outcome(5, output=outputs[2]))
    assert [trip.reason for trip in repeated.trips] == [TripReason.REPEAT_OUTPUT]


async def test_content_detection_is_the_same_for_a_task_whose_state_was_packed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task that went a while without a completion has its detector state marshalled; its
    next completions are judged exactly as if it never had been."""
    monkeypatch.setattr(memory, "WARM_CONTENT", 1)
    policy = PolicyBook(Policy()).resolve("t", "a")
    answer = "We should retry the upload with a longer backoff and then report the error to ops"
    seen: dict[str, list[list[tuple[TripReason, str]]]] = {}
    for name, others in (("warm", False), ("packed", True)):
        ledger = MemoryLedger(StateSettings())
        rounds = seen.setdefault(name, [])
        for number in range(4):
            grant = await ledger.reserve(plan("t", policy, now=1000.0 + number))
            await ledger.settle(grant, outcome(5, output=f"{number:016x}"))
            found = await ledger.observe_content(
                "t",
                "a",
                f"{answer} (attempt {number})",
                policy,
                tool_calls=[("upload", '{"path": "/tmp/report.csv"}')],
                tool_results=["timeout"],
            )
            rounds.append([(trip.reason, action) for trip, action in found])
            if others:  # another task's completion: this one's state is packed now
                other = f"other-{number}"
                await ledger.settle(await ledger.reserve(plan(other, policy)), outcome(5))
                await ledger.observe_content(other, "a", answer, policy)
    assert seen["packed"] == seen["warm"]
    assert any(seen["warm"])  # the rounds did trip a detector


async def test_a_limit_on_a_new_limits_object_applies_whatever_came_before(
    ledger: MemoryLedger,
) -> None:
    # The checks that apply are remembered per limits object: a token's signed limits are a
    # new object on every call, and one that sets a limit must be checked by it, even after
    # hundreds of calls under fresh objects with none (whose memory the new one may reuse).
    for n in range(300):
        await ledger.reserve(plan("signed", effective(), now=1000.0 + n))
    with pytest.raises(Denied) as refused:
        await ledger.reserve(plan("signed", effective(max_calls=50), now=2000.0))
    assert refused.value.trip.reason is TripReason.MAX_CALLS
    assert len(ledger._checks) <= memory._LIMITS_KNOWN  # emptied when full, not grown
