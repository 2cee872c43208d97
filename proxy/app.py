"""The composition root: ``build_app(config)`` wires the backends into an aiohttp application.

Nothing happens at import time; the upstream client session and the ledger live in
``cleanup_ctx`` so they open with the server and close with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from proxy.config import Config
from proxy.pricing import PriceBook
from proxy.server.errors import error_middleware
from proxy.server.forward import Forwarder
from proxy.session.base import Ledger
from proxy.session.memory import MemoryLedger
from proxy.tokens import preload as preload_tokenizer

CONFIG = web.AppKey("config", Config)
LEDGER = web.AppKey("ledger", Ledger)
FORWARDER = web.AppKey("forwarder", Forwarder)


def build_ledger(config: Config) -> Ledger:
    if config.state.backend == "redis":
        from proxy.session.redis import RedisLedger

        return RedisLedger(config.state)
    return MemoryLedger(config.state)


def build_app(config: Config, ledger: Ledger | None = None) -> web.Application:
    formats = {name: upstream.format for name, upstream in config.upstreams.items()}
    app = web.Application(
        middlewares=[error_middleware(formats)], client_max_size=config.server.max_body_bytes
    )
    app[CONFIG] = config
    state = ledger if ledger is not None else build_ledger(config)
    app[LEDGER] = state

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            trust_env=False,
        )
        await state.start()
        preload_tokenizer()  # ~0.1 s once, rather than on the first call
        app[FORWARDER] = Forwarder(config, state, PriceBook(), session)
        try:
            yield
        finally:
            await session.close()
            await state.close()

    app.cleanup_ctx.append(lifecycle)

    async def healthz(request: web.Request) -> web.Response:
        """The process answers; says nothing of the state backend."""
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        """Ready when the state backend answers, so a load balancer can route around a replica
        that cannot check limits. In fail-open mode a replica keeps serving without it, so it
        stays ready and reports itself degraded."""
        ok = await state.ready()
        fail_open = config.state.on_state_error == "open"
        status = "ok" if ok else "degraded" if fail_open else "unavailable"
        return web.json_response(
            {"status": status, "state": config.state.backend},
            status=200 if ok or fail_open else 503,
        )

    async def proxy(request: web.Request) -> web.StreamResponse:
        return await request.app[FORWARDER].handle(request)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app
