"""A provider that says whatever a test scripts: any status, any bytes, cut into any chunks,
with pauses between them, ending cleanly or with the connection dropped. For what the mock
provider, which speaks each format faithfully, never sends."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.redis_server import free_port


@dataclass
class Scripted:
    chunks: list[bytes]
    status: int = 200
    content_type: str = "application/json"
    pause: float = 0.0  # between chunks, so each arrives in its own read
    cut: bool = False  # drop the connection after the chunks instead of ending the body
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.replies: deque[Scripted] = deque()
        self.requests: list[tuple[str, bytes]] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("scripted upstream did not start")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, reply: Scripted) -> None:
        self.replies.append(reply)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path_qs, await request.read()))
        if not self.replies:
            return web.Response(status=599, text="nothing scripted")
        reply = self.replies.popleft()
        response = web.StreamResponse(
            status=reply.status, headers={"Content-Type": reply.content_type, **reply.headers}
        )
        if not reply.cut and reply.content_type.startswith("application/json"):
            response.content_length = sum(len(chunk) for chunk in reply.chunks)
        await response.prepare(request)
        for number, chunk in enumerate(reply.chunks):
            if number and reply.pause:
                await asyncio.sleep(reply.pause)
            await response.write(chunk)
        if reply.cut:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> ScriptedUpstream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
