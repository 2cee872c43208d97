"""The admin API: tasks created ahead, listed, inspected, killed, resumed and extended.

Every call needs a Tripwire token with the ``admin`` role, whatever ``auth.mode`` says for agent
traffic; a token with the ``viewer`` role may read (every GET) but not act. With ``auth.mode:
none`` the local admin token (``proxy.admin.local``) counts as a global admin's. A token with
a ``tenant`` claim sees only that tenant's tasks and addresses them by their plain id (the
ledger's key is ``<tenant>/<task>``); a token without one is a global admin and addresses every
task by its full key. Another tenant's task answers 404, exactly like a task that does not
exist, so an admin cannot learn which ids other tenants use.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from proxy.admin import insight, models
from proxy.admin.local import LocalAdmin
from proxy.admin.openapi import build_document
from proxy.admin.views import SORT_KEYS, Caller, Views
from proxy.audit import AuditEvent, AuditLog
from proxy.auth import TokenVerifier
from proxy.config import Config
from proxy.detectors.base import Trip, TripReason
from proxy.errors import AuthError, ConfigError, StateUnavailable
from proxy.policy.rules import PolicyBook
from proxy.server.budgets import TaskBudgets
from proxy.server.reload import ReloadReport, one_line
from proxy.session.base import Ledger, TaskView
from proxy.telemetry.activity import Activity
from proxy.telemetry.logs import event
from proxy.telemetry.record import Telemetry

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Reload = Callable[[str], Awaitable[ReloadReport]]
RequestModel = TypeVar("RequestModel", bound=BaseModel)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _not_found(task: str) -> ApiError:
    return ApiError(404, "task_not_found", f"no task {task!r}")


def error_response(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = models.ErrorBody(error=models.ErrorDetail(code=code, message=message))
    return web.json_response(body.model_dump(mode="json"), status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer of the admin API is JSON, errors included, and a failure of ours is a 500
    with a message, never a traceback."""
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, error.code, error.message)
    except AuthError as error:
        return error_response(401, "unauthorized", error.message, **{"WWW-Authenticate": "Bearer"})
    except (StateUnavailable, OSError, TimeoutError) as error:
        return _state_unavailable(request, error)
    except web.HTTPException as error:
        code = "not_found" if error.status == 404 else error.reason.lower().replace(" ", "_")
        extra = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else {}
        return error_response(error.status, code, error.text or error.reason, **extra)
    except Exception as exc:
        if _is_redis_error(exc):
            return _state_unavailable(request, exc)
        event("admin_internal_error", logging.ERROR, path=request.path, error=repr(exc))
        return error_response(500, "internal_error", "Tripwire failed to handle this request")


def _state_unavailable(request: web.Request, error: BaseException) -> web.Response:
    event("admin_state_unavailable", logging.WARNING, path=request.path, error=repr(error))
    return error_response(
        503, "state_unavailable", "Tripwire cannot reach its state store; retry shortly"
    )


def _is_redis_error(error: BaseException) -> bool:
    """A Redis client error, looked up only once the client is loaded: the embedded ledger
    never loads it (its import alone costs the process about 20 MB)."""
    errors = sys.modules.get("redis.exceptions")
    return errors is not None and isinstance(error, errors.RedisError)


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


