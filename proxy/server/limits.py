"""Bounds on what one client can make a replica hold: a request's size and the time it takes to
arrive, and the streams it keeps open.

Size and time are refused before anything is parsed or reserved; the answers are errors in the
provider's own format, as every other refusal. Head size and the idle time before a request head
arrives are aiohttp's own checks, configured through ``handler_args``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from proxy.auth import Claims
from proxy.config import ServerSettings
from proxy.errors import BadRequest, BudgetBusy
from proxy.server.tagging import short_hash


class RequestTooLarge(BadRequest):
    status = 413
    code = "request_too_large"


class RequestTimeout(BadRequest):
    status = 408
    code = "request_timeout"


class TooManyStreams(BudgetBusy):
    """Busy, not refused: the SDKs retry after ``Retry-After``, by when a stream may have ended."""

    code = "tripwire_too_many_streams"
    outcome = "too_many_streams"


def handler_args(server: ServerSettings) -> dict[str, Any]:
    """aiohttp's per-connection limits; they apply whichever runner serves the application."""
    return {
        "max_line_size": server.max_header_bytes,
        "max_field_size": server.max_header_bytes,
        "max_headers": server.max_headers,
        "keepalive_timeout": server.idle_timeout,
    }


async def read_body(request: web.Request, limit: int, within: float) -> bytes:
    try:
        if request.content.is_eof():
            # The whole body came with the head, as almost every call's does: no timer needed.
            return await request.read()
        async with asyncio.timeout(within):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge(
            f"the request body is larger than this Tripwire accepts ({limit} bytes)"
        ) from None
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {within:g} seconds") from None


def client_key(claims: Claims | None, remote: str | None) -> str:
    """Who opens a stream, from what was verified: the token's subject when auth is on (its
    signed claims when it has none), else the connection's peer address. Never a header the
    client may change at will: a new ``Authorization`` per request would be a new client."""
    if claims is not None:
        if claims.sub:
            return "sub:" + short_hash(claims.sub)
        return "claims:" + short_hash(claims.model_dump_json())
    return f"addr:{remote}"


class StreamSlots:
    """Streams open through this replica, per task and per client."""

    __slots__ = ("clients", "per_client", "per_task", "tasks")

    def __init__(self, per_task: int | None, per_client: int | None) -> None:
        self.per_task = per_task
        self.per_client = per_client
        self.tasks: dict[str, int] = {}
        self.clients: dict[str, int] = {}

    @classmethod
    def from_settings(cls, server: ServerSettings) -> StreamSlots | None:
        if server.max_streams_per_task is None and server.max_streams_per_client is None:
            return None
        return cls(server.max_streams_per_task, server.max_streams_per_client)

    def acquire(self, task: str, client: str) -> None:
        open_for_task = self.tasks.get(task, 0)
        open_for_client = self.clients.get(client, 0)
        if self.per_task is not None and open_for_task >= self.per_task:
            raise TooManyStreams(
                f"task '{task}' already has {open_for_task} streams open, its limit; "
                "retry when one of them ends."
            )
        if self.per_client is not None and open_for_client >= self.per_client:
            raise TooManyStreams(
                f"this client already has {open_for_client} streams open, its limit; "
                "retry when one of them ends."
            )
        self.tasks[task] = open_for_task + 1
        self.clients[client] = open_for_client + 1

    def release(self, task: str, client: str) -> None:
        for table, key in ((self.tasks, task), (self.clients, client)):
            left = table.get(key, 0) - 1
            if left > 0:
                table[key] = left
            else:
                table.pop(key, None)
