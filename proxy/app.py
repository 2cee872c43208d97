"""The composition root: ``build_app(config)`` wires the backends into an aiohttp application.

Nothing happens at import time; the upstream client session and the ledger live in
``cleanup_ctx`` so they open with the server and close with it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from proxy.addons.chaos import Chaos
from proxy.addons.content import ContentDetection
from proxy.addons.deadline import Deadline
from proxy.addons.envelopes import Envelopes
from proxy.addons.slots import StreamSlots
from proxy.addons.tags import TagHeaders
from proxy.addons.telemetry import CallTelemetry
from proxy.audit import AuditLog, MemoryAuditLog, RedisAuditLog, trip_recorder
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.pipeline.bus import TripBus
from proxy.pipeline.hooks import Hooks
from proxy.policy.rules import PolicyBook
from proxy.pricing import PriceBook
from proxy.server.budgets import TaskBudgets
from proxy.server.errors import error_middleware
from proxy.server.forward import Forwarder
from proxy.server.limits import handler_args
from proxy.server.reload import Reloader
from proxy.session.base import Ledger
from proxy.session.memory import MemoryLedger
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.record import Telemetry
from proxy.telemetry.scrape import ScrapeGate

CONFIG = web.AppKey("config", Config)
LEDGER = web.AppKey("ledger", Ledger)
FORWARDER = web.AppKey("forwarder", Forwarder)
METRICS = web.AppKey("metrics", Metrics)
TELEMETRY = web.AppKey("telemetry", Telemetry)
AUDIT = web.AppKey("audit", AuditLog)
HOOKS = web.AppKey("hooks", Hooks)
TRIPS = web.AppKey("trips", TripBus)
RELOADER = web.AppKey("reloader", Reloader)


def build_addons(config: Config, ledger: Ledger, telemetry: Telemetry, bus: TripBus) -> Hooks:
    """The call pipeline's addons. Their answer hooks run in this order; observer hooks run
    after the answer is decided, each in isolation."""
    addons: list[object | None] = [
        # request: open the call's span first, so even a call another addon refuses has one.
        # Only when tracing is configured: the OpenTelemetry SDK is an optional extra.
        tracing_addon(config, telemetry.metrics, bus),
        Chaos.from_config(config, ledger, telemetry),  # request: may answer instead
        StreamSlots.from_settings(config.server),  # request: may refuse; done: release
        Envelopes.from_config(config, ledger, telemetry, bus),  # ask; completed: judge
        TagHeaders(),  # response headers: X-Tripwire-*
        Deadline(ledger, bus),  # stream started: arm; stream ended: disarm
        CallTelemetry(telemetry),  # settled, refused, stream ended: metrics and call log
        # settled: loop detectors on the text, off the path; request: a call of a task whose
        # kill-mode detection still runs waits for its verdict
        ContentDetection(ledger, bus),
    ]
    return Hooks([a for a in addons if a is not None], telemetry.addon_failed)


def tracing_addon(config: Config, metrics: Metrics, bus: TripBus) -> object | None:
    if not config.telemetry.otel.wanted(os.environ):
        return None
    try:
        from proxy.addons.tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            "tracing is configured (telemetry.otel or OTEL_EXPORTER_OTLP_ENDPOINT) but the "
            f"OpenTelemetry SDK is not installed ({exc.name}): install tripwire-proxy[otel], "
            "or unset the endpoint"
        ) from None
    return Tracing.from_config(config, metrics, bus)


def build_audit(config: Config, ledger: Ledger, metrics: Metrics | None = None) -> AuditLog:
    # A Redis ledger exists only once its module is loaded: the embedded one never loads it
    # (nor the Redis client, about 20 MB).
    redis = sys.modules.get("proxy.session.redis")
    if redis is not None and isinstance(ledger, redis.RedisLedger):
        return RedisAuditLog(ledger.client, f"{config.state.key_prefix}:audit", metrics)
    return MemoryAuditLog(config.state.audit_file)


def build_ledger(config: Config, metrics: Metrics) -> Ledger:
    if config.state.backend == "redis":
        from proxy.session.redis import RedisLedger

        redis_ledger = RedisLedger(config.state, metrics)
        metrics.state_up = lambda: redis_ledger.reachable
        return redis_ledger
    return MemoryLedger(config.state)


def build_app(
    config: Config,
    ledger: Ledger | None = None,
    *,
    local_token: str | None = None,
    load: Callable[[], Config] | None = None,
) -> web.Application:
    """``load`` reads the configuration again (from the files the server started with): given,
    the app can reload its policy and tagging (``SIGHUP``, ``POST /tripwire/v1/reload``)."""
    formats = {name: upstream.format for name, upstream in config.upstreams.items()}
    app = web.Application(
        middlewares=[error_middleware(formats)],
        client_max_size=config.server.max_body_bytes,
        handler_args=handler_args(config.server),
    )
    app[CONFIG] = config
    metrics = Metrics(
        backend=config.state.backend,
        max_models=config.telemetry.max_model_labels,
        max_agents=config.telemetry.max_agent_labels,
        active_window_s=config.telemetry.active_task_window,
        task_ids=config.telemetry.metrics_task_ids,
    )
    state = ledger if ledger is not None else build_ledger(config, metrics)
    app[LEDGER] = state
    app[METRICS] = metrics
    metrics.detector_runs = lambda: state.detector_runs
    telemetry = Telemetry(metrics, config.logging.calls)
    app[TELEMETRY] = telemetry
    audit = build_audit(config, state, metrics)
    app[AUDIT] = audit
    # Every trip travels once on the bus: metrics and the log line first, then the audit
    # trail, then (subscribed while the server runs) the owner's escalation.
    bus = TripBus()
    bus.subscribe(telemetry.on_trip)
    bus.subscribe(trip_recorder(audit))
    app[TRIPS] = bus
    hooks = build_addons(config, state, telemetry, bus)
    app[HOOKS] = hooks
    # Which tasks have token or dollar budgets of their own: the admin API tells it, and the
    # calls of the others are not estimated unless their policy sets a budget.
    budgets = TaskBudgets.for_ledger(state)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        session = aiohttp.ClientSession(
            connector=connector,
            # A provider's cookies belong to the client that got them, in its own answer: a
            # shared jar would hand them to every other client's calls.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            trust_env=False,
        )
        await state.start()
        await budgets.read(state)
        await audit.start()
        app[FORWARDER] = Forwarder(
            config, state, PriceBook(), session, hooks, bus, telemetry.refused, budgets
        )
        from proxy.escalation import Escalator

        escalator = Escalator(config.escalation, state, audit)
        await escalator.start()
        bus.subscribe(escalator.listener)
        try:
            yield
        finally:
            for addon in hooks.addons:  # what an addon keeps open: a trace exporter's queue
                close = getattr(addon, "close", None)
                if close is not None:
                    await close()
            bus.unsubscribe(escalator.listener)
            # Before the ledger closes: a delivery still reads the task and writes the audit.
            await escalator.close()
            # Before the ledger closes its Redis client: events kept through an outage.
            await audit.close()
            await session.close()
            await state.close()
            telemetry.flush()  # the last calls' metrics and log lines

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

    scraper = ScrapeGate.from_config(config)

    async def scrape(request: web.Request) -> web.Response:
        refused = scraper.refusal(request.headers.get("Authorization", ""))
        if refused is not None:
            return refused
        # OpenMetrics when the scraper asks for it: only that format carries exemplars.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(metrics.registry), headers={"Content-Type": content_type})

    async def proxy(request: web.Request) -> web.StreamResponse:
        return await request.app[FORWARDER].handle(request)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(config.telemetry.metrics_path, scrape)
    from proxy.admin import build_admin_app
    from proxy.admin.app import STATE as ADMIN_STATE
    from proxy.console import build_console_app

    # Before the catch-all, so no admin path can ever be forwarded to a provider.
    reloader: Reloader | None = None
    if load is not None:

        def apply(new: Config) -> None:
            app[FORWARDER].apply(new)
            admin_app[ADMIN_STATE].views.policy = PolicyBook(new.policy)

        reloader = Reloader(config, load, apply)
        app[RELOADER] = reloader
    admin_app = build_admin_app(
        config,
        state,
        audit,
        telemetry,
        local_token,
        reloader.reload if reloader else None,
        budgets,
    )
    app.add_subapp("/tripwire/v1", admin_app)
    app.add_subapp("/tripwire/ui", build_console_app())
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app
