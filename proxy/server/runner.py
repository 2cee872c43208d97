"""Running the proxy until SIGINT or SIGTERM, optionally in front of the built-in mock provider."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

from aiohttp import web
from yarl import URL

from proxy import __version__
from proxy.app import build_app
from proxy.config import Config, Upstream
from proxy.telemetry.logs import event


def _shown(url: str) -> str:
    """A base URL may carry a credential (``https://user:key@host``): logs get it without."""
    return str(URL(url).with_user(None)) if "@" in url else url


def with_mock_upstreams(config: Config, mock_url: str) -> Config:
    """Point the default upstreams at the mock provider: the proxy then runs with no API key."""
    upstreams = {
        **config.upstreams,
        "openai": Upstream(base_url=mock_url, format="openai"),
        "anthropic": Upstream(base_url=mock_url, format="anthropic"),
    }
    return config.model_copy(update={"upstreams": upstreams})


def _local_token(config: Config) -> str | None:
    """The local admin token, with ``auth.mode: none`` and a ``local_admin_file``."""
    from proxy.admin.local import ensure_token, token_path

    path = token_path(config.auth.local_admin_file)
    if config.auth.mode != "none" or path is None:
        return None
    return ensure_token(path)


def _announce_console(host: str, port: int, config: Config, local_token: str | None) -> None:
    from proxy.admin.local import token_path

    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/tripwire/ui/"
    if local_token is None:
        event("console", url=url, sign_in="an admin or viewer token")
        return
    event(
        "console",
        url=url,
        sign_in="`tripwire console`",
        local_admin_file=str(token_path(config.auth.local_admin_file)),
    )
    # The sign-in link carries the token in its fragment, which browsers never send: it goes
    # to a person's terminal only, never to a log that may be shipped elsewhere.
    if sys.stdout.isatty():
        print(f"Tripwire console: {url}#token={local_token}", flush=True)


async def serve(config: Config, *, mock: bool = False) -> None:
    cleanups = []
    if mock:
        from proxy.mock_provider import start_mock_provider

        mock_runner, _, mock_url = await start_mock_provider("127.0.0.1", 0)
        cleanups.append(mock_runner)
        config = with_mock_upstreams(config, mock_url)
    local_token = _local_token(config)
    runner = web.AppRunner(build_app(config, local_token=local_token), access_log=None)
    await runner.setup()
    cleanups.insert(0, runner)
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        event(
            "listening",
            version=__version__,
            url=f"http://{host}:{port}",
            upstreams={name: _shown(up.base_url) for name, up in config.upstreams.items()},
            state=config.state.backend,
            mock_provider=mock,
        )
        _announce_console(host, port, config, local_token)
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
