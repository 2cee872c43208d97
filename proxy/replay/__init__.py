"""Replay: run the detectors over recorded conversations, with no proxy and no provider.

The names below load on first use: the CLI imports ``proxy.replay.args`` on every start,
and that must not load the detectors and loaders (``tripwire serve`` never needs them)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.replay.cli import add_replay_parser, main, run_replay
    from proxy.replay.runner import DetectorPolicy, Firing, TraceReport, replay, replay_trace
    from proxy.replay.traces import Trace, TraceFormatError, Turn

_HOMES = {
    "add_replay_parser": "proxy.replay.cli",
    "main": "proxy.replay.cli",
    "run_replay": "proxy.replay.cli",
    "DetectorPolicy": "proxy.replay.runner",
    "Firing": "proxy.replay.runner",
    "TraceReport": "proxy.replay.runner",
    "replay": "proxy.replay.runner",
    "replay_trace": "proxy.replay.runner",
    "Trace": "proxy.replay.traces",
    "TraceFormatError": "proxy.replay.traces",
    "Turn": "proxy.replay.traces",
}

__all__ = [
    "DetectorPolicy",
    "Firing",
    "Trace",
    "TraceFormatError",
    "TraceReport",
    "Turn",
    "add_replay_parser",
    "main",
    "replay",
    "replay_trace",
    "run_replay",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
