"""Feed a recorded trace through the detectors, as the proxy would have, and keep the first trip
of each.

Every detector runs in shadow mode here, so each one's first trip is known even when another
would have stopped the task sooner; the savings are worked out afterwards from the policy's
actions. The exact-repeat detector sees ``Output(text, tool_calls).fingerprint()`` and its own
policy window, as at settle time in the ledger; the content detectors share one
``ContentState``, and the tool-loop detector gets each completion's tool calls and the tool
results (``tool`` turns) its agent received since its previous completion.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from proxy.config import DEFAULT_POLICY_PATH, Policy, RepeatSettings, TripAction
from proxy.detectors import registry, repeat
from proxy.detectors.base import Trip, TripReason
from proxy.detectors.content import ContentState, observe_content
from proxy.detectors.repeat import observe_repeat
from proxy.detectors.settings import (
    CycleSettings,
    NearDuplicateSettings,
    NoProgressSettings,
    ToolLoopSettings,
)
from proxy.errors import ConfigError
from proxy.providers.base import Output
from proxy.replay.traces import Trace
from proxy.tokens import count_text

# The detectors a trace's completions can trip, in the registry's order: the task's repeated
# output (settle phase) and every content detector. A new content detector replays by itself.
_REPLAYED = (repeat.REPEAT_OUTPUT, *registry.CONTENT)
REPEAT = str(repeat.REPEAT_OUTPUT.reason)
DETECTORS = tuple(str(detector.reason) for detector in _REPLAYED)
_BY_REASON = {detector.reason: str(detector.reason) for detector in _REPLAYED}


class DetectorPolicy(BaseModel):
    """The loop-detection part of a policy: the policy's top-level sections of these names."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    repeat: RepeatSettings = RepeatSettings()
    on_trip: TripAction = "kill"
    cycle: CycleSettings = CycleSettings()
    near_duplicate: NearDuplicateSettings = NearDuplicateSettings()
    no_progress: NoProgressSettings = NoProgressSettings()
    tool_loop: ToolLoopSettings = ToolLoopSettings()

    def action(self, detector: str) -> TripAction:
        """What a trip of ``detector`` does: the global ``on_trip: observe`` shadows them all."""
        if detector == REPEAT or self.on_trip == "observe":
            return self.on_trip
        section: CycleSettings | NearDuplicateSettings | NoProgressSettings | ToolLoopSettings = (
            getattr(self, detector)
        )
        return section.action

    def enabled(self, detector: str) -> bool:
        return detector == REPEAT or bool(getattr(self, detector).enabled)

    @classmethod
    def load(cls, path: Path | None) -> DetectorPolicy:
        """From a policy file (or a config file's ``policy:`` section); ``None``: the project's
        ``rules/policy.yaml`` when present, else the built-in defaults. Only the top-level
        sections apply: rules, which change them per task and agent glob, are not read."""
        if path is None:
            if not DEFAULT_POLICY_PATH.exists():
                return cls()
            path = DEFAULT_POLICY_PATH
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("policy"), dict):
            data = data["policy"]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        try:
            # The proxy's own model: a misspelt section fails here as it would at start-up.
            policy = Policy.model_validate(data)
        except ValidationError as exc:
            where = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid policy in {path}: {where}") from exc
        return cls(
            repeat=policy.repeat,
            on_trip=policy.on_trip,
            cycle=policy.cycle,
            near_duplicate=policy.near_duplicate,
            no_progress=policy.no_progress,
            tool_loop=policy.tool_loop,
        )


@dataclass(frozen=True, slots=True)
class Firing:
    detector: str
    step: int  # the turn's position in the source trace
    completion: int  # 1-based: how many completions the task had made, this one included
    agent: str
    trip: Trip


@dataclass(frozen=True, slots=True)
class Savings:
    firing: Firing
    completions: int  # completions after the trip, which a kill would have refused
    tokens: int  # their output tokens


@dataclass(slots=True)
class TraceReport:
    trace: Trace
    firings: dict[str, Firing] = field(default_factory=dict)  # the first trip of each detector
    tokens: list[int] = field(default_factory=list)  # output tokens of each completion
    # The step of each completion and the detectors that tripped on it (they trip again for as
    # long as the loop goes on).
    tripped: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)

    @property
    def completions(self) -> int:
        return len(self.tokens)

    @property
    def output_tokens(self) -> int:
        return sum(self.tokens)

    def first(self, detectors: Iterable[str]) -> Firing | None:
        fired = [self.firings[d] for d in detectors if d in self.firings]
        return min(fired, key=lambda f: (f.completion, DETECTORS.index(f.detector)), default=None)

    def savings(self, detectors: Iterable[str]) -> Savings | None:
        """What stopping the task at the first trip of any of ``detectors`` would have saved."""
        firing = self.first(detectors)
        if firing is None:
            return None
        after = self.tokens[firing.completion :]
        return Savings(firing, len(after), sum(after))


def replay_trace(trace: Trace, policy: DetectorPolicy) -> TraceReport:
    report = TraceReport(trace)
    outputs: deque[str] = deque(maxlen=policy.repeat.window)
    state = ContentState()
    results: dict[str, list[str]] = {}  # tool results each agent has not yet seen
    for turn in trace.turns:
        if turn.role == "tool":
            results.setdefault(turn.agent, []).append(turn.text)
        if not turn.completion:
            continue
        report.tokens.append(count_text(turn.text))
        trips: list[Trip] = []
        fingerprint = Output(turn.text, list(turn.tool_calls)).fingerprint()
        if fingerprint is not None:
            trip = observe_repeat(
                outputs, fingerprint, policy.repeat.threshold, TripReason.REPEAT_OUTPUT, turn.agent
            )
            trips.extend([trip] if trip else [])
        state, found = observe_content(
            state,
            turn.agent,
            turn.text,
            cycle=policy.cycle,
            near_duplicate=policy.near_duplicate,
            no_progress=policy.no_progress,
            tool_loop=policy.tool_loop,
            tool_calls=turn.tool_calls,
            tool_results=results.pop(turn.agent, ()),
        )
        trips.extend(found)
        report.tripped.append((turn.step, tuple(_BY_REASON[trip.reason] for trip in trips)))
        for trip in trips:
            detector = _BY_REASON[trip.reason]
            if detector not in report.firings:
                report.firings[detector] = Firing(
                    detector, turn.step, report.completions, turn.agent, trip
                )
    return report


def replay(traces: Iterable[Trace], policy: DetectorPolicy) -> list[TraceReport]:
    return [replay_trace(trace, policy) for trace in traces]


def summary_figures(report: TraceReport) -> Mapping[str, Any]:
    """The trips of one report as plain data (for JSON output and the evaluation)."""
    return {
        "task": report.trace.task,
        "completions": report.completions,
        "output_tokens": report.output_tokens,
        "firings": {
            name: {
                "step": f.step,
                "completion": f.completion,
                "agent": f.agent,
                "reason": str(f.trip.reason),
                "detail": f.trip.detail,
            }
            for name, f in report.firings.items()
        },
    }
