"""Errors rendered in the caller's provider format, so its SDK raises a clear exception."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from proxy.errors import BudgetBusy, Refused, RouteError, TripwireError
from proxy.providers import ADAPTERS, DEFAULT_FORMAT
from proxy.server import routing
from proxy.telemetry.logs import event

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _format_for(request: web.Request, upstreams: Mapping[str, str]) -> str:
    try:
        route = routing.resolve(request.rel_url.raw_path, frozenset(upstreams))
    except RouteError:
        return DEFAULT_FORMAT
    return upstreams[route.upstream]


def render(error: TripwireError, format_: str) -> web.Response:
    adapter = ADAPTERS[format_]
    error_type = adapter.error_types[error.kind]
    code = f"tripwire_{error.reason}" if isinstance(error, Refused) else error.code
    headers = {"Content-Type": "application/json"}
    if not error.retry:
        # The official SDKs obey this before looking at the status: a refusal is final.
        headers["x-should-retry"] = "false"
    if isinstance(error, BudgetBusy):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Refused):
        headers["X-Tripwire-Reason"] = error.reason
        headers["X-Tripwire-Task"] = error.task
        headers["X-Tripwire-Agent"] = error.agent
    return web.Response(
        status=error.status,
        body=adapter.error_body(error.message, error_type, code),
        headers=headers,
    )


def error_middleware(
    upstream_formats: Mapping[str, str],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except TripwireError as error:
            level = getattr(logging, error.log_level.upper())
            refused = error if isinstance(error, Refused) else None
            event(
                "refused" if refused else "error",
                level,
                status=error.status,
                code=f"tripwire_{refused.reason}" if refused else error.code,
                task=refused.task if refused else None,
                message=error.message,
                path=request.path,
            )
            return render(error, _format_for(request, upstream_formats))
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug of ours must still answer in the provider's format
            event("internal_error", logging.ERROR, path=request.path, error=repr(exc))
            return render(
                TripwireError("Tripwire failed to handle this call"),
                _format_for(request, upstream_formats),
            )

    return middleware
