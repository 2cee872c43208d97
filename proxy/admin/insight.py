"""The admin API's read side for the console: who is asking, the last hour's activity, and the
feed of trips with what the kills saved.

The money saved is an estimate and is named so: the calls a killed task made after its kill
(refused, so never sent) times the task's average cost per call until then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel

from proxy.admin import models
from proxy.admin.views import Caller
from proxy.audit import AuditEvent

if TYPE_CHECKING:
    from proxy.admin.local import LocalAdmin
    from proxy.audit import AuditLog
    from proxy.config import Config
    from proxy.session.base import Ledger
    from proxy.telemetry.activity import Activity

_Model = TypeVar("_Model", bound=BaseModel)


class AdminState(Protocol):
    """What these reads need of the admin API's state (``proxy.admin.app.AdminState``)."""

    config: Config
    ledger: Ledger
    audit: AuditLog
    activity: Activity
    local: LocalAdmin | None

    def caller(self, request: web.Request) -> Caller: ...

    @staticmethod
    def query(request: web.Request, model: type[_Model]) -> _Model: ...

    @staticmethod
    def reply(model: BaseModel, status: int = 200) -> web.Response: ...


TRIP_ACTIONS = ("trip", "kill")


def _feed_item(caller: Caller, entry: AuditEvent) -> models.TripFeedItem:
    data = entry.data
    action: Literal["kill", "observe", "operator"] = "operator"
    if entry.actor == "tripwire":
        action = "kill" if entry.action == "kill" else "observe"
    agent = data.get("agent")
    figures = data.get("figures")
    return models.TripFeedItem(
        at=entry.at,
        task=caller.public_id(entry.task),
        tenant=entry.tenant,
        action=action,
        reason=str(data.get("reason") or "operator"),
        agent=str(agent) if agent is not None else None,
        actor=entry.actor,
        detail=entry.detail,
        figures=figures if isinstance(figures, dict) else {},
    )


def _saved(caller: Caller, state: AdminState, view: Any) -> models.SavedOut:
    refused = state.activity.refused(view.task)
    average = view.cost_usd / view.calls if view.calls else 0.0
    return models.SavedOut(
        task=caller.public_id(view.task),
        reason=str(view.killed.reason),
        refused_calls=refused,
        calls=view.calls,
        cost_usd=view.cost_usd,
        average_cost_usd=average,
        saved_usd_estimate=refused * average,
    )


def add_routes(router: web.UrlDispatcher, state: AdminState) -> None:
    async def me(request: web.Request) -> web.Response:
        caller = state.caller(request)
        claims = caller.claims
        body = models.Me(
            actor=caller.actor,
            tenant=caller.tenant,
            role="admin" if claims.is_admin else "viewer",
            may_act=caller.may_act,
            local=state.local is not None and claims is state.local.claims,
            idle_after_s=state.config.telemetry.active_task_window,
        )
        return state.reply(body)

    async def activity(request: web.Request) -> web.Response:
        caller = state.caller(request)
        tasks = None
        if caller.tenant is not None:
            tasks = [
                view.task
                for view in await state.ledger.list(tenant=caller.tenant)
                if caller.sees(view)
            ]
        minutes = [
            models.MinuteOut(
                start=m.start,
                calls=m.calls,
                refused=m.refused,
                tokens=m.tokens,
                cost_usd=m.cost_usd,
            )
            for m in state.activity.hour(tasks)
        ]
        return state.reply(models.ActivityOut(minutes=minutes))

    async def trips(request: web.Request) -> web.Response:
        caller = state.caller(request)
        query = state.query(request, models.TripsQuery)
        # Read a wider slice of the trail: webhooks, resumes and extends share it.
        events = await state.audit.list(tenant=caller.tenant, limit=query.limit * 4)
        feed = [_feed_item(caller, e) for e in events if e.action in TRIP_ACTIONS]
        views = [
            v
            for v in await state.ledger.list(tenant=caller.tenant)
            if caller.sees(v) and v.killed is not None
        ]
        stopped = sorted(
            (_saved(caller, state, view) for view in views),
            key=lambda saved: saved.saved_usd_estimate,
            reverse=True,
        )
        return state.reply(
            models.TripFeed(
                trips=feed[: query.limit],
                stopped=stopped,
                saved_usd_estimate=sum(s.saved_usd_estimate for s in stopped),
            )
        )

    router.add_get("/me", me, allow_head=False)
    router.add_get("/activity", activity, allow_head=False)
    router.add_get("/trips", trips, allow_head=False)
