"""The loop detectors on our own scripted conversations: thresholds chosen on one split, judged
on another and on wording they never saw.

    .venv/bin/python -m bench.detection.synthetic [--per-class N] [--out FILE]

1. ``corpus.generate("tuning", seed 1)``: every kind's conversations, even-numbered ones the
   tuning split, odd-numbered ones the held-out split.
2. On the tuning split, each detector alone, over a grid of settings: the setting that stops
   the most looping conversations while stopping no healthy one, with a step of margin (the
   next looser setting stops no healthy one either); ties keep the stricter setting.
3. On the held-out split, those settings: a detector may kill by default only if it stopped no
   healthy conversation there.
4. The shipped ``rules/policy.yaml``, as ``tripwire replay`` runs it, on the held-out split and
   on ``corpus.generate("unseen", seed 2)``: another vocabulary and another seed.

Conversations are replayed from the JSONL the corpus writes, through the replay reader, so this
measures exactly what ``tripwire replay`` would print. Nothing generated is kept.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.detection.corpus import HEALTHY, LOOPING, Conversation, generate, write_jsonl
from proxy.config import RepeatSettings
from proxy.detectors.settings import (
    CycleSettings,
    NearDuplicateSettings,
    NoProgressSettings,
    ToolLoopSettings,
)
from proxy.replay.runner import DETECTORS, REPEAT, DetectorPolicy, replay_trace
from proxy.replay.traces import Trace, load_jsonl

OUT = Path(__file__).resolve().parent / "synthetic.md"
TUNING_SEED, UNSEEN_SEED = 1, 2
PER_CLASS = 60  # per kind: 240 looping and 240 healthy, half of each held out
UNSEEN_PER_CLASS = 30


@dataclass(frozen=True, slots=True)
class Case:
    conversation: Conversation
    trace: Trace


def load(conversations: Sequence[Conversation]) -> list[Case]:
    """The conversations as the replay reader reads them from their JSONL."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.jsonl"
        write_jsonl(conversations, path)
        traces = {trace.task: trace for trace in load_jsonl(path)}
    return [Case(c, traces[c.task]) for c in conversations]


def split(cases: Sequence[Case]) -> tuple[list[Case], list[Case]]:
    """(tuning, held out): even- and odd-numbered conversations of every kind."""
    tuning = [c for c in cases if int(c.conversation.task.rsplit("-", 1)[1]) % 2 == 0]
    held_out = [c for c in cases if int(c.conversation.task.rsplit("-", 1)[1]) % 2 == 1]
    return tuning, held_out


def wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return 0.0, 1.0
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(hits: int, total: int) -> str:
    if total == 0:
        return "-"
    low, high = wilson(hits, total)
    return f"{hits}/{total} = {hits / total:.0%} ({low:.0%}-{high:.0%})"


