"""The admin API's request and response bodies.

Request models forbid unknown keys and are validated strictly (no ``"5"`` for 5), so what the
OpenAPI document promises is exactly what the server accepts. Response models are built from
ledger views and audit events; the document's schemas are generated from these same classes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from proxy.config import Limits
from proxy.session.base import OVERRIDABLE

TASK_ID_PATTERN = r"^[!-.0-~]+$"  # printable ASCII without space or "/": "/" joins tenant and task
TENANT_PATTERN = r"^[A-Za-z0-9_.-]+$"  # as in a token's tenant claim
CURSOR_PATTERN = r"^[0-9]{1,9}$"
MAX_NOTE = 500


def _integral(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer, so the API does too; "5" stays refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integral = Annotated[int, BeforeValidator(_integral)]


def _no_default(schema: dict[str, Any]) -> None:
    # The field may be left out but not sent as null: the document must not suggest null.
    schema.pop("default", None)


def _optional(**constraints: Any) -> Any:
    return Field(default=None, json_schema_extra=_no_default, **constraints)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskLimits(Request):
    """Limits of one task, over the policy's and over a token's signed budget. Leave a limit out
    to keep what the task has; durations are in seconds."""

    max_tokens: Integral = _optional(ge=1, le=10**15)
    max_tokens_per_agent: Integral = _optional(ge=1, le=10**15)
    max_cost_usd: float = _optional(gt=0, le=10**9, allow_inf_nan=False)
    max_calls: Integral = _optional(ge=1, le=10**9)
    max_hops: Integral = _optional(ge=0, le=10**6)
    max_duration: float = _optional(gt=0, le=10 * 365 * 86400, allow_inf_nan=False)

    def overrides(self) -> dict[str, float]:
        """The limits set, checked once more against the policy's own ``Limits`` model."""
        chosen = {name: getattr(self, name) for name in self.model_fields_set}
        checked = Limits.model_validate(chosen)
        return {name: getattr(checked, name) for name in chosen}


# Every limit the ledger can hold on a task, and nothing else, can be set through the API.
assert set(TaskLimits.model_fields) == set(OVERRIDABLE) == set(Limits.model_fields)


class CreateTask(Request):
    task: str = Field(min_length=1, max_length=128, pattern=TASK_ID_PATTERN)
    tenant: str = _optional(
        min_length=1,
        max_length=64,
        pattern=TENANT_PATTERN,
        description="only a global admin may set it; a tenant admin's tasks get its tenant",
    )
    owner: str = _optional(min_length=1, max_length=2048)
    limits: TaskLimits = _optional()


class KillTask(Request):
    reason: str = Field(min_length=1, max_length=MAX_NOTE)


class ResumeTask(Request):
    limits: TaskLimits = _optional(description="raise (or lower) the task's limits as it resumes")
    note: str = Field(default="", max_length=MAX_NOTE)


class ExtendTask(Request):
    seconds: float = Field(gt=0, le=365 * 86400, allow_inf_nan=False)
    note: str = Field(default="", max_length=MAX_NOTE)


class ListQuery(BaseModel):
    """``GET /tasks`` query parameters; values arrive as strings."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    state: Literal["active", "killed", "all"] = "all"
    tenant: str = _optional(
        min_length=1, max_length=64, pattern=TENANT_PATTERN, description="global admins only"
    )
    agent: str = _optional(min_length=1, max_length=128)
    sort: Literal["spend", "calls", "tokens", "age", "recent"] = "spend"
    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str = _optional(
        pattern=CURSOR_PATTERN, description="next_cursor of the previous page (opaque)"
    )


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    task: str = _optional(min_length=1, max_length=256)
    tenant: str = _optional(
        min_length=1, max_length=64, pattern=TENANT_PATTERN, description="global admins only"
    )
    limit: int = Field(default=100, ge=1, le=1000)


class TripsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    limit: int = Field(default=200, ge=1, le=1000)


# -- responses -----------------------------------------------------------------------------


class Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class TripOut(Response):
    reason: str
    detail: str
    figures: dict[str, Any]


class PreviewOut(Response):
    agent: str
    fingerprint: str
    text: str


class TimelineOut(Response):
    at: float
    kind: str
    detail: str


class TaskSummary(Response):
    task: str = Field(description="the id to use in this API's paths")
    key: str = Field(description="the ledger's key: <tenant>/<task> for a tenant's task")
    tenant: str | None
    owner: str | None
    state: Literal["active", "killed"]
    tokens_used: int
    tokens_reserved: int
    tokens_left: int | None
    max_tokens: int | None
    cost_usd: float
    max_cost_usd: float | None = Field(description="the task's own limit, else the policy's")
    calls: int
    max_calls: int | None
    refused_calls: int = Field(
        description="calls refused because the task was killed, counted by this replica"
    )
    hops: int
    max_hops: int | None
    agents: list[str]
    started: float = Field(description="unix time of the task's creation or first call")
    last_seen: float
    age_s: float
    deadline: float | None = Field(description="unix time when max_duration runs out")
    limits: dict[str, float] = Field(description="limits set on this task, over the policy's")
    extra_duration_s: float
    trip: TripOut | None
    envelopes: dict[str, int] = Field(
        description="workers' status envelopes by status: success, failed, partial, invalid"
    )


class CallOut(Response):
    at: float
    agent: str
    model: str
    outcome: str
    status: int
    tokens: int
    cost_usd: float


class TaskDetail(TaskSummary):
    previews: list[PreviewOut]
    timeline: list[TimelineOut]
    recent_calls: list[CallOut] = Field(
        description="the task's last calls through this replica, oldest first"
    )


class TaskList(Response):
    tasks: list[TaskSummary]
    next_cursor: str | None


class AuditEventOut(Response):
    action: str
    task: str
    actor: str
    tenant: str | None
    detail: str
    data: dict[str, Any]
    at: float


class AuditList(Response):
    events: list[AuditEventOut]


class ReloadOut(Response):
    changed: list[str] = Field(description="each changed setting: `path: old -> new`")
    restart_needed: list[str] = Field(
        description="sections that differ in the files but take effect only after a restart"
    )


class Me(Response):
    actor: str
    tenant: str | None
    role: Literal["admin", "viewer"]
    may_act: bool = Field(description="whether this token may kill, resume, extend and create")
    local: bool = Field(description="signed in with the local admin token")
    idle_after_s: float = Field(description="an active task with no call for this long is idle")


class MinuteOut(Response):
    start: float
    calls: int
    refused: int
    tokens: int
    cost_usd: float


class ActivityOut(Response):
    minutes: list[MinuteOut] = Field(description="the last hour, oldest first, on this replica")


class TripFeedItem(Response):
    at: float
    task: str
    tenant: str | None
    action: Literal["kill", "observe", "operator"]
    reason: str
    agent: str | None
    actor: str
    detail: str
    figures: dict[str, Any]


class SavedOut(Response):
    task: str
    reason: str
    refused_calls: int
    calls: int
    cost_usd: float
    average_cost_usd: float
    saved_usd_estimate: float = Field(
        description="refused_calls x average_cost_usd: what the refused calls would have cost "
        "at the task's average so far; an estimate, not a measurement"
    )


class TripFeed(Response):
    trips: list[TripFeedItem]
    stopped: list[SavedOut]
    saved_usd_estimate: float


class ErrorDetail(Response):
    code: str
    message: str


class ErrorBody(Response):
    error: ErrorDetail
