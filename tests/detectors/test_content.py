"""All content detectors through one state: what the ledger stores per task."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from proxy.detectors.base import TripReason
from proxy.detectors.content import ContentState, observe_content
from proxy.detectors.settings import (
    CycleSettings,
    NearDuplicateSettings,
    NoProgressSettings,
    ToolLoopSettings,
)
from tests.detectors.helpers import prose, reword

DEFAULTS: dict[str, Any] = {
    "cycle": CycleSettings(),
    "near_duplicate": NearDuplicateSettings(),
    "no_progress": NoProgressSettings(),
}


def test_a_ping_pong_loop_trips_every_content_detector() -> None:
    state, reasons = ContentState(), []
    ask, answer = prose(1, 100), prose(2, 100)
    for n in range(6):
        state, trips = observe_content(state, "planner", reword(ask, n), **DEFAULTS)
        reasons += [t.reason for t in trips]
        state, trips = observe_content(state, "critic", reword(answer, n), **DEFAULTS)
        reasons += [t.reason for t in trips]
    assert {TripReason.CYCLE, TripReason.NEAR_DUPLICATE, TripReason.NO_PROGRESS} <= set(reasons)


def test_disabled_detectors_and_empty_texts() -> None:
    off = {
        name: settings.model_copy(update={"enabled": False}) for name, settings in DEFAULTS.items()
    }
    state = ContentState()
    for _ in range(10):
        state, trips = observe_content(state, "a", prose(1), **off)
        assert trips == []
    assert state == ContentState()
    same, trips = observe_content(state, "a", "", **DEFAULTS)
    assert same is state and trips == []


def test_state_stays_bounded_after_ten_thousand_completions() -> None:
    rng = random.Random(7)
    state = ContentState()
    sizes = []
    for n in range(10_000):
        text = prose(rng.randrange(400), rng.randrange(5, 120))
        state, _ = observe_content(state, f"agent-{n % 40}", text, **DEFAULTS)
        if n % 1000 == 999:
            sizes.append(len(state.to_bytes()))
    assert max(sizes) < 6000
    assert sizes[-1] <= sizes[0] + 64  # full from early on, then constant
    assert ContentState.from_bytes(state.to_bytes()) == state


def test_serialized_form_round_trips_and_rejects_garbage() -> None:
    state = ContentState()
    for n in range(30):
        state, _ = observe_content(state, f"a{n % 3}", prose(n % 4), **DEFAULTS)
    data = state.to_bytes()
    assert ContentState.from_bytes(data) == state
    assert ContentState.from_bytes(b"") == ContentState()
    for bad in (data[:-1], b"\x07" + data[1:], b"xx"):
        with pytest.raises(ValueError):
            ContentState.from_bytes(bad)


def test_the_embedded_ledgers_form_keeps_shared_outputs_once_and_round_trips() -> None:
    state = ContentState()
    for n in range(30):
        # Short outputs reach the cycle detector, not the near-duplicate window: the two
        # detectors' kept outputs part ways, then meet again.
        text = "Done." if n % 7 == 3 else prose(n % 4, 40)
        state, _ = observe_content(state, f"a{n % 2}", text, **DEFAULTS)
        plain = state.plain()
        assert ContentState.from_plain(plain) == state
        if state.near_duplicate.recent.endswith(state.cycle.recent):
            assert plain[0][0] == state.cycle.outputs  # a count, not a second copy


def test_tool_calls_without_text_reach_the_tool_loop_detector() -> None:
    tools = {**DEFAULTS, "tool_loop": ToolLoopSettings()}
    state, reasons = ContentState(), []
    for n in range(6):
        state, trips = observe_content(
            state,
            "researcher",
            "",
            tool_calls=[("search", '{"q": "refunds"}')],
            tool_results=["3 hits"] if n else [],
            **tools,
        )
        reasons.append([t.reason for t in trips])
    assert reasons[:4] == [[]] * 4 and reasons[4] == [TripReason.TOOL_LOOP]
    assert ContentState.from_bytes(state.to_bytes()) == state


def test_an_agent_acting_on_new_tool_results_is_not_a_loop() -> None:
    """The same report template every round, while the tests it runs say something new."""
    tools = {**DEFAULTS, "tool_loop": ToolLoopSettings()}
    template = "Ran the suite again and patched the failing module; the report is attached below."
    state, reasons = ContentState(), []
    for n in range(10):
        state, trips = observe_content(
            state,
            "coder",
            template,
            tool_calls=[("run_tests", "{}")],
            tool_results=[f"{10 - n} failed"],
            **tools,
        )
        reasons += [t.reason for t in trips]
    assert reasons == []
    stale = state
    for _ in range(3):  # the tests stop changing: the same text is a loop again
        stale, trips = observe_content(
            stale, "coder", template, tool_calls=[("run_tests", "{}")], tool_results=["1 failed"],
            **tools,
        )  # fmt: skip
        reasons += [t.reason for t in trips]
    assert TripReason.NEAR_DUPLICATE in reasons


def test_state_and_trips_of_a_fixed_conversation_do_not_change() -> None:
    """Another replica, or the proxy after an upgrade, continues a task from the state this
    one wrote: the hashes, the sketches, the sample and the serialized layout are part of
    the contract, and so are the trips they lead to. A change to any of them is a new state
    version, not a refactoring."""
    tools = {**DEFAULTS, "tool_loop": ToolLoopSettings()}
    state, digest = ContentState(), hashlib.sha256()
    for n in range(40):
        text = reword(prose(n % 5, 20 + 37 * (n % 7)), n)
        text += " Hello TEAM, 12 tests failing (was 13)." if n % 3 else ""
        calls = [("search", f'{{"q": "refunds", "page": {n % 2}}}')] if n % 4 == 0 else []
        results = [f"{n % 5} hits"] if n % 5 else []
        state, trips = observe_content(
            state, f"agent-{n % 3}", text, tool_calls=calls, tool_results=results, **tools
        )
        found = sorted((str(t.reason), sorted(t.figures.items())) for t in trips)
        digest.update(state.to_bytes() + repr(found).encode())
    assert digest.hexdigest() == "a36d078e6f309fc8b9335db5262a9c4185293c16dc024fadfb3483975d7b41f2"
