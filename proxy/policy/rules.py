"""Rules matched by task and agent globs and how the task was tagged, resolved once per
(task, agent, source).

Every rule whose globs both match applies, in file order; a later rule overrides only the
fields it sets. The result is cached, so matching costs nothing on the hot path after the
first call of a pair.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import translate
from functools import lru_cache

from proxy.config import ChaosSettings, Limits, Policy, RepeatSettings, TagSource, TripAction
from proxy.detectors.base import TripReason
from proxy.detectors.settings import (
    CycleSettings,
    NearDuplicateSettings,
    NoProgressSettings,
    ToolLoopSettings,
)
from proxy.envelopes.settings import EnvelopeSettings, merge_envelope

_CONTENT = ("cycle", "near_duplicate", "no_progress", "tool_loop")


@dataclass(frozen=True, slots=True)
class Effective:
    limits: Limits
    repeat: RepeatSettings
    on_trip: TripAction
    rules: tuple[str, ...]  # names (or indexes) of the rules that applied
    chaos: ChaosSettings | None = None
    cycle: CycleSettings = field(default_factory=CycleSettings)
    near_duplicate: NearDuplicateSettings = field(default_factory=NearDuplicateSettings)
    no_progress: NoProgressSettings = field(default_factory=NoProgressSettings)
    envelope: EnvelopeSettings | None = None  # set: the agent is a worker
    tool_loop: ToolLoopSettings = field(default_factory=ToolLoopSettings)
    unbounded_paths: tuple[str, ...] = ()  # the union over the rules that applied

    # Read by every call: worked out once, when the rules' result is built.
    has_budget: bool = field(init=False, compare=False)
    content_detection: bool = field(init=False, compare=False)
    content_may_kill: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        lim = self.limits
        # A token or dollar budget applies: every call's cost must be bounded.
        has_budget = (
            lim.max_tokens is not None
            or lim.max_tokens_per_agent is not None
            or lim.max_cost_usd is not None
        )
        detectors = (self.cycle, self.near_duplicate, self.no_progress, self.tool_loop)
        # A content detector of this policy kills when it trips: the task's next call waits
        # for its verdict, so its state write is never held back.
        may_kill = self.on_trip != "observe" and any(
            d.enabled and d.action == "kill" for d in detectors
        )
        object.__setattr__(self, "has_budget", has_budget)
        object.__setattr__(self, "content_detection", any(d.enabled for d in detectors))
        object.__setattr__(self, "content_may_kill", may_kill)

    def action_for(self, reason: TripReason) -> TripAction:
        """A content detector acts by its own setting, unless the policy is in shadow mode."""
        if self.on_trip == "observe":
            return "observe"
        if reason is TripReason.CYCLE:
            return self.cycle.action
        if reason is TripReason.NEAR_DUPLICATE:
            return self.near_duplicate.action
        if reason is TripReason.NO_PROGRESS:
            return self.no_progress.action
        if reason is TripReason.TOOL_LOOP:
            return self.tool_loop.action
        return self.on_trip


class PolicyBook:
    def __init__(self, policy: Policy, cache_size: int = 8192) -> None:
        self.policy = policy
        self._compiled = [
            (re.compile(translate(rule.match.task)), re.compile(translate(rule.match.agent)), rule)
            for rule in policy.rules
        ]
        self._sources = [rule.match.source for rule in policy.rules]
        self.resolve = lru_cache(maxsize=cache_size)(self._resolve)
        # Most calls match the same few rule sets: build each set's result once.
        self._combine = lru_cache(maxsize=256)(self._combine_rules)

    def _resolve(self, task: str, agent: str, source: TagSource = "header") -> Effective:
        matched = tuple(
            index
            for index, (task_glob, agent_glob, _) in enumerate(self._compiled)
            if task_glob.match(task)
            and agent_glob.match(agent)
            and self._sources[index] in (None, source)
        )
        return self._combine(matched)

    def _combine_rules(self, matched: tuple[int, ...]) -> Effective:
        limits = self.policy.defaults.model_dump()
        repeat = self.policy.repeat
        on_trip = self.policy.on_trip
        chaos: ChaosSettings | None = None
        envelope: EnvelopeSettings | None = None
        content = {name: getattr(self.policy, name) for name in _CONTENT}
        applied: list[str] = []
        unbounded: tuple[str, ...] = ()
        for index in matched:
            rule = self._compiled[index][2]
            applied.append(rule.name or f"rules[{index}]")
            unbounded += rule.unbounded_paths
            limits.update({k: getattr(rule.limits, k) for k in rule.limits.model_fields_set})
            if rule.repeat is not None:
                repeat = rule.repeat
            if rule.on_trip is not None:
                on_trip = rule.on_trip
            if rule.chaos is not None:
                chaos = rule.chaos
            envelope = merge_envelope(envelope, rule.envelope)
            for name in _CONTENT:
                if getattr(rule, name) is not None:
                    content[name] = getattr(rule, name)
        return Effective(
            Limits(**limits),
            repeat,
            on_trip,
            tuple(applied),
            chaos,
            content["cycle"],
            content["near_duplicate"],
            content["no_progress"],
            envelope,
            content["tool_loop"],
            unbounded,
        )
