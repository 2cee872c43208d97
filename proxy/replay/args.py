"""``tripwire replay``'s arguments, apart from the loaders and the detectors they run: the
CLI builds every command's parser on each start, ``tripwire serve`` included, and only a
replay needs the rest loaded."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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


def _run(args: argparse.Namespace) -> int:
    from proxy.replay.cli import run_replay

    return run_replay(args)


def add_replay_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``replay`` on a ``parser.add_subparsers()`` object."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "replay", help="run the loop detectors over a recorded conversation"
    )
    add_arguments(parser)
    parser.set_defaults(run=_run)
    return parser
