"""Replay: run the detectors over recorded conversations, with no proxy and no provider."""

from proxy.replay.cli import add_replay_parser, main, run_replay
from proxy.replay.runner import DetectorPolicy, Firing, TraceReport, replay, replay_trace
from proxy.replay.traces import Trace, TraceFormatError, Turn

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
