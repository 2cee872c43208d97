"""Servers for the tests: the real proxy app on its own event loop in a background thread,
in front of the mock provider, both on free ports of 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from proxy.app import LEDGER, build_app
from proxy.config import Config, load_config
from proxy.mock_provider import MockProvider, MockProviderThread
from proxy.session.base import TaskView


class ProxyThread:
    """A running proxy; ``base_url`` is its root, ``openai_url`` what the OpenAI SDK wants."""

    def __init__(self, config: Config, local_token: str | None = None) -> None:
        self.config = config
        self.local_token = local_token  # as `tripwire serve` passes it on a default install
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._app: web.Application | None = None
        self._error: BaseException | None = None
        self.port = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError("proxy did not start")
        if self._error is not None:
            raise self._error

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._app = build_app(self.config, local_token=self.local_token)
        runner = web.AppRunner(self._app, handler_cancellation=False)
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return self.base_url + "/v1"

    def call(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the proxy's loop (for ledger look-ups) and wait for it."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def task(self, name: str) -> TaskView | None:
        assert self._app is not None
        return self.call(self._app[LEDGER].get(name))  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def proxy_config(mock_url: str, **sections: Any) -> Config:
    """A config whose default upstreams are the mock provider."""
    upstreams = {
        "openai": {"base_url": mock_url, "format": "openai"},
        "anthropic": {"base_url": mock_url, "format": "anthropic"},
        "gemini": {"base_url": mock_url, "format": "gemini"},
        **sections.pop("upstreams", {}),
    }
    return load_config(None, upstreams=upstreams, **sections)


@contextlib.contextmanager
def running(mock: MockProviderThread, **sections: Any) -> Iterator[ProxyThread]:
    proxy = ProxyThread(proxy_config(mock.base_url, **sections))
    try:
        yield proxy
    finally:
        proxy.stop()


__all__ = ["MockProvider", "MockProviderThread", "ProxyThread", "proxy_config", "running"]