def median_interval(values: Sequence[int]) -> str:
    """The median and a distribution-free 95% interval (binomial order statistics)."""
    if not values:
        return "-"
    ordered = sorted(values)
    n = len(ordered)
    # The largest rank j with P(Binomial(n, 1/2) < j) <= 2.5%: the median lies between the
    # j-th smallest and the j-th largest value with at least 95% confidence.
    j, below = 0, 0.0
    while j < n and below + math.comb(n, j) / 2**n <= 0.025:
        below += math.comb(n, j) / 2**n
        j += 1
    low, high = max(j - 1, 0), min(n - j, n - 1)
    return f"{statistics.median(ordered):g} ({ordered[low]}-{ordered[high]})"


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where each conversation was stopped (its 1-based completion), or None."""

    stops: list[tuple[Case, int | None]]

    def looping(self, kind: str | None = None) -> list[int | None]:
        return [
            s
            for c, s in self.stops
            if c.conversation.looping and kind in (None, c.conversation.kind)
        ]

    def healthy(self, kind: str | None = None) -> list[int | None]:
        return [
            s
            for c, s in self.stops
            if not c.conversation.looping and kind in (None, c.conversation.kind)
        ]

    @property
    def recall(self) -> float:
        loops = self.looping()
        return sum(s is not None for s in loops) / max(len(loops), 1)

    @property
    def false_positives(self) -> int:
        return sum(s is not None for s in self.healthy())

    @property
    def median_stop(self) -> float:
        stops = [s for s in self.looping() if s is not None]
        return statistics.median(stops) if stops else math.inf

    def cells(self) -> list[str]:
        loops, healthy = self.looping(), self.healthy()
        stops = [s for s in loops if s is not None]
        return [
            rate(len(stops), len(loops)),
            rate(sum(s is not None for s in healthy), len(healthy)),
            median_interval(stops),
        ]


def outcome(cases: Sequence[Case], policy: DetectorPolicy, detectors: Iterable[str]) -> Outcome:
    chosen = tuple(detectors)
    stops = []
    for case in cases:
        firing = replay_trace(case.trace, policy).first(chosen)
        stops.append((case, firing.completion if firing else None))
    return Outcome(stops)


def only(policy: DetectorPolicy, detector: str) -> DetectorPolicy:
    """``policy`` with every content detector but ``detector`` off (faster, same firings)."""
    update: dict[str, Any] = {
        name: getattr(policy, name).model_copy(update={"enabled": False})
        for name in DETECTORS
        if name not in (REPEAT, detector)
    }
    return policy.model_copy(update=update)


# Each detector's grid: rows of settings, each row from strictest to loosest in one setting.
GRID: dict[str, list[list[dict[str, Any]]]] = {
    REPEAT: [[{"threshold": 3}]],  # the exact repeat's shipped setting, reported, not tuned
    "near_duplicate": [
        [{"similarity": s, "repeats": r} for s in (0.9, 0.8, 0.7, 0.6, 0.5)] for r in (3, 2)
    ],
    "cycle": [[{"similarity": s, "rounds": r} for s in (0.8, 0.7, 0.6, 0.5, 0.4)] for r in (3, 2)],
    "no_progress": [
        [{"completions": k, "min_new_share": m} for m in (0.1, 0.2, 0.3, 0.4)] for k in (6, 4)
    ],
    "tool_loop": [[{"repeats": r, "rounds": n} for n in (3, 2)] for r in (4, 3, 2)],
}
_MODELS: dict[str, type[Any]] = {
    REPEAT: RepeatSettings,
    "near_duplicate": NearDuplicateSettings,
    "cycle": CycleSettings,
    "no_progress": NoProgressSettings,
    "tool_loop": ToolLoopSettings,
}


def with_setting(policy: DetectorPolicy, detector: str, setting: dict[str, Any]) -> DetectorPolicy:
    section = "repeat" if detector == REPEAT else detector
    return policy.model_copy(update={section: getattr(policy, section).model_copy(update=setting)})


@dataclass(frozen=True, slots=True)
class Choice:
    detector: str
    setting: dict[str, Any]
    grid: list[tuple[dict[str, Any], Outcome]]  # every setting tried, on the tuning split
    tuning: Outcome
    held_out: Outcome
    unseen: Outcome

    @property
    def kills(self) -> bool:
        return self.held_out.false_positives == 0 and self.tuning.false_positives == 0


def choose(
    detector: str, tuning: Sequence[Case], held_out: Sequence[Case], unseen: Sequence[Case]
) -> Choice:
    base = only(DetectorPolicy(), detector)
    rows = [
        [
            (setting, outcome(tuning, with_setting(base, detector, setting), [detector]))
            for setting in row
        ]
        for row in GRID[detector]
    ]
    # Eligible: no healthy conversation stopped, at this setting and at the next looser one of
    # its row (a step of margin: a threshold on the edge of the first false positive does not
    # carry to new conversations); a row's loosest setting has no margin to show. A row of one
    # setting (a setting that is not tuned) is eligible by itself. Then the most looping
    # conversations stopped; a tie keeps the earlier, stricter setting.
    eligible = [
        tried
        for row in rows
        for index, tried in enumerate(row)
        if tried[1].false_positives == 0
        and (len(row) == 1 or (index + 1 < len(row) and row[index + 1][1].false_positives == 0))
    ]
    grid = [tried for row in rows for tried in row]
    setting, result = max(
        eligible or grid, key=lambda tried: (-tried[1].false_positives, tried[1].recall)
    )
    policy = with_setting(base, detector, setting)
    return Choice(
        detector,
        setting,
        grid,
        result,
        outcome(held_out, policy, [detector]),
        outcome(unseen, policy, [detector]),
    )


def shipped(policy: DetectorPolicy) -> list[str]:
    """The detectors that stop a task under ``policy``."""
    return [d for d in DETECTORS if policy.enabled(d) and policy.action(d) == "kill"]


def kinds_table(named: Sequence[tuple[str, Outcome]]) -> list[str]:
    lines = [
        "| kind | " + " | ".join(name for name, _ in named) + " |",
        "|---" * (len(named) + 1) + "|",
    ]
    for kind in LOOPING:
        cells = []
        for _, result in named:
            loops = result.looping(kind)
            cells.append(rate(sum(s is not None for s in loops), len(loops)))
        lines.append(f"| looping: {kind} (stopped) | " + " | ".join(cells) + " |")
    for kind in HEALTHY:
        cells = []
        for _, result in named:
            healthy = result.healthy(kind)
            cells.append(rate(sum(s is not None for s in healthy), len(healthy)))
        lines.append(f"| healthy: {kind} (stopped) | " + " | ".join(cells) + " |")
    return lines


def report(per_class: int = PER_CLASS, unseen_per_class: int = UNSEEN_PER_CLASS) -> list[str]:
    cases = load(generate("tuning", TUNING_SEED, per_class))
    unseen = load(generate("unseen", UNSEEN_SEED, unseen_per_class))
    tuning, held_out = split(cases)
    choices = [choose(d, tuning, held_out, unseen) for d in DETECTORS]
    policy = DetectorPolicy.load(None)
    stopping = shipped(policy)
    observing = [d for d in DETECTORS if d not in stopping]
    on_held_out, on_unseen = outcome(held_out, policy, stopping), outcome(unseen, policy, stopping)
    count = {
        name: (
            sum(c.conversation.looping for c in part),
            sum(not c.conversation.looping for c in part),
        )
        for name, part in (("tuning", tuning), ("held out", held_out), ("unseen", unseen))
    }
    lines = [
        "## Scripted conversations: thresholds chosen on one split, judged on two others",
        "",
        "Generated by `python -m bench.detection.synthetic` (also part of `python -m "
        "bench.detection.evaluate`) from `bench/detection/corpus.py`: tuning split "
        f"{count['tuning'][0]} looping + {count['tuning'][1]} healthy, held-out split "
        f"{count['held out'][0]} + {count['held out'][1]} (the same vocabulary, seed "
        f"{TUNING_SEED}), unseen {count['unseen'][0]} + {count['unseen'][1]} (another vocabulary, "
        f"seed {UNSEEN_SEED}). A conversation counts as stopped at the first completion where a "
        "detector trips; stops are that completion's number from the conversation's start "
        "(warm-up included). Rates: hits/conversations = share (Wilson 95% interval); medians "
        "with a distribution-free 95% interval.",
        "",
        "### The shipped policy (`rules/policy.yaml`, as `tripwire replay` runs it)",
        "",
        f"Detectors that stop a task: {', '.join(f'`{d}`' for d in stopping)}"
        + (f"; observing: {', '.join(f'`{d}`' for d in observing)}." if observing else "."),
        "",
        "| split | looping stopped | healthy stopped | completions to stop: median |",
        "|---|---|---|---|",
        "| held out | " + " | ".join(on_held_out.cells()) + " |",
        "| unseen wording | " + " | ".join(on_unseen.cells()) + " |",
        "",
        *kinds_table([("held out", on_held_out), ("unseen wording", on_unseen)]),
        "",
        "Done when (at least 80% of looping conversations stopped, at a median of at most 8 "
        "completions, no healthy one stopped): "
        + ", ".join(
            f"{name}: {'met' if done(result) else 'NOT met'}"
            for name, result in (("held out", on_held_out), ("unseen", on_unseen))
        )
        + ".",
        "",
        "### Each detector alone, at the setting chosen on the tuning split",
        "",
        "A detector kills by default only if it stopped no healthy conversation of the tuning "
        "and held-out splits; the unseen column is reported, never used to choose.",
        "",
        "| detector | setting chosen | tuning: looping / healthy stopped | held out: looping "
        "stopped | held out: healthy stopped | held out: median stop | unseen: looping stopped "
        "| unseen: healthy stopped | unseen: median stop | evidence says |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for choice in choices:
        setting = ", ".join(f"{k} {v}" for k, v in choice.setting.items())
        tuned = choice.tuning.cells()
        lines.append(
            f"| `{choice.detector}` | {setting} | {tuned[0]} / {tuned[1]} | "
            + " | ".join(choice.held_out.cells())
            + " | "
            + " | ".join(choice.unseen.cells())
            + f" | {'kill' if choice.kills else 'observe'} |"
        )
    lines += ["", *agreement(choices, policy)]
    lines += ["", "### Each detector's grid on the tuning split", ""]
    lines += ["| detector | setting | looping stopped | healthy stopped | median stop |"]
    lines += ["|---|---|---|---|---|"]
    for choice in choices:
        detector = choice.detector
        for values, result in choice.grid:
            label = ", ".join(f"{k} {v}" for k, v in values.items())
            lines.append(f"| `{detector}` | {label} | " + " | ".join(result.cells()) + " |")
    return lines


def agreement(choices: Sequence[Choice], policy: DetectorPolicy) -> list[str]:
    """Whether the shipped policy is what the evidence says, detector by detector."""
    differences = []
    for choice in choices:
        section = getattr(policy, "repeat" if choice.detector == REPEAT else choice.detector)
        shipped_setting = {key: getattr(section, key) for key in choice.setting}
        action = policy.action(choice.detector)
        wanted = "kill" if choice.kills else "observe"
        if shipped_setting != choice.setting or action != wanted:
            differences.append(
                f"`{choice.detector}` ships {shipped_setting} ({action}), the evidence says "
                f"{choice.setting} ({wanted})"
            )
    if not differences:
        return ["The shipped policy is the one the evidence chose, setting for setting."]
    return ["**The shipped policy differs from the evidence:** " + "; ".join(differences) + "."]


def done(result: Outcome) -> bool:
    return result.recall >= 0.8 and result.median_stop <= 8 and result.false_positives == 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    parser.add_argument("--unseen-per-class", type=int, default=UNSEEN_PER_CLASS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    text = "\n".join(report(args.per_class, args.unseen_per_class)) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {args.out} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
