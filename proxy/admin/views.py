"""What the admin API shows of a task: ledger views turned into response bodies, as one caller
sees them (its tenant's ids), with the limits in force and this replica's recent activity."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.admin import models
from proxy.auth import Claims
from proxy.policy.rules import PolicyBook
from proxy.session.base import TaskView
from proxy.session.sessions import is_session
from proxy.telemetry.activity import Activity


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified admin or viewer: ``tenant`` None means every tenant."""

    claims: Claims

    @property
    def tenant(self) -> str | None:
        return self.claims.tenant

    @property
    def actor(self) -> str:
        return self.claims.sub or "admin"

    @property
    def may_act(self) -> bool:
        return self.claims.is_admin

    def key(self, task: str) -> str:
        return f"{self.tenant}/{task}" if self.tenant else task

    def public_id(self, key: str) -> str:
        if self.tenant and key.startswith(f"{self.tenant}/"):
            return key[len(self.tenant) + 1 :]
        return key

    def sees(self, view: TaskView) -> bool:
        if self.tenant is None:
            return True
        return view.tenant == self.tenant and view.task.startswith(f"{self.tenant}/")


class Views:
    """Builds response bodies; knows the policy (for the limits a task runs under) and this
    replica's activity (recent calls, refusals)."""

    def __init__(self, policy: PolicyBook, activity: Activity) -> None:
        self.policy = policy
        self.activity = activity

    def limit(self, view: TaskView, name: str) -> float | None:
        """A limit of the task: set on the task itself, or else the policy's for its first
        agent (a token's signed budget, when it differs, is not known here)."""
        if name in view.overrides:
            return float(view.overrides[name])
        agent = view.agents[0] if view.agents else ""
        # A task's tag source is not stored; a session's id says it was untagged.
        source = "fallback" if is_session(view.task) else "header"
        value = getattr(self.policy.resolve(view.task, agent, source).limits, name)
        return float(value) if value is not None else None

    def fields(self, caller: Caller, view: TaskView, now: float) -> dict[str, Any]:
        trip = view.killed
        # A limit set on the task wins over the policy's and the token's; a view may still
        # carry the budget its last call saw, from before a resume raised it.
        max_tokens = view.max_tokens
        if "max_tokens" in view.overrides:
            max_tokens = int(view.overrides["max_tokens"])
        left = None
        if max_tokens is not None:
            left = max(max_tokens - view.tokens_used - view.tokens_reserved, 0)
        max_duration = self.limit(view, "max_duration")
        deadline = None
        if max_duration is not None and view.started:
            deadline = view.started + max_duration + view.extra_duration
        max_calls = self.limit(view, "max_calls")
        max_hops = self.limit(view, "max_hops")
        return {
            "task": caller.public_id(view.task),
            "key": view.task,
            "tenant": view.tenant,
            "owner": view.owner,
            "state": "killed" if trip is not None else "active",
            "tokens_used": view.tokens_used,
            "tokens_reserved": view.tokens_reserved,
            "tokens_left": left,
            "max_tokens": max_tokens,
            "cost_usd": view.cost_usd,
            "max_cost_usd": self.limit(view, "max_cost_usd"),
            "calls": view.calls,
            "max_calls": int(max_calls) if max_calls is not None else None,
            "refused_calls": self.activity.refused(view.task),
            "hops": view.hops,
            "max_hops": int(max_hops) if max_hops is not None else None,
            "agents": list(view.agents),
            "started": view.started,
            "last_seen": view.last_seen,
            "age_s": max(now - view.started, 0.0) if view.started else 0.0,
            "deadline": deadline,
            "limits": dict(view.overrides),
            "extra_duration_s": view.extra_duration,
            "trip": (
                {"reason": str(trip.reason), "detail": trip.detail, "figures": trip.figures}
                if trip is not None
                else None
            ),
            "envelopes": dict(view.envelopes),
        }

    def summary(self, caller: Caller, view: TaskView, now: float) -> models.TaskSummary:
        return models.TaskSummary.model_validate(self.fields(caller, view, now))

    def detail(self, caller: Caller, view: TaskView, now: float | None = None) -> models.TaskDetail:
        fields = self.fields(caller, view, time.time() if now is None else now)
        fields["previews"] = [
            {"agent": p.agent, "fingerprint": p.fingerprint or "", "text": p.text or ""}
            for p in view.previews
        ]
        fields["timeline"] = [
            {"at": e.at, "kind": e.kind, "detail": e.detail} for e in view.timeline
        ]
        fields["recent_calls"] = [
            {
                "at": c.at,
                "agent": c.agent,
                "model": c.model,
                "outcome": c.outcome,
                "status": c.status,
                "tokens": c.tokens,
                "cost_usd": c.cost_usd,
            }
            for c in self.activity.calls(view.task)
        ]
        return models.TaskDetail.model_validate(fields)


SORT_KEYS: dict[str, Callable[[TaskView], float]] = {
    "spend": lambda view: view.cost_usd,
    "calls": lambda view: view.calls,
    "tokens": lambda view: view.tokens_used,
    # Older first under "desc", as with the other keys: the largest age first.
    "age": lambda view: -view.started,
    "recent": lambda view: view.last_seen,
}
