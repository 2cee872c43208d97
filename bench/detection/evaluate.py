"""How well the loop detectors agree with people's loop labels on real multi-agent traces.

    .venv/bin/python -m bench.detection.evaluate [--data ../shared/data] [--out FILE]

Reads the two public corpora beside the checkout (``../shared/data``; never copied into the
package), replays every trace through the detectors as ``tripwire replay`` does, and writes a
Markdown report (default ``bench/detection/results.md``), after the report of
``bench.detection.synthetic`` on our own scripted conversations (where the thresholds and the
default actions come from). Without the public data it says so and exits 0.

Positives and negatives:

* Who&When hand-crafted (Magentic-One): positive when the orchestrator's ledger said
  ``is_in_loop`` at some step, negative when it never did. Earliness is the step of a
  detector's first trip minus the step of the first such ledger (negative: sooner).
* MAST: positive when at least two of three annotators marked "step repetition", negative when
  none did; traces with one vote are left out.

Rates come with Wilson 95% intervals: with a few dozen traces per class, they are wide.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.detection import synthetic
from proxy.config import RepeatSettings
from proxy.detectors.settings import CycleSettings, NearDuplicateSettings, NoProgressSettings
from proxy.replay.mast import load_mast
from proxy.replay.runner import DETECTORS, DetectorPolicy, TraceReport, replay_trace
from proxy.replay.traces import Trace
from proxy.replay.who_and_when import load_who_and_when

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results.md"
WHO_AND_WHEN = "who_and_when/hand_crafted.jsonl"
MAST = "mast/MAD_human_labelled_19.json"
LENGTH_BASELINES = (12, 20)


@dataclass(frozen=True, slots=True)
class Case:
    corpus: str  # "W&W" or "MAST"
    trace: Trace
    positive: bool
    first_loop_step: int | None  # W&W: the first ledger that said is_in_loop


def load_cases(data: Path) -> list[Case]:
    cases = []
    for trace in load_who_and_when(data / WHO_AND_WHEN):
        loops = trace.labels["loop_steps"]
        cases.append(Case("W&W", trace, bool(loops), loops[0] if loops else None))
    for trace in load_mast(data / MAST):
        votes = trace.labels["step_repetition_votes"]
        if votes >= 2 or votes == 0:
            cases.append(Case("MAST", trace, votes >= 2, None))
    return cases


def wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when there is nothing to measure."""
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


# A row's verdict on one trace: the step of its first trip, or None.
Verdict = Callable[[Case, TraceReport], int | None]


def detectors_verdict(names: Iterable[str]) -> Verdict:
    chosen = tuple(names)

    def verdict(case: Case, report: TraceReport) -> int | None:
        firing = report.first(chosen)
        return firing.step if firing else None

    return verdict


def length_verdict(completions: int) -> Verdict:
    def verdict(case: Case, report: TraceReport) -> int | None:
        reached = report.tripped[completions - 1 : completions]
        return reached[0][0] if reached else None

    return verdict


def row(label: str, cases: Sequence[Case], reports: Sequence[TraceReport], verdict: Verdict) -> str:
    cells = [label]
    for corpus in ("W&W", "MAST", None):
        chosen = [(c, r) for c, r in zip(cases, reports, strict=True) if corpus in (None, c.corpus)]
        fired = [(c, verdict(c, r)) for c, r in chosen]
        positives = [step for c, step in fired if c.positive]
        negatives = [step for c, step in fired if not c.positive]
        cells.append(rate(sum(s is not None for s in positives), len(positives)))
        cells.append(rate(sum(s is not None for s in negatives), len(negatives)))
    cells.append(_earliness(cases, reports, verdict))
    return "| " + " | ".join(cells) + " |"


def _earliness(cases: Sequence[Case], reports: Sequence[TraceReport], verdict: Verdict) -> str:
    deltas = []
    for case, report in zip(cases, reports, strict=True):
        step = verdict(case, report)
        if case.first_loop_step is not None and step is not None:
            deltas.append(step - case.first_loop_step)
    if not deltas:
        return "-"
    sooner = sum(d <= 0 for d in deltas)
    return f"{statistics.median(deltas):+g} ({sooner} of {len(deltas)} at or before)"


HEADER = (
    "| | W&W recall | W&W false positives | MAST recall | MAST false positives "
    "| pooled recall | pooled false positives | earliness, W&W steps: median (at or before "
    "the first flag) |\n|---|---|---|---|---|---|---|---|"
)


