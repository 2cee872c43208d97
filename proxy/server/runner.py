"""Running the proxy until SIGINT or SIGTERM, optionally in front of the built-in mock provider;
SIGHUP reloads the policy (``proxy/server/reload.py``)."""

from __future__ import annotations

import asyncio
import errno
import gc
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from proxy import __version__
from proxy.app import RELOADER, build_app
from proxy.config import Config, Upstream
from proxy.errors import ConfigError
from proxy.server.summary import shown_url, startup_summary
from proxy.telemetry.logs import event

# Allocations (minus deallocations) of tracked objects between two young collections.
YOUNG_COLLECTION_THRESHOLD = 7_000


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
        print(f"  Console: {url} (sign in with an admin or viewer token)", file=sys.stderr)
        return
    event(
        "console",
        url=url,
        sign_in="`tripwire console`",
        local_admin_file=str(token_path(config.auth.local_admin_file)),
    )
    print(
        f"  Console: {url} (`tripwire console` prints a signed-in link)",
        file=sys.stderr,
        flush=True,
    )
    # The sign-in link carries the token in its fragment, which browsers never send: it goes
    # to a person's terminal only, never to a log that may be shipped elsewhere.
    if sys.stdout.isatty():
        print(f"Tripwire console: {url}#token={local_token}", flush=True)


def run(config: Config, *, mock: bool = False, load: Callable[[], Config] | None = None) -> None:
    """Serve on uvloop's event loop when it is installed (the ``uvloop`` extra, installed in
    the image): the same asyncio API with a cheaper loop and transports. Without it, on
    asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(config, mock=mock, load=load))


async def serve(
    config: Config, *, mock: bool = False, load: Callable[[], Config] | None = None
) -> None:
    """``load`` reads the configuration again, for ``SIGHUP`` and ``tripwire reload``."""
    cleanups = []
    reload_source = load
    if mock:
        from proxy.mock_provider import start_mock_provider

        mock_runner, _, mock_url = await start_mock_provider("127.0.0.1", 0)
        cleanups.append(mock_runner)
        config = with_mock_upstreams(config, mock_url)
        if load is not None:
            reload_source = lambda: with_mock_upstreams(load(), mock_url)  # noqa: E731
    local_token = _local_token(config)
    app = build_app(config, local_token=local_token, load=reload_source)
    runner = web.AppRunner(app, access_log=None)
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
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        print(startup_summary(config, f"http://{host}:{port}", mock=mock), file=sys.stderr)
        _announce_console(host, port, config, local_token)
        # Objects alive after start-up (config, compiled policy, modules) live as long as the
        # process: keep them out of every full collection, whose pauses are the tail latency.
        # (The price index, loaded by the first call, adds about 0.4 ms to a full collection.)
        gc.collect()
        gc.freeze()
        # A call allocates a few hundred short-lived objects: at the default threshold (700) a
        # young collection ran every call or two. Their instructions are few (under 1 % by
        # callgrind) but each walks memory the call no longer touches.
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        reloads: set[asyncio.Task[None]] = set()
        reloader = app.get(RELOADER)
        if reloader is not None:

            def on_hangup() -> None:
                task = asyncio.create_task(reloader.reload_logged("SIGHUP"))
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, on_hangup)
        await stop.wait()
        event("stopping")
    finally:
        for each in cleanups:
            await each.cleanup()
