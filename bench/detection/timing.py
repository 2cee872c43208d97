"""What the content detectors add per completion, and how big a task's state gets.

    .venv/bin/python -m bench.detection.timing

For completions of 64, 500, 2,000 and 8,000 tokens (cl100k) of varied English: the shingling
(words, word 3-shingles and the bag sketch), each detector on its own, and all of them together
through ``observe_content`` with one tool call and one tool result, each time on a task whose
windows and sample are already full (the steady state). The fastest of a few hundred single
calls. Target: under 0.2 ms for 2,000 tokens, all detectors together.
"""

from __future__ import annotations

import random
import sys
import timeit
from collections.abc import Callable

from proxy.detectors import cycle, progress, similarity, toolcalls
from proxy.detectors.content import ContentState, observe_content
from proxy.detectors.settings import (
    CycleSettings,
    NearDuplicateSettings,
    NoProgressSettings,
    ToolLoopSettings,
)
from proxy.detectors.shingles import shingle
from proxy.providers.base import Output
from proxy.tokens import count_text

SIZES = (64, 500, 2000, 8000)
_SEED_TEXT = (
    "the agent reads the request then plans which tools to call and in what order it checks "
    "each result against the goal and writes a short note for the next agent when a step fails "
    "it retries with a smaller input or asks the planner for another route the reviewer compares "
    "the draft with the tests and lists what is missing before the task can be marked as done "
    "a budget limits how many tokens every run may spend and a deadline stops work that takes "
    "too long while the log keeps every decision so a person can see why the run went the way "
    "it did"
)


def text_of(tokens: int, rng: random.Random) -> str:
    """Varied prose of about ``tokens`` tokens: words drawn from a vocabulary of ~400."""
    base = _SEED_TEXT.split()
    vocabulary = (
        base + [w + s for w in base for s in ("s", "ed", "ing")] + [str(n) for n in range(50)]
    )
    words: list[str] = []
    while count_text(" ".join(words)) < tokens:
        sentence = [rng.choice(vocabulary) for _ in range(rng.randint(6, 18))]
        words.extend([*sentence[:-1], sentence[-1] + "."])
    return " ".join(words)


def per_call_us(call: Callable[[], object], number: int) -> float:
    """The fastest of ``number`` single calls: on a shared machine, the others include time
    the process spent waiting for a core."""
    return min(timeit.repeat(call, number=1, repeat=number)) * 1e6


def measure(tokens: int, rng: random.Random) -> str:
    """One table row: the detectors on a ``tokens``-long completion, in the steady state."""
    cycle_settings, near, stalled = CycleSettings(), NearDuplicateSettings(), NoProgressSettings()
    tools = ToolLoopSettings()
    call = [("search", '{"query": "refund policy", "limit": 10}')]
    state = ContentState()
    index = 0
    # At least 12 completions (the windows), and until the no-progress sample is full.
    while index < 12 or len(state.no_progress.sample) < 4 * stalled.sample_size:
        state, _ = observe_content(
            state,
            f"agent-{index % 3}",
            text_of(tokens, rng),
            cycle=cycle_settings,
            near_duplicate=near,
            no_progress=stalled,
            tool_loop=tools,
            tool_calls=call,
            tool_results=[f"result {index}"],
        )
        index += 1
    text = text_of(tokens, rng)
    shingles = shingle(text)
    calls: list[Callable[[], object]] = [
        lambda: shingle(text),
        lambda: cycle.observe_shingles(state.cycle, "agent-0", shingles, cycle_settings),
        lambda: similarity.observe_shingles(state.near_duplicate, "agent-0", shingles, near),
        lambda: progress.observe_shingles(state.no_progress, "agent-0", shingles, stalled),
        lambda: toolcalls.observe(state.tool_loop, "agent-0", call, ["result 3"], tools),
        lambda: observe_content(
            state,
            "agent-0",
            text,
            cycle=cycle_settings,
            near_duplicate=near,
            no_progress=stalled,
            tool_loop=tools,
            tool_calls=call,
            tool_results=["result 3"],
        ),
        lambda: Output(text).fingerprint(),
    ]
    number = max(200, 400_000 // tokens)
    cells = " | ".join(f"{per_call_us(call, number):.0f} us" for call in calls)
    return (
        f"| {tokens:,} | {len(text):,} | {shingles.count:,} | {cells} | {len(state.to_bytes()):,} |"
    )


def main() -> int:
    rng = random.Random(20250601)
    print(
        "| tokens | chars | shingles | shingling | cycle | near_duplicate | no_progress "
        "| tool_loop | all of them (observe_content) | Output.fingerprint | state bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tokens in SIZES:
        print(measure(tokens, rng))
    return 0


if __name__ == "__main__":
    sys.exit(main())
