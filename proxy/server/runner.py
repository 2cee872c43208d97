"""Running the proxy until SIGINT or SIGTERM, optionally in front of the built-in mock provider."""

from __future__ import annotations

import asyncio
import errno
import gc
import signal
import sys

from aiohttp import web

from proxy import __version__
from proxy.app import build_app
from proxy.config import Config, Upstream
from proxy.errors import ConfigError
from proxy.server.summary import shown_url, startup_summary
from proxy.telemetry.logs import event


def listen_error(host: str, port: int, exc: OSError) -> str:
    """One line that says what is wrong with the listen address and which setting fixes it."""
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: the port is in use by another process; choose another with --port "
            "or TRIPWIRE_SERVER__PORT"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{where}: permission denied (ports below 1024 need privileges); choose another "
            "with --port or TRIPWIRE_SERVER__PORT"
        )
    return (
        f"{where}: {exc.strerror or exc}; check the address given with --host or "
        "TRIPWIRE_SERVER__HOST (an address of this machine, e.g. 127.0.0.1 or 0.0.0.0)"
    )


def with_mock_upstreams(config: Config, mock_url: str) -> Config:
    """Point the default upstreams at the mock provider: the proxy then runs with no API key."""
    upstreams = {
        **config.upstreams,
        "openai": Upstream(base_url=mock_url, format="openai"),
        "anthropic": Upstream(base_url=mock_url, format="anthropic"),
    }
    return config.model_copy(update={"upstreams": upstreams})


async def serve(config: Config, *, mock: bool = False) -> None:
    cleanups = []
    if mock:
        from proxy.mock_provider import start_mock_provider

        mock_runner, _, mock_url = await start_mock_provider("127.0.0.1", 0)
        cleanups.append(mock_runner)
        config = with_mock_upstreams(config, mock_url)
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    cleanups.insert(0, runner)
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(listen_error(config.server.host, config.server.port, exc)) from None
        host, port = runner.addresses[0][:2]
        event(
            "listening",
            version=__version__,
            url=f"http://{host}:{port}",
            upstreams={name: shown_url(up.base_url) for name, up in config.upstreams.items()},
            state=config.state.backend,
            mock_provider=mock,
        )
        print(startup_summary(config, f"http://{host}:{port}", mock=mock), file=sys.stderr)
        # Objects alive after start-up (tokenizer, price data, config) live as long as the
        # process: keep them out of every full collection, whose pauses are the tail latency.
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        event("stopping")
    finally:
        for each in cleanups:
            await each.cleanup()