def step_table(cases: Sequence[Case], reports: Sequence[TraceReport]) -> list[str]:
    """Length-free agreement: completions where a detector trips, judged by the next ledger."""
    alarms: dict[str, list[bool]] = {name: [] for name in ("any", *DETECTORS)}
    every: list[bool] = []
    late: list[bool] = []
    for case, report in zip(cases, reports, strict=True):
        if case.corpus != "W&W":
            continue
        loops = set(case.trace.labels["loop_steps"])
        ledgers = [(t.step, t.step in loops) for t in case.trace.turns if t.role == "label"]
        for index, (step, tripped) in enumerate(report.tripped):
            judged = next((flag for at, flag in ledgers if at > step), None)
            if judged is None:
                continue
            every.append(judged)
            if index + 1 >= LENGTH_BASELINES[0]:
                late.append(judged)
            for name in tripped:
                alarms[name].append(judged)
            if tripped:
                alarms["any"].append(judged)
    lines = [
        "| completions | count | judged in a loop by the next ledger |",
        "|---|---|---|",
        f"| all | {len(every)} | {rate(sum(every), len(every))} |",
        f"| from the {LENGTH_BASELINES[0]}th of its task on | {len(late)} "
        f"| {rate(sum(late), len(late))} |",
    ]
    for name, flags in alarms.items():
        label = "where any detector trips" if name == "any" else f"where {name} trips"
        lines.append(f"| {label} | {len(flags)} | {rate(sum(flags), len(flags))} |")
    return lines


SWEEP: list[tuple[str, str, dict[str, Any]]] = [
    *[("repeat_output", f"threshold {t}", {"repeat": RepeatSettings(threshold=t)}) for t in (2, 3)],
    *[
        (
            "near_duplicate",
            f"similarity {s}, repeats {r}",
            {"near_duplicate": NearDuplicateSettings(similarity=s, repeats=r)},
        )
        for s in (0.6, 0.7, 0.8, 0.9)
        for r in (2, 3)
    ],
    *[
        (
            "cycle",
            f"similarity {s}, rounds {r}",
            {"cycle": CycleSettings(similarity=s, rounds=r)},
        )
        for s in (0.5, 0.7, 0.9)
        for r in (2, 3)
    ],
    *[
        (
            "no_progress",
            f"completions {k}, min_new_share {m}",
            {"no_progress": NoProgressSettings(completions=k, min_new_share=m)},
        )
        for k in (4, 6)
        for m in (0.1, 0.2, 0.3)
    ],
]


def run(cases: Sequence[Case], sweep: bool) -> list[str]:
    policy = DetectorPolicy()
    reports = [replay_trace(case.trace, policy) for case in cases]
    lines = ["### Default settings, every detector firing, and each detector alone", "", HEADER]
    stopping = synthetic.shipped(DetectorPolicy.load(None))
    lines.append(
        row(
            f"**shipped policy ({', '.join(stopping)} kill)**",
            cases,
            reports,
            detectors_verdict(stopping),
        )
    )
    lines.append(row("every detector firing", cases, reports, detectors_verdict(DETECTORS)))
    for name in DETECTORS:
        lines.append(row(name, cases, reports, detectors_verdict([name])))
    for length in LENGTH_BASELINES:
        label = f"baseline: the task reaches {length} completions"
        lines.append(row(label, cases, reports, length_verdict(length)))
    lines += ["", "### Step level: does a trip mean a loop, whatever the task's length?", ""]
    lines += step_table(cases, reports)
    if sweep:
        lines += ["", "### Each detector alone, other settings", "", HEADER]
        for name, label, update in SWEEP:
            varied = policy.model_copy(update=update)
            swept = [replay_trace(case.trace, varied) for case in cases]
            lines.append(row(f"{name}: {label}", cases, swept, detectors_verdict([name])))
    return lines


def defaults_text() -> list[str]:
    policy = DetectorPolicy()
    parts = [f"repeat: threshold {policy.repeat.threshold}, window {policy.repeat.window}"]
    for name in DETECTORS[1:]:
        settings = getattr(policy, name).model_dump(exclude={"enabled", "action"})
        parts.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    return ["Defaults measured: " + "; ".join(parts) + "."]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-sweep", action="store_true", help="skip the other settings")
    args = parser.parse_args(argv)
    missing = [p for p in (WHO_AND_WHEN, MAST) if not (args.data / p).exists()]
    if missing:
        print(
            f"skipped: the corpora are not in {args.data} (missing {', '.join(missing)}); "
            "see ../shared/README.md",
            file=sys.stderr,
        )
        return 0
    started = time.perf_counter()
    cases = load_cases(args.data)
    counts = {
        (corpus, positive): sum(c.corpus == corpus and c.positive == positive for c in cases)
        for corpus in ("W&W", "MAST")
        for positive in (True, False)
    }
    lines = [
        "# Loop detection: scripted conversations and real multi-agent traces",
        "",
        *synthetic.report(),
        "",
        "## Real multi-agent traces",
        "",
        f"Generated by `python -m bench.detection.evaluate`. Who&When hand-crafted (Zhang et al., "
        f"ICML 2025, MIT): {counts['W&W', True]} looping, {counts['W&W', False]} not. MAST "
        f"human-labelled (Cemri et al., NeurIPS 2025, CC-BY-4.0): {counts['MAST', True]} "
        f"with step repetition, {counts['MAST', False]} without. Rates: hits/traces = share "
        "(Wilson 95% interval).",
        "",
        *defaults_text(),
        "",
        *run(cases, sweep=not args.no_sweep),
    ]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {args.out} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
