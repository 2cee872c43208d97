"""``tripwire replay``'s arguments, apart from the loaders and the detectors they run: the
CLI builds every command's parser on each start, ``tripwire serve`` included, and only a
replay needs the rest loaded (``proxy.cli`` imports ``proxy.replay.cli`` when one runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

# The trace formats, by the name ``--format`` takes (proxy.replay.cli.LOADERS reads each).
FORMATS = ("jsonl", "mast", "who_and_when")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the recorded conversation")
    parser.add_argument(
        "--format",
        choices=["auto", *FORMATS],
        default="auto",
        help="jsonl: one message a line {task, agent, role, text}; mast: the MAST "
        "human-labelled JSON; who_and_when: Who&When JSON lines (default: guessed)",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        help="policy file whose repeat, cycle, near_duplicate, no_progress, tool_loop and on_trip "
        "sections apply (default: rules/policy.yaml if present, else the built-in defaults)",
    )
    parser.add_argument("--task", default="*", help="replay only tasks matching this glob")
    parser.add_argument("--json", action="store_true", help="one JSON object per task")
