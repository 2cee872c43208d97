"""Rules matched by task and agent globs, resolved once per (task, agent) pair.

Every rule whose globs both match applies, in file order; a later rule overrides only the
fields it sets. The result is cached, so matching costs nothing on the hot path after the
first call of a pair.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from functools import lru_cache

from proxy.config import Limits, Policy, RepeatSettings, TripAction


@dataclass(frozen=True, slots=True)
class Effective:
    limits: Limits
    repeat: RepeatSettings
    on_trip: TripAction
    rules: tuple[str, ...]  # names (or indexes) of the rules that applied


class PolicyBook:
    def __init__(self, policy: Policy, cache_size: int = 8192) -> None:
        self.policy = policy
        self._compiled = [
            (re.compile(translate(rule.match.task)), re.compile(translate(rule.match.agent)), rule)
            for rule in policy.rules
        ]
        self.resolve = lru_cache(maxsize=cache_size)(self._resolve)
        # Most calls match the same few rule sets: build each set's result once.
        self._combine = lru_cache(maxsize=256)(self._combine_rules)

    def _resolve(self, task: str, agent: str) -> Effective:
        matched = tuple(
            index
            for index, (task_glob, agent_glob, _) in enumerate(self._compiled)
            if task_glob.match(task) and agent_glob.match(agent)
        )
        return self._combine(matched)

    def _combine_rules(self, matched: tuple[int, ...]) -> Effective:
        limits = self.policy.defaults.model_dump()
        repeat = self.policy.repeat
        on_trip = self.policy.on_trip
        applied: list[str] = []
        for index in matched:
            rule = self._compiled[index][2]
            applied.append(rule.name or f"rules[{index}]")
            limits.update({k: getattr(rule.limits, k) for k in rule.limits.model_fields_set})
            if rule.repeat is not None:
                repeat = rule.repeat
            if rule.on_trip is not None:
                on_trip = rule.on_trip
        return Effective(Limits(**limits), repeat, on_trip, tuple(applied))