class AdminState:
    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        audit: AuditLog,
        activity: Activity,
        local: LocalAdmin | None = None,
        budgets: TaskBudgets | None = None,
    ) -> None:
        self.config = config
        self.budgets = budgets
        self.ledger = ledger
        self.audit = audit
        self.activity = activity
        self.local = local
        self.verifier = TokenVerifier(config.auth)
        self.views = Views(PolicyBook(config.policy), activity)
        self.document = build_document()
        self.reloader: Reload | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def caller(self, request: web.Request) -> Caller:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the admin API needs a Tripwire token as Authorization: Bearer")
        token = token.strip()
        if self.local is not None and self.local.matches(token):
            return Caller(self.local.claims)
        if self.local is not None and not self.verifier.configured:
            raise AuthError(
                "this is not the local admin token: use the one in auth.local_admin_file "
                "(`tripwire tasks` and `tripwire console` read it)"
            )
        claims = self.verifier.verify(token)
        if request.method in ("GET", "HEAD") and claims.is_viewer:
            return Caller(claims)
        if not claims.is_admin:
            raise ApiError(403, "forbidden", "this token does not carry the admin role")
        return Caller(claims)

    @staticmethod
    async def body(
        request: web.Request, model: type[RequestModel], *, optional: bool = False
    ) -> RequestModel:
        raw = await request.read()
        if not raw.strip():
            if not optional:
                raise ApiError(400, "invalid_request", "this endpoint needs a JSON body")
            raw = b"{}"
        elif request.content_type not in ("application/json", "application/octet-stream") and (
            not request.content_type.endswith("+json")
        ):
            raise ApiError(415, "unsupported_media_type", "send the body as application/json")
        try:
            return model.model_validate_json(raw, strict=True)
        except ValidationError as error:
            raise ApiError(400, "invalid_request", _validation_message(error)) from None

    @staticmethod
    def query(request: web.Request, model: type[RequestModel]) -> RequestModel:
        try:
            return model.model_validate({k: request.query[k] for k in request.query})
        except ValidationError as error:
            raise ApiError(400, "invalid_request", _validation_message(error)) from None

    def scope_tenant(self, caller: Caller, tenant: str | None) -> str | None:
        """The tenant a filter may name: a tenant admin only its own."""
        if caller.tenant is None:
            return tenant
        if tenant is not None and tenant != caller.tenant:
            raise ApiError(404, "tenant_not_found", f"no tenant {tenant!r}")
        return caller.tenant

    async def task(self, caller: Caller, task: str) -> TaskView:
        view = await self.ledger.get(caller.key(task))
        if view is None and caller.tenant is not None and task.startswith(f"{caller.tenant}/"):
            # The full key, as trip notifications link to it, names the same task.
            view = await self.ledger.get(task)
        if view is None or not caller.sees(view):
            raise _not_found(task)
        return view

    async def record(
        self, caller: Caller, action: str, view: TaskView, detail: str, **data: Any
    ) -> None:
        tenant = view.tenant if view.tenant is not None else caller.tenant
        await self.audit.record(AuditEvent(action, view.task, caller.actor, tenant, detail, data))
        event(f"admin_{action}", task=view.task, actor=caller.actor, tenant=tenant, detail=detail)

    @staticmethod
    def reply(model: BaseModel, status: int = 200) -> web.Response:
        return web.json_response(model.model_dump(mode="json"), status=status)

    # -- endpoints --------------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.document)

    async def create(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        body = await self.body(request, models.CreateTask)
        if caller.tenant is not None and body.tenant not in (None, caller.tenant):
            raise ApiError(403, "forbidden", "a tenant admin creates tasks of its own tenant only")
        tenant = caller.tenant or body.tenant
        owner = body.owner
        is_url = owner is not None and owner.lower().startswith(("http://", "https://"))
        if is_url and not self.config.escalation.allow_any_url:
            raise ApiError(
                400,
                "invalid_request",
                "owner: give an owner's name from escalation.owners; URLs are accepted "
                "only with escalation.allow_any_url",
            )
        key = f"{tenant}/{body.task}" if tenant else body.task
        if await self.ledger.get(key) is not None:
            raise ApiError(409, "task_exists", f"task {body.task!r} exists already")
        overrides = body.limits.overrides() if body.limits is not None else {}
        if self.budgets is not None:  # before the ledger: no call of it goes unestimated
            self.budgets.note(key, overrides)
        view = await self.ledger.create(key, tenant=tenant, owner=owner, overrides=overrides)
        await self.record(
            caller, "create", view, "created ahead of its first call", limits=overrides, owner=owner
        )
        return self.reply(self.views.detail(caller, view, time.time()), 201)

    async def list_tasks(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        query = self.query(request, models.ListQuery)
        tenant = self.scope_tenant(caller, query.tenant)
        listed = await self.ledger.list(tenant=caller.tenant or tenant)
        views = [view for view in listed if caller.sees(view)]
        if tenant is not None:
            views = [view for view in views if view.tenant == tenant]
        if query.state != "all":
            killed = query.state == "killed"
            views = [view for view in views if (view.killed is not None) == killed]
        if query.agent is not None:
            views = [view for view in views if query.agent in view.agents]
        metric = SORT_KEYS[query.sort]
        views.sort(key=lambda view: view.task)  # a stable order among equals, page after page
        views.sort(key=metric, reverse=query.order == "desc")
        start = int(query.cursor) if query.cursor is not None else 0
        page = views[start : start + query.limit]
        end = start + len(page)
        now = time.time()
        return self.reply(
            models.TaskList(
                tasks=[self.views.summary(caller, view, now) for view in page],
                next_cursor=str(end) if end < len(views) else None,
            )
        )

    async def show(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        view = await self.task(caller, request.match_info["task"])
        return self.reply(self.views.detail(caller, view, time.time()))

    async def reload(self, request: web.Request) -> web.Response:
        """Re-read the policy and tagging settings from the server's files (global admins)."""
        caller = self.caller(request)
        if not caller.may_act or caller.tenant is not None:
            raise ApiError(403, "forbidden", "reloading needs a global admin token")
        if self.reloader is None:
            raise ApiError(
                409, "not_reloadable", "this server was not started from files it can re-read"
            )
        try:
            report = await self.reloader("admin API")
        except ConfigError as error:
            raise ApiError(
                400,
                "invalid_config",
                f"{one_line(error.message)}. The running policy stays in place",
            ) from None
        return self.reply(
            models.ReloadOut(changed=report.changed, restart_needed=report.restart_needed)
        )

    async def kill(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        task = request.match_info["task"]
        view = await self.task(caller, task)
        body = await self.body(request, models.KillTask)
        if view.killed is not None:
            raise ApiError(
                409, "task_killed", f"task {task!r} is killed already: {view.killed.detail}"
            )
        trip = Trip(TripReason.OPERATOR, {"by": caller.actor, "note": body.reason})
        if not await self.ledger.kill(view.task, trip):
            raise ApiError(409, "task_killed", f"task {task!r} is killed already")
        await self.record(caller, "kill", view, body.reason, reason=str(trip.reason))
        return self.reply(self.views.detail(caller, await self.task(caller, task), time.time()))

    async def resume(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        task = request.match_info["task"]
        view = await self.task(caller, task)
        body = await self.body(request, models.ResumeTask, optional=True)
        overrides = body.limits.overrides() if body.limits is not None else {}
        if self.budgets is not None:  # before the ledger: no call of it goes unestimated
            self.budgets.note(view.task, overrides)
        resumed = await self.ledger.resume(view.task, overrides, body.note)
        if resumed is None:  # expired between the two reads
            raise _not_found(task)
        data: dict[str, Any] = {
            "was_killed": str(view.killed.reason) if view.killed is not None else None,
        }
        if overrides:
            data["limits"] = overrides
            data["previous_limits"] = {name: view.overrides.get(name) for name in overrides}
            data["previous_max_tokens"] = view.max_tokens
        await self.record(caller, "resume", view, body.note, **data)
        return self.reply(self.views.detail(caller, resumed, time.time()))

    async def extend(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        task = request.match_info["task"]
        view = await self.task(caller, task)
        body = await self.body(request, models.ExtendTask)
        extended = await self.ledger.extend(view.task, body.seconds, body.note)
        if extended is None:
            raise _not_found(task)
        await self.record(
            caller,
            "extend",
            view,
            body.note,
            seconds=body.seconds,
            extra_duration_s=extended.extra_duration,
        )
        return self.reply(self.views.detail(caller, extended, time.time()))

    async def audit_trail(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        query = self.query(request, models.AuditQuery)
        tenant = self.scope_tenant(caller, query.tenant)
        task = caller.key(query.task) if query.task is not None else None
        events = await self.audit.list(tenant=tenant, task=task, limit=query.limit)
        return self.reply(
            models.AuditList(
                events=[
                    models.AuditEventOut(
                        action=e.action,
                        task=caller.public_id(e.task),
                        actor=e.actor,
                        tenant=e.tenant,
                        detail=e.detail,
                        data=json.loads(json.dumps(e.data, default=str)),
                        at=e.at,
                    )
                    for e in events
                ]
            )
        )

    async def fallback(self, request: web.Request) -> web.Response:
        """Unknown paths and methods under the prefix answer here, in JSON, rather than fall
        through to the provider routes."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is request.match_info.route.resource:
                continue
            match, methods = await resource.resolve(request)
            if match is None:
                allowed |= methods
        if allowed:
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; use {', '.join(sorted(allowed))}",
                Allow=", ".join(sorted(allowed)),
            )
        return error_response(404, "not_found", f"no admin endpoint at {request.path}")


STATE = web.AppKey("admin_state", AdminState)


def build_admin_app(
    config: Config,
    ledger: Ledger,
    audit: AuditLog,
    telemetry: Telemetry | None = None,
    local_token: str | None = None,
    reload: Reload | None = None,
    budgets: TaskBudgets | None = None,
) -> web.Application:
    """The admin API as an aiohttp sub-application, to mount at ``/tripwire/v1``; given the
    proxy's telemetry, it keeps the recent activity the console shows; given ``reload``, it
    serves ``POST /reload``; given ``budgets``, it tells the proxy which tasks it gives token
    or dollar budgets of their own."""
    activity = Activity()
    if telemetry is not None:
        telemetry.call_listeners.append(activity.record)
    local = LocalAdmin(local_token) if local_token and config.auth.mode == "none" else None
    state = AdminState(config, ledger, audit, activity, local, budgets)
    state.reloader = reload
    app = web.Application(middlewares=[_errors])
    app[STATE] = state
    router = app.router
    router.add_get("/openapi.json", state.openapi, allow_head=False)
    router.add_post("/tasks", state.create)
    router.add_get("/tasks", state.list_tasks, allow_head=False)
    router.add_get("/tasks/{task}", state.show, allow_head=False)
    router.add_post("/tasks/{task}/kill", state.kill)
    router.add_post("/tasks/{task}/resume", state.resume)
    router.add_post("/tasks/{task}/extend", state.extend)
    router.add_get("/audit", state.audit_trail, allow_head=False)
    router.add_post("/reload", state.reload)
    insight.add_routes(router, state)
    router.add_route("*", "/{tail:.*}", state.fallback)
    return app
