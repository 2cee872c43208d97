"""``tripwire replay FILE``: when each detector would have fired on a recorded conversation.

No proxy and no provider: the file's completions go through the same detectors, and for each
task the first trip of every detector is printed with its step (the turn's 0-based position in
the file's trace), agent, reason and sentence, then what stopping the task there would have
saved: the completions after it and their output tokens (cl100k). Prompt tokens are not in
the recordings, so the real saving is larger.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from proxy.errors import ConfigError
from proxy.replay.args import FORMATS, add_arguments
from proxy.replay.mast import load_mast
from proxy.replay.runner import (
    DETECTORS,
    DetectorPolicy,
    Savings,
    TraceReport,
    replay_trace,
    summary_figures,
)
from proxy.replay.traces import Trace, TraceFormatError, load_jsonl
from proxy.replay.who_and_when import load_who_and_when

LOADERS: dict[str, Callable[[Path], list[Trace]]] = {
    "jsonl": load_jsonl,
    "mast": load_mast,
    "who_and_when": load_who_and_when,
}
assert tuple(LOADERS) == FORMATS


def guess_format(path: Path) -> str:
    """``mast`` for a JSON array, ``who_and_when`` for JSON lines with a ``history``, else
    ``jsonl``."""
    with path.open(encoding="utf-8") as file:
        head = file.read(4096).lstrip()
    if head.startswith("["):
        return "mast"
    if head.startswith("{") and '"history"' in head:
        return "who_and_when"
    return "jsonl"


def add_replay_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``replay`` on a ``parser.add_subparsers()`` object."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "replay", help="run the loop detectors over a recorded conversation"
    )
    add_arguments(parser)
    parser.set_defaults(run=run_replay)
    return parser


def _saving(savings: Savings | None, report: TraceReport) -> str:
    if savings is None:
        return "nothing fired"
    firing = savings.firing
    return (
        f"stopped at step {firing.step} ({firing.detector}, completion {firing.completion}): "
        f"{savings.completions} of {report.completions} completions and "
        f"{savings.tokens:,} of {report.output_tokens:,} output tokens saved"
    )


def print_report(report: TraceReport, policy: DetectorPolicy, out: TextIO) -> None:
    trace = report.trace
    print(
        f"{trace.task} ({trace.source}): {report.completions} completions, "
        f"{report.output_tokens:,} output tokens",
        file=out,
    )
    for detector in DETECTORS:
        if not policy.enabled(detector):
            print(f"  {detector:<15} disabled", file=out)
            continue
        action = policy.action(detector)
        firing = report.firings.get(detector)
        if firing is None:
            print(f"  {detector:<15} {action:<7} -", file=out)
            continue
        print(
            f"  {detector:<15} {action:<7} step {firing.step} (completion {firing.completion}) "
            f"agent {firing.agent}: {firing.trip.detail}",
            file=out,
        )
    killers = [d for d in DETECTORS if policy.enabled(d) and policy.action(d) == "kill"]
    print(f"  with this policy: {_saving(report.savings(killers), report)}", file=out)
    shadowed = [d for d in DETECTORS if policy.enabled(d) and d not in killers]
    if shadowed and any(d in report.firings for d in shadowed):
        every = [d for d in DETECTORS if policy.enabled(d)]
        print(f"  had every detector killed: {_saving(report.savings(every), report)}", file=out)


def run_replay(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    policy = DetectorPolicy.load(args.policy)
    path: Path = args.file
    fmt = args.format
    try:
        if fmt == "auto":
            fmt = guess_format(path)
        traces = LOADERS[fmt](path)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"tripwire: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    except (TraceFormatError, ValueError, KeyError, TypeError) as exc:
        print(f"tripwire: {path} is not a {fmt} trace: {exc}", file=sys.stderr)
        return 2
    selected = [t for t in traces if fnmatch.fnmatchcase(t.task, args.task)]
    fired = 0
    for trace in selected:
        report = replay_trace(trace, policy)
        fired += bool(report.firings)
        if args.json:
            print(json.dumps(summary_figures(report)), file=out)
        else:
            print_report(report, policy, out)
    if not args.json:
        tasks = f"{len(selected)} task{'' if len(selected) == 1 else 's'}"
        print(f"{tasks} replayed ({fmt}); a detector fired in {fired}", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tripwire replay", description="Run the loop detectors over a recorded conversation."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_replay(args)
    except ConfigError as exc:
        print(f"tripwire: {exc}", file=sys.stderr)
        return 2
